"""`max_fps`: classify a source at most this often.

A live source (or a paced video) keeps delivering frames; the ones that come before the next turn are taken
from the source and left unclassified: not prepared, not inferred, not published. They are not drops (a drop
is a frame replaced before the loop could read it, a sign the model cannot keep up): they are counted apart
as skipped, and /metrics shows them as `edgecls_frames_skipped_total{source}` beside `edgecls_frames_dropped_total`.
A source that hands over every frame (a folder, or --every-frame) waits for its turn instead, so nothing of it
is lost.

Turns follow a fixed schedule, one every 1/max_fps seconds, so a 30 fps camera capped at 5 gives 5 a second
even though its frames arrive with jitter; after a pause (an outage, a slow model) the schedule starts again
from the next frame rather than catching up with a burst.
"""

from __future__ import annotations

import time


class Pace:
    """The turns of one source's loop: `due(t)` says whether a frame captured at monotonic time t is classified."""

    def __init__(self, max_fps: float | None):
        self.period = None if max_fps is None else 1.0 / max_fps
        self.skipped = 0  # frames delivered and left unclassified by max_fps
        self._next = None

    def due(self, t: float) -> bool:
        """Whether the frame captured at `t` takes a turn; one that does not is counted as skipped."""
        if self.period is None:
            return True
        if self._next is not None and t < self._next:
            self.skipped += 1
            return False
        late = self._next is None or t - self._next >= self.period
        # On schedule: the next turn one period after this one, but never closer than half a period to this frame.
        self._next = t + self.period if late else max(self._next + self.period, t + self.period / 2)
        return True

    def wait(self, stop) -> None:
        """For a source that hands over every frame: sleep until the next turn (or until `stop` is set)."""
        if self.period is not None and self._next is not None:
            stop.wait(max(0.0, self._next - time.monotonic()))


class SkippedCollector:
    """`edgecls_frames_skipped_total{source}`, read from each source's `Pace` when Prometheus scrapes."""

    def __init__(self, loops):
        self._loops = loops

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        skipped = CounterMetricFamily(
            "edgecls_frames_skipped",
            "Frames the source delivered that its max_fps left unclassified (not drops: the model had time).",
            labels=["source"],
        )
        for loop in list(self._loops):
            skipped.add_metric([loop.supervisor.name], loop.pace.skipped)
        yield skipped
