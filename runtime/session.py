"""A loaded artifact that takes float tensors and returns class probabilities.

Quantization of int8/uint8 inputs and dequantization of outputs live here once, above the
backends; so does the sigmoid head's expansion to two classes.
"""

from __future__ import annotations

import numpy as np

from runtime.backends import open_backend
from runtime.backends.base import TensorSpec


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype not in ("int8", "uint8") or not spec.scale:
        return x.astype(spec.dtype, copy=False)
    info = np.iinfo(spec.dtype)
    q = np.round(x / spec.scale + spec.zero_point)
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
            raw = self.backend.run(quantize(x[start : start + batch_size], self.backend.input_spec))
            outs.append(to_probabilities(dequantize(raw, self.backend.output_spec), self.head))
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
