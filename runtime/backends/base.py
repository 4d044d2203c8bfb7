"""The backend protocol: load a model file, describe its input, run a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgecls.runtime.errors import EdgeclsError


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


def pick(tensors: list, name: str, kind: str, path) -> int:
    """Index of the tensor called `name` among `tensors` (objects with .name or dicts with "name"); "" = the first.

    A model without that name is a one-line error listing the names it has."""
    names = [t["name"] if isinstance(t, dict) else t.name for t in tensors]
    if not name:
        return 0
    if name in names:
        return names.index(name)
    raise EdgeclsError(
        f"{path} has no {kind} named {name!r}: its {kind}s are {', '.join(map(repr, names))} "
        f"(fix the {kind} name in the manifest, or import the model again with the right one)"
    )


def run_in_fixed_batches(run, batch: np.ndarray, fixed: int) -> np.ndarray:
    """`run` over `batch` for a model whose batch dimension is fixed at `fixed` (a plain torch.onnx.export has 1):
    chunks of that size, the last one padded with copies of its last row, only the real rows kept."""
    if fixed < 1 or len(batch) in (0, fixed):
        return run(batch)
    outs = []
    for start in range(0, len(batch), fixed):
        chunk = batch[start : start + fixed]
        if len(chunk) < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), axis=0)])
        outs.append(run(chunk)[: len(batch) - start])
    return np.concatenate(outs)


class Backend(Protocol):
    """One model file loaded in one inference engine.

    `run` takes a batch already in the model's input dtype (quantized if the model says so) and
    returns the raw output: the tensors named at load (`input_name`, `output_name`), else the
    model's first input and output; quantization and top-k live above the backends.
    `run` may be called from several threads at once; a backend whose engine is not safe
    for that serializes `run` with a lock.
    """

    name: str
    input_spec: TensorSpec
    output_spec: TensorSpec

    def run(self, batch: np.ndarray) -> np.ndarray: ...
