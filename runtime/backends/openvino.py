"""OpenVINO: the bundle's ONNX artifacts (fp32, and QDQ int8 as they are) on an Intel CPU, iGPU or NPU.

Chosen only when asked (a profile's `backends` naming "openvino", or `prefer`): ONNX Runtime stays the
default for ONNX. `device` is OpenVINO's device name ("CPU", "GPU", "NPU", "GPU.1"); a device OpenVINO does
not see is a one-line error naming the ones it does, unless the profile gives fallbacks ("GPU,CPU": the
first one present is used, with a warning naming the one skipped).

Precision: on a CPU with bf16 (Zen 4, Sapphire Rapids) OpenVINO runs the float ops of fp32 and int8 models alike
in bf16 by default (an int8 artifact's softmax, its dequantized adds, the ops between its QDQ pairs); every
artifact is compiled with INFERENCE_PRECISION_HINT f32 unless `precision` (the profile's `openvino_precision`)
says otherwise, so it gives the scores the converter verified.

Thread safety: a CompiledModel may run several infer requests at once, but one request may not; each
calling thread gets its own request (made on its first `run`), so no lock.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from edgecls.runtime.backends.base import TensorSpec, pick, run_in_fixed_batches
from edgecls.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.runtime")

DEFAULT_DEVICE = "CPU"
VIRTUAL = ("AUTO", "MULTI", "HETERO")  # OpenVINO's devices that pick among the real ones themselves
_TYPES = {"f32": "float32", "f16": "float16", "u8": "uint8", "i8": "int8", "i64": "int64", "i32": "int32"}


def _choices(wanted: str) -> list:
    """Devices to try in order: "GPU,CPU" -> ["GPU", "CPU"]; OpenVINO's own lists after AUTO:, MULTI: or HETERO:
    stay whole, one choice ("AUTO:GPU,CPU" -> ["AUTO:GPU,CPU"]: OpenVINO falls back to the CPU itself)."""
    parts = [d.strip() for d in wanted.split(",")]
    choices = []
    for i, part in enumerate(parts):
        if ":" in part and part.split(":")[0] in VIRTUAL:
            return choices + [",".join(p for p in parts[i:] if p)]
        if part:
            choices.append(part)
    return choices


def choose_device(wanted: str | None, available) -> str:
    """The first device of `wanted` ("GPU,CPU": in order) that OpenVINO sees; a one-line error if none is.

    "GPU" also matches "GPU.0", "GPU.1" (OpenVINO numbers several GPUs) and the generic "AUTO"/"MULTI:..." pass
    through: OpenVINO itself picks among what it sees then.
    """
    choices = _choices(wanted or DEFAULT_DEVICE)
    if not choices:
        raise EdgeclsError(f"OpenVINO device {wanted!r} is empty: give one such as CPU, GPU or GPU,CPU")
    available = list(available)
    for device in choices:
        if device.split(":")[0] in VIRTUAL or device in available:
            chosen = device
        elif any(a.split(".")[0] == device for a in available):
            chosen = device
        else:
            continue
        skipped = choices[: choices.index(device)]
        if skipped:
            log.warning("openvino: %s not present here (it sees %s); using %s", ", ".join(skipped), available, chosen)
        return chosen
    raise EdgeclsError(
        f"OpenVINO sees no device {' or '.join(choices)}: it sees {', '.join(available) or 'none'} "
        f"(install the device's driver, e.g. intel-opencl-icd for an iGPU, or use a profile with CPU as fallback)"
    )


def compile_config(threads: int | None, precision: str | None) -> dict:
    """The compile_model properties: latency hint, threads, and the float ops' `precision` (default f32), for
    int8 artifacts too: their float ops in bf16 lost 2.5 points of top-1 agreement with ONNX Runtime on an
    EfficientNet-B0 (91.7 % against 94.2 % at f32, 360 photos)."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision or "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _spec(port, name: str = "") -> TensorSpec:
    """The port as a TensorSpec, called `name` (the manifest's) when given, else by one of its names."""
    shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
    element = port.get_element_type().get_type_name()
    return TensorSpec(name or port.get_any_name(), shape, _TYPES.get(element, element))


def _pick_port(ports: list, name: str, kind: str, path):
    """The port that has `name` among its names ("" = the first): an Identity node leaves a port two names
    ({'probs', 'scores'}), and get_any_name() may give either."""
    for port in ports if name else ports[:1]:
        if not name or name in port.get_names():
            return port
    pick([{"name": n} for port in ports for n in sorted(port.get_names())], name, kind, path)  # raises, naming all


class OpenVINOBackend:
    name = "openvino"
    module = "openvino"
    package = "openvino"
    extra = "openvino"  # pip install 'edgecls[openvino]'

    def __init__(
        self,
        path,
        threads: int | None = None,
        device: str | None = None,
        precision: str | None = None,
        input_name="",
        output_name="",
        **_,
    ):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        self.device = choose_device(device, core.available_devices)
        self.config = compile_config(threads, precision)
        self._compiled = core.compile_model(model, self.device, self.config)
        inputs, outputs = list(self._compiled.inputs), list(self._compiled.outputs)
        self._in = _pick_port(inputs, input_name, "input", path)
        self._out = _pick_port(outputs, output_name, "output", path)
        self.input_spec, self.output_spec = _spec(self._in, input_name), _spec(self._out, output_name)
        self._requests = threading.local()
        self.providers = [self.device]  # what the bench and logs show as the engine's device
        log.info("openvino: running on %s (%s)", self.device, self.config)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_fixed_batches(self._run, batch, self.input_spec.shape[0] if self.input_spec.shape else -1)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:  # one infer request per calling thread: a request may not run twice at once
            request = self._requests.request = self._compiled.create_infer_request()
        result = request.infer({self._in: np.ascontiguousarray(batch)})
        return np.array(result[self._out], copy=True)
