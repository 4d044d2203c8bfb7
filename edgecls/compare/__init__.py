"""`edgecls compare A B`: two models (runs or bundles) on the same images, and whether B is really better.

The decision is McNemar's exact test on the paired predictions: only the images one model gets right and
the other wrong (the discordant pairs) carry information, and under "no difference" each of them is equally
likely to favour A or B, so the count B fixed is Binomial(fixed + broken, 1/2) (scipy.stats.binomtest,
two-sided). Accuracy alone hides this: +1 point may be 20 fixed and 18 broken, or 2 fixed and 0 broken.
"""

from __future__ import annotations

import json
import math
import sys

from edgecls.compare.stats import Comparison, McNemar, Paired, decide, format_p, mcnemar, verdict
from edgecls.runtime.errors import EdgeclsError

__all__ = ["Comparison", "McNemar", "Paired", "compare", "decide", "format_p", "mcnemar", "report", "verdict"]


def _alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1 and math.isfinite(alpha)):
        raise EdgeclsError(f"--alpha {alpha!r} is out of range: use a significance level above 0 and below 1")
    return float(alpha)


def compare(a, b, data=None, alpha: float = 0.05, bench_a=None, bench_b=None, workers: int = 4) -> Comparison:
    """Compare models A and B (run directories or bundles) on `data`, or on the test split both runs share."""
    from edgecls.compare.models import open_model, shared_test_images, truth_images

    alpha = _alpha(alpha)
    model_a, model_b = open_model(a, "A"), open_model(b, "B")
    _warn_parent_changed(model_a, model_b)
    if data is not None:
        images, shown = truth_images(data)
        _warn_trained_on(images, shown, {"A": model_a, "B": model_b}, workers)
    else:
        images, shown = shared_test_images(model_a, model_b, workers)
    for which, model in (("A", model_a), ("B", model_b)):
        unknown = sorted({t for _, t in images} - set(model.labels))
        if unknown:  # its images count as wrong answers of that model: say so, it is rarely meant
            print(
                f"warning: {which} has no class {', '.join(unknown)}: it cannot be right on those images",
                file=sys.stderr,
            )
    pred_a, pred_b = model_a.predict(images, workers), model_b.predict(images, workers)
    both = [(p, t) for p, t in images if p in pred_a and p in pred_b]
    paired = Paired(
        [p for p, _ in both],
        [t for _, t in both],
        [pred_a[p] for p, _ in both],
        [pred_b[p] for p, _ in both],
    )
    result = decide(paired, (a, b), alpha)
    result.data = shown
    if bench_a is not None or bench_b is not None:
        result.latency = latency_lines(bench_a, bench_b)
    return result


def _warn_parent_changed(model_a, model_b) -> None:
    """B started from A (`train --init-from`) records A's model sha256: a model.keras replaced since is said."""
    from pathlib import Path

    from edgecls.compare.models import RunModel
    from edgecls.runtime.bundle import sha256_file

    if not (isinstance(model_a, RunModel) and isinstance(model_b, RunModel)):
        return
    parent = model_b.run.metadata.get("parent") or {}
    if parent.get("path") != str(Path(model_a.path).resolve()) or not parent.get("model_sha256"):
        return
    if sha256_file(model_a.run.model_path) != parent["model_sha256"]:
        print(
            f"warning: A's model {model_a.run.model_path} changed since B ({model_b.path}) was started from it "
            "(its sha256 differs from B's metadata.json parent.model_sha256): A is not the model B grew from",
            file=sys.stderr,
        )


def _warn_trained_on(images: list, shown: str, models: dict, workers: int) -> None:
    """--data holding images a run trained or validated on (same bytes) is said, as evaluate says it: its
    accuracy there is not held-out. Bundles record no split and are not checked."""
    from edgecls.compare.models import RunModel
    from edgecls.core.rundata import trained_on
    from edgecls.core.splits import digests

    runs = {which: model for which, model in models.items() if isinstance(model, RunModel)}
    found = digests([p for p, _ in images], workers) if runs else []
    for which, model in runs.items():
        seen = trained_on(model.run)
        overlap = sum(d in seen for d in found)
        if overlap:
            print(
                f"warning: {overlap} of the {len(images)} images of {shown} are images {which} ({model.path}) "
                "trained or validated on (same bytes): its accuracy there is not held-out; compare on held-out "
                "images, or leave out --data for the test split both runs recorded",
                file=sys.stderr,
            )


def latency_lines(bench_a, bench_b) -> list:
    """p50 of each artifact and thread count both bench JSONs hold, A -> B, from `edgecls bench --json`;
    the ones only one side holds, and benches run on other machines, are said in A/B words."""
    from edgecls.bench_report import load_results

    if bench_a is None or bench_b is None:
        raise EdgeclsError("latency needs both bench JSONs: give --bench-a A.json and --bench-b B.json")
    docs = load_results(bench_a, "--bench-a"), load_results(bench_b, "--bench-b")
    rows_a, rows_b = ({_bench_key(r): r for r in doc["records"]} for doc in docs)
    ma, mb = (doc.get("machine", {}) for doc in docs)
    lines = []
    if (ma.get("hostname"), ma.get("cpu")) != (mb.get("hostname"), mb.get("cpu")):
        lines.append(
            f"note: A's bench ran on {ma.get('hostname')} ({ma.get('cpu')}), B's on {mb.get('hostname')} "
            f"({mb.get('cpu')}): their latencies are not comparable"
        )
    for key in (k for k in rows_b if k in rows_a):
        a, b = rows_a[key]["p50_ms"], rows_b[key]["p50_ms"]
        lines.append(f"{key[0]} threads={key[1]}: p50 {a:.3f} -> {b:.3f} ms ({100.0 * (b / a - 1.0):+.1f}%)")
    if not any(k in rows_a for k in rows_b):
        raise EdgeclsError(
            "--bench-a and --bench-b have no artifact and thread count in common: bench both with the same --threads"
        )
    only_a, only_b = [k for k in rows_a if k not in rows_b], [k for k in rows_b if k not in rows_a]
    parts = [f"only A's bench has {_named(only_a)}"] if only_a else []
    if only_b:
        parts.append(f"only B's{'' if only_a else ' bench'} has {_named(only_b)}")
    if parts:
        lines.append("; ".join(parts))
    return lines


def _named(keys: list) -> str:
    return ", ".join(f"{name} threads={threads}" for name, threads in keys)


def _bench_key(record: dict) -> tuple:
    return record.get("artifact") or f"{record['format']}-{record['precision']}", record.get("threads")


def report(result: Comparison) -> str:
    """The human-readable comparison; the verdict is the last line."""
    lines = [
        f"A = {result.a}",
        f"B = {result.b}",
        f"{result.images} images ({result.data}): accuracy A {result.accuracy_a:.4f}, B {result.accuracy_b:.4f}",
        "",
        f"{'class':<16} {'images':>6} {'A':>7} {'B':>7} {'delta':>7}",
    ]
    for row in result.per_class:
        lines.append(
            f"{row['class'][:16]:<16} {row['images']:>6} {row['accuracy_a']:>7.3f} {row['accuracy_b']:>7.3f} "
            f"{100 * row['delta']:>+6.1f}p"
        )
    lines.append("")
    lines.append(f"{len(result.disagreements)} images where A and B disagree")
    lines.extend(f"latency {line}" for line in result.latency)
    lines.append(result.verdict)
    return "\n".join(lines)


def to_json(result: Comparison) -> str:
    return json.dumps(result.to_dict(), indent=2)
