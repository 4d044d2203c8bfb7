"""Classification metrics: accuracy, per-class precision/recall/F1, confusion matrix (numpy only)."""

from __future__ import annotations

import numpy as np


def probabilities(raw: np.ndarray) -> np.ndarray:
    """Model outputs as (N, classes): a one-unit sigmoid head p becomes [1 - p, p]."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim == 2 and raw.shape[1] == 1:
        return np.concatenate([1.0 - raw, raw], axis=1)
    return raw


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_report(y_true, y_pred, labels: list) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro averages and the confusion matrix
    (rows: true class, columns: predicted class). Definitions are scikit-learn's
    `precision_recall_fscore_support(labels=range(len(labels)), zero_division=0)`."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    actual = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    per_class = {
        label: {
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(actual[i]),
        }
        for i, label in enumerate(labels)
    }
    # Macro averages over every class of the model, as scikit-learn's with labels=all and
    # zero_division=0: a class predicted but absent, or never predicted, counts as 0, not as missing.
    return {
        "accuracy": float(tp.sum() / max(1, len(y_true))),
        "n": int(len(y_true)),
        "per_class": per_class,
        "macro": {
            "precision": float(precision.mean()) if len(labels) else 0.0,
            "recall": float(recall.mean()) if len(labels) else 0.0,
            "f1": float(f1.mean()) if len(labels) else 0.0,
        },
        "labels": list(labels),
        "confusion_matrix": cm.tolist(),
    }


def format_report(report: dict) -> str:
    """A fixed-width table of the per-class report, as people read it in a terminal."""
    width = max(8, *(len(l) for l in report["labels"]))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for label, row in report["per_class"].items():
        lines.append(
            f"{label:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:5.4f}  {row['support']:7d}"
        )
    m = report["macro"]
    lines.append(f"{'macro avg':<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:5.4f}  {report['n']:7d}")
    lines.append(f"accuracy: {report['accuracy']:.4f} ({report['n']} images)")
    return "\n".join(lines)
