"""The run directory: what training leaves behind and what converters read.

RUN/model.keras, metadata.json, split.json, metrics.json, history.json, curves.png, confusion_matrix.png
(split.json: the exact files of each split, see `edgecls.core.splits`; runs before it lack it)
and, for a run on several --data folders (or started with --init-from), data/: symlinks to its images
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.json"
SPLIT_FILE = "split.json"
HISTORY_FILE = "history.json"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion_matrix.png"
DATA_DIR = "data"  # a run on several --data folders: one symlink per image, its dataset folder (see datasets/merged.py)
RUN_FORMAT = "edgecls-run/1"


@dataclass
class Run:
    path: Path
    metadata: dict

    @property
    def labels(self) -> list:
        return list(self.metadata["labels"])

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.metadata["preprocess"])

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def load_model(self):
        import keras

        try:
            return keras.models.load_model(self.model_path, compile=False)
        except Exception as exc:  # Keras raises many types for a bad archive
            raise EdgeclsError(
                f"cannot load {self.model_path}: {str(exc).splitlines()[0][:200]} "
                f"(the file is corrupt or not a Keras 3 model: train again with `edgecls train`)"
            ) from exc


def open_run(path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise EdgeclsError(f"run directory {path} does not exist: pass the --out folder of `edgecls train`")
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise EdgeclsError(
            f"{path} has no {METADATA_FILE}: it is not an edgecls run directory "
            f"(train one with `edgecls train --out {path}`)"
        )
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgeclsError(f"cannot read {meta_path}: {exc}") from exc
    for key in ("labels", "preprocess", "input_shape"):
        if key not in metadata:
            raise EdgeclsError(f"{meta_path} has no {key!r}: it was not written by edgecls train, train again")
    if not (path / MODEL_FILE).is_file():
        raise EdgeclsError(f"{path} has no {MODEL_FILE}: the run is incomplete, train again")
    return Run(path, metadata)
