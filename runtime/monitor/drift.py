"""Drift: is the model still seeing what it was trained on, and has a source's input changed?

Per source, a rolling window of the last `window` classified frames (--drift-window, default 500)
keeps the statistics of `edgecls.runtime.monitor.stats` (class, confidence, brightness) as counts and sums
over a ring buffer: a frame adds its own and evicts the oldest frame's, so an update is O(1).

What decides (a source is "in drift", /healthz "degraded"): how far the window's *mean* brightness
and mean top-1 confidence moved, in units of how much they spread between the reference's test
images (their per-image standard deviation s, at least BRIGHTNESS_FLOOR grey levels and
CONFIDENCE_FLOOR). Each is measured against two things:

- the reference (the held-out test split the artifact was converted with): is the camera still lit
  like the training images, and is the model as sure as it was on them?
- the source's baseline: the first full window after the bundle was adopted (at start and after each
  hot reload): did the light change here, is the model less sure here than it was at first (the
  camera was moved, new kinds of objects appeared)?

    brightness score = |window mean - m| / s_brightness        (either way)
    confidence score = max(0, m - window mean) / s_confidence   (one-sided: more sure is never a problem)

with m the reference's or the baseline's mean. A source is in drift when a score passes
--drift-threshold (default 3: further than three test-image standard deviations) and leaves it once
every score is below 80% of it (hysteresis, so a score hovering at the threshold does not flap);
each transition is logged once, naming what moved and against what. The class statistic never
decides: a camera that rightly sees one class most of the time is not drifting.

Why not PSI (the first design, kept below as information): PSI compares two *spreads*. A fixed
camera sees one scene, so its window sits in one class, one confidence bin and one brightness bin;
against the test split's spread that scores far past 0.25 on every statistic even when the scene IS
a test image, classified right, at the reference brightness: every real camera was "degraded" for
good. PSI against the source's own baseline fails the other way: one scene's baseline is a point
mass, and a point mass nudged across a bin edge (two grey levels of auto-exposure near one of the
16-level edges) scores PSI > 1. The test split's spread between images is the scale on which a
change matters whatever the scene, and a mean over hundreds of frames is steady where bins are not.
Limits, by design: a scene that is itself a 3-s.d. outlier of the test images is reported (the
model is unsure there, or it is lit unlike anything it was trained on); a change that keeps both
means (the mix of classes, say) is not; and a bundle whose test images spread very widely in
confidence gives a bound a 3-class model cannot fall below, so there only brightness can decide.

Information, not decision: the population stability index per statistic against the reference,

    PSI = sum over bins i of (a_i - e_i) * ln(a_i / e_i)

e_i, a_i: the reference's and the window's fraction of images in bin i, both mixed with the uniform
distribution with the weight of half a count per bin (Jeffreys) over the smaller of the two samples,
then floored at EPSILON: an empty bin costs a bounded amount, equal distributions score exactly 0.
It says how unlike the test split's mix a window is: useful for a camera that sees a varied stream
(a conveyor, a busy door), high by construction for one that sees one scene. It is computed when
/healthz or /metrics asks, never on the loop thread.

Scores exist once the window holds min(window, 100) frames ("warming up" before); the baseline once
it is full. A hot reload starts every window and baseline afresh against the new artifact's reference
(logged when it ends a drift). /healthz rule: drift alone keeps 200 with "status": "degraded" and
"degraded": "drift" on the source (the model still answers; someone should look); 503 stays for
sources without frames. No reference for the served artifact (a bundle converted before issue 12)
is reported as "no reference" with one log line: no scores, no score gauges, classification
unaffected. A reference that does not fit the bundle (another number of classes than labels, bad
edges or counts, more than MAX_BINS bins) is ignored the same way, with a warning that says why:
monitoring data is never a reason to stop serving a model the manifest's sha256 and signature
already vouched for, nor to slow it down.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from edgecls.runtime.monitor.stats import REFERENCE_VERSION, bin_index

log = logging.getLogger("edgecls.daemon")

STATISTICS = ("class", "confidence", "brightness")  # PSI against the reference: information
DECIDING = ("brightness", "confidence")  # scores in reference standard deviations: what decides
AGAINST = ("reference", "baseline")
DEFAULT_WINDOW = 500
DEFAULT_THRESHOLD = 3.0  # reference standard deviations
MIN_WINDOW = 20  # the mean of fewer frames is noise
MAX_WINDOW = 100_000  # ~10 MB of ring buffer per source at most: a Pi Zero has 512 MB
MAX_BINS = 1024  # per histogram: a PSI over more, at every scrape, is a cost monitoring must not impose
WARMUP = 100  # frames before a window is scored (its own size, if smaller)
MAX_CHECK_EVERY = 50
SMOOTHING = 0.5  # pseudo-count per bin (Jeffreys)
EPSILON = 1e-6
CLEAR_FRACTION = 0.8  # a source leaves drift once every score is below this share of the threshold
BRIGHTNESS_FLOOR = 8.0  # grey levels: a test split of near-equal brightness must not make camera noise a drift
CONFIDENCE_FLOOR = 0.05  # likewise for a model equally sure of every test image
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
    """One artifact's reference, checked: counts per statistic over its edges (classes: one bin per label),
    and the per-image mean and spread of brightness and top-1 confidence the decision is scaled by."""

    counts: dict  # statistic -> tuple of counts
    edges: dict  # "confidence" | "brightness" -> tuple of edges
    images: int
    brightness_mean: float
    brightness_std: float
    confidence_mean: float = 0.0
    confidence_std: float = 0.0

    @classmethod
    def parse(cls, raw, labels) -> Reference:
        """The manifest's reference of one artifact; UnusableReference (one line) when it cannot be used."""
        if not isinstance(raw, dict):
            raise UnusableReference(f"it is a {type(raw).__name__}, not an object")
        if raw.get("version") != REFERENCE_VERSION:
            raise UnusableReference(
                f"version {raw.get('version')!r} is not {REFERENCE_VERSION} (a newer edgecls wrote it)"
            )
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
            raise UnusableReference(
                f"its statistics count different numbers of images (or none): "
                f"{', '.join(f'{k} {sum(v)}' for k, v in counts.items())}"
            )
        bright = _moments(raw["brightness"], "brightness")
        # References written before convert recorded the confidence moments: estimated from the histogram.
        confidence = _moments(raw["confidence"], "confidence") or _histogram_moments(
            counts["confidence"], edges["confidence"]
        )
        return cls(counts, edges, images, *bright, *confidence)

    @property
    def classes(self) -> int:
        return len(self.counts["class"])


