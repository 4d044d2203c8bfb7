"""Evaluation of a Keras model: the end of `train`, and `edgecls evaluate RUN`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgecls import plots, rundir
from edgecls.metrics import classification_report, probabilities
from runtime.atomic import write_json
from runtime.errors import DataError


def evaluate_arrays(model, x: np.ndarray, y: np.ndarray, labels: list, batch_size: int = 64) -> dict:
    probs = probabilities(model.predict(x, batch_size=batch_size, verbose=0))
    return classification_report(y, probs.argmax(axis=1), labels)


def write_evaluation(folder: Path, metrics: dict, labels: list) -> None:
    write_json(Path(folder) / rundir.METRICS_FILE, metrics)
    plots.confusion_matrix(
        metrics["confusion_matrix"], labels, Path(folder) / rundir.CONFUSION_PNG,
        title=f"confusion matrix ({metrics.get('evaluated_on', 'test')}, accuracy {metrics['accuracy']:.4f})",
    )


def evaluate_run(run_path, data: str | None = None, split: str = "test", batch_size: int = 64, workers: int = 4) -> dict:
    """Re-evaluate a run's model on its held-out split (rebuilt from the metadata), or on `data`.

    With `data`, class folders are matched to the run's labels by name. Re-evaluating the run's own
    test split refreshes metrics.json and confusion_matrix.png in the run directory.
    """
    from edgecls.data import load_split
    from edgecls.rundata import run_dataset

    run = rundir.open_run(run_path)
    dataset = run_dataset(run, data)
    root = dataset.root
    chosen = sum(dataset.splits.values(), []) if split == "all" else dataset.splits[split]
    if data:
        unknown = sorted(set(dataset.labels) - set(run.labels))
        if unknown:
            raise DataError(f"{root} has classes {unknown} the model does not know (it knows {run.labels})")
        remap = {i: run.labels.index(name) for i, name in enumerate(dataset.labels)}
        chosen = [type(s)(s.path, remap[s.label]) for s in chosen]
    if not chosen:
        raise DataError(f"the {split} split of {root} is empty: use --split val|train|all")
    loaded = load_split(chosen, run.preprocess, workers, split)
    model = run.load_model()
    report = evaluate_arrays(model, loaded.x, loaded.y, run.labels, batch_size)
    metrics = {"test_accuracy": report["accuracy"], "evaluated_on": split, "data": str(root), **report}
    if data is None and split == "test":
        # Same split as training: refresh the run's own metrics, keeping what training recorded.
        previous = run.path / rundir.METRICS_FILE
        old = json.loads(previous.read_text()) if previous.is_file() else {}
        metrics = {**old, **metrics}
        write_evaluation(run.path, metrics, run.labels)
    return metrics
