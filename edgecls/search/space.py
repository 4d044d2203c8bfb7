"""The search space of `edgecls search`: architecture and its width/depth, input size, resize mode.

`suggest` draws one candidate from an Optuna trial with conditional parameters (a simple net's widths and
depth, a MobileNet's alpha, MobileNetV3's minimalistic flag only exist for the model that has them), and
`count` builds the candidate's Keras model untrained to count its multiply-accumulates and parameters: the
latency model's input, known before anything is trained.

Every parameter name has one fixed set of choices (Optuna refuses a categorical whose choices change between
trials): the backbones draw their size from their own parameter, the sizes of 32 px or more, and are left out
of the models when no size is that large. A candidate the model's own checks still refuse (`count`) is a trial
ended with that one-line reason, not a crash.
"""

from __future__ import annotations

import math
from dataclasses import replace

from edgecls.search.types import Candidate

# What the search draws from unless the user narrows it (--models, --sizes).
DEFAULT_MODELS = ("simple", "mobilenetv2", "mobilenetv3small", "mobilenetv3large")
OPT_IN_MODELS = ("efficientnetb0",)  # only with --models: 4 M parameters at any input size, slow on small devices
MODELS = DEFAULT_MODELS + OPT_IN_MODELS
# What each family costs when trained from scratch with the search's short schedule (for --models' help): on the
# shapes set at 48 px, 10 epochs (benchmarks/results/device_search.txt) the default simple net reached 98 %,
# at half width 83 %, the MobileNets 19-45 % (chance 20 %). The warm start (study.py) begins with simple; narrow
# --models to simple on small data, keep the MobileNets for larger images and longer --epochs.
MODEL_COSTS = {
    "simple": "trains from scratch in a few epochs on small data; the warm start begins here",
    "mobilenetv2": "from scratch needs many epochs and larger images (19-45 % on shapes at 10 epochs)",
    "mobilenetv3small": "as mobilenetv2; hard-swish runs slowly in int8 (minimalistic avoids it)",
    "mobilenetv3large": "as mobilenetv3small, with more MACs at the same alpha and size",
    "efficientnetb0": "opt-in: 4 M parameters at any size, slow on small devices",
}
DEFAULT_SIZES = (24, 32, 48, 64, 96, 128)  # those up to the data's own image size are kept (`default_sizes`)
RESIZES = ("stretch", "center-crop")
SIMPLE_BASE_WIDTHS = (4, 8, 16, 32)
SIMPLE_BLOCKS = (1, 2, 3, 4)
SIMPLE_CONVS = (1, 2)
ALPHAS = (0.35, 0.5, 0.75, 1.0)
MOBILENETV3_ALPHAS = (0.5, 0.75, 1.0)
BACKBONE_MIN_SIZE = 32  # models.py's check for every Keras applications backbone


def default_sizes(data_size: int) -> tuple:
    """The default sizes up to the data's own size (upscaling adds MACs, not detail); the data's size when no
    default is that small."""
    kept = tuple(s for s in DEFAULT_SIZES if s <= data_size)
    return kept or (int(data_size),)


def backbone_sizes(sizes) -> list:
    """The sizes a Keras applications backbone takes (32 px or more)."""
    return [int(s) for s in sizes if int(s) >= BACKBONE_MIN_SIZE]


def usable_models(models, sizes) -> tuple:
    """The models that can be built at one of `sizes` at least (the backbones need 32 px or more)."""
    return tuple(m for m in models if m == "simple" or backbone_sizes(sizes))


def suggest(trial, cfg) -> Candidate:
    """One candidate from an `optuna.Trial`; `cfg` gives `models` and `sizes` (a SearchConfig)."""
    model = trial.suggest_categorical("model", list(usable_models(cfg.models, cfg.sizes)))
    if model == "simple":
        size = int(trial.suggest_categorical("image_size", [int(s) for s in cfg.sizes]))
    else:  # its own parameter: the backbones' sizes start at their least input
        size = int(trial.suggest_categorical("backbone_image_size", backbone_sizes(cfg.sizes)))
    resize = trial.suggest_categorical("resize", list(RESIZES))
    return Candidate(model=model, image_size=size, resize=resize, model_options=_options(trial, model))


def _options(trial, model: str) -> dict:
    if model == "simple":
        base = int(trial.suggest_categorical("simple_base_width", list(SIMPLE_BASE_WIDTHS)))
        blocks = int(trial.suggest_categorical("simple_blocks", list(SIMPLE_BLOCKS)))
        convs = int(trial.suggest_categorical("simple_convs_per_block", list(SIMPLE_CONVS)))
        return {"widths": [base * 2**i for i in range(blocks)], "convs_per_block": convs}
    if model == "mobilenetv2":
        return {"alpha": float(trial.suggest_categorical("mobilenetv2_alpha", list(ALPHAS)))}
    if model in ("mobilenetv3small", "mobilenetv3large"):
        alpha = float(trial.suggest_categorical(f"{model}_alpha", list(MOBILENETV3_ALPHAS)))
        minimalistic = bool(trial.suggest_categorical(f"{model}_minimalistic", [False, True]))
        return {"alpha": alpha, "minimalistic": minimalistic}
    return {}  # efficientnetb0: fixed width


