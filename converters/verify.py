"""The accuracy gate: run an artifact in the runtime that will run it and compare with Keras."""

from __future__ import annotations

import numpy as np

from edgecls.metrics import classification_report


def compare(probs: np.ndarray, ref_probs: np.ndarray, y: np.ndarray, labels: list) -> dict:
    """Accuracy, agreement with the reference's top-1, max probability difference, per-class recall change."""
    pred, ref_pred = probs.argmax(1), ref_probs.argmax(1)
    report, ref_report = classification_report(y, pred, labels), classification_report(y, ref_pred, labels)
    per_class = {
        label: round(report["per_class"][label]["recall"] - ref_report["per_class"][label]["recall"], 6)
        for label in labels
    }
    return {
        "accuracy": report["accuracy"],
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
