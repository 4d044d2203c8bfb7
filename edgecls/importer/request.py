"""What an import is asked to do, what the model says about its input, and how the two make a spec.

The model's own word comes first where it has one (TFLite Metadata, ONNX `metadata_props`, a Keras model's
`Rescaling`/`Normalization` layers, the input tensor's shape); an option the user gave fills what the model
leaves open, and overrides what it says only when the two differ, with a warning line naming both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import COLORS, NORMALIZATIONS, RESIZE_MODES, PreprocessSpec

LAYOUTS = ("nhwc", "nchw")
OUTPUTS = ("probs", "logits")
NORMALIZE = {**NORMALIZATIONS, "none": ((0.0,), (1.0,))}  # none: the model takes 0..255 floats


@dataclass(frozen=True)
class Declared:
    """The preprocessing options of `edgecls import`; None where the user did not say."""

    size: tuple | None = None  # (height, width)
    color: str | None = None  # rgb | bgr | gray
    layout: str | None = None  # nhwc | nchw
    mean: tuple | None = None  # per channel, 0..255 pixel units
    std: tuple | None = None
    normalize: str | None = None  # scale | symmetric | imagenet | none (exclusive with mean/std)
    resize: str | None = None  # stretch | center-crop | letterbox
    output: str | None = None  # probs | logits

    def __post_init__(self):
        for name, value, allowed in (
            ("color", self.color, COLORS),
            ("layout", self.layout, LAYOUTS),
            ("normalize", self.normalize, tuple(NORMALIZE)),
            ("resize", self.resize, RESIZE_MODES),
            ("output", self.output, OUTPUTS),
        ):
            if value is not None and value not in allowed:
                raise EdgeclsError(f"unknown --{name} {value!r}: use one of {', '.join(allowed)}")
        if self.normalize is not None and (self.mean is not None or self.std is not None):
            raise EdgeclsError("--normalize and --mean/--std both set the normalization: give one of them")


@dataclass(frozen=True)
class ModelHints:
    """What a source read from the model itself; None where the model does not say."""

    size: tuple | None = None  # (height, width) from the input tensor's shape, when fixed
    channels: int | None = None  # 1 or 3, from the input tensor's shape
    layout: str | None = None  # nhwc | nchw, from the input tensor's shape or metadata
    mean: tuple | None = None
    std: tuple | None = None
    color: str | None = None
    output: str | None = None  # probs | logits
    labels: list | None = None  # e.g. a TFLite model's associated label file
    said_by: dict = field(default_factory=dict)  # field -> where the model says it (for messages)
    raw_input: bool = False  # the model takes uint8 pixels (dtype uint8 input): no normalization applies


@dataclass(frozen=True)
class ImportRequest:
    model: Path  # the user's file or folder
    out: Path
    labels_file: Path | None = None  # None: the model must carry its labels (TFLite Metadata)
    data: Path | None = None  # a class-per-folder set, folder names = labels: verify, calibrate, gate
    declared: Declared = Declared()
    input_name: str | None = None
    output_name: str | None = None
    max_drop: float = 1.0  # accuracy points an artifact may lose against the source model
    overwrite: bool = False
    tar: bool = False
    formats: str | None = None  # e.g. "tflite-int8,onnx-fp32" for a Keras source; None = every one it can make
    check_images: int = 6
    seed: int = 0


@dataclass
class ImportResult:
    bundle: Path
    manifest: dict
    table: str  # the artifacts' summary, one line each
    lines: list = field(default_factory=list)  # what the user should read: what was read, skipped, warned


def resolve_spec(hints: ModelHints, declared: Declared, warn) -> tuple:
    """(PreprocessSpec, output) from the model's hints completed by the user's options; `warn(line)` for overrides.

    Raises EdgeclsError naming the option to give when something needed is neither said nor declared.
    """
    size = _pick("size", hints.size, declared.size, warn, hints)
    if size is None:
        raise EdgeclsError("the model's input size is not fixed: give it with --size N or --size WxH")
    layout = _pick("layout", hints.layout, declared.layout, warn, hints) or "nhwc"
    color = _pick("color", hints.color, declared.color, warn, hints)
    if color is None:
        color = "gray" if hints.channels == 1 else "rgb"
    if hints.channels is not None and (hints.channels == 1) != (color == "gray"):
        raise EdgeclsError(
            f"the model takes {hints.channels} channel(s) but --color {color} gives {1 if color == 'gray' else 3}: "
            f"use --color {'gray' if hints.channels == 1 else 'rgb'}"
        )
    mean, std = _normalization(hints, declared, warn)
    output = _pick("output", hints.output, declared.output, warn, hints) or "probs"
    spec = PreprocessSpec(
        int(size[0]),
        int(size[1]),
        color=color,
        resize=declared.resize or "stretch",
        mean=mean,
        std=std,
        dtype="uint8" if hints.raw_input else "float32",
        layout=layout.upper(),
    )
    return spec, output


def _pick(name: str, said, declared, warn, hints: ModelHints):
    if said is not None and declared is not None and tuple(_listed(said)) != tuple(_listed(declared)):
        where = hints.said_by.get(name, "the model")
        warn(f"{where} says {name} {_shown(said)}, --{name} says {_shown(declared)}: using --{name}")
    return declared if declared is not None else said


def _normalization(hints: ModelHints, declared: Declared, warn) -> tuple:
    if declared.normalize is not None:
        mean, std = NORMALIZE[declared.normalize]
        declared = replace(declared, normalize=None, mean=mean, std=std)
    mean = _pick("mean", hints.mean, declared.mean, warn, hints)
    std = _pick("std", hints.std, declared.std, warn, hints)
    if hints.raw_input:
        return (0.0,), (1.0,)
    if mean is None and std is None:
        raise EdgeclsError(
            "the model does not say how its input is normalized: give --normalize scale|symmetric "
            "(none: it takes 0..255 pixels and normalizes them itself) or --mean R,G,B --std R,G,B "
            "(0..255 pixel units, e.g. ImageNet's --mean 123.675,116.28,103.53 "
            "--std 58.395,57.12,57.375)"
        )
    return tuple(mean or (0.0,)), tuple(std or (1.0,))


def _listed(value):
    return value if isinstance(value, (tuple, list)) else (value,)


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)
