"""Drift: how far each source's recent frames moved from the bundle's reference statistics.

Per source, a rolling window of the last `window` classified frames (--drift-window, default 500)
keeps the three statistics of `runtime.monitor.stats` (class, confidence, brightness) as counts
over a ring buffer: a frame adds its bins and evicts the oldest frame's, so an update is O(1)
(a few microseconds, the brightness sum included). Every `check_every` frames (at most 50) the
window is scored against the reference of the artifact the daemon serves, with the population
stability index per statistic:

    PSI = sum over bins i of (a_i - e_i) * ln(a_i / e_i)

e_i, a_i: the reference's and the window's fraction of images in bin i, both smoothed the same way:
mixed with the uniform distribution with the weight of half a count per bin (Jeffreys) over the
smaller of the two samples, then floored at EPSILON. So an empty bin costs a bounded amount instead
of infinity, equal distributions score exactly 0 whatever the sample sizes, and a small test split
(tens of images) does not turn every bin it happened to miss into drift; with a few hundred
reference images the smoothing is negligible. The usual reading: PSI < 0.1 stable, 0.1 to 0.25 a
moderate shift, > 0.25 a major one. For brightness, /healthz also shows the window's mean and its
z-score, (window mean - reference mean) / reference spread, to say which way it moved.

A source is in drift when a statistic's PSI exceeds the threshold (--drift-threshold, default
0.25) and leaves it once every statistic is below 80% of it (hysteresis, so a score hovering at the
threshold does not flap); each transition is logged once, naming the statistics that moved.
Scores exist once the window holds min(window, 100) frames ("warming up" before). A hot reload
starts every window afresh against the new artifact's reference.

/healthz rule: drift alone keeps 200 with "status": "degraded" and "degraded": "drift" on the
source (the model still answers; someone should look); 503 stays for sources without frames.
No reference for the served artifact (a bundle converted before issue 12) is reported as
"no reference" with one log line: no scores, no score gauges, classification unaffected. A
reference that does not fit the bundle (another number of classes than labels, bad edges or
counts) is ignored the same way, with a warning that says why: monitoring data is never a reason
to stop serving a model the manifest's sha256 and signature already vouched for.

The class statistic compares with the test split's class balance: a camera that rightly sees one
class most of the time moves it without anything being wrong. Read it with the other two.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from runtime.monitor.stats import REFERENCE_VERSION, bin_index

log = logging.getLogger("edgecls.daemon")

STATISTICS = ("class", "confidence", "brightness")
DEFAULT_WINDOW = 500
DEFAULT_THRESHOLD = 0.25
MIN_WINDOW = 20  # more frames than the 16 brightness bins, or every score is sampling noise
MAX_WINDOW = 100_000  # ~10 MB of ring buffer per source at most: a Pi Zero has 512 MB
WARMUP = 100  # frames before a window is scored (its own size, if smaller)
MAX_CHECK_EVERY = 50
SMOOTHING = 0.5  # pseudo-count per bin (Jeffreys)
EPSILON = 1e-6
CLEAR_FRACTION = 0.8  # a source leaves drift once every score is below this share of the threshold
NO_REFERENCE = "no reference"


class UnusableReference(ValueError):
    """A manifest's reference that cannot be compared with (wrong class count, bad edges or counts)."""


def psi(expected, actual) -> float:
    """Population stability index of two count vectors over the same bins, smoothed as the docstring says."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    prior = SMOOTHING * len(e)
    weight = prior / (min(e.sum(), a.sum()) + prior)  # one weight for both sides: equal counts score 0
    e = np.maximum((1 - weight) * e / e.sum() + weight / len(e), EPSILON)
    a = np.maximum((1 - weight) * a / a.sum() + weight / len(a), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Reference:
    """One artifact's reference, checked: counts per statistic over its edges (classes: one bin per label)."""

    counts: dict  # statistic -> tuple of counts
    edges: dict  # "confidence" | "brightness" -> tuple of edges
    images: int
    brightness_mean: float
    brightness_std: float

    @classmethod
    def parse(cls, raw, labels) -> "Reference":
        """The manifest's reference of one artifact; UnusableReference (one line) when it cannot be used."""
        if not isinstance(raw, dict):
            raise UnusableReference(f"it is a {type(raw).__name__}, not an object")
        if raw.get("version") != REFERENCE_VERSION:
            raise UnusableReference(f"version {raw.get('version')!r} is not {REFERENCE_VERSION} (a newer edgecls wrote it)")
        classes = _counts(raw.get("classes"), "classes")
        if len(classes) != len(labels):
            raise UnusableReference(f"it counts {len(classes)} classes but the bundle has {len(labels)} labels")
        counts, edges = {"class": classes}, {}
        for name in ("confidence", "brightness"):
            part = raw.get(name)
            if not isinstance(part, dict):
                raise UnusableReference(f"{name} is missing")
            edges[name] = _edges(part.get("edges"), name)
            counts[name] = _counts(part.get("counts"), name)
            if len(counts[name]) != len(edges[name]) - 1:
                raise UnusableReference(f"{name} has {len(counts[name])} counts for {len(edges[name]) - 1} bins")
        images = sum(classes)
        if images == 0 or any(sum(c) != images for c in counts.values()):
            raise UnusableReference(f"its statistics count different numbers of images (or none): "
                                 f"{', '.join(f'{k} {sum(v)}' for k, v in counts.items())}")
        mean, std = raw["brightness"].get("mean"), raw["brightness"].get("std")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in (mean, std)):
            raise UnusableReference("brightness mean and std must be finite non-negative numbers")
        return cls(counts, edges, images, float(mean), float(std))

    @property
    def classes(self) -> int:
        return len(self.counts["class"])


