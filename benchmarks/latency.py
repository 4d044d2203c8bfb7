"""Latency of every artifact in one or more bundles, one image per call, in the runtime that ships.

python benchmarks/latency.py BUNDLE [BUNDLE ...] [--threads 1] [--runs 300] [--out results/latency.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from edgecls.runtime.bundle import load_bundle
from edgecls.runtime.session import ModelSession, quantize


def time_session(session: ModelSession, x: np.ndarray, runs: int, warmup: int = 20) -> dict:
    """Time backend.run on one pre-quantized image: the model's own cost, without preprocessing."""
    batch = quantize(x[:1], session.backend.input_spec)
    for _ in range(warmup):
        session.backend.run(batch)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.backend.run(batch)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * len(times)) - 1],
        "min_ms": times[0],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/results/latency.json")
    args = parser.parse_args()
    rows = []
    for path in args.bundles:
        bundle = load_bundle(path)
        shape = bundle.manifest.preprocess.shape
        x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
        for art in bundle.manifest.artifacts:
            session = ModelSession(bundle.verify(art), art.format, head=bundle.manifest.head, threads=args.threads)
            stats = time_session(session, x, args.runs)
            rows.append(
                {
                    "bundle": str(path),
                    "artifact": art.name,
                    "backend": session.backend.name,
                    "size_bytes": art.size_bytes,
                    "macs": art.macs,
                    "accuracy": art.accuracy,
                    **stats,
                }
            )
            print(
                f"{Path(path).name:<24} {art.name:<12} {session.backend.name:<12} median {stats['median_ms']:.4f} ms  "
                f"p90 {stats['p90_ms']:.4f} ms  MACs {art.macs:,}"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"machine": platform.processor() or platform.machine(), "threads": args.threads, "results": rows}, indent=2
        )
        + "\n"
    )
    chart = out.with_suffix(".png")
    _chart(rows, args.threads, chart)
    print(f"wrote {out} and {chart}")


def _chart(rows: list, threads: int, path: Path) -> None:
    """Horizontal bars: median latency per artifact, whiskers to p90."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{Path(r['bundle']).name} / {r['artifact']}" for r in rows]
    medians = [r["median_ms"] for r in rows]
    whiskers = [[0] * len(rows), [r["p90_ms"] - r["median_ms"] for r in rows]]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
    colors = ["tab:green" if "int8" in r["artifact"] else "tab:blue" for r in rows]
    ax.barh(names, medians, xerr=whiskers, color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(f"latency per image, ms (median, whisker to p90; {threads} thread)")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
