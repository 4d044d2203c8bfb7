"""What a convert is asked to do (`ConvertOptions`), checked once before any work."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from edgecls.converters.formats import FORMATS
from edgecls.runtime.errors import EdgeclsError


@dataclass
class ConvertOptions:
    formats: list = field(default_factory=lambda: list(FORMATS.values()))
    prune: str | None = None  # "structured=0.5" | "sparsity=0.7"
    prune_epochs: int = 8
    max_prune_drop: float = 1.0  # accuracy points
    calibration_size: int = 200
    calibration_method: str = "minmax"  # for ONNX: minmax | percentile | entropy
    max_drop: float = 1.0  # accuracy points an artifact may lose against Keras
    overwrite: bool = False
    tar: bool = False
    check_images: int = 6  # held-out images kept in the bundle for the on-device smoke test after a flash
    seed: int = 0
    workers: int = 4
    qat: str = "remedy"  # tflite-int8 quantization-aware training: remedy (when PTQ fails the gate) | always | never
    qat_epochs: int = 3
    allow_partial_test: bool = False  # verify on a test split that lost images since training (recorded)
    temp_in_stage: bool = False  # the libraries' temp files in the stage too: for a process that does nothing else
    import_source: dict | None = None  # `edgecls import`: the manifest's `source` record (the run is a work folder)


def check_max_drop(value: float, option: str = "--max-drop") -> None:
    """A limit of accuracy points given by a user must be a number of 0 or more (nan compares false with
    everything: `drop > nan` would turn the gate off)."""
    if not _number(value) or not math.isfinite(value) or value < 0:
        raise EdgeclsError(f"{option} {value} is not a number of accuracy points of 0 or more: use e.g. {option} 1")


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ConvertOptions field -> (least value, the CLI option): whole numbers
_COUNTS = {
    "prune_epochs": (1, "--prune-epochs"),
    "calibration_size": (1, "--calibration-size"),
    "check_images": (0, "--check-images"),
    "seed": (0, "--seed"),
    "workers": (1, "workers"),
    "qat_epochs": (1, "--qat-epochs"),
}


def check_options(options: ConvertOptions) -> None:
    """Every numeric option, before any work: the CLI checks its flags too, a library caller is checked here.

    The two limits in accuracy points must be finite (a negative one, demanding a gain, makes every
    attempt fail, which tests use; the CLI refuses it)."""
    if not options.formats:
        raise EdgeclsError("no formats to export: pass --formats")
    for name, option in (("max_drop", "--max-drop"), ("max_prune_drop", "--max-prune-drop")):
        value = getattr(options, name)
        if not _number(value) or not math.isfinite(value):
            raise EdgeclsError(f"{option} {value} is not a number of accuracy points: use e.g. {option} 1")
    for name, (least, option) in _COUNTS.items():
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise EdgeclsError(f"{option} {value!r} is not a whole number of {least} or more")
