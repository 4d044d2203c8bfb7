"""`--capture DIR`: keep the frames the model is unsure of, for a person to label and retrain on.

Layout, chosen so that `edgecls train --data DIR` takes the folder as soon as images are moved into
class folders: new captures land in `DIR/.unlabelled/SOURCE/` (a dot folder, which training ignores)
as `TIME-FRAME.jpg` with a `TIME-FRAME.json` sidecar (source, time, frame, top-k, score, the source's view when
it is not the whole upright frame (the JPEG is that view: what the model saw), and the bundle,
version, artifact and sha256 of the model that produced the result; strict JSON: a score that is not a
number is null); a person moves the JPEGs they label into `DIR/<class>/`. SOURCE is the source's name
made safe for a path, with a short hash of the name when it had to be changed. One daemon per capture folder.

Frames are offered by the classification loops and written by one thread of its own through a small
bounded queue: a full queue drops the frame and counts it, so capture never slows classification.
Files are written atomically (temp file, fsync, rename); past `max_bytes` the oldest captures (image
and sidecar) are deleted, and temp files a killed daemon left behind are removed at start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import random
import re
import threading
import time
from pathlib import Path

from edgecls.runtime.atomic import _TEMP_FILE, write_bytes, write_text

log = logging.getLogger("edgecls.daemon")

INBOX = ".unlabelled"
ERROR_LOG_EVERY_S = 60.0  # a full or read-only disk fails every frame: one line a minute says it


def _folder_name(source: str) -> str:
    """A folder name for a source; a name that had to be changed gets a short hash of the original, so two
    sources that sanitise alike (`cam/1` and `cam:1`) never share a folder or overwrite each other's frames."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._") or "source"
    if name == source:
        return name
    return f"{name[:80]}-{hashlib.sha256(source.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _finite(value):
    """`value` with every NaN or infinity replaced by None: sidecars are strict JSON (RFC 8259 has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class Capture:
    def __init__(
        self,
        folder,
        *,
        below: float = 0.5,
        sample: int | None = None,
        max_bytes: int = 500 * 2**20,
        queue_size: int = 16,
        model: dict | None = None,
        seed: int | None = None,
    ):
        if not 0.0 <= below <= 1.0:
            raise ValueError("--capture-below is a score between 0 and 1")
        self.root = Path(folder)
        self.inbox = self.root / INBOX
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.below, self.sample, self.max_bytes = below, sample, max_bytes
        self.model = dict(model or {})
        self.captured = self.dropped = 0
        self.errors = 0  # captures that failed to write (a full or read-only disk): counted, logged rarely
        self.last_error: str | None = None
        self._logged_at: float | None = None  # time.monotonic() of the last error line
        self._random = random.Random(seed)
        self._queue = queue.Queue(maxsize=queue_size)
        self._files = self._existing()  # [(paths of one capture, bytes)] oldest first: an image and its sidecar
        self._bytes = sum(size for _, size in self._files)
        self._thread = threading.Thread(target=self._work, name="capture", daemon=True)
        self._thread.start()

    def _existing(self) -> list:
        """The captures already in the inbox, oldest first; temp files a killed daemon left (`.NAME.x.tmp`,
        never renamed into place) are removed, or they would fill the disk past the cap unseen."""
        groups = {}
        for path in self.inbox.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            if path.name.startswith("."):
                if _TEMP_FILE.match(path.name):  # one daemon per capture folder: nobody else is writing it
                    path.unlink(missing_ok=True)
                    log.info("capture: removed %s, left half-written by a daemon that was killed", path)
                continue
            groups.setdefault(path.with_suffix(""), []).append(path)
        found = [(tuple(paths), sum(p.stat().st_size for p in paths)) for paths in groups.values()]
        return sorted(found, key=lambda item: (min(p.stat().st_mtime for p in item[0]), str(item[0][0])))

    def wants(self, result: dict, below: float | None = None, every: int | None = None) -> bool:
        """Whether to keep this result's frame; `below` and `every` (a source's own settings) replace the capture's."""
        below = self.below if below is None else below
        sample = self.sample if every is None else every
        if not result.get("score", 1.0) >= below:  # NaN too: a frame the model had no answer for
            return True
        return sample is not None and self._random.randrange(sample) == 0

    def offer(self, image, result: dict, below: float | None = None, every: int | None = None, copy=False) -> None:
        """From a classification loop: never blocks; a full queue drops the frame (counted). `image`: what the model
        saw (the source's view); below / every: the source's own settings, None for the capture's; copy: the image
        lives in a buffer its view reuses (runtime/view.py), so a frame kept is copied first."""
        if not self.wants(result, below, every):
            return
        try:
            self._queue.put_nowait((image.copy() if copy else image, result))
        except queue.Full:
            self.dropped += 1

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            try:
                self._write(*item)
            except Exception as exc:  # a full disk must not end the daemon: say so, drop the frame
                self.dropped += 1
                self._failed(exc)
            finally:
                self._queue.task_done()

    def _failed(self, exc: Exception) -> None:
        """Count the failure; log the first, then one line per ERROR_LOG_EVERY_S with the count (not one a frame)."""
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= ERROR_LOG_EVERY_S:
            self._logged_at = now
            log.error("capture failed (%d times so far, frames dropped): %s", self.errors, self.last_error)

    def status(self) -> dict:
        """For /healthz."""
        return {
            "captured": self.captured,
            "dropped": self.dropped,
            "errors": self.errors,
            "last_error": self.last_error,
            "pending": self.pending,
        }

    @property
    def pending(self) -> int:
        """Frames offered and not yet written (queued, or being written)."""
        return self._queue.unfinished_tasks

    def drain(self, timeout: float, stop=None) -> bool:
        """Wait until every offered frame is written (True), `timeout` passed or `stop` (an Event) is set."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            time.sleep(0.01)
        return not self.pending

    def _write(self, image, result: dict) -> None:
        import cv2

        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise ValueError("JPEG encoding failed")
        folder = self.inbox / _folder_name(result.get("source", ""))
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(result.get("ts", time.time())))
        stem = folder / f"{stamp}-{result.get('frame', 0):08d}"
        sidecar = _finite(
            {
                "source": result.get("source"),
                "ts": result.get("ts"),
                "frame": result.get("frame"),
                "top1": result.get("top1"),
                "score": result.get("score"),
                "topk": result.get("topk"),
                **({"view": result["view"]} if result.get("view") else {}),
                **self.model,
                **(result.get("model") or {}),  # the model that produced this very result, reloads included
            }
        )
        image_path, sidecar_path = stem.with_suffix(".jpg"), stem.with_suffix(".json")
        write_bytes(image_path, jpeg.tobytes())
        write_text(sidecar_path, json.dumps(sidecar, indent=1, allow_nan=False) + "\n")
        size = image_path.stat().st_size + sidecar_path.stat().st_size
        self._files.append(((image_path, sidecar_path), size))
        self._bytes += size
        self.captured += 1
        self._enforce_cap()

    def _enforce_cap(self) -> None:
        if self._bytes > self.max_bytes:
            self._forget_moved()
        while self._bytes > self.max_bytes and self._files:
            paths, size = self._files.pop(0)
            self._bytes -= size
            for path in paths:  # the image and its sidecar go together
                path.unlink(missing_ok=True)  # moved away by a person already: nothing to do

    def _forget_moved(self) -> None:
        """Captures a person labelled (moved out of the inbox, `edgecls label`) no longer count toward the cap:
        counting them would delete frames still waiting in the inbox long before it is full."""
        kept = []
        for paths, size in self._files:
            if any(path.exists() for path in paths):
                kept.append((paths, size))
            else:
                self._bytes -= size
        self._files = kept

    def close(self, timeout: float = 1.0) -> None:
        """Write what is queued (within `timeout`), then stop the writer; frames left unwritten count as dropped."""
        deadline = time.monotonic() + timeout
        self.drain(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        lost = 0
        while True:  # what the writer had no time for: said and counted, not silently gone
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
            lost += item is not None
        if lost:
            self.dropped += lost
            log.warning("capture: %d frame(s) not written before stopping (counted as dropped)", lost)
            self._queue.put_nowait(None)  # a writer still busy with one frame ends after it