def _counts(value, name) -> tuple:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 2**53 for c in value)
    ):
        raise UnusableReference(f"{name} counts must be a non-empty list of whole numbers >= 0")
    return tuple(value)


def _edges(value, name) -> tuple:
    if isinstance(value, list) and len(value) > MAX_BINS + 1:  # before looking at each of them
        raise UnusableReference(
            f"{name} has {len(value) - 1} bins; at most {MAX_BINS} are read (monitoring must not slow the model down)"
        )
    ok = (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
    if not ok or any(b <= a for a, b in zip(value, value[1:])):
        raise UnusableReference(f"{name} edges must be at least two finite, strictly increasing numbers")
    return tuple(float(v) for v in value)


def _moments(part: dict, name: str) -> tuple | None:
    """(mean, std) as recorded, None when absent; UnusableReference when present but not numbers."""
    mean, std = part.get("mean"), part.get("std")
    if mean is None and std is None and name == "confidence":
        return None
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in (mean, std)
    ):
        raise UnusableReference(f"{name} mean and std must be finite non-negative numbers")
    return float(mean), float(std)


def _histogram_moments(counts, edges) -> tuple:
    """Mean and std of a histogram, each image at its bin's middle plus the spread of a uniform bin (w^2/12)."""
    n = sum(counts)
    mids = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    mean = sum(c * m for c, m in zip(counts, mids)) / n
    var = sum(c * ((m - mean) ** 2 + (b - a) ** 2 / 12) for c, m, a, b in zip(counts, mids, edges, edges[1:])) / n
    return mean, math.sqrt(var)


def _named(items) -> str:
    items = list(items)
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


