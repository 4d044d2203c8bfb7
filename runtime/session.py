"""A loaded artifact that takes float tensors and returns class probabilities.

Quantization of int8/uint8 inputs, the NCHW transpose of `predict`'s float input, dequantization
of outputs and logits -> probabilities live here once, above the backends; so does the sigmoid
head's expansion to two classes.
"""

from __future__ import annotations

import numpy as np

from edgecls.runtime.backends import open_backend
from edgecls.runtime.backends.base import TensorSpec
from edgecls.runtime.bundle import OUTPUTS
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import LAYOUTS


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float input -> the model's int8/uint8 input, bit for bit as the runtime's own quantize op.

    Both round x/scale to the nearest integer, ties to even, and only then add the zero point
    (rounding x/scale + zero_point moves every tie one step when the zero point is odd):
    ONNX Runtime's QuantizeLinear divides by the scale in float32; LiteRT's default kernels
    (the optimized QUANTIZE and XNNPACK) multiply by the float32 reciprocal, which differs
    near ties. TFLite's reference kernel, which the runtime does not use, rounds ties away from 0.

    A uint8 `x` is pixels of a spec whose dtype is uint8: the model's own input values (a quantized model
    that takes camera bytes, as many exported TFLite models do), so they are cast, never scaled.
    """
    if x.dtype == np.uint8 or spec.dtype not in ("int8", "uint8") or not spec.scale:
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


def to_probabilities(y: np.ndarray, head: str, output: str = "probs") -> np.ndarray:
    """(N, C) probabilities from a dequantized output; a one-unit sigmoid head p becomes [1 - p, p].

    output="logits" (an imported model without its own softmax): softmax over the classes, or the
    sigmoid for a one-unit sigmoid head, in float64 with the maximum subtracted (no overflow for
    logits in the thousands), returned in float32 like every other output.
    """
    y = y.reshape(y.shape[0], -1)
    sigmoid_head = head == "sigmoid" and y.shape[1] == 1
    if output == "logits":
        z = y.astype(np.float64)
        if sigmoid_head:  # [sigmoid(-z), sigmoid(z)]: the softmax of [0, z], exact for a tiny 1 - s too
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    if sigmoid_head:
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


def apply_table(pixels: np.ndarray, table: np.ndarray, layout: str = "NHWC") -> np.ndarray:
    """uint8 (H, W, C) pixels through an `input_table` -> the model input, (H, W, C) or (C, H, W) for NCHW.

    For NCHW the uint8 pixels are split into planes (one 150 KB uint8 pass at 224x224x3) and each plane
    goes through its channel's table straight into the output: no float tensor is ever transposed.
    """
    import cv2

    if layout == "NCHW":
        return _apply_planes(cv2, pixels, table)
    if table.dtype == np.float16:  # OpenCV 4.x's LUT has no 16-bit float kernel
        if table.ndim == 1:
            return table[pixels]
        return table.reshape(256, -1)[pixels, np.arange(pixels.shape[-1])]
    return cv2.LUT(pixels, table).reshape(pixels.shape)


def _apply_planes(cv2, pixels: np.ndarray, table: np.ndarray) -> np.ndarray:
    h, w, c = pixels.shape
    out = np.empty((c, h, w), table.dtype)
    planes = cv2.split(pixels) if c > 1 else (pixels.reshape(h, w),)
    for k, plane in enumerate(planes):
        lut = table if table.ndim == 1 else table[0, :, k]
        if table.dtype == np.float16:
            out[k] = lut[plane]
        else:
            cv2.LUT(plane, np.ascontiguousarray(lut), dst=out[k])
    return out


class ModelSession:
    """One artifact in its backend, with what the manifest says about its tensors.

    layout: the model's input layout ("NHWC" | "NCHW"); output: "probs" | "logits" (see `to_probabilities`);
    input_name/output_name: the model's tensors to use ("" = its first); backend_options: which engine and how,
    by keyword (`open_backend`'s prefer, providers, and one engine's own settings from the profile:
    allow_spinning, device, precision). Open a bundle's artifact with `for_artifact`, so these travel from
    the manifest.
    """

    def __init__(
        self,
        path,
        fmt: str,
        head: str = "softmax",
        *,
        threads=None,
        layout: str = "NHWC",
        output: str = "probs",
        input_name: str = "",
        output_name: str = "",
        **backend_options,
    ):
        layout = layout.upper()
        if layout not in LAYOUTS or output not in OUTPUTS:
            raise EdgeclsError(
                f"unknown model input layout {layout!r} or output {output!r}: "
                f"use one of {', '.join(LAYOUTS)} and one of {', '.join(OUTPUTS)}"
            )
        self.backend = open_backend(
            path, fmt, threads=threads, input_name=input_name, output_name=output_name, **backend_options
        )
        self.head, self.layout, self.output = head, layout, output

    @classmethod
    def for_artifact(cls, path, manifest, artifact, **backend_options) -> ModelSession:
        """The artifact of a bundle at `path` (already verified), opened as its manifest says.

        backend_options: prefer, threads, providers and engine options (`open_backend`)."""
        return cls(
            path,
            artifact.format,
            head=manifest.head,
            layout=manifest.preprocess.layout,
            output=manifest.output,
            input_name=artifact.input_name,
            output_name=artifact.output_name,
            **backend_options,
        )

    @property
    def input_spec(self) -> TensorSpec:
        return self.backend.input_spec

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Float input batch (N, H, W, C) as `preprocess` gives it -> probabilities (N, classes).

        For an NCHW model the batch is transposed here: the reference path (verification, tests);
        serving takes the input table's path (`Classifier.prepare`), which never transposes floats.
        """
        outs = []
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            if self.layout == "NCHW":
                chunk = chunk.transpose(0, 3, 1, 2)
            outs.append(self.run_prepared(quantize(chunk, self.backend.input_spec)))
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    def run_prepared(self, batch: np.ndarray) -> np.ndarray:
        """A batch in the model's own layout and input dtype (see `input_table`) -> probabilities (N, classes)."""
        raw = self.backend.run(batch)
        return to_probabilities(dequantize(raw, self.backend.output_spec), self.head, self.output)
