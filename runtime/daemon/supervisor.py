"""One supervisor per source: opens it, watches that new frames arrive, and reopens it when they stop.

The shape follows Frigate's CameraWatchdog: a small thread per source checks "frames arriving?"
on a timer and restarts only that capture, so a dead camera never touches the others. The
supervisor is the only owner of retries (its Source gets none of its own): a lost stream fails
the Source at once, and a stream that stays connected but sends nothing is caught by the stall
timer; both end in close, capped exponential backoff, reopen. Counters live here and are read by
metrics and HTTP; the frame loop only reads frames.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass

from edgecls.runtime.daemon.config import STALL_TIMEOUT_S
from edgecls.runtime.sources import (
    SOURCE_TIMEOUT_S,
    RetryPolicy,
    Source,
    SourceClosed,
    SourceEnded,
    SourceError,
    SourceFailed,
    SourceTimeout,
    parse_source,
    redact_uri,
)

log = logging.getLogger("edgecls.daemon")

STATES = ("starting", "running", "reconnecting", "failed", "ended", "stopped")


def display_name(uri: str) -> str:
    """The URI with any password or token replaced, so it can go into logs, labels and JSON."""
    return redact_uri(uri)


def open_fix(spec) -> str:
    """What to check when a source never opened, by kind (and how to keep trying instead)."""
    wait = "or add --wait-for-sources to keep trying until it appears"
    if spec.kind in ("camera", "v4l2"):
        return (
            "check that the camera is there (`ls /dev/video*`) and that this user may open it (group `video`: "
            f"`sudo usermod -aG video $USER`, then log in again), {wait}"
        )
    if spec.kind == "gstreamer":
        return f"check the pipeline with `gst-launch-1.0` and that OpenCV was built with GStreamer, {wait}"
    if spec.kind == "network":
        return f"check the URL, that the camera or server answers from here and its user and password, {wait}"
    if spec.kind == "folder":  # "no images in DIR" says it all
        return ""
    return "check that the file is readable and is a video or image OpenCV can decode"


@dataclass(frozen=True)
class Backoff:
    """Delays between reopen attempts: first, doubled each failure, capped; reset once frames flow again."""

    first: float = 0.5
    cap: float = 10.0

    def delay(self, failures: int) -> float:
        return min(self.cap, self.first * 2 ** max(0, failures - 1))


@dataclass
class SupervisorStats:
    state: str = "starting"
    reason: str = ""  # why the source is not running, for /healthz and logs
    frames: int = 0  # frames captured, over every reopen
    dropped: int = 0  # frames replaced by a newer one before the loop read them
    outages: int = 0  # times frames stopped (stall, lost stream, failed open after running)
    reconnects: int = 0  # times frames flowed again after an outage
    opens: int = 0  # open attempts, successful or not
    last_frame_at: float | None = None  # time.monotonic() of the newest captured frame
    state_since: float = 0.0

    def snapshot(self) -> dict:
        return dataclasses.asdict(self)


class Supervisor:
    """Owns one `edgecls.runtime.sources.Source`; `read()` hands out only frames its capture really delivered.

    stall_timeout: seconds without a new frame after which the source is closed and reopened (a source that waits
      for its reader to take a frame, a folder paced by max_fps, is alive meanwhile).
    source_options: passed to Source (loop, every_frame, realtime, fps, profile, timeout_s).
    max_failures: consecutive failed opens before the state becomes "failed" for good (None: never
      for live sources; files and folders fail on the first, since retrying cannot bring them back).
    wait_for_source: False: a live source whose very first open fails is "failed" at once (`unopened` says
      so, the reason names the cause and the fix), since a camera that was never there is a setup mistake;
      True: it is retried like any outage (a camera that appears after boot).
    simple: speak as `edgecls run`'s simple mode always did: every failed reopen is a "still down" warning, a file
      or folder that cannot be opened is its error alone (no fix appended), and stopping is not logged.
    """

    def __init__(
        self,
        uri: str,
        *,
        name: str | None = None,
        stall_timeout: float = STALL_TIMEOUT_S,
        backoff: Backoff | None = None,
        max_failures: int | None = None,
        wait_for_source: bool = True,
        simple: bool = False,
        **source_options,
    ):
        self.uri = str(uri)
        self.spec = parse_source(self.uri, getattr(source_options.get("profile"), "csi_pipeline", "") or "")
        self.name = name or display_name(self.uri)
        self.stall_timeout = stall_timeout
        self.backoff = backoff or Backoff()
        self.max_failures = max_failures if self.spec.live else 1
        self.wait_for_source = wait_for_source
        self.simple = simple
        self.unopened = False  # gave up on a source that never opened (wait_for_source False)
        self.alive_at: float | None = None  # monotonic time of its newest frame, or of its wait for the reader
        self._ever_opened = False
        self.source_options = {"timeout_s": min(SOURCE_TIMEOUT_S, stall_timeout), **source_options}
        self.stats = SupervisorStats(state_since=time.monotonic())
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._source: Source | None = None
        self._closing: Source | None = None  # the source being retired: its frames are not in _retired yet
        self._retired = (0, 0)  # frames, dropped of sources already closed
        self._offset = 0  # frame numbers keep counting across reopens
        self._ever_ran = False  # frames flowing again only count as a reconnect after they flowed once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"supervisor:{self.name}", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Close the source and end the watchdog; never waits longer than `timeout`."""
        self._stop.set()
        with self._changed:  # "stopped" first, so a reader woken by the close below ends at once
            if self.stats.state not in ("ended", "failed"):
                self._set_state("stopped", "")
            source = self._source
        if source is not None:
            source.close(join_timeout=timeout / 2)
            with self._lock:
                if self._source is source:  # count what it captured since the watchdog's last look
                    self.stats.frames = self._retired[0] + source.stats.frames
                    self.stats.dropped = self._retired[1] + source.stats.dropped
        self._thread.join(timeout / 2)

    def frames_now(self) -> int:
        """Frames captured so far, counted now from the open (or closing) source: never fewer than the loop read.

        stats.frames is the watchdog's copy from its last look (up to 100 ms old); a source counts a frame
        before it hands it out, so a count read after `loop.stats.processed` is never below it (/healthz).
        """
        with self._lock:
            live = [s for s in (self._source, self._closing) if s is not None]
            return max(self.stats.frames, self._retired[0] + sum(s.stats.frames for s in live))

    def dropped_now(self) -> int:
        """Frames dropped so far, counted now from the open source (stats.dropped is the watchdog's last look)."""
        with self._lock:
            source = self._source
            live = self._retired[1] + source.stats.dropped if source is not None else 0
            return max(live, self.stats.dropped)

    @property
    def state(self) -> str:
        return self.stats.state

    @property
    def done(self) -> bool:
        """No frames will ever come again (stopped, ended, or failed for good)."""
        return self.stats.state in ("ended", "failed", "stopped")

    # ------------------------------------------------------------------ consumer side

    def read(self, timeout: float = 0.5):
        """The newest frame not yet read, numbered across reopens.

        Raises SourceTimeout when none arrives in time (also while reopening) and SourceEnded when
        no frame will ever come (a file ended, the source failed for good, or stop() was called).
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                while self._source is None and not self.done:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise SourceTimeout(f"{self.name}: {self.stats.state} ({self.stats.reason or 'no frame yet'})")
                    self._changed.wait(remaining)
                source, offset = self._source, self._offset
            if source is None:
                raise SourceEnded(f"{self.name}: {self.stats.state}")
            try:
                frame = source.read(timeout=max(0.0, deadline - time.monotonic()))
            except (SourceClosed, SourceFailed):
                if self.done:
                    raise SourceEnded(f"{self.name}: {self.stats.state}") from None
                if time.monotonic() >= deadline:  # the watchdog is replacing this source
                    raise SourceTimeout(f"{self.name}: reopening") from None
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            except SourceEnded:
                with self._lock:  # now, not at the watchdog's next look, so a summary right after says so
                    self._set_state("ended", "")
                raise SourceEnded(f"{self.name}: end of source") from None
            return dataclasses.replace(frame, index=frame.index + offset, source=self.name)

    # ------------------------------------------------------------------ watchdog thread

    def _set_state(self, state: str, reason: str, level: int | None = None) -> None:
        """Caller holds the lock. "stopped" is final: a watchdog step finishing late cannot undo stop()."""
        if self.stats.state == "stopped":
            return
        if self.uri in reason:  # a reason quoting the raw URI (an OpenCV message, say) must not carry its password
            reason = reason.replace(self.uri, display_name(self.uri))
        if state != self.stats.state:
            self.stats.state_since = time.monotonic()
            if level is None:
                level = logging.INFO if state in ("running", "starting", "stopped", "ended") else logging.WARNING
                if state == "stopped" and self.simple:
                    level = logging.DEBUG
            log.log(level, "%s: %s%s", self.name, state, f" ({reason})" if reason else "")
        self.stats.state, self.stats.reason = state, reason
        self._changed.notify_all()

    def _open(self) -> Source:
        # No retries inside the Source: a lost stream fails it at once and this watchdog reopens it.
        return Source(self.uri, retry=RetryPolicy(max_attempts=0), **self.source_options)

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                with self._lock:
                    self.stats.opens += 1
                try:
                    source = self._open()
                except SourceError as exc:
                    failures += 1
                    if not self._ever_opened and not self.wait_for_source:
                        with self._lock:
                            self.unopened = True
                            # The run ends on it and the CLI prints it as its one error line: no second copy.
                            self._set_state("failed", self._unopened_reason(exc), level=logging.DEBUG)
                        return
                    if self._give_up(failures, str(exc)):
                        return
                    self._wait_before_reopen(failures, str(exc))
                    continue
                self._ever_opened = True
                with self._lock:
                    if self._stop.is_set():
                        source.close(join_timeout=0.2)
                        return
                    self._source = source
                    self._changed.notify_all()
                outcome, reason, ran = self._watch(source)
                if self._stop.is_set():
                    return
                if outcome == "ended":  # left in place so the loop can still read the last frames
                    with self._lock:
                        self._set_state("ended", "")
                    return
                self._retire(source)
                failures = 1 if ran else failures + 1
                with self._lock:
                    self.stats.outages += ran
                if self._give_up(failures, reason):
                    return
                self._wait_before_reopen(failures, reason)
        except Exception as exc:  # a crashed watchdog must say so, not leave the source "running" forever
            log.error("%s: supervisor crashed: %s: %s", self.name, type(exc).__name__, exc, exc_info=True)
            with self._lock:
                self._set_state("failed", f"supervisor crashed: {type(exc).__name__}: {exc}")

    def _unopened_reason(self, exc: SourceError) -> str:
        """Why a source that never opened failed, and what to check (the simple mode: a file's error alone)."""
        fix = open_fix(self.spec) if self.spec.live or not self.simple else ""
        return f"{exc}: {fix}" if fix else str(exc)

    def _watch(self, source: Source) -> tuple[str, str, bool]:
        """Poll the source until it ends, fails, stalls or we stop: (outcome, reason, delivered any frame)."""
        seen, last_new, ran = 0, time.monotonic(), False
        poll = min(0.1, self.stall_timeout / 4)
        while not self._stop.wait(poll):
            stats, now = source.stats, time.monotonic()
            with self._lock:
                if stats.frames > seen:
                    seen, last_new = stats.frames, now
                    self.stats.frames = self._retired[0] + stats.frames
                    self.stats.dropped = self._retired[1] + stats.dropped
                    self.stats.last_frame_at = now
                    if not ran:
                        ran = True
                        self.stats.reconnects += self._ever_ran
                        self._ever_ran = True
                        self._set_state("running", "")
                else:
                    self.stats.dropped = self._retired[1] + stats.dropped
            if stats.waiting_at is not None:  # a source that waits for its reader (max_fps, a slow model) is alive
                last_new = max(last_new, stats.waiting_at)
            self.alive_at = last_new
            if stats.state == "ended":
                return "ended", "", ran
            if stats.state == "failed":
                return "failed", stats.last_error or "capture stopped", ran
            if now - last_new > self.stall_timeout:
                return "stalled", f"no new frame for {self.stall_timeout:g}s", ran
        return "stopped", "", ran

    def _retire(self, source: Source) -> None:
        with self._lock:
            self._source, self._closing = None, source  # frames_now counts it until it is retired
            self._changed.notify_all()
        source.close(join_timeout=0.5)
        with self._lock:
            # Frames captured after the last poll still count; new numbers continue after the old ones.
            self._retired = (self._retired[0] + source.stats.frames, self._retired[1] + source.stats.dropped)
            self._closing = None
            self.stats.frames, self.stats.dropped = self._retired
            self._offset = self._retired[0]

    def _give_up(self, failures: int, reason: str) -> bool:
        """Caller's consecutive failures reached max_failures: the state becomes "failed" for good."""
        if self.max_failures is not None and failures >= self.max_failures:
            with self._lock:
                self._set_state("failed", reason)
            return True
        return False

    def _wait_before_reopen(self, failures: int, reason: str) -> None:
        delay = self.backoff.delay(failures)
        with self._lock:
            if self.simple and self.stats.state == "reconnecting":  # the state is unchanged, so not logged again
                log.warning("%s: still down (%s); retrying", self.name, redact_uri(reason))
            self._set_state("reconnecting", f"{reason}; retry in {delay:.1f}s")
        self._stop.wait(delay)
