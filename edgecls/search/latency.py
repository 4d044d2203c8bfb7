"""The latency model of `edgecls search`: MACs -> ms on one device, fitted to the trials measured there so far.

Latency is close to affine in MACs within an architecture family (a fixed cost per invoke: the interpreter,
int8 requantization, small ops; then a MAC rate), but families run at different MAC rates (MobileNets'
depthwise-separable convolutions do fewer MACs per second than plain 3x3 convolutions). So each family with at
least FAMILY_POINTS measured candidates (distinct MACs) gets its own fit, and the others share one pooled fit.

Two forms were compared on real measurements (benchmarks/latency_model.py, results/latency_model.txt: 24
untrained candidates of 5 families, 1.7-348 MMACs, tflite-int8 at 1 thread on a shared 2-core EPYC): `affine`,
ms = a + b * MACs with a, b >= 0 (least squares in relative error), and `loglog`, log ms = c + k log MACs. The
default, `loglog`, predicted held-out candidates better there (half of each family fitted, the other half
predicted: median 21-23 % against 23-31 %, worst 78-83 % against 88-93 %; leave-one-out medians alike, 10-17 %).
(The replayed searches' wrong prunes: results/latency_model.txt.) (At the engine's default threads, 2 here, the
measurements were twice as noisy and affine did better on medians: results/latency_model_default_threads.txt.)
MACs alone miss what channel widths do (narrow layers run far fewer MACs per second, wide ones more): that is most of
the worst errors, so the pruning below keeps a wide margin.

Pruning is conservative: nothing is pruned before MIN_POINTS measurements, nor on latency before its family has a
measured point of its own (another family's curve predicted plain convolutions 8-12x too slow: 17 of 35 prunes
wrong at a 2 ms budget in 300 replayed orders; results/latency_model.txt); then a candidate is pruned only when
even an optimistic estimate is over the budget: its prediction divided by max(MIN_MARGIN, 1 + the worst
leave-one-out relative error so far), for a family without a fit of its own the least prediction of any fit, and
never more than its MACs at the best MAC rate measured on the device so far, divided by MIN_MARGIN (a fit's
intercept, learnt on big models, would otherwise put small ones over a tight budget). Size is pruned from params
(an int8 artifact holds about a byte per parameter: the measured bytes/param once there are points, else a lower
bound); RAM only under the least peak measured on a candidate no bigger in input size and params.

Stateless: `from_trials` rebuilds it from the trials on disk each time, so a resumed search and a second worker
decide alike.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from edgecls.search.types import FAILED, GATE_FAILED, PRUNED, Budget, Candidate, Trial

FORMS = ("affine", "loglog")
MIN_POINTS = 3  # measured trials before the model predicts (and so prunes) anything
FAMILY_POINTS = 3  # measured candidates of one family (distinct MACs) before it gets a fit of its own
MIN_MARGIN = 1.5  # the optimistic estimate is at least this many times below the prediction
RAM_NOISE = 0.05  # the least peak RSS measured may fall this much on another run (allocator, page cache)
SIZE_FLOOR_BYTES_PER_PARAM = 0.8  # before any measured size: int8 weights take a byte each, minus folded BN
MB = 1024 * 1024


def _fit(points: list, form: str) -> tuple:
    """Coefficients of one fit over [(macs, ms)]."""
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    if form == "loglog":
        if len(set(x)) < 2:
            return (float(np.mean(np.log(y))), 0.0)
        k, c = np.polyfit(np.log(x), np.log(y), 1)
        return (float(c), float(k))
    from scipy.optimize import nnls

    # Relative least squares, a and b >= 0: each row divided by its own latency, so a 0.05 ms model counts
    # as much as a 20 ms one (absolute least squares would fit the big ones and miss the small ones by 10x).
    rows = np.stack([1.0 / y, x / y], axis=1)
    (a, b), _ = nnls(rows, np.ones_like(y))
    return (float(a), float(b))


def _apply(coef: tuple, macs: float, form: str) -> float:
    if form == "loglog":
        return float(math.exp(coef[0] + coef[1] * math.log(macs)))
    return coef[0] + coef[1] * macs


class LatencyModel:
    """Fitted to measured trials of one device (`from_trials`); predicts a candidate's latency and decides whether
    it can meet a budget. `points`: [(Candidate, Measurement)] of trials that reached the device."""

    def __init__(self, points: list, form: str = "loglog"):
        if form not in FORMS:
            raise ValueError(f"form {form!r}: one of {FORMS}")
        self.form = form
        self.points = [(c, m) for c, m in points if c.macs > 0 and m.latency_ms > 0]
        self._fits = self._fit_all(self.points)
        self._held_out: dict | None = None

    @classmethod
    def from_trials(cls, trials: list[Trial], form: str = "loglog") -> LatencyModel:
        """The measured trials' points; pruned, failed and gate-failed trials (never measured, or not as shipped)
        are left out."""
        skip = (PRUNED, FAILED, GATE_FAILED)
        return cls([(t.candidate, t.measurement) for t in trials if t.measurement and t.status not in skip], form)

    def _fit_all(self, points: list) -> dict:
        """{family: coefficients} for families with enough distinct points, and None: the pooled fit."""
        if len(points) < MIN_POINTS:
            return {}
        fits = {None: _fit([(c.macs, m.latency_ms) for c, m in points], self.form)}
        for family in {c.model for c, _ in points}:
            mine = [(c.macs, m.latency_ms) for c, m in points if c.model == family]
            if len({x for x, _ in mine}) >= FAMILY_POINTS:
                fits[family] = _fit(mine, self.form)
        return fits

    def _predict_with(self, fits: dict, candidate: Candidate) -> float | None:
        if not fits or candidate.macs <= 0:
            return None
        coef = fits.get(candidate.model, fits[None])
        return _apply(coef, candidate.macs, self.form)

    def predict(self, candidate: Candidate) -> float | None:
        """Predicted p50 in ms on this device; None with fewer than MIN_POINTS measurements (or MACs unknown)."""
        return self._predict_with(self._fits, candidate)

    def optimistic(self, candidate: Candidate) -> float | None:
        """The least latency the candidate may plausibly have: its prediction divided by the margin; for a family
        without a fit of its own, the least of every fit's prediction (it may run at the fastest family's rate)."""
        if not self._fits or candidate.macs <= 0:
            return None
        fits = [self._fits[candidate.model]] if candidate.model in self._fits else self._fits.values()
        fitted = min(_apply(coef, candidate.macs, self.form) for coef in fits) / self.margin()
        # Nor faster than the best MAC rate measured on this device (a fit's intercept, learnt on big models,
        # would otherwise put small ones over a tight budget)
        rate = max(c.macs / m.latency_ms for c, m in self.points)
        return min(fitted, candidate.macs / rate / MIN_MARGIN)

    def held_out_errors(self) -> dict:
        """Leave-one-out over the measured trials: each refitted without it, relative error |pred - ms| / ms."""
        if self._held_out is None:
            errors = []
            if len(self.points) > MIN_POINTS:
                for i, (candidate, measured) in enumerate(self.points):
                    fits = self._fit_all(self.points[:i] + self.points[i + 1 :])
                    predicted = self._predict_with(fits, candidate)
                    errors.append(abs(predicted - measured.latency_ms) / measured.latency_ms)
            self._held_out = {
                "n": len(errors),
                "median": statistics.median(errors) if errors else None,
                "worst": max(errors) if errors else None,
                "form": self.form,
            }
        return self._held_out

    def margin(self) -> float:
        """How far below its prediction a candidate's latency may still fall: max(MIN_MARGIN, 1 + worst LOO error)."""
        worst = self.held_out_errors()["worst"]
        return max(MIN_MARGIN, 1.0 + (worst or 0.0))

    def decide(self, candidate: Candidate, budget: Budget) -> tuple[bool, float | None, str]:
        """(plausible?, predicted ms, one-line reason): implausible only when an optimistic estimate is over the
        budget: latency, the artifact's size, or RAM."""
        predicted = self.predict(candidate)
        for check in (self._size_check, self._ram_check):
            reason = check(candidate, budget)
            if reason:
                return False, predicted, reason
        if predicted is None:
            why = "MACs unknown" if candidate.macs <= 0 else f"{len(self.points)} of {MIN_POINTS} measurements"
            return True, None, f"not predicted yet ({why}): measured"
        if not any(c.model == candidate.model for c, _ in self.points):
            # Families run at MAC rates 8-12x apart: another family's curve would prune in-budget candidates
            return True, predicted, f"predicted {predicted:.3g} ms, but no {candidate.model} measured yet: measured"
        best = self.optimistic(candidate)
        if best > budget.latency_ms:
            return (
                False,
                predicted,
                f"predicted {predicted:.3g} ms, at best {best:.3g} ms (the model's worst held-out error allowed for), "
                f"over the {budget.latency_ms:g} ms budget",
            )
        return True, predicted, f"predicted {predicted:.3g} ms, plausible within {budget.latency_ms:g} ms"

    def _size_check(self, candidate: Candidate, budget: Budget) -> str:
        """Over --max-size-mb: measured bytes per param (optimistic by the margin), else the int8 lower bound."""
        if budget.size_mb is None or candidate.params <= 0:
            return ""
        sized = [(c.params, m.size_mb * MB) for c, m in self.points if m.size_mb and c.params > 0]
        per_param = min(b / p for p, b in sized) / MIN_MARGIN if sized else SIZE_FLOOR_BYTES_PER_PARAM
        per_param = max(per_param, SIZE_FLOOR_BYTES_PER_PARAM)
        least = candidate.params * per_param / MB
        if least > budget.size_mb:
            return (
                f"{candidate.params:,} params: the artifact takes at least {least:.3g} MB, over {budget.size_mb:g} MB"
            )
        return ""

    def _ram_check(self, candidate: Candidate, budget: Budget) -> str:
        """Over --max-ram-mb, only on evidence: with MIN_POINTS measured peaks, when a measured candidate no bigger
        in both input size and params peaked over the budget by more than RAM_NOISE (the runtime's own memory does
        not shrink). Not from params alone: the peak follows the input size more than the weights (simple at 160
        px, 295k params, peaked at 78 MB; MobileNetV2 at 128 px, 414k params, at 73 MB), and a params rule pruned
        in-budget candidates about as often as not (results/latency_model.txt)."""
        ram = [(c, m.peak_rss_mb) for c, m in self.points if m.peak_rss_mb]
        if budget.ram_mb is None or len(ram) < MIN_POINTS:
            return ""
        smaller = [peak for c, peak in ram if c.image_size <= candidate.image_size and 0 < c.params <= candidate.params]
        floor = min(smaller) * (1 - RAM_NOISE) if smaller else 0.0
        if budget.ram_mb < floor:
            return (
                f"peak RSS at least {floor:.0f} MB (the least peak measured on a candidate no bigger, "
                f"{min(smaller):.0f} MB, less {RAM_NOISE:.0%}), over {budget.ram_mb:g} MB"
            )
        return ""

    def to_dict(self) -> dict:
        fits = {(family or "pooled"): [round(v, 12) for v in coef] for family, coef in self._fits.items()}
        return {
            "form": self.form,
            "coefficients": "ms = a + b * MACs" if self.form == "affine" else "ms = exp(c) * MACs ** k",
            "fits": fits,
            "points": len(self.points),
            "min_points": MIN_POINTS,
            "family_points": FAMILY_POINTS,
            "margin": self.margin(),
            "held_out": self.held_out_errors(),
        }
