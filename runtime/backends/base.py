"""The backend protocol: load a model file, describe its input, run a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Plain description of a model input or output, as the backend sees it."""

    name: str
    shape: tuple  # batch dimension may be -1 / None
    dtype: str  # numpy dtype name: float32, int8, uint8
    scale: float = 0.0  # affine quantization: real = scale * (q - zero_point)
    zero_point: int = 0
    # whose arithmetic `session.quantize` copies for this input: "onnx" (QuantizeLinear) or "litert"
    quantize_like: str = "onnx"


class Backend(Protocol):
    """One model file loaded in one inference engine.

    `run` takes a batch already in the model's input dtype (quantized if the model says so)
    and returns the raw first output; quantization and top-k live above the backends.
    `run` may be called from several threads at once; a backend whose engine is not safe
    for that serializes `run` with a lock.
    """

    name: str
    input_spec: TensorSpec
    output_spec: TensorSpec

    def run(self, batch: np.ndarray) -> np.ndarray: ...
