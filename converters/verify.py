"""The accuracy gate: run an artifact in the runtime that will run it and compare with Keras."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from edgecls.core.data import iter_batches
from edgecls.core.metrics import classification_report
from edgecls.runtime.errors import DataError, EdgeclsError


class AccuracyGateError(EdgeclsError):
    """An artifact lost more accuracy than allowed and no remedy recovered it."""


def gate_passes(reference_right: int, artifact_right: int, images: int, max_drop: float) -> bool:
    """Whether the artifact lost at most `max_drop` points, counted in images: exact at the limit (99 -> 98 of
    100 is 1 point, not 1.0000000000000009), the limit read as the decimal the user typed."""
    allowed = Fraction(repr(float(max_drop))) * images / 100
    return (reference_right - artifact_right) <= allowed


def result_passes(result: dict, images: int, max_drop: float) -> bool:
    """Whether a `compare` result passes the gate: at most `max_drop` points lost, and probabilities that are
    numbers (a NaN max |Δp| means the artifact or the reference gave NaN: nothing was verified)."""
    return bool(np.isfinite(result["max_prob_diff"])) and gate_passes(
        result["reference_right"], result["right"], images, max_drop
    )


def by_file(predict, split, each=None) -> dict:
    """path -> (output, label) of the split's images that decoded in this pass."""
    found = {}
    for x, y, paths in iter_batches(split, 32):
        outputs = np.asarray(predict(x))
        if each is not None:
            each(x, outputs)
        found.update((p, (o, int(t))) for p, o, t in zip(paths, outputs, y))
    if not found:
        raise DataError(f"no readable images in the {getattr(split, 'name', '') or 'test'} split")
    return found


def compare(probs: np.ndarray, ref_probs: np.ndarray, y: np.ndarray, labels: list) -> dict:
    """Accuracy and images right (the artifact's and the reference's), agreement with the reference's top-1,
    max probability difference, per-class recall and its change."""
    pred, ref_pred = probs.argmax(1), ref_probs.argmax(1)
    report, ref_report = classification_report(y, pred, labels), classification_report(y, ref_pred, labels)
    per_class = {
        label: round(report["per_class"][label]["recall"] - ref_report["per_class"][label]["recall"], 6)
        for label in labels
    }
    return {
        "accuracy": report["accuracy"],
        "right": int((pred == y).sum()),  # the gate counts images, not float percentages
        "reference_right": int((ref_pred == y).sum()),
        "per_class_recall": {label: report["per_class"][label]["recall"] for label in labels},
        "reference_per_class_recall": {label: ref_report["per_class"][label]["recall"] for label in labels},
        "agreement": float((pred == ref_pred).mean()),
        "max_prob_diff": float(np.abs(probs - ref_probs).max()),
        "per_class_recall_change": {k: v for k, v in per_class.items() if v},
    }


def format_table(rows: list, reference_accuracy: float, reference: str = "keras") -> str:
    """rows: dicts with name, size_bytes, accuracy, agreement, max_prob_diff (and optional remedy); `reference`
    names the first row (the model every artifact is judged against: keras, or an imported model's framework)."""
    lines = [
        f"{'artifact':<12} {'size':>10} {'accuracy':>9} {'Δ points':>9} {'agree':>7} {'max |Δp|':>9}  note",
        f"{reference:<12} {'':>10} {reference_accuracy:9.4f} {'':>9} {'':>7} {'':>9}",
    ]
    for r in rows:
        delta = 100 * (r["accuracy"] - reference_accuracy)
        lines.append(
            f"{r['name']:<12} {r['size_bytes']:>10,} {r['accuracy']:9.4f} {delta:+9.2f} "
            f"{r['agreement']:7.4f} {r['max_prob_diff']:9.5f}  {r.get('note', '')}"
        )
    return "\n".join(lines)


def format_recall(labels: list, images: dict, keras: dict, recalls: dict, reference: str = "keras") -> str:
    """Per-class recall of the reference (Keras, or an imported model's framework) and each artifact's change
    in points, class by class."""
    names = list(recalls)
    lines = [
        f"per-class recall: {reference}, then each artifact's change in points",
        f"{'class':<16} {'images':>6} {reference[:7]:>7} " + " ".join(f"{n:>12}" for n in names),
    ]
    for label in labels:
        seen = bool(images.get(label))  # a class without test images has no recall
        cells = [f"{100 * (recalls[n][label] - keras[label]):+12.2f}" if seen else f"{'-':>12}" for n in names]
        shown = f"{keras[label]:7.4f}" if seen else f"{'-':>7}"
        lines.append(f"{label:<16} {images.get(label, 0):>6} {shown} " + " ".join(cells))
    return "\n".join(lines)
