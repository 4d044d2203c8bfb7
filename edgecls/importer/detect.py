"""What kind of model a path holds, read from its content (a renamed file is still found).

Each kind is one small check: a .keras zip (it holds config.json), an HDF5 file that holds a Keras model
(the `model_config` attribute), a SavedModel folder (saved_model.pb), a Teachable Machine folder
(keras_model.h5 + labels.txt), a .tflite FlatBuffer (identifier "TFL3" at bytes 4..8), an ONNX ModelProto.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError

KERAS, KERAS_H5, SAVEDMODEL, TEACHABLE, TFLITE, ONNX = "keras", "keras-h5", "savedmodel", "teachable", "tflite", "onnx"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TAKES = "a .keras file, a Keras .h5 file, a SavedModel folder, a Teachable Machine folder, a .tflite or an .onnx file"


@dataclass(frozen=True)
class Source:
    kind: str  # one of the constants above
    model: Path  # the file to load (a Teachable Machine folder's keras_model.h5)
    labels: Path | None = None  # a labels file that came with the model (Teachable Machine's labels.txt)

    @property
    def framework(self) -> str:
        """The manifest's `source.framework`: Teachable Machine's export is a Keras 2 .h5."""
        return KERAS_H5 if self.kind == TEACHABLE else self.kind


def detect(path) -> Source:
    """The kind of model at `path`; an EdgeclsError naming what `edgecls import` takes otherwise."""
    path = Path(path)
    if not path.exists():
        raise EdgeclsError(f"{path} does not exist: give {TAKES}")
    if path.is_dir():
        return _folder(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise EdgeclsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head == HDF5_MAGIC:
        return _hdf5(path)
    if head[4:8] == b"TFL3":
        return Source(TFLITE, path)
    if zipfile.is_zipfile(path):
        return _zip(path)
    if _is_onnx(path):
        return Source(ONNX, path)
    raise EdgeclsError(f"{path} is not a model edgecls import can read: give {TAKES}")


def _folder(path: Path) -> Source:
    if (path / "keras_model.h5").is_file():
        labels = path / "labels.txt"
        _hdf5(path / "keras_model.h5")
        return Source(TEACHABLE, path / "keras_model.h5", labels if labels.is_file() else None)
    if (path / "saved_model.pb").is_file():
        return Source(SAVEDMODEL, path)
    raise EdgeclsError(
        f"folder {path} holds neither saved_model.pb (a SavedModel) nor keras_model.h5 (a Teachable Machine "
        f"export): give {TAKES}"
    )


def _hdf5(path: Path) -> Source:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            keras_model = "model_config" in f.attrs
    except OSError as exc:
        raise EdgeclsError(f"cannot read {path} as HDF5: {exc} (the file is damaged or incomplete)") from None
    if not keras_model:
        raise EdgeclsError(
            f"{path} is not a Keras model (no model_config): an HDF5 of weights only or other data; "
            f"save the whole model with model.save(...) and import that file"
        )
    return Source(KERAS_H5, path)


def _zip(path: Path) -> Source:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise EdgeclsError(f"cannot read {path} as a zip archive: {exc}") from None
    if "config.json" in names:
        return Source(KERAS, path)
    raise EdgeclsError(f"{path} is a zip archive but not a .keras model (no config.json): give {TAKES}")


def _is_onnx(path: Path) -> bool:
    """Whether the file parses as an ONNX ModelProto with a graph (random bytes rarely do; text never has a graph)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf raises DecodeError, onnx its own types
        return False
    return len(model.graph.node) > 0 and len(model.graph.input) > 0
