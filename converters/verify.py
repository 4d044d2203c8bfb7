"""The accuracy gate: run an artifact in the runtime that will run it and compare with Keras."""

from __future__ import annotations

import numpy as np

from edgecls.core.metrics import classification_report


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


def format_table(rows: list, reference_accuracy: float) -> str:
    """rows: dicts with name, size_bytes, accuracy, agreement, max_prob_diff (and optional remedy)."""
    lines = [
        f"{'artifact':<12} {'size':>10} {'accuracy':>9} {'Δ points':>9} {'agree':>7} {'max |Δp|':>9}  note",
        f"{'keras':<12} {'':>10} {reference_accuracy:9.4f} {'':>9} {'':>7} {'':>9}",
    ]
    for r in rows:
        delta = 100 * (r["accuracy"] - reference_accuracy)
        lines.append(
            f"{r['name']:<12} {r['size_bytes']:>10,} {r['accuracy']:9.4f} {delta:+9.2f} "
            f"{r['agreement']:7.4f} {r['max_prob_diff']:9.5f}  {r.get('note', '')}"
        )
    return "\n".join(lines)


def format_recall(labels: list, images: dict, keras: dict, recalls: dict) -> str:
    """Per-class recall of the reference (Keras) and each artifact's change in points, class by class."""
    names = list(recalls)
    lines = [
        "per-class recall: keras, then each artifact's change in points",
        f"{'class':<16} {'images':>6} {'keras':>7} " + " ".join(f"{n:>12}" for n in names),
    ]
    for label in labels:
        seen = bool(images.get(label))  # a class without test images has no recall
        cells = [f"{100 * (recalls[n][label] - keras[label]):+12.2f}" if seen else f"{'-':>12}" for n in names]
        shown = f"{keras[label]:7.4f}" if seen else f"{'-':>7}"
        lines.append(f"{label:<16} {images.get(label, 0):>6} {shown} " + " ".join(cells))
    return "\n".join(lines)
