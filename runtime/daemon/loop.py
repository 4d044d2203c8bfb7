"""Per source, one thread: newest frame -> classify with the shared model -> smooth -> publish.

Timings are split here (pre/infer/post) from the same steps `Classifier.classify` runs:
`Classifier.prepare` (resize, colour, and one table lookup for normalization and input
quantization), then `Classifier.infer` (invoke and dequantize), then smoothing and top-k.

Preparing and inferring overlap: a second thread per source reads the newest frame and prepares
it while the model is busy with the previous one, so a source faster than the model keeps the
model busy all the time (OpenCV and the inference engines release the GIL). The hand-over is a
single slot, never a queue: memory stays flat however fast the camera is, and a classified frame
is at most one inference older than it would be without the overlap (`frame_age_ms` includes it).

With drift monitoring (runtime/monitor/drift.py) the preparing thread resizes the frame once, measures
the brightness of those pixels and makes the model input from them (`Classifier.prepare_pixels`), and
the loop hands each frame's raw probabilities to the source's drift window: a few microseconds per
frame (benchmarks/drift_overhead.py), and nothing at all when the artifact has no reference.

Each source's own settings (runtime/daemon/config.py `SourceConfig`) act here: its view (runtime/view.py: crop,
rotate, flip) is made by the preparing thread before `Classifier.prepare`, and recorded in each result
(`"view"`); its `max_fps` (runtime/daemon/pace.py) leaves frames before the next turn unprepared; its threshold,
smoothing and capture settings replace the daemon-wide ones. The capture gets the view the model saw, the
preview the whole frame (it draws the ROI on it).
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np

from edgecls.runtime.daemon.pace import Pace
from edgecls.runtime.monitor.stats import brightness
from edgecls.runtime.preprocess import pixels
from edgecls.runtime.sources import OFFLINE_KINDS, SourceEnded, SourceTimeout
from edgecls.runtime.view import SourceView, ViewError

log = logging.getLogger("edgecls.daemon")

UNKNOWN = "unknown"


def model_info(classifier) -> dict:
    """The model a result came from, as results and capture sidecars name it (/healthz's `bundle` path too)."""
    art = classifier.artifact
    return {
        "bundle": str(classifier.bundle.root),
        "version": classifier.bundle.manifest.created or "",
        "artifact": art.name,
        "sha256": art.sha256,
    }


class Smoother:
    """Mean of the last `window` probability vectors, then a threshold below which the label is `unknown`.

    Averaging probabilities (not votes) keeps the score meaningful, and a window of 1 with
    threshold 0 returns the frame's own result unchanged.
    """

    def __init__(self, window: int = 1, threshold: float = 0.0):
        if window < 1:
            raise ValueError("smoothing window must be at least 1 frame")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be between 0 and 1")
        self.threshold = threshold
        self._history = collections.deque(maxlen=window)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        self._history.append(np.asarray(probs, dtype=np.float32))
        return np.mean(self._history, axis=0) if len(self._history) > 1 else self._history[0]

    def label(self, label: str, score: float) -> str:
        return label if score >= self.threshold else UNKNOWN


class LoopStats:
    """What the loop did; read by metrics, HTTP and the final summary (bounded: a fixed window of times)."""

    def __init__(self, window: int = 30, quiet_after: float = 2.0):
        self.quiet_after = quiet_after  # seconds without a classified frame after which fps reads 0
        self.processed = 0
        self.errors = 0  # frames not classified by an error (logged each)
        self.unviewable = 0  # frames not classified because the ROI lies outside them (a frame size change)
        self.unviewable_reason = ""  # why, while the newest frame was one of them ("" once a frame is classified)
        self.latest: dict | None = None
        self._times = collections.deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, result: dict) -> None:
        with self._lock:
            self.processed += 1
            self.unviewable_reason = ""
            self.latest = result
            self._times.append(time.monotonic())

    @property
    def last_at(self) -> float | None:
        """time.monotonic() of the newest classified frame; None before the first."""
        with self._lock:
            return self._times[-1] if self._times else None

    @property
    def fps(self) -> float:
        """Frames classified per second over the last window; 0 when none arrived for `quiet_after` s."""
        with self._lock:
            times = list(self._times)
        if len(times) < 2 or time.monotonic() - times[-1] > self.quiet_after:
            return 0.0
        return (len(times) - 1) / max(1e-9, times[-1] - times[0])