def _counts(value, name) -> tuple:
    if not isinstance(value, list) or not value or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 2 ** 53 for c in value):
        raise UnusableReference(f"{name} counts must be a non-empty list of whole numbers >= 0")
    return tuple(value)


def _edges(value, name) -> tuple:
    ok = isinstance(value, list) and len(value) >= 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or any(b <= a for a, b in zip(value, value[1:])):
        raise UnusableReference(f"{name} edges must be at least two finite, strictly increasing numbers")
    return tuple(float(v) for v in value)


class SourceDrift:
    """One source's window and drift state. `update` runs on the source's loop thread; readers take the lock."""

    def __init__(self, name: str, monitor: "DriftMonitor"):
        self.name = name
        self.monitor = monitor
        self._lock = threading.Lock()
        self.reference: Reference | None = None
        self._reset(None)

    def _reset(self, reference: Reference | None) -> None:
        size = self.monitor.window
        with self._lock:
            self.reference = reference
            self._ring = [None] * size
            self._pos = self._frames = self._since_check = 0
            self._bright_sum = 0.0
            self.skipped = 0  # frames whose probabilities were not finite
            self._counts = None if reference is None else {k: [0] * len(v) for k, v in reference.counts.items()}
            self.scores: dict = {}
            self.drifting = False
            self.moved: list = []

    def adopt(self, classifier) -> None:
        """Start afresh against `classifier`'s reference (at start and after a hot reload)."""
        self._reset(self.monitor.reference_for(classifier))

    def wants(self, classifier) -> bool:
        """Whether frames for `classifier` need their brightness measured (its artifact has a reference)."""
        return self.monitor.reference_for(classifier) is not None

    def update(self, probs: np.ndarray, brightness: float) -> None:
        """One classified frame: its raw probabilities and the brightness of its pixels. O(1)."""
        reference = self.reference
        if reference is None:
            return
        k = int(np.argmax(probs))
        confidence = float(probs[k])
        if not math.isfinite(confidence) or k >= reference.classes or not math.isfinite(brightness):
            self.skipped += 1
            return
        entry = (k, bin_index(confidence, reference.edges["confidence"]),
                 bin_index(brightness, reference.edges["brightness"]), brightness)
        with self._lock:
            counts = self._counts
            old = self._ring[self._pos]
            if old is not None:
                counts["class"][old[0]] -= 1
                counts["confidence"][old[1]] -= 1
                counts["brightness"][old[2]] -= 1
                self._bright_sum -= old[3]
            self._ring[self._pos] = entry
            self._pos = (self._pos + 1) % len(self._ring)
            counts["class"][k] += 1
            counts["confidence"][entry[1]] += 1
            counts["brightness"][entry[2]] += 1
            self._bright_sum += brightness
            self._frames = min(self._frames + 1, len(self._ring))
            self._since_check += 1
            due = self._since_check >= self.monitor.check_every
        if due:
            self.check()

    def counts(self) -> dict:
        """The window's counts per statistic (empty without a reference)."""
        with self._lock:
            return {} if self._counts is None else {k: list(v) for k, v in self._counts.items()}

    @property
    def frames(self) -> int:
        return self._frames

    @property
    def ready(self) -> bool:
        return self.reference is not None and self._frames >= min(len(self._ring), WARMUP)

    def check(self) -> None:
        """Score the window and log a transition into or out of drift (once each)."""
        with self._lock:
            self._since_check = 0
            if not self.ready:
                return
            reference, counts = self.reference, {k: list(v) for k, v in self._counts.items()}
            frames = self._frames
        scores = {k: psi(reference.counts[k], counts[k]) for k in STATISTICS}
        threshold = self.monitor.threshold
        moved = [k for k in STATISTICS if scores[k] > threshold]
        if self.drifting:
            drifting = any(s >= CLEAR_FRACTION * threshold for s in scores.values())
        else:
            drifting = bool(moved)
        shown = ", ".join(f"{k} {scores[k]:.3f}" for k in STATISTICS)
        with self._lock:
            if self.reference is not reference:  # reset while scoring: these scores belong to the old window
                return
            was, self.drifting, self.scores = self.drifting, drifting, scores
            if drifting:
                self.moved = moved or self.moved
        if drifting and not was:
            named = ", ".join(moved[:-1]) + " and " + moved[-1] if len(moved) > 1 else moved[0]
            log.warning("%s: drift: %s moved from the reference (PSI %s; threshold %g) over the last %d frames",
                        self.name, named, shown, threshold, frames)
        elif was and not drifting:
            log.info("%s: drift cleared: every statistic is back near the reference (PSI %s)", self.name, shown)

    def status(self) -> dict:
        """For /healthz: state (no reference | warming up | ok | drift), scores, what moved, brightness."""
        with self._lock:
            reference, frames, scores = self.reference, self._frames, dict(self.scores)
            drifting, moved, bright_sum = self.drifting, list(self.moved), self._bright_sum
        if reference is None:
            return {"state": NO_REFERENCE}
        out = {"state": "drift" if drifting else ("ok" if scores else "warming up"),
               "window_frames": frames, "window": len(self._ring), "threshold": self.monitor.threshold,
               "scores": {k: round(v, 4) for k, v in scores.items()}}
        if drifting:
            out["moved"] = moved
        if frames:
            mean = bright_sum / frames
            out["brightness"] = {"window_mean": round(mean, 2), "reference_mean": round(reference.brightness_mean, 2),
                                 "z": round((mean - reference.brightness_mean) / max(reference.brightness_std, 1.0), 2)}
        if self.skipped:
            out["skipped_frames"] = self.skipped
        return out


