"""The interleaved pass: every (artifact, engine) row of one thread count loaded in one process, timed in rounds.

    python3 -m edgecls.runtime.bench.rounds '{"bundle": ..., "rows": [...], "threads": 1, "rounds": 10, ...}'

Round r times `round_runs` invokes of A, then of B, then of C, then round r+1 does the same (A, B, C, A, B, C...),
so load from other processes falls on every row alike instead of on whichever fresh process ran during it; each
row's latency is the median of its round medians (`stats.round_statistic`). The fresh-process pass
(`worker.py`) still gives what one process per artifact must: load time, first inference, peak RSS, accuracy.
A row is {"label", "artifact", "engine" (None: the default), "spinning" (ONNX Runtime's; None: its default)}.
Prints one JSON object: {"schedule": [[round, label], ...], "rows": {label: {"round_samples_ms": [[...], ...]}}}.
"""

from __future__ import annotations

import sys

from edgecls.runtime.bench.stats import timed_runs, warm_up
from edgecls.runtime.bench.worker import open_row, serve_job


def interleave(calls: dict, rounds: int, round_runs: int, budget_s: float | None) -> tuple[list, dict]:
    """(schedule, {label: [samples of round 0, of round 1, ...]}): `rounds` rounds of every call in the dict's
    order; each round of one call stops after `round_runs` calls or its share of `budget_s`, at least 3.

    Each round of a call starts with one untimed call, its warm-up: the other rows ran in between and took the
    caches, so that first call was 1.7-2.4x slower and would weigh on the pooled p90/p99."""
    share = budget_s / rounds if budget_s else None
    schedule, samples = [], {label: [] for label in calls}
    for r in range(rounds):
        for label, call in calls.items():
            schedule.append([r, label])
            call()
            samples[label].append(timed_runs(call, round_runs, share, min_runs=min(3, round_runs)))
    return schedule, samples


def measure(job: dict) -> dict:
    from edgecls.runtime.preprocess import load_image

    image = load_image(job["frame"])
    calls = {}
    for row in job["rows"]:  # loaded, then warmed up, in row order, before any round starts
        classifier = open_row(
            job["bundle"], row["artifact"], row.get("engine"), job.get("threads"), allow_spinning=row.get("spinning")
        )
        batch = classifier.prepare(image)[None]
        backend = classifier.session.backend
        calls[row["label"]] = lambda backend=backend, batch=batch: backend.run(batch)
    for call in calls.values():
        warm_up(call, max_seconds=job.get("max_warmup_s", 10.0))
    schedule, samples = interleave(calls, job["rounds"], job["round_runs"], job.get("budget_s"))
    return {"schedule": schedule, "rows": {label: {"round_samples_ms": s} for label, s in samples.items()}}


def main(argv=None) -> int:
    return serve_job(measure, argv)


if __name__ == "__main__":
    sys.exit(main())