def train_default(cfg, data_size: int, widths=None) -> dict | None:
    """The Optuna params of `edgecls train`'s default model in this space: simple with the data's widths (or
    `build_simple`'s), 2 convolutions a block, stretch, at the data's size (else the nearest size allowed).
    None when the space cannot hold it (simple not in --models, widths that are not a base doubling per block)."""
    import inspect

    from edgecls.models import build_simple

    widths = [int(w) for w in (widths or inspect.signature(build_simple).parameters["widths"].default)]
    doubling = widths == [widths[0] * 2**i for i in range(len(widths))]
    if "simple" not in cfg.models or not doubling or widths[0] not in SIMPLE_BASE_WIDTHS:
        return None
    if len(widths) not in SIMPLE_BLOCKS:
        return None
    sizes = sorted(int(s) for s in cfg.sizes)
    size = max((s for s in sizes if s <= int(data_size)), default=sizes[0])
    return {
        "model": "simple",
        "image_size": size,
        "resize": "stretch",
        "simple_base_width": widths[0],
        "simple_blocks": len(widths),
        "simple_convs_per_block": 2,
    }


def scaled_down(default: dict, measured_ms: float, budget_ms: float, sizes) -> list:
    """(params, origin) of the default scaled to the budget: the simple net's MACs grow ~ width^2, so the width
    factor that fits is ~ sqrt(budget / measured); the space's widths go by doubling, so the largest base width
    at most that, one step smaller (the latency model is not fitted yet: a margin), and both at the next smaller
    input size. Empty when the default meets the budget: then it is the reference, and TPE looks further."""
    if measured_ms <= budget_ms:
        return []
    base = default["simple_base_width"]
    smaller = sorted((w for w in SIMPLE_BASE_WIDTHS if w < base), reverse=True)
    if not smaller:
        return []
    target = base * math.sqrt(budget_ms / measured_ms)
    first = next((i for i, w in enumerate(smaller) if w <= target), len(smaller) - 1)
    widths = smaller[first : first + 2]
    size = default["image_size"]
    below = max((int(s) for s in sizes if int(s) < size), default=None)
    found = []
    for at in [size] + ([below] if below else []):
        for w in widths:
            where = "" if at == size else f", {at} px"
            origin = f"warm start: the default at {w / base:g}x width{where}"
            found.append(({**default, "simple_base_width": w, "image_size": at}, origin))
    return found


def model_options(candidate: Candidate) -> dict:
    """The candidate's options as `create_model`/`TrainConfig` take them (JSON keeps widths as a list)."""
    options = dict(candidate.model_options)
    if "widths" in options:
        options["widths"] = tuple(int(w) for w in options["widths"])
    return options


def check(candidate: Candidate, channels: int) -> None:
    """Raise the model's own EdgeclsError when it refuses the candidate (too small an input, ...), without Keras."""
    from edgecls.models import check_options

    shape = (candidate.image_size, candidate.image_size, channels)
    check_options(candidate.model, shape, **model_options(candidate))


def count(candidate: Candidate, channels: int, num_classes: int) -> Candidate:
    """The candidate with `macs` and `params` of its untrained Keras model (built, never trained).

    Raises EdgeclsError (one line, the model's own reason) when the model refuses the candidate."""
    import keras

    from edgecls.converters.macs import count_macs, count_params
    from edgecls.models import create_model

    check(candidate, channels)
    shape = (candidate.image_size, candidate.image_size, channels)
    model = create_model(candidate.model, num_classes, shape, **model_options(candidate))
    try:
        return replace(candidate, macs=count_macs(model), params=count_params(model))
    finally:
        del model
        keras.backend.clear_session()


def describe(candidate: Candidate) -> str:
    """Short words for a progress line: `mobilenetv3small a=0.5 min 64px stretch 5.1 MMAC`."""
    options = candidate.model_options
    parts = [candidate.model]
    if "widths" in options:
        parts.append("w=" + ",".join(str(w) for w in options["widths"]))
        parts.append(f"x{options.get('convs_per_block', 2)}")
    if "alpha" in options:
        parts.append(f"a={options['alpha']:g}")
    if options.get("minimalistic"):
        parts.append("min")
    parts += [f"{candidate.image_size}px", candidate.resize]
    if candidate.macs:
        parts.append(f"{candidate.macs / 1e6:.1f} MMAC")
    return " ".join(parts)
