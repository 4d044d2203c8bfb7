"""TFLite Metadata (what Model Maker, MediaPipe and Edge Impulse write): an input's normalization and colour
space, the output's label file.

The metadata is a FlatBuffer (schema: TFLite Support's `metadata_schema.fbs`, vendored as
`metadata_schema_py_generated`) stored in the model's buffer named by the `TFLITE_METADATA` metadata entry
(read with LiteRT's own model schema, `ai_edge_litert.schema_py_generated`). Associated files (labels.txt)
live in a zip archive appended to the .tflite file, which Python's zipfile reads in place.

A NormalizationOptions mean/std applies to the image's pixel values (TFLite Support's ImageProcessor
normalizes the 0..255 pixels: (pixel - mean) / std), which are already our 0..255 pixel units; for a
quantized (uint8) input the quantization parameters take over and the model is fed raw pixels.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.importer import metadata_schema_py_generated as meta_schema
from edgecls.runtime.errors import EdgeclsError

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MAX_ASSOCIATED = 1_000_000  # bytes of a label file read from the model: a label file is kilobytes
COLOR_SPACES = {meta_schema.ColorSpaceType.RGB: "rgb", meta_schema.ColorSpaceType.GRAYSCALE: "gray"}


@dataclass
class TfliteMetadata:
    """What a .tflite file's metadata says, per input and output tensor index (in subgraph order)."""

    mean: dict = field(default_factory=dict)  # input index -> tuple (0..255 pixel units)
    std: dict = field(default_factory=dict)
    color: dict = field(default_factory=dict)  # input index -> rgb | gray
    labels: dict = field(default_factory=dict)  # output index -> the label file's text
    label_file: dict = field(default_factory=dict)  # output index -> its name in the appended zip
    warnings: list = field(default_factory=list)  # what could not be read: the options decide instead


def metadata_buffer(model_bytes: bytes) -> bytes | None:
    """The TFLITE_METADATA buffer's bytes, or None when the model has none."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            buffer = model.Buffers(entry.Buffer())
            if buffer.Offset() > 1:  # a model over 2 GB keeps its buffers after the FlatBuffer
                return bytes(model_bytes[buffer.Offset() : buffer.Offset() + buffer.Size()])
            return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else None
    return None


def read_metadata(path) -> TfliteMetadata:
    """The metadata of the .tflite at `path` (empty when it has none; a warning and empty when it does not read)."""
    path = Path(path)
    found = TfliteMetadata()
    data = metadata_buffer(path.read_bytes())
    if data is None:
        return found
    unread = f"{path.name}'s TFLITE_METADATA does not read as TFLite Metadata"
    if len(data) < 8 or not meta_schema.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0):
        found.warnings.append(f"{unread} (no M001 identifier): the options decide")
        return found
    try:
        model = meta_schema.ModelMetadataT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # a damaged FlatBuffer: struct.error, IndexError, UnicodeDecodeError...
        found.warnings.append(f"{unread} ({type(exc).__name__}: {str(exc)[:80]}): the options decide")
        return found
    subgraph = (model.subgraphMetadata or [None])[0]
    if subgraph is None:
        return found
    for i, tensor in enumerate(subgraph.inputTensorMetadata or []):
        _read_input(tensor, i, found)
    for i, tensor in enumerate(subgraph.outputTensorMetadata or []):
        for file in tensor.associatedFiles or []:
            if file.type == meta_schema.AssociatedFileType.TENSOR_AXIS_LABELS and file.name:
                try:
                    found.labels[i] = associated_file(path, _text(file.name))
                    found.label_file[i] = _text(file.name)
                except EdgeclsError as exc:
                    found.warnings.append(str(exc))
                break
    return found


def _read_input(tensor, i: int, found: TfliteMetadata) -> None:
    for unit in tensor.processUnits or []:
        if unit.optionsType == meta_schema.ProcessUnitOptions.NormalizationOptions and unit.options is not None:
            mean, std = unit.options.mean, unit.options.std
            if mean is not None and std is not None and len(mean) and len(std):
                found.mean[i] = tuple(float(v) for v in mean)
                found.std[i] = tuple(float(v) for v in std)
    content = tensor.content
    if content is not None and content.contentPropertiesType == meta_schema.ContentProperties.ImageProperties:
        color = COLOR_SPACES.get(getattr(content.contentProperties, "colorSpace", None))
        if color is not None:
            found.color[i] = color


def associated_file(path, name: str) -> str:
    """An associated file's text, from the zip appended to the model; over MAX_ASSOCIATED bytes it is refused,
    by the size the archive declares and by what really inflates (a declared size can lie)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo(name).file_size > MAX_ASSOCIATED:
                raise OSError(f"over {MAX_ASSOCIATED // 1_000_000} MB")
            with archive.open(name) as file:
                data = file.read(MAX_ASSOCIATED + 1)
            if len(data) > MAX_ASSOCIATED:
                raise OSError(f"over {MAX_ASSOCIATED // 1_000_000} MB")
            return data.decode("utf-8-sig")
    except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError, EOFError, RuntimeError) as exc:
        raise EdgeclsError(
            f"{path}'s metadata names the label file {name!r} but it cannot be read from the model ({exc}): "
            f"pass --labels FILE"
        ) from None


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
