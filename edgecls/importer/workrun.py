"""The run directory an import hands to `convert`: model.keras + metadata.json + split.json in a work folder.

With --data the set is split (seeded, by content) into a calibration part (the run's `train`) and a test
part; without it, generated images labelled by the source model stand in for both, so the float
artifacts are still checked against the source model (and nothing claims accuracy on real data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.core import rundir
from edgecls.core.splits import CONTENT_RANK, split_record
from edgecls.runtime.preprocess import PreprocessSpec, preprocess_file

TEST_FRACTION = 0.5  # of --data: the test part verifies and gates, the rest calibrates int8
GENERATED = 64  # images generated without --data


@dataclass
class _Split:
    paths: list
    digests: list
    y: np.ndarray
    skipped: tuple = ()


def split_data(data: Path, labels: list, seed: int) -> dict:
    """{"train": samples, "test": samples} of --data, with folder names checked against the labels."""
    from edgecls.core.datasets.folder import dataset_classes, scan_folder
    from edgecls.core.rundata import check_classes

    check_classes(data, dataset_classes(data), labels)
    dataset = scan_folder(data, 0.0, TEST_FRACTION, seed, min_classes=1)
    ours = [labels.index(name) for name in dataset.labels]  # the scan sorts classes; the model has its own order
    return {
        name: [type(s)(s.path, ours[s.label], s.digest) for s in dataset.splits[name]] for name in ("train", "test")
    }


def generate(folder: Path, model, spec: PreprocessSpec, labels: list, seed: int) -> dict:
    """Smooth random images at the model's size, each filed under the class the model gives it."""
    import cv2

    rng = np.random.default_rng(seed)
    for label in labels:
        (folder / label).mkdir(parents=True)
    files = []
    for i in range(GENERATED):
        coarse = rng.uniform(0, 255, (4 + i % 5, 4 + i % 7, 3)).astype("float32")
        image = cv2.resize(coarse, (spec.width, spec.height), interpolation=cv2.INTER_CUBIC).clip(0, 255)
        path = folder / f"{i:03d}.png"
        cv2.imwrite(str(path), image.astype("uint8"))
        files.append(path)
    batch = np.stack([preprocess_file(p, spec) for p in files])
    classes = np.asarray(model.predict(batch, verbose=0)).reshape(len(files), -1)
    classes = (classes[:, 0] > 0.5).astype(int) if classes.shape[1] == 1 else classes.argmax(1)
    samples = []
    for path, label in zip(files, classes.tolist()):
        moved = folder / labels[label] / path.name
        path.rename(moved)
        samples.append((moved, label))
    from edgecls.core.splits import Sample, file_digest

    every = [Sample(p, y, file_digest(p)) for p, y in samples]
    return {"train": every[::2], "test": every[1::2]}


def write_run(run: Path, model, spec: PreprocessSpec, labels: list, splits: dict, root: Path, facts: dict) -> None:
    """model.keras, split.json and metadata.json (last) of the work run `convert` reads."""
    run.mkdir(parents=True)
    model.save(run / rundir.MODEL_FILE)
    loaded = {
        name: _Split([s.path for s in samples], [s.digest for s in samples], np.asarray([s.label for s in samples]))
        for name, samples in splits.items()
    }
    (run / rundir.SPLIT_FILE).write_text(split_record(root, labels, loaded))
    metadata = {
        "format": rundir.RUN_FORMAT,
        "labels": labels,
        "preprocess": spec.to_dict(),
        "input_shape": [int(v) for v in model.input_shape[1:]],
        "head": facts["head"],
        "model": {"name": "imported", "framework": facts["framework"]},
        "dataset": {
            "source": str(Path(root).resolve()),
            "builtin": None,
            "split_method": CONTENT_RANK,
            "val_fraction": 0.0,
            "test_fraction": TEST_FRACTION,
            "counts": {name: len(samples) for name, samples in splits.items()},
        },
        "seed": facts["seed"],
    }
    (run / rundir.METADATA_FILE).write_text(json.dumps(metadata, indent=2))
