"""The one table of export formats: each artifact format (named in `edgecls.runtime.formats`) with its exporter.

`convert` iterates over it, and nothing outside it branches on a format: an entry's `attempts(context, fmt)`
gives its (description, build) pairs in remedy order, and its `finish(path, run)`, when it has one, runs
after each build, before verification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgecls.converters import onnx, tflite
from edgecls.runtime import formats as names
from edgecls.runtime.errors import EdgeclsError


@dataclass(frozen=True)
class ExportFormat:
    artifact: names.ArtifactFormat
    attempts: Callable  # (ExportContext, ExportFormat) -> [(description, build(out) -> notes)]
    finish: Callable | None = None  # (path, run) -> None

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def format(self) -> str:  # the container: picks the runtime backend
        return self.artifact.format

    @property
    def precision(self) -> str:
        return self.artifact.precision

    @property
    def suffix(self) -> str:
        return self.artifact.suffix

    @property
    def file(self) -> str:
        return self.artifact.file


_EXPORTERS = {
    names.TFLITE_FP32.name: (tflite.float_attempts, None),
    names.TFLITE_FP16.name: (tflite.float_attempts, None),
    names.TFLITE_INT8.name: (tflite.int8_attempts, None),
    names.ONNX_FP32.name: (onnx.fp32_attempts, onnx.finish),
    names.ONNX_INT8.name: (onnx.int8_attempts, onnx.finish),
}
FORMATS = {name: ExportFormat(artifact, *_EXPORTERS[name]) for name, artifact in names.ARTIFACT_FORMATS.items()}


def parse_formats(value: str | None) -> list:
    if not value or value == "all":
        return list(FORMATS.values())
    names_given = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names_given if n not in FORMATS]
    if unknown:
        raise EdgeclsError(f"unknown format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)} or all")
    return [FORMATS[n] for n in FORMATS if n in names_given]  # table order