class DriftMonitor:
    """Drift windows for every source of one daemon, against the references of the artifacts it serves."""

    def __init__(self, window: int = DEFAULT_WINDOW, threshold: float = DEFAULT_THRESHOLD,
                 check_every: int | None = None):
        from runtime.errors import EdgeclsError

        if isinstance(window, bool) or not isinstance(window, int) or not MIN_WINDOW <= window <= MAX_WINDOW:
            raise EdgeclsError(f"--drift-window {window}: give {MIN_WINDOW} to {MAX_WINDOW} frames (fewer than "
                               f"{MIN_WINDOW} makes every drift score sampling noise; the window is kept in memory)")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
            raise EdgeclsError(f"--drift-threshold {threshold}: give a positive PSI (0.1 moderate, 0.25 major shift)")
        self.window = window
        self.threshold = float(threshold)
        self.check_every = check_every or max(1, min(MAX_CHECK_EVERY, window // 10))
        self.sources: dict = {}
        self._references = weakref.WeakKeyDictionary()  # classifier -> (Reference | None, why not)
        self._lock = threading.Lock()

    def source(self, name: str) -> SourceDrift:
        with self._lock:
            if name not in self.sources:
                self.sources[name] = SourceDrift(name, self)
            return self.sources[name]

    def reference_for(self, classifier) -> Reference | None:
        return self.describe(classifier)[0]

    def describe(self, classifier) -> tuple:
        """(Reference or None, why none) for a classifier; parsed once per loaded classifier, logged once."""
        with self._lock:
            if classifier in self._references:
                return self._references[classifier]
            found = self._parse(classifier)
            self._references[classifier] = found
        return found

    def _parse(self, classifier) -> tuple:
        artifact = classifier.artifact.name
        raw = (getattr(classifier.bundle.manifest, "reference", None) or {}).get(artifact)
        if raw is None:
            why = f"the bundle has no reference statistics for {artifact} (converted before drift monitoring)"
            log.info("drift monitoring off: %s: convert the model again to get them", why)
            return None, why
        try:
            reference = Reference.parse(raw, classifier.labels)
        except UnusableReference as exc:
            why = f"the reference statistics of {artifact} do not fit the bundle: {exc}"
            log.warning("drift monitoring off: %s; convert the model again", why)
            return None, why
        widest = max(len(c) for c in reference.counts.values())
        if self.window < 2 * widest:
            log.warning("drift window of %d frames for %d bins: scores will be noisy; raise --drift-window",
                        self.window, widest)
        if reference.images < WARMUP:
            log.warning("the drift reference of %s counts only %d test images: scores are coarse (convert with a "
                        "larger test split for a finer one)", artifact, reference.images)
        return reference, ""
