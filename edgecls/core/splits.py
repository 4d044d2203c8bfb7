"""Train/val/test splits: how a seeded split is drawn, and the record of it a run keeps (split.json).

The seeded split ranks each class's files by sha256(seed, file sha256) and takes the first
n_test for test, the next n_val for val, the rest for train. A file's place in that order depends
only on its own bytes, so the split does not depend on file names, order or other classes, and
copies of one image (same bytes) sit side by side: a boundary that would fall between copies moves
before them, so all copies go to the later split and no test image is a copy of a training image
of its class. Growing a dataset moves few files: adding k images to a class of 3 or more keeps the
relative order of the old ones, so at most k old images of that class cross each boundary
(test|val and val|train), and other classes do not change at all. (A class growing past 2 images
gets its first test and val images, which may be old ones.) Old images can still change split: a
run therefore records the split it trained on, and `convert`/`evaluate` use that record rather
than drawing the split again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from edgecls.core import rundir
from edgecls.core.progress import counted
from edgecls.runtime.atomic import write_text
from edgecls.runtime.errors import DataError

SPLIT_FILE = rundir.SPLIT_FILE
SPLIT_FORMAT = "edgecls-split/1"
CONTENT_RANK = "content-rank/1"
PERMUTATION = "permutation/0"  # before runs recorded their split: a seeded shuffle of the scan order
METHODS = (CONTENT_RANK, PERMUTATION)
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: its file, its class index, and (when known) the sha256 of its bytes."""

    path: Path
    label: int
    digest: str | None = None


def file_digest(path) -> str | None:
    """sha256 of a regular file's bytes; None when it cannot be read or is not a regular file (a FIFO
    would block the open or the read forever, a device never end): then it counts as gone."""
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO returns at once
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb") as f:
            fd = None
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    finally:
        if fd is not None:
            os.close(fd)
    return h.hexdigest()


def digests(paths: list, workers: int = 4) -> list:
    with ThreadPoolExecutor(max_workers=workers) as pool:  # hashlib releases the GIL on large reads
        return list(counted(pool.map(file_digest, paths), len(paths), "hashing"))


def _counts(n: int, fractions: dict) -> tuple:
    """(n_test, n_val) for a class of n images: rounded shares, at least one each from 3 images up."""
    if n < 3:
        return 0, 0
    n_test = int(round(n * fractions["test"]))
    n_val = int(round(n * fractions["val"]))
    if fractions["test"] > 0:
        n_test = max(1, n_test)
    if fractions["val"] > 0:
        n_val = max(1, n_val)
    return n_test, n_val


def _rank_key(sample: Sample, seed: int, root: Path) -> tuple:
    relative = Path(sample.path).relative_to(root).as_posix() if root else str(sample.path)
    content = sample.digest or f"unreadable:{relative}"
    return hashlib.sha256(f"edgecls-split:{seed}:{content}".encode()).hexdigest(), relative


def seeded_split(
    samples: list, fractions: dict, seed: int, root: Path | None = None, method: str | None = None
) -> dict:
    """Split samples per class; each class contributes its share to every split."""
    method = method or CONTENT_RANK
    if method not in METHODS:
        raise DataError(
            f"unknown split method {method!r} in the run's metadata: this edgecls knows {', '.join(METHODS)}"
        )
    if method == CONTENT_RANK and (fractions["test"] > 0 or fractions["val"] > 0):
        known = [s for s in samples if s.digest]
        missing = [s for s in samples if not s.digest]
        samples = known + [Sample(s.path, s.label, d) for s, d in zip(missing, digests([s.path for s in missing]))]
    rng = np.random.default_rng(seed)
    by_label: dict = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    out = {name: [] for name in SPLIT_NAMES}
    for label in sorted(by_label):
        group = by_label[label]
        if method == CONTENT_RANK:
            ordered = sorted(group, key=lambda s: _rank_key(s, seed, root))
        else:
            ordered = [group[i] for i in rng.permutation(len(group))]
        n_test, n_val = _counts(len(group), fractions)
        if method == CONTENT_RANK:
            n_test = _before_copies(ordered, n_test)
            n_val = max(n_test, _before_copies(ordered, n_test + n_val)) - n_test
        out["test"].extend(ordered[:n_test])
        out["val"].extend(ordered[n_test : n_test + n_val])
        out["train"].extend(ordered[n_test + n_val :])
    return out


def _before_copies(ordered: list, i: int) -> int:
    """Move a boundary back so copies of one file (adjacent: same rank) never straddle it."""
    while 0 < i < len(ordered) and ordered[i].digest and ordered[i].digest == ordered[i - 1].digest:
        i -= 1
    return i