class _Prepared:
    """A frame, its view, and the model input as prepared for one classifier (or the error preparing it raised)."""

    __slots__ = ("frame", "view", "classifier", "tensor", "brightness", "pre_s", "error")

    def __init__(self, frame, view=None, classifier=None, tensor=None, brightness=None, pre_s=0.0, error=None):
        self.frame, self.classifier, self.tensor, self.pre_s, self.error = frame, classifier, tensor, pre_s, error
        self.view, self.brightness = view, brightness  # view: (its pixels, record, scene) from SourceLoop.look


class _Ahead:
    """Reads the newest frame and prepares it while the model works on the previous one (one slot)."""

    ENDED = object()

    def __init__(self, loop: SourceLoop):
        self._loop = loop
        self._slot = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name=f"prepare:{loop.supervisor.name}", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        with self._cond:
            while self._slot is not None and not self._loop._stop.is_set():
                self._cond.wait(0.25)
            if self._loop._stop.is_set():
                return False
            self._slot = item
            self._cond.notify_all()
            return True

    def take(self, timeout: float):
        """The next prepared frame, ENDED when the source ended, None after `timeout` s without one."""
        with self._cond:
            if self._slot is None:
                self._cond.wait(timeout)
            item = self._slot
            if item is not self.ENDED:  # ENDED stays: every later take() sees the end too
                self._slot = None
                self._cond.notify_all()
            return item

    def _wait_for_room(self) -> None:
        """Read only once the model has taken the previous frame: a frame read earlier would wait in the slot."""
        with self._cond:
            while self._slot is not None and not self._loop._stop.is_set():
                self._cond.wait(0.25)

    def _work(self) -> None:
        loop = self._loop
        pace, every = loop.pace, loop.every_frame
        while not loop._stop.is_set():
            self._wait_for_room()
            if every:  # a source that waits for its reader: wait for the turn, nothing is skipped
                pace.wait(loop._stop)
            if loop._stop.is_set():
                return
            try:
                frame = loop.supervisor.read(timeout=0.25)
            except SourceTimeout:
                continue
            except SourceEnded:
                self._put(self.ENDED)
                return
            if not pace.due(time.monotonic() if every else frame.captured_at):
                continue  # max_fps: not its turn, not prepared (counted as skipped)
            clf = loop._pending or loop.classifier  # a reload about to be adopted: prepare for the new model
            t0 = time.perf_counter()
            view = None
            try:
                view = loop.look(frame.image)
                tensor, bright = loop.prepare(clf, view[0])
                item = _Prepared(frame, view, clf, tensor, bright, time.perf_counter() - t0)
            except Exception as exc:  # reported by the loop, which counts and logs frame errors
                item = _Prepared(frame, view, clf, error=exc)
            if not self._put(item):
                return

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


