"""Scan a class-per-folder directory: root/<class>/*.jpg, or root/{train,val,test}/<class>/*.

Splits come from train/val/test subfolders when present, otherwise from a seeded,
stratified split, so the same seed always gives the same test set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import DataError
from runtime.preprocess import IMAGE_SUFFIXES

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class FolderDataset:
    root: Path
    labels: list
    splits: dict  # split name -> list[Sample]
    split_source: str  # "folders" or "seeded"
    ignored_files: int = 0
    notes: list = field(default_factory=list)

    def counts(self) -> dict:
        return {name: len(samples) for name, samples in self.splits.items()}


def _class_dirs(root: Path) -> list:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(class_dir: Path) -> tuple:
    """Image files under a class folder (recursively), and how many other files were ignored."""
    images, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_SUFFIXES):
                images.append(Path(dirpath) / name)
            else:
                ignored += 1
    return images, ignored


def _scan_classes(root: Path, labels: list | None = None) -> tuple:
    dirs = _class_dirs(root)
    if labels is None:
        labels = [d.name for d in dirs]
    by_name = {d.name: d for d in dirs}
    unknown = sorted(set(by_name) - set(labels))
    if unknown:
        raise DataError(f"{root} has class folders {unknown} that train/ does not have: every split needs the same classes")
    samples, ignored, empty = [], 0, []
    for index, name in enumerate(labels):
        if name not in by_name:
            empty.append(name)
            continue
        images, skipped = _images_in(by_name[name])
        ignored += skipped
        if not images:
            empty.append(name)
        samples.extend(Sample(p, index) for p in images)
    return labels, samples, ignored, empty


def stratified_split(samples: list, fractions: dict, seed: int) -> dict:
    """Split samples per class with a seeded shuffle; each class contributes its share to every split."""
    rng = np.random.default_rng(seed)
    by_label: dict = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    out = {name: [] for name in SPLIT_NAMES}
    for label in sorted(by_label):
        group = by_label[label]
        order = rng.permutation(len(group))
        n = len(group)
        n_test = int(round(n * fractions["test"])) if n >= 3 else 0
        n_val = int(round(n * fractions["val"])) if n >= 3 else 0
        if fractions["test"] > 0 and n >= 3:
            n_test = max(1, n_test)
        if fractions["val"] > 0 and n >= 3:
            n_val = max(1, n_val)
        picked = [group[i] for i in order]
        out["test"].extend(picked[:n_test])
        out["val"].extend(picked[n_test : n_test + n_val])
        out["train"].extend(picked[n_test + n_val :])
    return out


def scan_folder(root, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> FolderDataset:
    """Find classes and images under `root` and assign every image to train, val or test."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist: pass a class-per-folder directory or a built-in name (digits, shapes)")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory: pass a folder with one subfolder of images per class")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"cannot read dataset folder {root}: check its permissions")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("val and test fractions must be in [0, 1) and leave some images for training")

    presplit = [n for n in SPLIT_NAMES if (root / n).is_dir()]
    if presplit:
        if "train" not in presplit:
            raise DataError(f"{root} has {'/'.join(presplit)}/ but no train/ folder: add train/<class>/ images")
        labels, train, ignored, empty = _scan_classes(root / "train")
        _require_classes(root / "train", labels, empty)
        splits = {"train": train}
        for name in ("val", "test"):
            if name in presplit:
                _, samples, more, _ = _scan_classes(root / name, labels)
                ignored += more
                splits[name] = samples
        # A missing val/ or test/ is carved out of train/ with the seeded split.
        missing = {n: f for n, f in (("val", val_fraction), ("test", test_fraction)) if n not in splits}
        if missing:
            carved = stratified_split(train, {"val": missing.get("val", 0.0), "test": missing.get("test", 0.0)}, seed)
            splits["train"] = carved["train"]
            for name in missing:
                splits[name] = carved[name]
        dataset = FolderDataset(root, labels, {n: splits[n] for n in SPLIT_NAMES}, "folders", ignored)
    else:
        labels, samples, ignored, empty = _scan_classes(root)
        _require_classes(root, labels, empty)
        splits = stratified_split(samples, {"val": val_fraction, "test": test_fraction}, seed)
        dataset = FolderDataset(root, labels, splits, "seeded", ignored)
    if ignored:
        dataset.notes.append(f"ignored {ignored} non-image file(s) (images are {', '.join(IMAGE_SUFFIXES)})")
    return dataset


def _require_classes(root: Path, labels: list, empty: list) -> None:
    if not labels:
        raise DataError(f"{root} has no class folders: put images in {root}/<class name>/")
    if empty:
        raise DataError(f"class folder(s) {', '.join(empty)} in {root} have no images: add images or remove the folder")
    if len(labels) < 2:
        raise DataError(f"{root} has a single class ({labels[0]}): a classifier needs at least two class folders")