class SourceDrift:
    """One source's window and drift state. `update` runs on the source's loop thread; readers take the lock."""

    def __init__(self, name: str, monitor: DriftMonitor):
        self.name = name
        self.monitor = monitor
        self._lock = threading.Lock()
        self._wants = (None, False)  # (classifier, whether its artifact has a reference): asked every frame
        self.reference: Reference | None = None
        self.view: dict = {}  # the view its frames are made with (runtime/view.py), {} for whole, upright frames
        self._reset(None)

    def _reset(self, reference: Reference | None) -> None:
        size = self.monitor.window
        with self._lock:
            self.reference = reference
            self._ring = [None] * size
            self._pos = self._frames = self._since_check = 0
            self._bright_sum = self._conf_sum = 0.0
            self.skipped = 0  # frames whose probabilities were not finite
            self._counts = None if reference is None else {k: [0] * len(v) for k, v in reference.counts.items()}
            if reference is not None:  # read by every update: plain attributes, not lookups
                self._by_statistic = tuple(self._counts[k] for k in STATISTICS)  # the same lists
                self._classes, self._check_every = reference.classes, self.monitor.check_every
                self._conf_edges, self._bright_edges = reference.edges["confidence"], reference.edges["brightness"]
            self.baseline: dict | None = None  # {"brightness": mean, "confidence": mean} of the first full window
            self.scores: dict = {}
            self.drifting = False
            self.moved: list = []

    def adopt(self, classifier) -> None:
        """Start afresh against `classifier`'s reference (at start and after a hot reload)."""
        reference = self.monitor.reference_for(classifier)
        with self._lock:
            was, moved = self.drifting, list(self.moved)
        self._reset(reference)
        if was:  # the transition out of drift, said once like every other
            after = (
                f"scores resume after {min(self.monitor.window, WARMUP)} frames"
                if reference is not None
                else f"{NO_REFERENCE} for the new model, so no scores"
            )
            log.info(
                "%s: drift window restarted for the new model (the source was in drift: %s moved); %s",
                self.name,
                _named(moved),
                after,
            )

    def look(self, view: dict) -> None:
        """The view the next frames are made with, as `SourceView.scene` gives it: a different one (a pixel ROI
        resolved again after the frame size changed) restarts the window, since its frames show another part of the
        scene than the window's. A fractional ROI is the same view at any frame size."""
        if view == self.view:
            return
        was, self.view = self.view, dict(view)
        if self._frames:
            log.info("%s: drift window restarted: the view changed from %s to %s", self.name, was, view)
            self._reset(self.reference)

    def wants(self, classifier) -> bool:
        """Whether frames for `classifier` need their brightness measured (its artifact has a reference)."""
        cached = self._wants
        if cached[0] is not classifier:
            cached = self._wants = (classifier, self.monitor.reference_for(classifier) is not None)
        return cached[1]

    def update(self, probs: np.ndarray, brightness: float) -> None:
        """One classified frame: its raw probabilities and the brightness of its pixels. O(1), a few us.

        Plain Python numbers only past the first line: numpy scalars cost a microsecond each here.
        """
        if self.reference is None:
            return
        k = int(probs.argmax())
        confidence = probs.item(k)
        if not (math.isfinite(confidence) and math.isfinite(brightness)) or k >= self._classes:
            self.skipped += 1
            return
        c, b = bin_index(confidence, self._conf_edges), bin_index(brightness, self._bright_edges)
        with self._lock:
            ring, pos = self._ring, self._pos
            classes, confidences, brightnesses = self._by_statistic
            old = ring[pos]
            if old is not None:
                classes[old[0]] -= 1
                confidences[old[1]] -= 1
                brightnesses[old[2]] -= 1
                self._conf_sum -= old[3]
                self._bright_sum -= old[4]
            else:
                self._frames += 1
            ring[pos] = (k, c, b, confidence, brightness)
            self._pos = pos + 1 if pos + 1 < len(ring) else 0
            classes[k] += 1
            confidences[c] += 1
            brightnesses[b] += 1
            self._conf_sum += confidence
            self._bright_sum += brightness
            self._since_check += 1
            due = self._since_check >= self._check_every
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
            reference, frames = self.reference, self._frames
            means = {"brightness": self._bright_sum / frames, "confidence": self._conf_sum / frames}
            if self.baseline is None and frames == len(self._ring):
                self.baseline = dict(means)
            baseline = self.baseline
        scores = _scores(means, reference, baseline)
        threshold = self.monitor.threshold
        worst = {k: max(v.values()) for k, v in scores.items()}
        moved = [k for k in DECIDING if worst[k] > threshold]
        if self.drifting:
            drifting = any(s >= CLEAR_FRACTION * threshold for s in worst.values())
        else:
            drifting = bool(moved)
        with self._lock:
            if self.reference is not reference:  # reset while scoring: these scores belong to the old window
                return
            was, self.drifting, self.scores = self.drifting, drifting, scores
            if drifting:
                self.moved = moved or self.moved
        shown = "; ".join(
            f"{k} " + ", ".join(f"{v:.2f} against the {a}" for a, v in scores[k].items()) for k in DECIDING
        )
        if drifting and not was:
            log.warning(
                "%s: drift: %s moved (in reference standard deviations: %s; threshold %g) over the last %d frames",
                self.name,
                _named(moved),
                shown,
                threshold,
                frames,
            )
        elif was and not drifting:
            log.info(
                "%s: drift cleared: brightness and confidence are back near the reference and the baseline (%s)",
                self.name,
                shown,
            )

    def status(self) -> dict:
        """For /healthz and /metrics, one consistent snapshot: state (no reference | warming up | ok | drift),
        the deciding scores, what moved, the means they come from, and PSI against the reference."""
        with self._lock:
            reference, frames, scores, baseline = self.reference, self._frames, self.scores, self.baseline
            drifting, moved = self.drifting, list(self.moved)
            sums = {"brightness": self._bright_sum, "confidence": self._conf_sum}
            counts = None if not scores else {k: list(v) for k, v in self._counts.items()}
        if reference is None:
            return {"state": NO_REFERENCE}
        out = {
            "state": "drift" if drifting else ("ok" if scores else "warming up"),
            "window_frames": frames,
            "window": len(self._ring),
            "threshold": self.monitor.threshold,
            "scores": {k: {a: round(v, 4) for a, v in s.items()} for k, s in scores.items()},
        }
        if drifting:
            out["moved"] = moved
        if frames:
            for k, (ref_mean, digits) in {
                "brightness": (reference.brightness_mean, 2),
                "confidence": (reference.confidence_mean, 4),
            }.items():
                mean = sums[k] / frames
                out[k] = {"window_mean": round(mean, digits), "reference_mean": round(ref_mean, digits)}
                if baseline is not None:
                    out[k]["baseline_mean"] = round(baseline[k], digits)
            out["brightness"]["z"] = round(
                (sums["brightness"] / frames - reference.brightness_mean) / _spread(reference, "brightness"), 2
            )
        if counts is not None:
            out["psi"] = {k: round(psi(reference.counts[k], counts[k]), 4) for k in STATISTICS}
        if self.skipped:
            out["skipped_frames"] = self.skipped
        if self.view:
            out["view"] = self.view
        return out