class SourceLoop:
    """Reads frames from one supervisor and publishes one result per classified frame.

    classifier: a `edgecls.runtime.classifier.Classifier`, shared by every loop (its session is thread-safe).
    publish: called with each result dict (the daemon fans it out to sinks); must not raise.
    metrics: a `edgecls.runtime.daemon.metrics.Metrics` or None.
    max_frames: stop after this many classified frames (None: until stopped or the source ends).
    drift: this source's `edgecls.runtime.monitor.drift.SourceDrift`, or None for no drift monitoring.
    own: the source's own settings, a `edgecls.runtime.daemon.config.SourceConfig` (None: the defaults): its view
    (roi, rotate, flip), max_fps, smooth and threshold (the daemon resolves None to its own values before), and
    capture_below / capture_every (None: the capture's). `fatal` holds the one line that ended the loop for good
    (a pixel ROI outside the first frame).
    """

    def __init__(
        self,
        supervisor,
        classifier,
        publish,
        *,
        metrics=None,
        top_k: int | None = None,
        max_frames: int | None = None,
        capture=None,
        drift=None,
        own=None,
    ):
        self.supervisor = supervisor
        self.classifier = classifier
        self.publish = publish
        self.metrics = metrics
        smooth, threshold = getattr(own, "smooth", None), getattr(own, "threshold", None)
        self.smoother = Smoother(1 if smooth is None else smooth, 0.0 if threshold is None else threshold)
        self._top_k = top_k
        self.top_k = min(top_k or classifier.top_k, len(classifier.labels))
        self.model = model_info(classifier)  # put in every result: after a reload, the new model's
        self._pending = None  # a reloaded classifier, adopted before the next frame
        self._swap_lock = threading.Lock()
        self.max_frames = max_frames
        self.capture = capture  # a edgecls.runtime.daemon.capture.Capture or None: offered every classified frame
        self._capture_policy = dict(
            below=getattr(own, "capture_below", None), every=getattr(own, "capture_every", None)
        )
        self.view = SourceView(supervisor.name) if own is None else SourceView.of(own, supervisor.name)
        self.pace = Pace(getattr(own, "max_fps", None))
        self.every_frame = _hands_every_frame(supervisor)
        self.fatal: str | None = None
        self.drift = drift
        if drift is not None:
            drift.adopt(classifier)
        # A source capped at max_fps 0.25 classifies every 4 s: its rate is not 0 between two turns.
        self.stats = LoopStats(quiet_after=max(2.0, 2 * (self.pace.period or 0.0)))
        self.shown = None  # (image, result) of the newest classified frame
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"loop:{supervisor.name}", daemon=True)

    def start(self) -> SourceLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def use(self, classifier) -> None:
        """Switch to `classifier` between two frames (hot reload); never in the middle of one."""
        with self._swap_lock:
            self._pending = classifier

    def _adopt(self, classifier) -> None:
        self.classifier = classifier
        # The old model's probabilities mean nothing to the new one (other labels, maybe another count).
        self.smoother = Smoother(self.smoother._history.maxlen, self.smoother.threshold)
        self.top_k = min(self._top_k or classifier.top_k, len(classifier.labels))
        self.model = model_info(classifier)
        if self.drift is not None:  # the old window measured the old model: start afresh against the new reference
            self.drift.adopt(classifier)

    def look(self, image) -> tuple:
        """(the frame's view as the source's settings ask, its record, the scene its drift window compares): the frame
        itself and {} when it is whole and upright. Recorded here, with the pixels: the next frame may resolve the ROI
        anew before this one is done."""
        view = self.view.apply(image)
        record = self.view.record()
        if view is None:
            raise _Unviewable(self.view.outside, self.view.scene(record))
        return view, record, self.view.scene(record)

    def prepare(self, clf, image):
        """A BGR frame -> (model input, brightness of its pixels or None when drift does not need it)."""
        if self.drift is None or not self.drift.wants(clf):
            return clf.prepare(image, "bgr"), None
        px = pixels(image, clf.spec, "bgr")  # resized once, for both
        return clf.prepare_pixels(px), brightness(px)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        name = self.supervisor.name
        ahead = _Ahead(self)
        while not self._stop.is_set() and (self.max_frames is None or self.stats.processed < self.max_frames):
            item = ahead.take(timeout=0.25)  # short, so stop() is seen within a quarter second
            if item is None:
                continue
            if item is _Ahead.ENDED:
                break
            if self._pending is not None:
                with self._swap_lock:
                    pending, self._pending = self._pending, None
                self._adopt(pending)
            try:
                if item.error is not None:
                    raise item.error
                result = self.classify(item.frame, item if item.classifier is self.classifier else None, item.view)
            except ViewError as exc:  # a ROI outside the first frame: a setup mistake, the run ends on it
                self.fatal = str(exc)
                break
            except _Unviewable as exc:  # the ROI left the frame after a size change: logged once, shown on /healthz
                self._unviewable(*exc.args)
                continue
            except Exception as exc:  # one bad frame (or a model error) must not end this source's loop
                self.stats.errors += 1
                log.error("%s: frame %d not classified: %s: %s", name, item.frame.index, type(exc).__name__, exc)
                continue
            self.stats.record(result)
            self.shown = (item.frame.image, result)  # for the preview stream: one reference, replaced each frame
            self.publish(result)
            if self.capture is not None:  # the view the model saw, so labelling and retraining see it too
                self.capture.offer(item.view[0], result, **self._capture_policy, copy=self.view.reuses)
        self._stop.set()  # ends the preparing thread too (max_frames reached, or the source ended)
        ahead.join(1.0)
        log.debug("%s: loop ended after %d frames", name, self.stats.processed)

    def _unviewable(self, reason: str, scene: dict) -> None:
        self.stats.unviewable += 1
        self.stats.unviewable_reason = reason
        if self.drift is not None:  # its window showed a view these frames no longer have
            self.drift.look(scene)

    def classify(self, frame, prepared: _Prepared | None = None, view: tuple | None = None) -> dict:
        """One frame -> the published result, with the latency of each step.

        `prepared`: the frame's model input, made ahead by the preparing thread for the current
        classifier; without it (or after a reload to another model) it is made here, from `view` (the frame's
        view, its record and scene from `look`, made here too when not given).
        """
        clf = self.classifier
        view = self.look(frame.image) if view is None else view
        if prepared is None:
            t0 = time.perf_counter()
            tensor, bright = self.prepare(clf, view[0])
            pre_s = time.perf_counter() - t0
        else:
            tensor, bright, pre_s = prepared.tensor, prepared.brightness, prepared.pre_s
        t1 = time.perf_counter()
        probs = clf.infer(tensor[None])[0]
        t2 = time.perf_counter()
        seen = view[1]
        if bright is not None:  # the raw answer, as the reference recorded it per test image
            self.drift.look(view[2])  # another part of the scene (a pixel ROI after a size change) restarts it
            self.drift.update(probs, bright)
        smoothed = self.smoother(probs)
        order = np.argsort(-smoothed, kind="stable")[: self.top_k]
        best = int(order[0])
        score = float(smoothed[best])
        result = {
            "source": frame.source,
            "ts": round(time.time(), 3),
            "frame": frame.index,
            **({"name": frame.name} if frame.name else {}),
            "top1": self.smoother.label(clf.labels[best], score),
            "score": round(score, 6),
            "topk": [{"label": clf.labels[i], "score": round(float(smoothed[i]), 6)} for i in order],
        }
        if seen:  # the whole, upright frame records nothing: results stay as they were
            result["view"] = seen
        t3 = time.perf_counter()
        total_s = pre_s + (t3 - t1)  # the work spent on this frame, whichever thread prepared it
        result["latency_ms"] = {
            "pre": round(pre_s * 1000, 3),
            "infer": round((t2 - t1) * 1000, 3),
            "post": round((t3 - t2) * 1000, 3),
            "total": round(total_s * 1000, 3),
        }
        result["frame_age_ms"] = round(frame.age_ms, 1)
        result["model"] = dict(self.model)
        if self.metrics is not None:
            self.metrics.observe_frame(
                frame.source, infer_s=t2 - t1, total_s=total_s, age_s=frame.age_ms / 1000, score=score
            )
        return result


class _Unviewable(Exception):
    """The source's ROI lies wholly outside a frame whose size changed (logged once, by the view): (why, its scene)."""


class UnviewableCollector:
    """`edgecls_frames_unviewable_total{source}`: frames left unclassified because the ROI lies outside them."""

    def __init__(self, loops):
        self._loops = loops

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        unviewable = CounterMetricFamily(
            "edgecls_frames_unviewable",
            "Frames not classified because the source's roi lies outside them (their size changed); see /healthz.",
            labels=["source"],
        )
        for loop in list(self._loops):
            unviewable.add_metric([loop.supervisor.name], loop.stats.unviewable)
        yield unviewable


def _hands_every_frame(supervisor) -> bool:
    """Whether the source waits for its reader (a folder, --every-frame) rather than dropping frames."""
    options, spec = getattr(supervisor, "source_options", {}), getattr(supervisor, "spec", None)
    every = options.get("every_frame")
    if every is None:
        return spec is not None and spec.kind in OFFLINE_KINDS
    return bool(every)
