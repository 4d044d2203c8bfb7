"""The two sides of a comparison: a run (its Keras model) or a bundle (the runtime that will serve it), and
the images both are asked about, each with its true class name."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgecls.runtime.errors import DataError, EdgeclsError


class RunModel:
    """A run directory: its Keras model, with the preprocessing it trained with."""

    def __init__(self, path):
        from edgecls.core import rundir

        self.path = Path(path)
        self.run = rundir.open_run(path)
        self.labels = self.run.labels

    def predict(self, images: list, workers: int = 4) -> dict:
        """{path: top-1 label} for the images that decode (the others are left out, with a warning line)."""
        from edgecls.core.data import load_split, predict_split
        from edgecls.core.metrics import probabilities
        from edgecls.core.splits import Sample

        split = load_split([Sample(Path(p), 0) for p, _ in images], self.run.preprocess, workers, "compare")
        model = self.run.load_model()
        probs, _ = predict_split(lambda x: probabilities(model.predict_on_batch(x)), split, 64)
        top = probs.argmax(axis=1)
        return {str(p): self.labels[int(i)] for p, i in zip(split.paths, top)}


class BundleModel:
    """A bundle: its artifact run by the runtime a device uses (no TensorFlow)."""

    def __init__(self, path):
        from edgecls.runtime.bundle import load_bundle

        self.path = Path(path)
        self.bundle = load_bundle(path)
        self.bundle.verify_files()
        self.labels = self.bundle.manifest.labels

    def predict(self, images: list, workers: int = 4) -> dict:
        from edgecls.runtime.classifier import Classifier
        from edgecls.runtime.errors import ImageDecodeError
        from edgecls.runtime.preprocess import load_image

        classifier = Classifier(self.bundle, top_k=1)
        out, skipped = {}, []
        for path, _ in images:
            try:
                prepared = classifier.prepare(load_image(path))
            except ImageDecodeError as exc:
                skipped.append(str(exc))
                continue
            out[str(path)] = self.labels[int(np.argmax(classifier.infer(prepared[None])[0]))]
        if skipped:
            print(f"warning: {len(skipped)} image(s) did not decode and are left out ({skipped[0]})", file=sys.stderr)
        return out


def open_model(path, which: str):
    """A run directory (metadata.json) or a bundle (manifest.json, or a .tar)."""
    from edgecls.core.rundir import METADATA_FILE
    from edgecls.runtime.bundle import MANIFEST

    p = Path(path)
    if p.is_dir() and (p / METADATA_FILE).is_file():
        return RunModel(p)
    if (p.is_dir() and (p / MANIFEST).is_file()) or (p.is_file() and p.suffix == ".tar"):
        return BundleModel(p)
    if not p.exists():
        raise EdgeclsError(f"{which} {p} does not exist: give a run directory (edgecls train) or a bundle")
    raise EdgeclsError(
        f"{which} {p} is neither a run directory (no metadata.json) nor a bundle (no manifest.json): "
        "give the --out of edgecls train or edgecls convert"
    )


def truth_images(data) -> tuple:
    """([(path, true class name)], shown) for every image of a class-per-folder dataset (dot folders ignored)."""
    from edgecls.core.datasets import resolve_dataset, scan_folder

    root = resolve_dataset(data)[0]
    dataset = scan_folder(root, 0.0, 0.0, min_classes=1)
    samples = [s for split in dataset.splits.values() for s in split]
    return [(str(s.path), dataset.labels[s.label]) for s in samples], str(root)


def _test_record(model, which: str):
    from edgecls.core.splits import read_split_record

    record = read_split_record(model.path) if isinstance(model, RunModel) else None
    if record is None or not record.splits.get("test"):
        kind = "a bundle" if isinstance(model, BundleModel) else "a run without a recorded test split"
        raise EdgeclsError(f"{which} {model.path} is {kind}: give held-out images with --data FOLDER")
    return record


def shared_test_images(a, b, workers: int = 4) -> tuple:
    """The recorded test split of run A, when run B's test split holds exactly the same images (by sha256):
    what `train --init-from A` keeps. Truth by class name, so B may have grown classes."""
    from edgecls.core.rundata import run_dataset

    record_a, record_b = _test_record(a, "A"), _test_record(b, "B")
    digests_a = {d for _, d, _ in record_a.splits["test"]}
    digests_b = {d for _, d, _ in record_b.splits["test"]}
    if digests_a != digests_b:
        raise DataError(
            f"A and B were not tested on the same images ({len(digests_a ^ digests_b)} of their test files differ; "
            f"B shares A's test split when trained with --init-from A): give held-out images with --data FOLDER"
        )
    dataset = run_dataset(a.run, workers, ["test"])
    samples = dataset.splits.get("test", [])
    if len(samples) != len(record_a.splits["test"]):
        raise DataError(
            f"{len(record_a.splits['test']) - len(samples)} test image(s) of {a.path} are gone or changed: "
            "restore the dataset, or give held-out images with --data FOLDER"
        )
    images = [(str(s.path), a.labels[s.label]) for s in samples]
    return images, f"the test split of {a.path}"
