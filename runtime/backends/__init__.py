"""Inference backends behind one small interface (see `base.Backend`).

Chosen from the artifact's format and the device profile's preferences:
.tflite -> LiteRT (ai-edge-litert), falling back to tflite-runtime; .onnx -> ONNX Runtime.
"""

from edgecls.runtime.backends.base import Backend, TensorSpec
from edgecls.runtime.backends.registry import BACKENDS, available_backends, open_backend

__all__ = ["Backend", "TensorSpec", "BACKENDS", "available_backends", "open_backend"]
