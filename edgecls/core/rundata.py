"""A run's own data: the dataset folder it trained on and the exact split it recorded (split.json).

`convert` and `evaluate` verify on the run's recorded test split, so no training image is ever
verified on, even after the folder gained, lost or changed files. Runs trained before splits were
recorded get their split recomputed from the folder, fractions and seed, with a warning.
"""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

from edgecls.core.data import fingerprint, load_split, open_splits
from edgecls.core.datasets import resolve_dataset, scan_folder
from edgecls.core.datasets.builtin import BUILTIN_DATASETS, materialize
from edgecls.core.datasets.folder import SPLIT_NAMES, FolderDataset, dataset_classes, image_files
from edgecls.core.rundir import DATA_DIR
from edgecls.core.splits import PERMUTATION, read_split_record, recorded_samples
from edgecls.runtime.errors import DataError


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_root(run) -> Path:
    """The run's dataset folder: a built-in by its recorded name (never a same-named folder here)."""
    info = run.metadata.get("dataset", {})
    if info.get("sources") and (Path(run.path) / DATA_DIR).is_dir():
        return Path(run.path) / DATA_DIR  # several folders merged: the run's own symlinks, wherever the run moved
    builtin = info.get("builtin")
    if builtin:
        if builtin not in BUILTIN_DATASETS:
            raise DataError(f"{run.path} was trained on built-in dataset {builtin!r}, which this edgecls does not have")
        return materialize(builtin)
    source = info.get("source")
    if not source:
        raise DataError(f"{run.path} does not record its dataset: evaluate with --data FOLDER")
    return resolve_dataset(source)[0]


def check_classes(root, found: list, labels: list, subset_ok: bool = False) -> None:
    """Refuse a folder whose classes differ from the model's labels, naming the differences.

    subset_ok: other data may hold only some of the model's classes, never one it does not know.
    """
    unknown = [c for c in found if c not in labels]
    missing = [c for c in labels if c not in found]
    by_form = {unicodedata.normalize("NFC", c): c for c in missing}
    renamed = [
        (c, by_form[unicodedata.normalize("NFC", c)]) for c in unknown if unicodedata.normalize("NFC", c) in by_form
    ]
    if renamed:  # the names look identical on screen: show their escapes
        shown = ", ".join(f"folder {ascii(folder)} for label {ascii(label)}" for folder, label in renamed)
        raise DataError(
            f"the class folders of {root} differ from the model's labels only in Unicode normalisation ({shown}): "
            f"rename each folder to its label's exact code points (a copy through macOS may have decomposed them)"
        )
    if unknown or (missing and not subset_ok):
        parts = ([f"{', '.join(unknown)} unknown to the model"] if unknown else []) + (
            [f"{', '.join(missing)} missing"] if missing and (not subset_ok or unknown) else []
        )
        raise DataError(
            f"the class folders of {root} differ from the model's labels ({'; '.join(parts)}): "
            f"name the class folders like the model's labels ({', '.join(labels)})"
        )


def holds_recorded_split(run, folder) -> bool:
    """Whether `folder` is the run's dataset moved elsewhere: the same classes, and most of the files
    the run recorded (by relative path; their bytes are checked when they are used). A copy of some
    classes is other data."""
    record = read_split_record(run.path)
    if record is None or not Path(folder).is_dir():
        return False
    try:
        if sorted(dataset_classes(folder)) != sorted(run.labels):
            return False
    except DataError:
        return False
    recorded = [p for entries in record.splits.values() for p, _, _ in entries]
    return bool(recorded) and sum((Path(folder) / p).is_file() for p in recorded) * 2 > len(recorded)


def trained_on(run) -> set:
    """sha256 of every image the run trained or validated on (empty for runs without split.json)."""
    record = read_split_record(run.path)
    return {d for name in ("train", "val") for _, d, _ in (record.splits.get(name, []) if record else [])}


def run_dataset(run, workers: int = 4, names=SPLIT_NAMES, root=None) -> FolderDataset:
    """The run's own dataset with the splits it trained on (recorded), or recomputed for old runs.

    Recorded splits are checked file by file (sha256), for the `names` asked for only. `root`: the
    run's dataset moved to another folder (else the folder the run recorded).
    """
    root = run_root(run) if root is None else Path(root)
    if not Path(root).is_dir():
        raise DataError(
            f"the run's dataset folder {root} does not exist (moved or deleted): put it back to use the run's own split"
        )
    check_classes(root, dataset_classes(root), run.labels)
    record = read_split_record(run.path)
    info = run.metadata.get("dataset", {})
    if record is None:
        _warn(
            f"warning: {run.path} has no split.json (trained before splits were recorded): "
            f"recomputing its split from {root}"
        )
        return scan_folder(
            root,
            info.get("val_fraction", 0.1),
            info.get("test_fraction", 0.2),
            run.metadata.get("seed", 0),
            method=info.get("split_method", PERMUTATION),
        )
    if record.labels != run.labels:
        raise DataError(
            f"{run.path}/split.json has labels {record.labels} but metadata.json has {run.labels}: "
            "the run is damaged, train again"
        )
    splits, problems = recorded_samples(record, root, [n for n in names if n in record.splits], workers)
    if problems:
        _warn(f"warning: {problems}")
    added = len(set(image_files(root)) - record.paths)
    if added:
        _warn(f"note: {added} image(s) added to {root} since training are not in the run's split (ignored)")
    return FolderDataset(Path(root), run.labels, splits, "recorded")


def require_splits(run, dataset: FolderDataset, names) -> None:
    """Refuse when every image of a split the run used is gone or changed (nothing left to verify on)."""
    for name in names:
        used = run.metadata.get("dataset", {}).get("counts", {}).get(name, 0)
        if used and not dataset.splits.get(name):
            raise DataError(
                f"none of the {used} {name} images the run used is still in {dataset.root} unchanged: "
                f"restore the dataset, or train again on it as it is now"
            )


def load_run_splits(run, names=("train", "val", "test"), workers: int = 4, stream: bool = False) -> dict:
    """Load the named splits of the run's own split with its preprocessing.

    `stream`: splits whose tensors exceed the in-memory limit (edgecls.core.data) come back as
    `StreamedSplit`s, read batch by batch (`iter_batches`, `CalibrationSampler`) and never whole.
    """
    dataset = run_dataset(run, workers, names)
    require_splits(run, dataset, names)
    chosen = {n: dataset.splits[n] for n in names if dataset.splits.get(n)}
    if stream:
        splits = open_splits(chosen, run.preprocess, workers, decoded_before=dataset.split_source == "recorded")
    else:
        splits = {n: load_split(samples, run.preprocess, workers, n) for n, samples in chosen.items()}
    recorded = run.metadata.get("dataset", {}).get("fingerprint")
    if (
        dataset.split_source != "recorded"
        and recorded
        and set(names) >= {"train", "val", "test"}
        and fingerprint(run.labels, splits) != recorded
    ):
        _warn("warning: the dataset changed since training (fingerprint differs); splits may not match the run's")
    return splits