# --- the record a run keeps --------------------------------------------------------------------------


def split_record(root, labels: list, loaded: dict) -> str:
    """split.json text for the loaded splits: per split, [relative path, sha256, label index] of every
    image training used, and the files it skipped. One entry per line: compact and diffable."""
    root = Path(root)
    rel = lambda p: Path(p).relative_to(root).as_posix()  # noqa: E731
    header = {"format": SPLIT_FORMAT, "method": CONTENT_RANK, "labels": list(labels)}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()] + ['  "splits": {']
    names = [n for n in SPLIT_NAMES if n in loaded]
    for i, name in enumerate(names):
        split = loaded[name]
        entries = [
            json.dumps(e)
            for e in sorted([rel(p), d, int(y)] for p, d, y in zip(split.paths, split.digests, split.y.tolist()))
        ]
        lines.append(f"    {json.dumps(name)}: [")
        lines.append(",\n".join(f"      {e}" for e in entries))
        lines.append("    ]" + ("," if i < len(names) - 1 else ""))
    skipped = sorted(rel(p) for split in loaded.values() for p, _ in split.skipped)
    lines += ["  },", f'  "skipped": {json.dumps(skipped)}', "}"]
    return "\n".join(lines) + "\n"


def write_split_record(run_dir, root, labels: list, loaded: dict) -> None:
    """Write RUN/split.json (atomically): the exact files of each split, so later steps reuse them."""
    write_text(Path(run_dir) / SPLIT_FILE, split_record(root, labels, loaded))


@dataclass
class RecordedSplit:
    labels: list
    splits: dict  # name -> list of (relative path, sha256, label)
    skipped: list

    @property
    def paths(self) -> set:
        return {p for entries in self.splits.values() for p, _, _ in entries} | set(self.skipped)


def read_split_record(run_dir) -> RecordedSplit | None:
    """The run's recorded split, or None for runs trained before splits were recorded."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
            raise ValueError(
                f"format {data.get('format') if isinstance(data, dict) else None!r}, expected {SPLIT_FORMAT}"
            )
        labels, skipped = data["labels"], data.get("skipped", [])
        if not isinstance(labels, list) or not isinstance(data["splits"], dict) or not isinstance(skipped, list):
            raise ValueError("labels, splits or skipped of the wrong type")
        splits = {name: [_entry(name, e, len(labels)) for e in entries] for name, entries in data["splits"].items()}
        return RecordedSplit(list(labels), splits, [_relative(p) for p in skipped])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read {path}: {exc} (the run is damaged: train again)") from exc


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _relative(path) -> str:
    """A recorded path must stay inside the dataset folder: relative, with no `..`, `.` or empty part."""
    if (
        not isinstance(path, str)
        or PurePosixPath(path).is_absolute()
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ValueError(f"path {path!r} is not a path inside the dataset folder")
    return path


def _entry(name: str, entry, n_labels: int) -> tuple:
    """One [relative path, sha256, label index] entry, checked so a damaged record cannot read
    outside the dataset or label an image with a class the model does not have."""
    if name not in SPLIT_NAMES or not isinstance(entry, list) or len(entry) != 3:
        raise ValueError(f"entry {entry!r} of split {name!r} is not [path, sha256, label]")
    path, digest, label = entry
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ValueError(f"entry {path!r} has no sha256")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_labels:
        raise ValueError(f"entry {path!r} has label {label!r}, not one of the {n_labels} classes")
    return _relative(path), digest, label


def recorded_samples(record: RecordedSplit, root, names, workers: int = 4) -> tuple:
    """The recorded splits as Samples under `root`, keeping only files still there with the same bytes.

    Returns (splits, problems): problems is one line naming what was dropped, or None.
    """
    root = Path(root)
    wanted = [(name, entry) for name in names for entry in record.splits.get(name, [])]
    found = digests([root / p for _, (p, _, _) in wanted], workers)
    splits = {name: [] for name in names}
    gone, changed = [], []
    for (name, (path, digest, label)), now in zip(wanted, found):
        if now is None:
            gone.append(path)
        elif now != digest:
            changed.append(path)
        else:
            splits[name].append(Sample(root / path, label, digest))
    problems = None
    if gone or changed:
        first = (gone + changed)[0]
        problems = (
            f"{len(gone)} file(s) of the run's recorded split are gone and {len(changed)} changed since training "
            f"(first: {first}); dropped them"
        )
    return splits, problems
