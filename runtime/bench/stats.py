"""Latency statistics: percentiles, warm-up until the latency settles, and the spread across repeats.

Percentiles interpolate linearly between samples (numpy's default), so p50 <= p90 <= p99 always holds;
with N runs, p99 rests on the slowest N/100 samples: say how many runs a p99 stands on.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

PERCENTILES = (50, 90, 99)


def summarize(samples_ms) -> dict:
    """p50/p90/p99/mean/std/min/max (ms) and the number of samples."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        return {"runs": 0}
    p50, p90, p99 = np.percentile(values, PERCENTILES)
    return {
        "runs": int(values.size),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
    }


def spread_pct(values) -> float | None:
    """(max - min) / median of per-repeat figures, in %: how far one run of the bench may land from another."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    return float(100.0 * (max(values) - min(values)) / float(np.median(values)))


def warm_up(
    call: Callable[[], None], window: int = 10, tolerance: float = 0.05, lookback: int = 3, max_seconds: float = 10.0
) -> dict:
    """Call until the median of a window of `window` calls is within `tolerance` of the median `lookback` windows back.

    Caches, lazily packed weights (XNNPACK packs on first use), thread pools and CPU clocks settle at
    different speeds per engine, so a fixed count either wastes time or times the ramp. Comparing with the
    window just before would call a slow ramp (a governor stepping up, 4 % per window) settled at once;
    `lookback` windows back, the ramp adds up past the tolerance. Gives up after `max_seconds` and says so
    (`settled: false`).
    """
    started = time.perf_counter()
    medians, runs = [], 0
    while True:
        times = []
        for _ in range(window):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        runs += window
        medians.append(float(np.median(times)))
        before = medians[-1 - lookback] if len(medians) > lookback else None
        settled = before is not None and abs(medians[-1] - before) <= tolerance * before
        elapsed = time.perf_counter() - started
        if settled or elapsed >= max_seconds:
            return {"warmup_runs": runs, "warmup_ms": elapsed * 1000, "settled": bool(settled)}


def timed_runs(call: Callable[[], None], runs: int, budget_s: float | None, min_runs: int = 10) -> list:
    """Latencies (ms) of up to `runs` calls, stopping early once `budget_s` is spent (but never before `min_runs`)."""
    samples = []
    deadline = time.perf_counter() + budget_s if budget_s else None
    for i in range(runs):
        t = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t) * 1000)
        if deadline is not None and i + 1 >= min_runs and time.perf_counter() >= deadline:
            break
    return samples


def round_statistic(round_medians_ms) -> dict:
    """The interleaved pass's latency: the median of the per-round medians, and how far rounds drifted apart.

    A burst of other work on the machine lands on one round of every artifact alike (A, B, C, A, B, C...), so it
    moves a few round medians, not one artifact's whole figure; the median of them ignores those rounds.
    `round_spread_pct`: (max - min) / median of the round medians; `round_iqr_ms`: their interquartile range.
    """
    values = np.asarray([v for v in round_medians_ms if v is not None], dtype=np.float64)
    if values.size == 0:
        return {"rounds": 0}
    q1, median, q3 = np.percentile(values, (25, 50, 75))
    return {
        "rounds": int(values.size),
        "p50_ms": float(median),
        "round_p50s_ms": [float(v) for v in values],
        "round_spread_pct": spread_pct(values.tolist()),
        "round_iqr_ms": float(q3 - q1),
    }
