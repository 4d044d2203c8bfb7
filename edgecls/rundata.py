"""Rebuild a run's dataset splits from its metadata (same folder, fractions and seed)."""

from __future__ import annotations

import sys

from edgecls.data import fingerprint, load_split
from edgecls.datasets import resolve_dataset, scan_folder
from runtime.errors import DataError


def run_dataset(run, data: str | None = None):
    info = run.metadata.get("dataset", {})
    source = data or info.get("source")
    if not source:
        raise DataError(f"{run.path} does not record its dataset: pass --data FOLDER")
    root, _ = resolve_dataset(source)
    return scan_folder(root, info.get("val_fraction", 0.1), info.get("test_fraction", 0.2), run.metadata.get("seed", 0))


def load_run_splits(run, names=("train", "val", "test"), workers: int = 4) -> dict:
    """Load the named splits with the run's preprocessing; warn if the data changed since training."""
    dataset = run_dataset(run)
    if dataset.labels != run.labels:
        raise DataError(f"the dataset's classes {dataset.labels} differ from the model's {run.labels}: the folder changed since training")
    splits = {n: load_split(dataset.splits[n], run.preprocess, workers, n) for n in names if dataset.splits.get(n)}
    recorded = run.metadata.get("dataset", {}).get("fingerprint")
    if recorded and set(names) >= {"train", "val", "test"} and fingerprint(run.labels, splits) != recorded:
        print("warning: the dataset changed since training (fingerprint differs); splits may not match the run's", file=sys.stderr)
    return splits
