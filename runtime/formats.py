"""The artifact formats a bundle can hold: the one place their names are spelled.

A container (`tflite`, `onnx`) is what the manifest's artifact `format` names and picks the runtime
backend; an artifact format is a container at one precision (`tflite-int8`). The runtime reads
bundles by these names and `edgecls.converters.formats` gives each an exporter; nothing else spells them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Container:
    name: str  # the manifest's artifact `format`: picks the runtime backend
    suffix: str
    package: str  # what to install when no backend runs it
    profile_options: tuple = ()  # (backend keyword, device profile field) pairs that apply to it


FP32, FP16, INT8 = "fp32", "fp16", "int8"  # precisions


@dataclass(frozen=True)
class ArtifactFormat:
    name: str
    format: str  # a Container's name
    precision: str  # FP32 | FP16 | INT8
    suffix: str

    @property
    def file(self) -> str:
        return f"model_{self.precision}{self.suffix}"

    @property
    def calibrated(self) -> bool:
        """Integer artifacts are calibrated on a representative set (the manifest notes which)."""
        return self.precision == INT8


# A device profile's `backends` orders the engines (each container takes those that run it); `providers` and
# `ort_allow_spinning` are ONNX Runtime's, `openvino_device` and `openvino_precision` OpenVINO's.
TFLITE = Container("tflite", ".tflite", "ai-edge-litert", (("prefer", "backends"),))
ONNX = Container(
    "onnx",
    ".onnx",
    "onnxruntime",
    (
        ("prefer", "backends"),
        ("providers", "providers"),
        ("allow_spinning", "ort_allow_spinning"),
        ("device", "openvino_device"),
        ("precision", "openvino_precision"),
    ),
)
CONTAINERS = {c.name: c for c in (TFLITE, ONNX)}


def _artifact(container: Container, precision: str) -> ArtifactFormat:
    return ArtifactFormat(f"{container.name}-{precision}", container.name, precision, container.suffix)


TFLITE_FP32, TFLITE_FP16, TFLITE_INT8 = (_artifact(TFLITE, p) for p in (FP32, FP16, INT8))
ONNX_FP32, ONNX_INT8 = (_artifact(ONNX, p) for p in (FP32, INT8))

# The order `convert` exports them in (and `--formats all`).
ARTIFACT_FORMATS = {f.name: f for f in (TFLITE_FP32, TFLITE_FP16, TFLITE_INT8, ONNX_FP32, ONNX_INT8)}

# A device's default choice, first runnable wins: int8 first, LiteRT before ONNX Runtime.
DEFAULT_PREFERENCE = tuple(f.name for f in (TFLITE_INT8, ONNX_INT8, TFLITE_FP32, ONNX_FP32, TFLITE_FP16))


def backend_options(fmt: str, profile) -> dict:
    """The keywords a backend for container `fmt` takes from a device profile (none for an unknown one)."""
    container = CONTAINERS.get(fmt)
    if container is None:
        return {}
    return {keyword: getattr(profile, field, None) for keyword, field in container.profile_options}


def install_advice(formats) -> str:
    """The package to install for a bundle whose containers `formats` no installed backend runs."""
    return next((c.package for c in CONTAINERS.values() if c.name in formats), ONNX.package)
