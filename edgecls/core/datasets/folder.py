"""Scan a class-per-folder directory: root/<class>/*.jpg, or root/{train,val,test}/<class>/*.

Splits come from train/val/test subfolders when the layout really is pre-split, otherwise from a
seeded, stratified split that is a function of each file's content (see `edgecls.core.splits`), so the
same seed and files always give the same test set and adding files moves few existing ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.core.splits import SPLIT_NAMES, Sample, seeded_split
from edgecls.runtime.errors import DataError
from edgecls.runtime.preprocess import IMAGE_SUFFIXES


@dataclass
class FolderDataset:
    root: Path
    labels: list
    splits: dict  # split name -> list[Sample]
    split_source: str  # "folders", "seeded" or "recorded"
    ignored_files: int = 0
    notes: list = field(default_factory=list)

    def counts(self) -> dict:
        return {name: len(samples) for name, samples in self.splits.items()}


def _class_dirs(root: Path) -> list:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _images_in(class_dir: Path) -> tuple:
    """Image files under a class folder (recursively), and how many other files were ignored."""
    images, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        stems = {os.path.splitext(n)[0] for n in filenames if _is_image(n)}
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if _is_image(name):
                images.append(Path(dirpath) / name)
            elif not (name.endswith(".json") and name[: -len(".json")] in stems):
                ignored += 1  # an image's .json sidecar (edgecls run --capture) is expected, not worth a note
    return images, ignored


def image_files(root: Path) -> list:
    """Every image under `root`'s folders (what a scan could pick up), as paths relative to root."""
    root = Path(root)
    found = []
    for top in _class_dirs(root):
        images, _ = _images_in(top)
        found.extend(p.relative_to(root).as_posix() for p in images)
    return found


def presplit_folders(root: Path) -> list:
    """The split folders when `root` is a pre-split layout (root/train/<class>/...), else [].

    Pre-split only when every top-level folder is named train, val or test and each holds
    class folders and no images of its own: classes bus/car/train stay classes.
    """
    dirs = _class_dirs(root)
    if not dirs or any(d.name not in SPLIT_NAMES for d in dirs):
        return []
    like = [d for d in dirs if _holds_class_folders(d)]
    if not like:
        return []
    # A split folder with no images at all (val/ made ahead of time) is an empty split, not a class.
    flats = [d for d in dirs if d not in like and _images_in(d)[0]]
    if flats:
        flat = flats[0]
        raise DataError(
            f"{root} looks pre-split ({like[0].name}/ holds class folders) but {flat.name}/ holds images of its own: "
            f"put them in {flat.name}/<class>/, or rename the folders if they are classes"
        )
    names = [d.name for d in dirs]
    if "train" not in names:
        raise DataError(f"{root} has {'/'.join(names)}/ but no train/ folder: add train/<class>/ images")
    return names


def _holds_class_folders(d: Path) -> bool:
    """Holds class folders and no images of its own: what a split folder of a pre-split layout holds."""
    entries = list(d.iterdir())
    return any(e.is_dir() and not e.name.startswith(".") for e in entries) and not any(
        e.is_file() and _is_image(e.name) for e in entries
    )


def _ambiguous_split_folders(root: Path) -> str | None:
    """A note when train/ (val/, test/) beside other folders holds only subfolders: taken as a class,
    which is right for classes bus/car/train, but a pre-split layout with a stray folder looks the same."""
    odd = [d for d in _class_dirs(root) if d.name in SPLIT_NAMES and _holds_class_folders(d)]
    if not odd:
        return None
    d = odd[0]
    subs = ", ".join(p.name for p in _class_dirs(d)[:3])
    others = ", ".join(p.name for p in _class_dirs(root) if p.name not in SPLIT_NAMES)
    return (
        f"{d.name}/ holds only subfolders ({subs}) and is taken as one class beside {others}; for a "
        f"pre-split layout keep only train/, val/ and test/ at the top of {root}"
    )


def dataset_classes(root: Path) -> list:
    """The class names a scan of `root` would find (train/'s classes in a pre-split layout)."""
    root = Path(root)
    base = root / "train" if presplit_folders(root) else root
    return [d.name for d in _class_dirs(base)]


