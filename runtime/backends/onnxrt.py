"""ONNX Runtime with execution providers in the device profile's order (e.g. TensorRT -> CUDA -> CPU), and
whether its idle intra-op threads spin (the profile's `ort_allow_spinning`; None keeps ONNX Runtime's default).

Thread safety: InferenceSession.run may be called from several threads at once, so no lock.
"""

from __future__ import annotations

import logging

import numpy as np

from edgecls.runtime.backends.base import TensorSpec, pick, run_in_fixed_batches

log = logging.getLogger("edgecls.runtime")

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(float16)": "float16",
}
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
# Idle intra-op threads busy-wait for the next op ("1", ORT's default) or sleep ("0"): spinning wins on an idle
# machine and can lose badly on a busy one, where the spinning threads take the core from the thread with work.
SPINNING = "session.intra_op.allow_spinning"


def choose_providers(preferred, available) -> tuple:
    """Keep the preferred providers that this onnxruntime build has, in order; always end with CPU.

    Returns (providers, skipped) where skipped lists (provider, reason).
    """
    chosen, skipped = [], []
    for p in preferred or DEFAULT_PROVIDERS:
        if p in available:
            if p not in chosen:
                chosen.append(p)
        else:
            skipped.append((p, "not in this onnxruntime build (install onnxruntime-gpu for CUDA/TensorRT)"))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen, skipped


class OnnxRuntimeBackend:
    name = "onnxruntime"
    module = "onnxruntime"
    package = "onnxruntime"

    def __init__(
        self,
        path,
        threads: int | None = None,
        providers=None,
        input_name="",
        output_name="",
        allow_spinning: bool | None = None,
        **_,
    ):
        import onnxruntime as ort

        from edgecls.runtime.backends.threads import default_threads

        options = ort.SessionOptions()
        self.threads = threads or default_threads()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        if allow_spinning is not None:  # None: ONNX Runtime's own default (its intra-op threads spin)
            options.add_session_config_entry(SPINNING, "1" if allow_spinning else "0")
        self.allow_spinning = allow_spinning
        options.log_severity_level = 3
        wanted, skipped = choose_providers(providers, ort.get_available_providers())
        if any(p in wanted for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")) and hasattr(
            ort, "preload_dlls"
        ):
            try:  # CUDA/cuDNN from pip's nvidia-* packages are not on the loader path by themselves
                ort.preload_dlls()
            except Exception as exc:  # best effort: system-wide CUDA (e.g. JetPack) needs none of this
                log.debug("onnxruntime.preload_dlls failed: %s", exc)
        for provider, reason in skipped:
            log.warning("onnxruntime: skipping %s: %s", provider, reason)
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        self.providers = self._session.get_providers()
        for provider in wanted:
            if provider not in self.providers:
                log.warning(
                    "onnxruntime: %s could not be initialised here (driver or library missing); using %s",
                    provider,
                    self.providers[0],
                )
        log.info("onnxruntime: running on %s", self.providers[0])
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        self.input_spec = _spec(inputs[pick(inputs, input_name, "input", path)])
        self.output_spec = _spec(outputs[pick(outputs, output_name, "output", path)])
        self._input_name, self._output_names = self.input_spec.name, [self.output_spec.name]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_fixed_batches(self._run, batch, self.input_spec.shape[0] if self.input_spec.shape else -1)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(self._output_names, {self._input_name: np.ascontiguousarray(batch)})[0]


def _spec(arg) -> TensorSpec:
    """An onnxruntime NodeArg as a TensorSpec; symbolic dimensions (batch) are -1."""
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))
