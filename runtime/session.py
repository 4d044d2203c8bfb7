"""A loaded artifact that takes float tensors and returns class probabilities.

Quantization of int8/uint8 inputs and dequantization of outputs live here once, above the
backends; so does the sigmoid head's expansion to two classes.
"""

from __future__ import annotations

import numpy as np

from edgecls.runtime.backends import open_backend
from edgecls.runtime.backends.base import TensorSpec


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float input -> the model's int8/uint8 input, bit for bit as the runtime's own quantize op.

    Both round x/scale to the nearest integer, ties to even, and only then add the zero point
    (rounding x/scale + zero_point moves every tie one step when the zero point is odd):
    ONNX Runtime's QuantizeLinear divides by the scale in float32; LiteRT's default kernels
    (the optimized QUANTIZE and XNNPACK) multiply by the float32 reciprocal, which differs
    near ties. TFLite's reference kernel, which the runtime does not use, rounds ties away from 0.
    """
    if spec.dtype not in ("int8", "uint8") or not spec.scale:
        return x.astype(spec.dtype, copy=False)
    x = np.asarray(x, dtype=np.float32)
    if spec.quantize_like == "litert":
        scaled = x * np.float32(1.0 / spec.scale)
    else:
        scaled = x / np.float32(spec.scale)
    info = np.iinfo(spec.dtype)
    q = np.rint(scaled) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype in ("int8", "uint8") and spec.scale:
        return (y.astype(np.float32) - spec.zero_point) * np.float32(spec.scale)
    return y.astype(np.float32, copy=False)


def to_probabilities(y: np.ndarray, head: str) -> np.ndarray:
    """(N, C) probabilities; a one-unit sigmoid head p becomes [1 - p, p]."""
    y = y.reshape(y.shape[0], -1)
    if head == "sigmoid" and y.shape[1] == 1:
        return np.concatenate([1.0 - y, y], axis=1)
    return y


def input_table(spec, tensor: TensorSpec) -> np.ndarray | None:
    """Normalization and input quantization folded into one lookup: uint8 pixel -> model input.

    The model's input depends on each pixel value alone, so a 256-entry table per channel, built
    by the very `normalize` and `quantize` the float path runs, gives bit for bit the same tensor
    for the cost of one `cv2.LUT` (~60 us at 224x224x3 against ~0.5 ms of float math and copies).
    Returns (256,) when every channel shares a table, else (1, 256, C); None when the model takes
    the raw uint8 pixels.
    """
    from edgecls.runtime.preprocess import normalize

    if spec.dtype == "uint8":
        return None
    ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 256, 1), spec.channels, axis=2)
    table = quantize(normalize(ramp, spec), tensor)
    if all(np.array_equal(table[..., 0], table[..., c]) for c in range(1, table.shape[-1])):
        return np.ascontiguousarray(table[0, :, 0])
    return np.ascontiguousarray(table)


def apply_table(pixels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) pixels through an `input_table` -> the model input (H, W, C)."""
    if table.dtype == np.float16:  # OpenCV 4.x's LUT has no 16-bit float kernel
        if table.ndim == 1:
            return table[pixels]
        return table.reshape(256, -1)[pixels, np.arange(pixels.shape[-1])]
    import cv2

    return cv2.LUT(pixels, table).reshape(pixels.shape)


class ModelSession:
    def __init__(self, path, fmt: str, head: str = "softmax", prefer=None, threads=None, providers=None):
        self.backend = open_backend(path, fmt, prefer=prefer, threads=threads, providers=providers)
        self.head = head

    @property
    def input_spec(self) -> TensorSpec:
        return self.backend.input_spec

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Float input batch (N, H, W, C) -> probabilities (N, classes)."""
        outs = []
        for start in range(0, len(x), batch_size):
            outs.append(self.run_prepared(quantize(x[start : start + batch_size], self.backend.input_spec)))
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    def run_prepared(self, batch: np.ndarray) -> np.ndarray:
        """A batch already in the model's input dtype (see `input_table`) -> probabilities (N, classes)."""
        raw = self.backend.run(batch)
        return to_probabilities(dequantize(raw, self.backend.output_spec), self.head)
