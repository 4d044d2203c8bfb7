"""Where results go: JSON lines on stdout, or an append-only JSON-lines file rotated by size.

A sink has `write(result: dict)` and `close()`; several loops write to one sink, so each write
is one locked line. Each line is flushed as it is written so a crash loses at most the line in
progress and `tail -f` sees results at once.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.daemon")


class StdoutSink:
    """One JSON object per line on stdout (or any text stream)."""

    def __init__(self, stream=None):
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()

    def write(self, result: dict) -> None:
        line = json.dumps(result, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except BrokenPipeError:  # `edgecls run ... | head`: the reader left, keep serving HTTP
                pass

    def close(self) -> None:
        with self._lock:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                pass


class SimpleLines:
    """The simple mode's line per classified frame (`edgecls run` with one source and no daemon option): frame,
    name, age_ms, top1, score, topk, latency_ms (the total), dropped (the source's count so far), model, and the
    view when the source's settings crop, rotate or flip its frames."""

    def __init__(self, dropped, stream=None, events=None):
        self._dropped = dropped  # () -> frames the source dropped so far, counted now
        self._stream = stream or sys.stdout
        self._events = events  # where stall lines go (default: sys.stderr at the time)
        self._lock = threading.Lock()

    def write(self, result: dict) -> None:
        line = {
            "frame": result["frame"],
            **({"name": result["name"]} if "name" in result else {}),
            "age_ms": result["frame_age_ms"],
            "top1": result["top1"],
            "score": result["score"],
            "topk": result["topk"],
            "latency_ms": result["latency_ms"]["total"],
            "dropped": self._dropped(),
            "model": result["model"],
            **({"view": result["view"]} if "view" in result else {}),  # what the model saw, when not the whole frame
        }
        with self._lock:  # an OSError (`| head`, a full disk) reaches the daemon, which ends the run with it
            self._stream.write(json.dumps(line) + "\n")
            self._stream.flush()

    def stall(self, event: dict) -> None:
        """`{"event": "stall", "detail": ..., "state": ...}` on stderr: no frame for --timeout seconds."""
        events = self._events or sys.stderr
        events.write(json.dumps(event) + "\n")
        events.flush()

    def close(self) -> None:
        with self._lock:
            try:
                self._stream.flush()
            except (OSError, ValueError):  # the write that failed already ended the run with its error
                pass


class JsonlFileSink:
    """Appends JSON lines to `path`; past `max_bytes`, path -> path.1 -> ... -> path.<backups> (oldest dropped).

    Only ever appends to the current file and renames whole files, so a reader never sees a
    rewritten line; `max_bytes=0` never rotates. Only a regular file is rotated or synced: /dev/null, a FIFO or
    /dev/stdout is written to as it is (renaming a device node would replace it with a file).
    """

    def __init__(self, path, max_bytes: int = 10 * 1024 * 1024, backups: int = 3):
        if max_bytes < 0 or backups < 0:
            raise EdgeclsError("results file rotation needs max_bytes >= 0 and backups >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise EdgeclsError(
                f"cannot open results file {self.path}: {exc.strerror or exc}: choose a writable path with --results"
            ) from exc
        self.regular = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        if not self.regular:
            self.max_bytes = max_bytes = 0
        self._size = self._file.tell() if self.regular else 0
        if max_bytes and not os.access(self.path.parent, os.W_OK):  # found at the first rotation, hours later
            self._file.close()
            raise EdgeclsError(
                f"results folder {self.path.parent} is not writable, so {self.path.name} cannot be "
                f"rotated: make it writable, or pass --results-max-mb 0"
            )

    def write(self, result: dict) -> None:
        line = json.dumps(result, separators=(",", ":")) + "\n"
        data_len = len(line.encode("utf-8"))
        with self._lock:
            if self._file is None:
                return
            if self.max_bytes and self._size and self._size + data_len > self.max_bytes:
                self._rotate()
            self._file.write(line)
            self._file.flush()
            self._size += data_len

    def _rotate(self) -> None:
        self._file.close()
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):  # replaced by a link, a FIFO, a device since the start
                raise OSError(f"{self.path} is no longer a regular file")
            self._shift()
        except OSError as exc:  # keep appending to the one file rather than lose every later result
            log.error("cannot rotate %s (%s: %s); appending to it without rotation", self.path, type(exc).__name__, exc)
            self.max_bytes = 0
        self._file = open(self.path, "a", encoding="utf-8")
        self._size = self._file.tell()

    def _shift(self) -> None:
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            self._file.flush()
            if self.regular:  # fsync of /dev/null or a pipe is EINVAL
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
