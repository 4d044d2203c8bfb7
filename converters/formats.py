"""The one table of export formats: export, verification and benchmarks iterate over it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportFormat:
    name: str
    format: str  # tflite | onnx: picks the runtime backend
    precision: str  # fp32 | fp16 | int8
    suffix: str

    @property
    def file(self) -> str:
        return f"model_{self.precision}{self.suffix}"


FORMATS = {
    f.name: f
    for f in (
        ExportFormat("tflite-fp32", "tflite", "fp32", ".tflite"),
        ExportFormat("tflite-fp16", "tflite", "fp16", ".tflite"),
        ExportFormat("tflite-int8", "tflite", "int8", ".tflite"),
        ExportFormat("onnx-fp32", "onnx", "fp32", ".onnx"),
        ExportFormat("onnx-int8", "onnx", "int8", ".onnx"),
    )
}


def parse_formats(value: str | None) -> list:
    from edgecls.runtime.errors import EdgeclsError

    if not value or value == "all":
        return list(FORMATS.values())
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise EdgeclsError(f"unknown format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)} or all")
    return [FORMATS[n] for n in FORMATS if n in names]  # table order
