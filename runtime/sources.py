"""Frame sources named by one string, read through OpenCV in a capture thread.

    0, 1 ...                     camera index
    /dev/video0, v4l2:///dev/video0
    csi://0                      CSI camera through the device profile's GStreamer pipeline
    gst://PIPELINE or any string with " ! "   a GStreamer pipeline ending in appsink
    rtsp://..., http(s)://...    network streams (RTSP, HTTP MJPEG)
    path/to/video.mp4            video file (a camera stand-in: paced at its own frame rate)
    path/to/image.jpg, folder/   still images

Live sources and videos keep only the newest frame, so inference never works on stale buffered
frames; drops are counted and every frame carries its capture time. Images and folders are
offline inputs: every image is handed over once, in order. `read()` waits with a timeout, so a
dead stream cannot hang the caller, and live sources reconnect with backoff.

How `read()` ends: SourceTimeout (no frame yet, try again), SourceEnded (a file or folder is
done), SourceClosed (a SourceEnded: close() was called; raised at once, also to a reader already
waiting, so shutdown never waits for a timeout) and SourceFailed (the capture thread stopped for
good; the message says why).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecls.runtime.errors import EdgeclsError, MissingDependencyError
from edgecls.runtime.preprocess import IMAGE_SUFFIXES
from edgecls.runtime.redact import redact

log = logging.getLogger("edgecls.runtime")

LIVE_KINDS = ("camera", "v4l2", "csi", "gstreamer", "network")
OFFLINE_KINDS = ("image", "folder")  # every image is delivered unless pacing is asked for
SOURCE_TIMEOUT_S = 5.0  # a read that waits longer for a frame reports a stall


class SourceError(EdgeclsError):
    """A source that cannot be opened or has failed for good."""


class SourceTimeout(SourceError):
    """No new frame arrived within the timeout."""


class SourceEnded(SourceError):
    """A finite source (file, folder) has no more frames."""


class SourceClosed(SourceEnded):
    """close() was called: no more frames will come, so readers stop as they do at the end of a file."""


class SourceFailed(SourceError):
    """The capture thread stopped for good (reopen failed, retries used up, nothing decodable, a crash)."""


def redact_uri(uri) -> str:
    """The source as it may be shown (logs, errors, labels, JSON): passwords and secret values replaced by ***.

    Any string quoting a source (a pipeline, an error message) may go through it: see `edgecls.runtime.redact`.
    """
    return redact(uri)


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # camera | v4l2 | csi | gstreamer | network | video | image | folder
    target: object  # int index, device path, pipeline, URL or file path
    uri: str

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS

    @property
    def shown(self) -> str:
        """The URI without its credentials, for every message."""
        return redact_uri(self.uri)


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8, as OpenCV delivers it
    index: int  # frame number since the source started
    captured_at: float  # time.monotonic() when the capture thread got it
    source: str
    name: str = ""  # file name for image sources

    @property
    def age_ms(self) -> float:
        return (time.monotonic() - self.captured_at) * 1000


@dataclass(frozen=True)
class RetryPolicy:
    """Reconnect live sources with exponential backoff; `max_attempts=None` retries forever."""

    first_delay: float = 0.5
    max_delay: float = 5.0
    max_attempts: int | None = None

    def delays(self):
        delay, attempt = self.first_delay, 0
        while self.max_attempts is None or attempt < self.max_attempts:
            yield delay
            attempt += 1
            delay = min(self.max_delay, delay * 2)


def parse_source(uri, csi_pipeline: str = "", width: int = 1280, height: int = 720, fps: int = 30) -> SourceSpec:
    text = str(uri).strip()
    if text.isdigit():
        return SourceSpec("camera", int(text), text)
    if text.startswith("v4l2://"):
        return SourceSpec("v4l2", text[len("v4l2://") :], text)
    if text.startswith("/dev/video"):
        return SourceSpec("v4l2", text, text)
    if text.startswith("csi://"):
        if not csi_pipeline:
            raise SourceError(
                f"{redact_uri(text)} needs a device profile with a csi_pipeline (e.g. --device raspberry-pi-5)"
            )
        sensor = text[len("csi://") :] or "0"
        return SourceSpec("gstreamer", csi_pipeline.format(sensor=sensor, width=width, height=height, fps=fps), text)
    if text.startswith("gst://"):
        return SourceSpec("gstreamer", text[len("gst://") :], text)
    if " ! " in text:
        return SourceSpec("gstreamer", text, text)
    if text.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp"):
        return SourceSpec("network", text, text)
    path = Path(text[len("file://") :] if text.startswith("file://") else text)
    if path.is_dir():
        return SourceSpec("folder", path, text)
    if not path.exists():
        raise SourceError(
            f"source {redact_uri(text)!r} does not exist: "
            "give a camera index, /dev/videoN, csi://N, a URL, a video, an image or a folder"
        )
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return SourceSpec("image", path, text)
    return SourceSpec("video", path, text)


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover
        raise MissingDependencyError("opencv-python-headless", "runtime", "needed to read cameras and videos") from exc
    return cv2


def _has_gstreamer(cv2) -> bool:
    return any("GStreamer" in line and "YES" in line for line in cv2.getBuildInformation().splitlines())


class _VideoReader:
    """cv2.VideoCapture with open/read timeouts where the backend supports them."""

    def __init__(self, spec: SourceSpec, timeout_s: float):
        cv2 = _cv2()
        ms = int(timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        if spec.kind == "camera":
            cap = cv2.VideoCapture(spec.target)
        elif spec.kind == "v4l2":
            cap = cv2.VideoCapture(spec.target, cv2.CAP_V4L2)
        elif spec.kind == "gstreamer":
            cap = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
        else:  # network streams and video files
            cap = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            hint = (
                " (this OpenCV build has no GStreamer support)"
                if spec.kind == "gstreamer" and not _has_gstreamer(cv2)
                else ""
            )
            raise SourceError(f"cannot open source {spec.shown}{hint}")
        self._cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None

    def read(self):
        ok, frame = self._cap.read()
        return frame if ok else None

    def release(self):
        self._cap.release()


class _ImageReader:
    """Still images from a file or a folder (sorted, recursive), one per read."""

    fps = None

    def __init__(self, spec: SourceSpec):
        root = Path(spec.target)
        if spec.kind == "image":
            self._files = [root]
        else:
            self._files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"no images in {root}")
        self._i = 0
        self.name = ""

    def read(self):
        from edgecls.runtime.errors import ImageDecodeError
        from edgecls.runtime.preprocess import load_image

        while self._i < len(self._files):
            path = self._files[self._i]
            self._i += 1
            try:
                image = load_image(path)
            except ImageDecodeError as exc:
                log.warning("skipping %s", exc)
                continue
            self.name = str(path)
            return np.ascontiguousarray(image[..., ::-1])  # frames are BGR, like OpenCV's
        return None

    def release(self):
        pass


@dataclass
class SourceStats:
    state: str = "starting"  # starting | running | reconnecting | ended | failed | closed
    frames: int = 0  # frames captured
    delivered: int = 0  # frames handed to read()
    dropped: int = 0  # frames replaced by a newer one before anyone read them
    outages: int = 0
    reconnects: int = 0
    last_error: str = ""
    fps: float | None = None
    waiting_at: float | None = None  # monotonic time the capture last waited for its reader to take a frame
    events: list = field(default_factory=list)  # (monotonic time, message), last 50

    def note(self, message: str) -> None:
        self.events.append((time.monotonic(), message))
        del self.events[:-50]


class Source:
    """A started capture thread over one source; use as a context manager or call close().

    every_frame=False: keep only the newest frame, count drops (live use; default for cameras,
      streams and video files).
    every_frame=True: hand over every frame, the reader sets the pace (offline processing; default
      for images and folders, so none is skipped).
    realtime: pace video files (and folders, given `fps`) at their own frame rate (default True
      unless every_frame).
    """

    def __init__(
        self,
        uri,
        *,
        loop: bool = False,
        every_frame: bool | None = None,
        realtime: bool | None = None,
        timeout_s: float = SOURCE_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        profile=None,
        fps: float | None = None,
    ):
        self.spec = parse_source(uri, getattr(profile, "csi_pipeline", "") or "")
        self.loop = loop
        self.every_frame = self.spec.kind in OFFLINE_KINDS if every_frame is None else every_frame
        self.realtime = (not self.every_frame) if realtime is None else realtime
        self.timeout_s = timeout_s
        self.retry = retry or (RetryPolicy() if self.spec.live else RetryPolicy(max_attempts=0))
        self.stats = SourceStats()
        self._fps_override = fps
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._last_index = -1
        self._stop = threading.Event()
        self._reader = None
        try:
            self._reader = self._open()  # the first open is synchronous: a bad source fails here, clearly
        except SourceError:
            if not self.spec.live or self.retry.max_attempts == 0:
                raise
            self.stats.last_error = f"cannot open {self.spec.shown}"
        self._thread = threading.Thread(target=self._run, name=f"capture:{self.spec.shown}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ capture thread

    def _open(self):
        if self.spec.kind in ("image", "folder"):
            return _ImageReader(self.spec)
        return _VideoReader(self.spec, self.timeout_s)

    def _reconnect(self) -> bool:
        for delay in self.retry.delays():
            if self._stop.wait(delay):
                return False
            try:
                self._reader = self._open()
            except SourceError as exc:
                self.stats.last_error = str(exc)
                log.warning("%s: still down (%s); retrying", self.spec.shown, redact(exc))
                continue
            self.stats.reconnects += 1
            self.stats.note("reconnected")
            log.warning("%s: reconnected after outage", self.spec.shown)
            return True
        return False

    def _set_state(self, state: str, error: str = "") -> None:
        """Change state and wake readers; "closed" is final, so a late capture step cannot undo close()."""
        with self._cond:
            if self.stats.state == "closed":
                return
            self.stats.state = state
            if error:
                self.stats.last_error = redact(error)  # an OpenCV or OS message may quote the raw source
            self._cond.notify_all()

    def _finish(self, state: str, error: str = "") -> None:
        error = redact(error) if error else error
        with self._cond:
            self.stats.note(state + (f": {error}" if error else ""))
            self._set_state(state, error)

    def _publish(self, image: np.ndarray, name: str) -> None:
        with self._cond:
            if self.every_frame:  # waiting for the reader is alive, not stalled: a watchdog reads waiting_at
                while self._frame is not None and self._frame.index > self._last_index and not self._stop.is_set():
                    self.stats.waiting_at = time.monotonic()
                    self._cond.wait(0.1)
            elif self._frame is not None and self._frame.index > self._last_index:
                self.stats.dropped += 1
            self._frame = Frame(image, self.stats.frames, time.monotonic(), self.spec.shown, name)
            self.stats.frames += 1
            self._cond.notify_all()

    def _run(self) -> None:
        """Every way out of the capture thread ends here, so readers always learn the final state."""
        state, error = "failed", ""
        try:
            state, error = self._capture()
        except Exception as exc:  # a dead thread must not leave readers waiting on a "running" source
            expected = isinstance(exc, EdgeclsError)
            error = redact(str(exc) if expected else f"capture thread crashed: {type(exc).__name__}: {exc}")
            log.error("%s: %s", self.spec.shown, error, exc_info=not expected)
        finally:
            if self._reader is not None:
                try:
                    self._reader.release()
                except Exception as exc:  # pragma: no cover - release of a broken capture
                    log.warning("%s: release failed: %s", self.spec.shown, exc)
                self._reader = None
            self._finish("closed" if self._stop.is_set() else state, error)

    def _capture(self) -> tuple[str, str]:
        """Read until the source ends, fails or is closed; returns (final state, reason)."""
        started, n_since_start, n_this_pass = None, 0, 0
        if self._reader is None and not self._reconnect():
            return "failed", self.stats.last_error
        self._set_state("running")
        while not self._stop.is_set():
            reader = self._reader
            fps = self._fps_override or reader.fps
            image = reader.read()
            if image is None and self._stop.is_set():
                break  # the read ended because we are closing, not an outage
            if image is None:
                if self.spec.live:
                    self.stats.outages += 1
                    self._set_state("reconnecting", f"no frame from {self.spec.shown}")
                    self.stats.note("outage")
                    log.warning("%s: stream lost; reconnecting", self.spec.shown)
                    reader.release()
                    self._reader = None
                    if not self._reconnect():
                        return "failed", self.stats.last_error
                    self._set_state("running")
                    continue
                reader.release()
                self._reader = None
                if n_this_pass == 0:  # looping (or ending) over nothing would spin or pass silently
                    if self.spec.kind in OFFLINE_KINDS:
                        return "failed", "no decodable image (every file was skipped, see the warnings)"
                    return "failed", "no decodable frame"
                if not self.loop:
                    return "ended", ""
                self._reader = self._open()  # raises if the file or folder went away: the thread fails with the reason
                started, n_since_start, n_this_pass = None, 0, 0
                continue
            n_this_pass += 1
            if self.realtime and fps and not self.spec.live:
                now = time.monotonic()
                started = started if started is not None else now
                wait = started + n_since_start / fps - now
                if wait > 0 and self._stop.wait(wait):
                    break
                n_since_start += 1
            self._publish(image, getattr(reader, "name", ""))
        return "closed", ""

    # ------------------------------------------------------------------ consumer side

    def read(self, timeout: float | None = None) -> Frame:
        """The newest frame not yet returned; waits up to `timeout` seconds (default: the source's)."""
        deadline = time.monotonic() + (self.timeout_s if timeout is None else timeout)
        with self._cond:
            while True:
                if self.stats.state == "closed":
                    raise SourceClosed(f"{self.spec.shown}: source closed")
                frame = self._frame
                if frame is not None and frame.index > self._last_index:
                    self._last_index = frame.index
                    self.stats.delivered += 1
                    self._cond.notify_all()
                    return frame
                if self.stats.state == "ended":
                    raise SourceEnded(f"{self.spec.shown}: end of source")
                if self.stats.state == "failed":
                    raise SourceFailed(f"{self.spec.shown}: {self.stats.last_error or 'capture stopped'}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SourceTimeout(
                        f"{self.spec.shown}: no frame for {self.timeout_s if timeout is None else timeout:.1f}s "
                        f"(state {self.stats.state}{', ' + self.stats.last_error if self.stats.last_error else ''})"
                    )
                self._cond.wait(remaining)

    def __iter__(self):
        """Frames until the source ends or is closed; timeouts and failures are raised."""
        while True:
            try:
                yield self.read()
            except SourceEnded:
                return

    def close(self, join_timeout: float = 2.0) -> None:
        """Stop capturing: readers waiting in read() get SourceClosed at once, then the thread is joined.

        The thread stops within milliseconds unless it sits in a native read of a stalled stream;
        that read ends by itself within `timeout_s` and the thread then releases the capture, so
        close() never waits more than `join_timeout`.
        """
        self._stop.set()
        with self._cond:  # state and wake-up under one lock: a woken reader sees "closed", not a stale state
            if self.stats.state not in ("ended", "failed"):
                self.stats.state = "closed"
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(join_timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
