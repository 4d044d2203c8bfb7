"""LiteRT (ai-edge-litert) and its predecessor tflite-runtime: the same Interpreter API.

Thread safety: one interpreter per backend, behind a lock. An Interpreter keeps its input
and output in buffers of its own, so two threads interleaving set_tensor/invoke/get_tensor
get each other's scores or RuntimeErrors. The lock makes resize+set+invoke+get one step:
threads sharing a Classifier take turns (the interpreter's own threads still run each
invoke in parallel); open one Classifier per thread where they must run side by side.
"""

from __future__ import annotations

import threading

import numpy as np

from edgecls.runtime.backends.base import TensorSpec, pick


def _spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    shape = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
    return TensorSpec(detail["name"], shape, np.dtype(detail["dtype"]).name, float(scale), int(zero_point), "litert")


class _InterpreterBackend:
    module = ""

    def __init__(self, path, threads: int | None = None, input_name="", output_name="", **_):
        import importlib

        from edgecls.runtime.backends.threads import default_threads

        interpreter_cls = importlib.import_module(self.module).Interpreter
        self.threads = threads or default_threads()
        self._interp = interpreter_cls(model_path=str(path), num_threads=self.threads)
        self._interp.allocate_tensors()
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        self._in = inputs[pick(inputs, input_name, "input", path)]
        self._out = outputs[pick(outputs, output_name, "output", path)]
        self.input_spec, self.output_spec = _spec(self._in), _spec(self._out)
        self._batch = int(self._in["shape"][0])
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch)
        n = batch.shape[0]
        with self._lock:  # resize, set, invoke and get are one step (see the module docstring)
            if n != self._batch:
                self._interp.resize_tensor_input(self._in["index"], [n, *self._in["shape"][1:]], strict=False)
                self._interp.allocate_tensors()
                self._batch = n
            self._interp.set_tensor(self._in["index"], batch)
            self._interp.invoke()
            return self._interp.get_tensor(self._out["index"]).copy()


class LiteRTBackend(_InterpreterBackend):
    name = "litert"
    module = "ai_edge_litert.interpreter"
    package = "ai-edge-litert"


class TFLiteRuntimeBackend(_InterpreterBackend):
    """For older Raspberry Pi OS images; tflite-runtime 2.14 is the last release and needs numpy < 2."""

    name = "tflite-runtime"
    module = "tflite_runtime.interpreter"
    package = "tflite-runtime"