def _scan_classes(root: Path, labels: list | None = None) -> tuple:
    dirs = _class_dirs(root)
    if labels is None:
        labels = [d.name for d in dirs]
        broken = [name for name in labels if "\n" in name]
        if broken:  # a bundle's labels.txt holds one label a line: convert could never write this model's labels
            raise DataError(
                f"class folder {broken[0]!r} in {root} has a line break in its name, which a bundle's labels.txt "
                f"cannot hold: rename the folder"
            )
    by_name = {d.name: d for d in dirs}
    unknown = sorted(set(by_name) - set(labels))
    if unknown:
        raise DataError(
            f"{root} has class folders {unknown} that train/ does not have: every split needs the same classes"
        )
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


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("val and test fractions must be in [0, 1) and leave some images for training")


def scan_folder(
    root,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    method: str | None = None,
    min_classes: int = 2,
) -> FolderDataset:
    """Find classes and images under `root` and assign every image to train, val or test.

    `method` picks the seeded split (`edgecls.core.splits.METHODS`); None is the current one.
    `min_classes`: 2 to train; evaluating a model on one class's images is fine (1).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(
            f"dataset folder {root} does not exist: "
            "pass a class-per-folder directory or a built-in name (digits, shapes)"
        )
    if not root.is_dir():
        raise DataError(f"{root} is not a directory: pass a folder with one subfolder of images per class")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"cannot read dataset folder {root}: check its permissions")
    _check_fractions(val_fraction, test_fraction)

    presplit = presplit_folders(root)
    if presplit:
        labels, train, ignored, empty = _scan_classes(root / "train")
        _require_classes(root / "train", labels, empty, min_classes)
        splits = {"train": train}
        for name in ("val", "test"):
            if name in presplit:
                _, samples, more, _ = _scan_classes(root / name, labels)
                ignored += more
                splits[name] = samples
        # A missing val/ or test/ is carved out of train/ with the seeded split.
        missing = {n: f for n, f in (("val", val_fraction), ("test", test_fraction)) if n not in splits}
        if missing:
            carved = seeded_split(
                train, {"val": missing.get("val", 0.0), "test": missing.get("test", 0.0)}, seed, root, method
            )
            splits["train"] = carved["train"]
            for name in missing:
                splits[name] = carved[name]
        dataset = FolderDataset(root, labels, {n: splits[n] for n in SPLIT_NAMES}, "folders", ignored)
    else:
        labels, samples, ignored, empty = _scan_classes(root)
        _require_classes(root, labels, empty, min_classes)
        splits = seeded_split(samples, {"val": val_fraction, "test": test_fraction}, seed, root, method)
        dataset = FolderDataset(root, labels, splits, "seeded", ignored)
        ambiguous = _ambiguous_split_folders(root)
        if ambiguous:
            dataset.notes.append(ambiguous)
    copies = _copies_across_classes(root, labels, dataset.splits)
    if copies:
        dataset.notes.append(copies)
    if ignored:
        dataset.notes.append(f"ignored {ignored} non-image file(s) (images are {', '.join(IMAGE_SUFFIXES)})")
    return dataset


def _copies_across_classes(root: Path, labels: list, splits: dict) -> str | None:
    """A note when one image (same bytes) sits in two classes: the model is taught both labels."""
    first: dict = {}
    clashes = []
    for sample in (s for samples in splits.values() for s in samples if s.digest):
        seen = first.setdefault(sample.digest, sample)
        if seen.label != sample.label:
            clashes.append((seen, sample))
    if not clashes:
        return None
    a, b = (Path(s.path).relative_to(root).as_posix() for s in clashes[0])
    return (
        f"{len(clashes)} image(s) are copies (same bytes) of an image in another class (first: {a} and {b}): "
        f"remove the wrongly labelled copies"
    )


def _require_classes(root: Path, labels: list, empty: list, min_classes: int = 2) -> None:
    if not labels:
        raise DataError(f"{root} has no class folders: put images in {root}/<class name>/")
    if empty:
        raise DataError(f"class folder(s) {', '.join(empty)} in {root} have no images: add images or remove the folder")
    if len(labels) < min_classes:
        raise DataError(f"{root} has a single class ({labels[0]}): a classifier needs at least two class folders")
