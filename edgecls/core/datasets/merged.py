"""Several `--data` folders trained on as one: class folders merged by name, behind a folder of symlinks.

The run records its split relative to one folder (split.json), and `convert`/`evaluate` find its images
there: so a run trained on several folders keeps RUN/data/<class>/<k>-<folder name>/<path inside it>, one
symlink per image, as its dataset folder. A fixed test split (the parent run's, `train --init-from`) goes to
test as it is; the other images are split into train and val only.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from edgecls.core.datasets.builtin import resolve_dataset
from edgecls.core.datasets.folder import FolderDataset, scan_folder
from edgecls.core.progress import progress
from edgecls.core.splits import Sample, digests, seeded_split
from edgecls.runtime.errors import DataError


@dataclass(frozen=True)
class FixedTest:
    """A parent run's test split, kept as the benchmark: its labels, its images (path, class name), its folder."""

    run: Path
    labels: list
    images: list
    root: Path


def _found(roots: list, workers: int) -> list:
    """Every image of every folder as (folder index, root, path, class name, sha256): all its splits."""
    found = []
    for k, root in enumerate(roots):
        dataset = scan_folder(root, 0.0, 0.0, min_classes=1)
        for note in dataset.notes:
            progress(f"warning: {note}")
        for sample in (s for split in dataset.splits.values() for s in split):
            found.append((k, root, Path(sample.path), dataset.labels[sample.label]))
    hashed = digests([f[2] for f in found], workers)
    unreadable = [f[2] for f, d in zip(found, hashed) if d is None]
    if unreadable:  # as a single folder does: skipped, said
        progress(
            f"warning: {len(unreadable)} unreadable file(s) left out, e.g. {unreadable[0]} "
            "(a broken symlink, or no read permission)"
        )
    return [(*f, d) for f, d in zip(found, hashed) if d is not None]


def _one_class_each(found: list) -> list:
    """Copies of one image (same bytes) under two classes are refused, naming both; copies in one class kept once."""
    first: dict = {}
    kept = []
    for item in found:
        seen = first.setdefault(item[4], item)
        if seen is item:
            kept.append(item)
        elif seen[3] != item[3]:
            raise DataError(
                f"the same image is labelled {seen[3]!r} in {seen[2]} and {item[3]!r} in {item[2]}: "
                "remove the wrongly labelled copy"
            )
    return kept


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def merged_labels(found_classes, first: list | None) -> list:
    """The parent's labels first, in its order (its head's rows), then new classes sorted."""
    first = list(first or [])
    labels = first + sorted({c for c in found_classes} - set(first))
    forms: dict = {}
    for name in labels:
        forms.setdefault(unicodedata.normalize("NFC", name).casefold(), []).append(name)
    clashes = [names for names in forms.values() if len(names) > 1]
    if clashes:  # they may look identical on screen: show their escapes
        shown = "; ".join(" and ".join(ascii(n) for n in names) for names in clashes)
        raise DataError(
            f"class folders {shown} differ only in case or Unicode normalisation (a copy through macOS may decompose "
            "names): rename the folders so that each class has one exact name in every --data folder"
        )
    return labels


def _link(view: Path, item: tuple, tags: list) -> Path:
    k, root, path, label, _ = item
    link = view / label / tags[k] / path.relative_to(root)
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(path.resolve(), link)
    return link


def merged_dataset(data: list, view, val_fraction: float, test_fraction: float, seed: int, fixed=None, workers=4):
    """The folders of `data` (paths or built-in names) as one dataset whose images are symlinks under `view`.

    `fixed` (a FixedTest): a parent run's test split: those images are the test split, exactly, and the
    parent's labels come first. Returns (FolderDataset, the folders its images come from).
    """
    roots = [Path(resolve_dataset(d)[0]).resolve() for d in data]  # resolved: a folder given through a symlink is
    # the same folder as the parent's recorded (resolved) one
    for root in roots:
        if not Path(root).is_dir():
            raise DataError(f"dataset folder {root} does not exist: pass class-per-folder directories to --data")
    first = fixed.labels if fixed else None
    sources = list(roots)
    if fixed and Path(fixed.root).resolve() not in roots:
        sources.append(Path(fixed.root).resolve())  # the parent's test images stay where the parent found them
    found = _found(roots, workers)
    test_items = []
    if fixed:
        root_k = sources.index(Path(fixed.root).resolve())
        given = os.path.abspath(fixed.root)  # the parent's images, moved onto the same folder's resolved path
        test_paths = [sources[root_k] / Path(os.path.abspath(p)).relative_to(given) for p, _ in fixed.images]
        test_items = [
            (root_k, sources[root_k], p, label, d)
            for p, label, d in zip(test_paths, (c for _, c in fixed.images), digests(test_paths, workers))
        ]
    kept = _one_class_each(test_items + found)
    test_digests = {item[4] for item in test_items}
    rest = [item for item in kept if item[4] not in test_digests]
    classes = {item[3] for item in rest}
    if fixed and not set(fixed.labels) <= classes:
        missing = ", ".join(c for c in fixed.labels if c not in classes)
        raise DataError(
            f"class(es) {missing} of {fixed.run} have no images in --data {' '.join(map(str, roots))}: a model "
            "started from a run keeps its classes (give that run's dataset with --data too, or train from scratch)"
        )
    labels = merged_labels(classes, first)
    tags = [f"{k}-{Path(r).resolve().name}" for k, r in enumerate(sources)]
    view = Path(view)
    os.chmod(view, 0o777 & ~_umask())  # mkdtemp's 0700 would travel into RUN/data
    index = {name: i for i, name in enumerate(labels)}
    test = [Sample(_link(view, item, tags), index[item[3]], item[4]) for item in test_items]
    samples = [Sample(_link(view, item, tags), index[item[3]], item[4]) for item in rest]
    shares = {"val": val_fraction, "test": 0.0 if fixed else test_fraction}
    splits = seeded_split(samples, shares, seed, view)
    if fixed:
        splits["test"] = test
    dataset = FolderDataset(view, labels, splits, "init-from" if fixed else "merged")
    return dataset, sources
