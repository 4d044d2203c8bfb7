"""Which backend runs which artifact, and whether its package is installed.

OpenVINO runs ONNX artifacts only when asked (`prefer` names it: a profile's `backends`, the bench's
`--engines`): ONNX Runtime stays the default for ONNX, with or without OpenVINO installed.
"""

from __future__ import annotations

import importlib.util
import logging

from edgecls.runtime.backends.litert import LiteRTBackend, TFLiteRuntimeBackend
from edgecls.runtime.backends.onnxrt import OnnxRuntimeBackend
from edgecls.runtime.backends.openvino import OpenVINOBackend
from edgecls.runtime.errors import EdgeclsError, MissingDependencyError
from edgecls.runtime.formats import ONNX, TFLITE

log = logging.getLogger("edgecls.runtime")

# format -> backends in default order of preference
BACKENDS = {
    TFLITE.name: (LiteRTBackend, TFLiteRuntimeBackend),
    ONNX.name: (OnnxRuntimeBackend,),
}
# format -> backends tried only when `prefer` names them (never a default, nor what makes a format runnable)
OPT_IN = {ONNX.name: (OpenVINOBackend,)}
_BY_NAME = {cls.name: cls for table in (BACKENDS, OPT_IN) for classes in table.values() for cls in classes}


def _installed(cls) -> bool:
    try:
        return importlib.util.find_spec(cls.module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> dict:
    """{backend name: installed?}"""
    return {name: _installed(cls) for name, cls in _BY_NAME.items()}


def backends_for(fmt: str, prefer=None) -> list:
    """The backend classes that may run a `fmt` artifact, in the order they are tried: `prefer`'s first
    (names of backends for other formats are passed over), then the default order without the opt-in ones."""
    if fmt not in BACKENDS:
        raise EdgeclsError(f"no backend runs {fmt!r} artifacts: supported formats are {', '.join(BACKENDS)}")
    candidates = list(BACKENDS[fmt])
    if prefer:
        unknown = [p for p in prefer if p not in _BY_NAME]
        if unknown:
            raise EdgeclsError(f"unknown backend(s) {unknown}: choose from {', '.join(_BY_NAME)}")
        runs_it = candidates + list(OPT_IN.get(fmt, ()))
        ordered = [_BY_NAME[p] for p in prefer if _BY_NAME[p] in runs_it]
        candidates = list(dict.fromkeys(ordered)) + [c for c in candidates if c not in ordered]
    return candidates


def open_backend(
    path, fmt: str, prefer=None, threads=None, providers=None, input_name="", output_name="", **engine_options
):
    """Load `path` in the first installed backend for `fmt` (see `backends_for`), reading the input and output
    tensors of those names ("" = the model's first). engine_options: what one engine takes from a profile
    (allow_spinning for ONNX Runtime; device and precision for OpenVINO); the others ignore them."""
    candidates = backends_for(fmt, prefer)
    errors = []
    for cls in candidates:
        if not _installed(cls):
            errors.append(cls)
            continue
        try:
            backend = cls(
                path,
                threads=threads,
                providers=providers,
                input_name=input_name,
                output_name=output_name,
                **{k: v for k, v in engine_options.items() if v is not None},
            )
        except EdgeclsError:  # the backend's own one-line message (a tensor name the model lacks)
            raise
        except ImportError as exc:  # e.g. tflite-runtime built against numpy 1.x
            log.warning(
                "%s is installed but cannot load (%s); trying the next backend", cls.name, str(exc).splitlines()[0]
            )
            errors.append(cls)
            continue
        except Exception as exc:  # OpenVINO's message starts "Exception from src/...cpp:117:": its last line says why
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            raise EdgeclsError(f"{cls.name} cannot load {path}: {lines[-1][:300]}") from exc
        if errors:
            log.info("%s: using %s (%s unavailable)", fmt, cls.name, ", ".join(c.name for c in errors))
        return backend
    first = candidates[0]
    raise MissingDependencyError(first.package, getattr(first, "extra", "runtime"), f"needed to run {fmt} artifacts")