def _spread(reference: Reference, statistic: str) -> float:
    if statistic == "brightness":
        return max(reference.brightness_std, BRIGHTNESS_FLOOR)
    return max(reference.confidence_std, CONFIDENCE_FLOOR)


def _scores(means: dict, reference: Reference, baseline: dict | None) -> dict:
    """{statistic: {against: score}}: how far the window's means moved, in reference standard deviations."""
    against = {"reference": {"brightness": reference.brightness_mean, "confidence": reference.confidence_mean}}
    if baseline is not None:
        against["baseline"] = baseline
    out = {}
    for k in DECIDING:
        spread = _spread(reference, k)
        if k == "brightness":  # either way: too dark or too bright
            out[k] = {a: abs(means[k] - m[k]) / spread for a, m in against.items()}
        else:  # one-sided: only a model less sure than before is a problem
            out[k] = {a: max(0.0, m[k] - means[k]) / spread for a, m in against.items()}
    return out


class DriftMonitor:
    """Drift windows for every source of one daemon, against the references of the artifacts it serves."""

    def __init__(
        self, window: int = DEFAULT_WINDOW, threshold: float = DEFAULT_THRESHOLD, check_every: int | None = None
    ):
        from edgecls.runtime.errors import EdgeclsError

        if isinstance(window, bool) or not isinstance(window, int) or not MIN_WINDOW <= window <= MAX_WINDOW:
            raise EdgeclsError(
                f"--drift-window {window}: give {MIN_WINDOW} to {MAX_WINDOW} frames (fewer than "
                f"{MIN_WINDOW} makes every drift score sampling noise; the window is kept in memory)"
            )
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
            raise EdgeclsError(
                f"--drift-threshold {threshold}: give a positive number of reference standard "
                f"deviations (default {DEFAULT_THRESHOLD:g})"
            )
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
        if reference.images < WARMUP:
            log.warning(
                "the drift reference of %s counts only %d test images: its means and spreads are coarse "
                "(convert with a larger test split for a finer one)",
                artifact,
                reference.images,
            )
        return reference, ""
