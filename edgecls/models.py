"""Model registry: `create_model(name, num_classes, input_shape, **options)`.

Adding an architecture is one decorated builder; what training and tuning need to know about a model
travels with its entry (as timm's pretrained_cfg does), so nothing else branches on a model's name: its
default input normalization, the built-in datasets' defaults it takes, the option naming a pretrained
backbone, and its search space for `edgecls tune`. Heads: sigmoid (one unit) for two classes by
default, softmax otherwise.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
from dataclasses import dataclass
from typing import Callable

from edgecls.runtime.errors import EdgeclsError


@dataclass(frozen=True)
class SearchSpace:
    """What `edgecls tune` searches for a model besides the shared learning rate, dropout, L2 and batch size."""

    declare: Callable  # (hp, image_size, pretrained: bool) -> None: registers its hyperparameters
    options: Callable  # (values, tune config) -> (model options, fine-tune layers)
    probe: dict  # the smallest values, to check the fixed options before the search


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable
    title: str = ""  # for messages; the name when empty
    normalize: str = "scale"  # the default input normalization: scale (0..1) | symmetric (-1..1)
    dataset_options: tuple = ()  # options a built-in dataset's defaults may set (e.g. widths)
    pretrained_option: str = ""  # the option naming a pretrained backbone file, which fine-tuning needs
    search: SearchSpace | None = None


_REGISTRY: dict = {}  # name -> ModelEntry, in registration order
_CHECKS: dict = {}
DEFAULT_MODEL = "simple"


def register_model(fn: Callable | None = None, **entry) -> Callable:
    """`@register_model` or `@register_model(normalize=..., ...)` (the fields of `ModelEntry`) on a builder."""

    def register(fn: Callable) -> Callable:
        name = fn.__name__.removeprefix("build_")
        _REGISTRY[name] = ModelEntry(name, fn, **entry)
        return fn

    return register(fn) if fn is not None else register


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise EdgeclsError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    return _REGISTRY[name]


def option_check(name: str) -> Callable:
    """Register the validation of one model's options (run without building, before data loads)."""

    def register(fn: Callable) -> Callable:
        _CHECKS[name] = fn
        return fn

    return register


def list_models() -> list:
    return sorted(_REGISTRY)


def tunable_models() -> list:
    """The models `edgecls tune` has a search space for, in registration order."""
    return [name for name, entry in _REGISTRY.items() if entry.search is not None]


def pretrained_models() -> list:
    """The models that can start from a pretrained backbone file."""
    return [name for name, entry in _REGISTRY.items() if entry.pretrained_option]


def default_normalization(name: str) -> str:
    """The input normalization model `name` expects unless told (scale for an unknown one)."""
    entry = _REGISTRY.get(name)
    return entry.normalize if entry else "scale"


def dataset_options(name: str, defaults: dict) -> dict:
    """The options of model `name` that a built-in dataset's `defaults` set."""
    return {k: tuple(defaults[k]) for k in model_entry(name).dataset_options if k in defaults}


def supports_fine_tuning(name: str, options: dict) -> bool:
    """Whether the model starts with a frozen pretrained backbone that fine-tuning can unfreeze."""
    entry = _REGISTRY.get(name)
    return bool(entry and entry.pretrained_option and options.get(entry.pretrained_option))


def fine_tuning_hint() -> str:
    """How to get a frozen pretrained backbone, for messages: `--model mobilenetv2 --weights FILE`."""
    entry = _REGISTRY[pretrained_models()[0]]
    return f"--model {entry.name} --{entry.pretrained_option.replace('_', '-')} FILE"


def head_activation(num_classes: int, head: str = "auto") -> str:
    if head == "auto":
        return "sigmoid" if num_classes == 2 else "softmax"
    if head == "sigmoid" and num_classes != 2:
        raise EdgeclsError(f"a sigmoid head needs exactly 2 classes, the data has {num_classes}: use --head softmax")
    if head not in ("sigmoid", "softmax"):
        raise EdgeclsError(f"unknown head {head!r}: use auto, sigmoid or softmax")
    return head


def check_options(name: str, input_shape: tuple | None, **options) -> None:
    """Raise EdgeclsError for an unknown model, unknown option or out-of-range value, without Keras.

    Training calls it before loading data so that a typo costs nothing; `create_model` calls it too.
    With `input_shape` None the checks that need the image size are skipped.
    """
    signature = inspect.signature(model_entry(name).build)
    known = set(signature.parameters) - {"num_classes", "input_shape", "activation"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise EdgeclsError(f"model {name} has no option(s) {', '.join(unknown)}: it takes {', '.join(sorted(known))}")
    args = signature.bind_partial(**options)
    args.apply_defaults()
    values = {k: v for k, v in args.arguments.items() if k in known}
    _check_fraction("dropout", values.get("dropout", 0.0), "--dropout", high=1.0)
    _check_fraction("L2 weight decay", values.get("l2", 0.0), "--l2", high=math.inf)
    if name in _CHECKS:
        _CHECKS[name](None if input_shape is None else tuple(input_shape), **values)


def create_model(name: str, num_classes: int, input_shape: tuple, head: str = "auto", **options):
    check_options(name, input_shape, **options)
    activation = head_activation(num_classes, head)
    return _REGISTRY[name].build(
        num_classes=num_classes, input_shape=tuple(input_shape), activation=activation, **options
    )


def _check_fraction(what: str, value, flag: str, high: float) -> None:
    """`value` must be a finite number in [0, high) (dropout, weight decay)."""
    try:
        ok = 0.0 <= float(value) < high
    except (TypeError, ValueError):
        ok = False
    if not ok:
        bound = "0 or more" if high == math.inf else f"from 0 up to (not including) {high:g}"
        raise EdgeclsError(f"{what} {value!r} is out of range: use {bound} ({flag})")


def _classifier_head(x, num_classes: int, activation: str, dropout: float, l2: float):
    import keras
    from keras import layers

    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    units = 1 if activation == "sigmoid" else num_classes
    reg = keras.regularizers.L2(l2) if l2 else None
    return layers.Dense(units, activation=activation, kernel_regularizer=reg, name="predictions")(x)


# `edgecls tune`'s search spaces. simple: widths double per block from a base width; blocks are capped by the
# image size. mobilenetv2: alpha from scratch, the fine-tuning depth with pretrained weights (alpha is theirs).
BASE_WIDTHS = (8, 16, 32)
MAX_BLOCKS = 4
ALPHAS = (0.35, 0.5, 0.75, 1.0)
FINE_TUNE_LAYERS = (0, 20, 40, 80)


def max_blocks(image_size: int) -> int:
    """simple halves the image once per block; keep at least 1 pixel (the model's own check)."""
    return max(1, min(MAX_BLOCKS, int(math.log2(image_size))))


def _declare_simple(hp, image_size: int, pretrained: bool) -> None:
    hp.Choice("base_width", list(BASE_WIDTHS))
    hp.Choice("blocks", list(range(min(2, max_blocks(image_size)), max_blocks(image_size) + 1)))


def _simple_options(values: dict, cfg) -> tuple:
    return {"widths": tuple(int(values["base_width"]) * 2**i for i in range(int(values["blocks"])))}, 0


@register_model(
    dataset_options=("widths",),
    search=SearchSpace(_declare_simple, _simple_options, {"base_width": 8, "blocks": 1}),
)
def build_simple(
    num_classes: int,
    input_shape: tuple,
    activation: str,
    widths: tuple = (16, 32, 64, 128),
    convs_per_block: int = 2,
    pooling: str = "global",
    dense: int = 0,
    dropout: float = 0.3,
    l2: float = 1e-4,
    batch_norm: bool = True,
):
    """The seeds' Conv2D -> MaxPooling -> ... -> Dense stack.

    `widths` gives filters per block (one MaxPooling per block); `pooling` is "global"
    (GlobalAveragePooling) or "flatten"; `dense` adds a hidden Dense layer of that width.
    """
    import keras
    from keras import layers

    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for b, width in enumerate(widths):
        for c in range(convs_per_block):
            x = layers.Conv2D(
                width, 3, padding="same", use_bias=not batch_norm, kernel_regularizer=reg, name=f"block{b}_conv{c}"
            )(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=0.9, name=f"block{b}_bn{c}")(
                    x
                )  # small data: fast-settling stats
            x = layers.ReLU(name=f"block{b}_relu{c}")(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x) if pooling == "global" else layers.Flatten(name="flatten")(x)
    if dense:
        x = layers.Dense(dense, activation="relu", kernel_regularizer=reg, name="hidden")(x)
    outputs = _classifier_head(x, num_classes, activation, dropout, l2)
    return keras.Model(inputs, outputs, name="simple")


@option_check("simple")
def _check_simple(input_shape: tuple, widths=(), convs_per_block=2, pooling="global", dense=0, **_):
    if not widths or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise EdgeclsError(
            f"widths {tuple(widths)} are invalid: give one or more filter counts of 1 or more, e.g. --widths 32,64,128"
        )
    if not isinstance(convs_per_block, int) or convs_per_block < 1:
        raise EdgeclsError(f"convs_per_block {convs_per_block!r} is invalid: use 1 or more")
    if not isinstance(dense, int) or dense < 0:
        raise EdgeclsError(f"dense {dense!r} is invalid: use 0 (no hidden layer) or more units (--dense)")
    if pooling not in ("global", "flatten"):
        raise EdgeclsError(f"unknown pooling {pooling!r}: use global or flatten")
    min_side = 2 ** len(widths)
    if input_shape is not None and min(input_shape[:2]) < min_side:
        raise EdgeclsError(
            f"image size {input_shape[0]}x{input_shape[1]} is too small for {len(widths)} pooling blocks: "
            f"use --image-size {min_side} or more, or fewer --widths"
        )


# Keras applications backbones. Each is built on our input tensor (a flat graph: structured pruning, QAT and
# per-layer freezing need the backbone's layers in the model itself) without its own preprocessing layers, so
# the run's one preprocessing function stays the only one; its entry's `normalize` is what its weights expect.
# `weights`: None (random init), "imagenet" (Keras' file, from its cache or downloaded) or a local no-top file.
IMAGENET = "imagenet"
MOBILENETV2_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MOBILENETV2_IMAGENET_SIZES = (96, 128, 160, 192, 224)
_MOBILENETV2_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
_MOBILENETV3_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
_EFFICIENTNET_URL = "https://storage.googleapis.com/keras-applications/"
# md5 of the no-top files, as keras.applications checks them (keras/src/applications/mobilenet_v3.py,
# efficientnet.py); MobileNetV2's files have none there.
_NO_TOP_MD5 = {
    "large_224_0.75_float": "40af19a13ebea4e2ee0c676887f69a2e",
    "large_224_1.0_float": "07fb09a5933dd0c8eaafa16978110389",
    "large_minimalistic_224_1.0_float": "ec5221f64a2f6d1ef965a614bdae7973",
    "small_224_0.75_float": "ebdb5cc8e0b497cd13a7c275d475c819",
    "small_224_1.0_float": "d3e8ec802a04aa4fc771ee12a9a9b836",
    "small_minimalistic_224_1.0_float": "cde8136e733e811080d9fcd8a252f7e4",
    "efficientnetb0": "50bc09e76180e00e4465e1a485ddc09d",
}


@dataclass(frozen=True)
class WeightsFile:
    """A pretrained no-top weights file Keras applications downloads: its name, where from, its md5 ("" none)."""

    name: str
    url: str
    md5: str = ""


def imagenet_weights_file(model: str, input_shape: tuple, alpha: float = 1.0, minimalistic: bool = False):
    """The ImageNet weights file keras.applications loads for `model` built this way (the names in its source)."""
    if model == "mobilenetv2":
        rows = input_shape[0] if input_shape[0] == input_shape[1] in MOBILENETV2_IMAGENET_SIZES else 224
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"
        return WeightsFile(name, _MOBILENETV2_URL + name)
    if model in ("mobilenetv3small", "mobilenetv3large"):
        key = f"{model.removeprefix('mobilenetv3')}{'_minimalistic' if minimalistic else ''}_224_{float(alpha)}_float"
        name = f"weights_mobilenet_v3_{key}_no_top_v2.h5"
        return WeightsFile(name, _MOBILENETV3_URL + name, _NO_TOP_MD5[key])
    if model == "efficientnetb0":
        return WeightsFile("efficientnetb0_notop.h5", _EFFICIENTNET_URL + "efficientnetb0_notop.h5", _NO_TOP_MD5[model])
    raise EdgeclsError(f"model {model} has no ImageNet weights: choose one of {', '.join(pretrained_models())}")


def keras_cache_dir() -> str:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"), "models")


def fetch_imagenet_weights(file: WeightsFile, title: str) -> str:
    """The local path of `file`: from Keras' cache, else downloaded there; offline, one line saying what to do."""
    import keras

    folder = keras_cache_dir()
    try:
        return keras.utils.get_file(
            file.name, file.url, cache_dir=os.path.dirname(folder), cache_subdir="models", file_hash=file.md5 or None
        )
    except Exception as exc:  # urllib's and Keras' own types: offline, a proxy, a bad hash
        said = " ".join(str(exc).split()).split(file.url)[-1].strip(" :-")  # Keras repeats the URL
        cause = said.removeprefix("None -- ").strip() or type(exc).__name__
        raise EdgeclsError(
            f"cannot download the ImageNet weights of {title} ({cause[:160]}): download {file.url} "
            f"and put it in {folder} as {file.name}, or pass the file with --weights FILE"
        ) from None


BACKBONE_BN_MOMENTUM = 0.9  # Keras applications use 0.999 (ImageNet's million steps); the simple model's 0.9


def _load_backbone_weights(backbone, weights: str | None, title: str, describe: str, imagenet) -> bool:
    """Load `weights` into `backbone` and freeze it (transfer learning: the head trains first); False without.

    Its BatchNorm moving statistics settle in tens of steps, not thousands: a backbone trained from scratch on
    a few hundred images for a few epochs otherwise predicts one class in inference mode (its statistics still
    the initial ones). A pretrained backbone's BatchNorm stays frozen, fine-tuning included, so it is unchanged.
    """
    import keras

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BACKBONE_BN_MOMENTUM
    if not weights:
        return False
    path = fetch_imagenet_weights(imagenet(), title) if weights == IMAGENET else weights
    try:
        backbone.load_weights(path)
    except (OSError, ValueError, KeyError) as exc:
        cause = next((l.strip() for l in str(exc).splitlines() if l.strip()), type(exc).__name__)
        if weights == IMAGENET:
            raise EdgeclsError(
                f"cannot load {title}'s ImageNet weights from Keras' cache ({cause[:160]}): the file may be "
                f"truncated or damaged: delete {path} to download it again"
            ) from exc
        raise EdgeclsError(
            f"cannot load {title} weights from {path}: {cause[:200]} (it must be a no-top weights file for {describe})"
        ) from exc
    for layer in backbone.layers:
        layer.trainable = False
    return True


def _with_head(inputs, features, num_classes: int, activation: str, dropout: float, l2: float, name: str):
    import keras
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="gap")(features)
    return keras.Model(inputs, _classifier_head(x, num_classes, activation, dropout, l2), name=name)


def _check_backbone(title: str, input_shape, weights, alpha=None, imagenet_alphas=()) -> None:
    """What every Keras applications backbone checks: width, image size, channels, the weights asked for."""
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf
    ):
        raise EdgeclsError(
            f"alpha {alpha!r} is out of range: use a width multiplier above 0, e.g. 0.35, 0.5, 0.75 or 1.0 (--alpha)"
        )
    if input_shape is not None and min(input_shape[:2]) < 32:
        raise EdgeclsError(
            f"{title} needs images of at least 32x32, got {input_shape[0]}x{input_shape[1]}: raise --image-size"
        )
    if input_shape is not None and input_shape[2] != 3:
        raise EdgeclsError(f"{title} needs 3-channel input: use --color rgb")
    if weights == IMAGENET:
        if alpha is not None and float(alpha) not in imagenet_alphas:
            raise EdgeclsError(
                f"{title} has ImageNet weights for alpha {', '.join(f'{a:g}' for a in imagenet_alphas)} only, "
                f"not {alpha:g}: change --alpha or train from scratch (no --weights)"
            )
    elif weights is not None and os.path.isdir(weights):
        raise EdgeclsError(f"weights {weights} is a folder, not a file: pass a no-top {title} weights file (--weights)")
    elif weights is not None and not os.path.isfile(weights):
        raise EdgeclsError(
            f"weights file {weights} does not exist: pass a no-top {title} weights file, or imagenet (--weights)"
        )


def _declare_backbone(hp, image_size: int, pretrained: bool) -> None:
    if pretrained:
        hp.Choice("fine_tune_layers", list(FINE_TUNE_LAYERS))
    else:
        hp.Choice("alpha", list(ALPHAS))


def _backbone_options(values: dict, cfg) -> tuple:
    if cfg.weights:
        return {"weights": cfg.weights, "alpha": cfg.alpha}, int(values["fine_tune_layers"])
    return {"alpha": float(values["alpha"])}, 0


def _declare_fixed_width(hp, image_size: int, pretrained: bool) -> None:
    if pretrained:
        hp.Choice("fine_tune_layers", list(FINE_TUNE_LAYERS))


def _fixed_width_options(values: dict, cfg) -> tuple:
    return ({"weights": cfg.weights}, int(values["fine_tune_layers"])) if cfg.weights else ({}, 0)


_BACKBONE_SEARCH = SearchSpace(_declare_backbone, _backbone_options, {"fine_tune_layers": 0, "alpha": ALPHAS[0]})


@register_model(
    title="MobileNetV2",
    normalize="symmetric",  # Keras' MobileNetV2 expects inputs in [-1, 1]
    pretrained_option="weights",
    search=_BACKBONE_SEARCH,
)
def build_mobilenetv2(
    num_classes: int,
    input_shape: tuple,
    activation: str,
    alpha: float = 1.0,
    weights: str | None = None,
    dropout: float = 0.2,
    l2: float = 0.0,
):
    """keras.applications.MobileNetV2 backbone + GAP + classifier head.

    `weights` is None (random init), "imagenet" or a local no-top weights file for the backbone; with
    weights the backbone layers start frozen (transfer learning), see `train --fine-tune-layers`.
    Inputs are expected in [-1, 1] (the default preprocessing for this model).
    """
    import keras

    inputs = keras.Input(shape=input_shape, name="image")
    backbone = keras.applications.MobileNetV2(
        input_tensor=inputs, alpha=alpha, include_top=False, weights=None, pooling=None
    )
    _load_backbone_weights(
        backbone,
        weights,
        "MobileNetV2",
        f"alpha={alpha}, input {input_shape[0]}x{input_shape[1]}",
        lambda: imagenet_weights_file("mobilenetv2", input_shape, alpha),
    )
    return _with_head(inputs, backbone.output, num_classes, activation, dropout, l2, "mobilenetv2")


@option_check("mobilenetv2")
def _check_mobilenetv2(input_shape: tuple, alpha=1.0, weights=None, **_):
    # Keras accepts any alpha > 0 without ImageNet weights (a local weights file must match it);
    # zero or negative widths still build a network of 8-filter layers, which is never meant.
    _check_backbone("MobileNetV2", input_shape, weights, alpha, MOBILENETV2_IMAGENET_ALPHAS)


def _mobilenetv3(variant: str, title: str, num_classes, input_shape, activation, alpha, minimalistic, **kw):
    """keras.applications.MobileNetV3Small/Large without its Rescaling layer (include_preprocessing=False)."""
    import keras

    inputs = keras.Input(shape=input_shape, name="image")
    factory = getattr(keras.applications, f"MobileNetV3{variant}")
    backbone = factory(
        input_tensor=inputs,
        alpha=alpha,
        minimalistic=minimalistic,
        include_top=False,
        weights=None,
        include_preprocessing=False,
    )
    name = f"mobilenetv3{variant.lower()}"
    _load_backbone_weights(
        backbone,
        kw["weights"],
        title,
        f"alpha={alpha}{', minimalistic' if minimalistic else ''}",
        lambda: imagenet_weights_file(name, input_shape, alpha, minimalistic),
    )
    return _with_head(inputs, backbone.output, num_classes, activation, kw["dropout"], kw["l2"], name)


def _check_mobilenetv3(title: str, input_shape, alpha, weights, minimalistic) -> None:
    if not isinstance(minimalistic, bool):
        raise EdgeclsError(f"minimalistic {minimalistic!r} is invalid: use True or False")
    _check_backbone(title, input_shape, weights, alpha, (1.0,) if minimalistic else (0.75, 1.0))


@register_model(title="MobileNetV3-Small", normalize="symmetric", pretrained_option="weights", search=_BACKBONE_SEARCH)
def build_mobilenetv3small(
    num_classes: int,
    input_shape: tuple,
    activation: str,
    alpha: float = 1.0,
    minimalistic: bool = False,
    weights: str | None = None,
    dropout: float = 0.2,
    l2: float = 0.0,
):
    """keras.applications.MobileNetV3Small backbone + GAP + classifier head; inputs in [-1, 1].

    Hard-swish and squeeze-excitation blocks; `minimalistic` swaps them for ReLU and no SE (3x3 kernels),
    which int8 keeps better. `weights` as for mobilenetv2.
    """
    return _mobilenetv3(
        "Small", "MobileNetV3-Small", num_classes, input_shape, activation, alpha, minimalistic,
        weights=weights, dropout=dropout, l2=l2,
    )  # fmt: skip


@option_check("mobilenetv3small")
def _check_mobilenetv3small(input_shape: tuple, alpha=1.0, weights=None, minimalistic=False, **_):
    _check_mobilenetv3("MobileNetV3-Small", input_shape, alpha, weights, minimalistic)


@register_model(title="MobileNetV3-Large", normalize="symmetric", pretrained_option="weights", search=_BACKBONE_SEARCH)
def build_mobilenetv3large(
    num_classes: int,
    input_shape: tuple,
    activation: str,
    alpha: float = 1.0,
    minimalistic: bool = False,
    weights: str | None = None,
    dropout: float = 0.2,
    l2: float = 0.0,
):
    """keras.applications.MobileNetV3Large backbone + GAP + classifier head; inputs in [-1, 1] (as mobilenetv3small)."""
    return _mobilenetv3(
        "Large", "MobileNetV3-Large", num_classes, input_shape, activation, alpha, minimalistic,
        weights=weights, dropout=dropout, l2=l2,
    )  # fmt: skip


@option_check("mobilenetv3large")
def _check_mobilenetv3large(input_shape: tuple, alpha=1.0, weights=None, minimalistic=False, **_):
    _check_mobilenetv3("MobileNetV3-Large", input_shape, alpha, weights, minimalistic)


@register_model(
    title="EfficientNet-B0",
    normalize="imagenet",  # its weights expect (pixel / 255 - ImageNet mean) / ImageNet std
    pretrained_option="weights",
    search=SearchSpace(_declare_fixed_width, _fixed_width_options, {"fine_tune_layers": 0}),
)
def build_efficientnetb0(
    num_classes: int,
    input_shape: tuple,
    activation: str,
    weights: str | None = None,
    dropout: float = 0.2,
    l2: float = 0.0,
):
    """keras.applications.EfficientNetB0 backbone + GAP + classifier head; inputs ImageNet mean/std normalized.

    Keras always puts Rescaling and Normalization layers at its input: the backbone is built and its
    weights loaded as Keras has it, then its graph is rebuilt on our input without them.
    SiLU activations and squeeze-excitation blocks. `weights` as for mobilenetv2.
    """
    import keras

    backbone = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=tuple(input_shape))
    _load_backbone_weights(
        backbone,
        weights,
        "EfficientNet-B0",
        "EfficientNet-B0",
        lambda: imagenet_weights_file("efficientnetb0", input_shape),
    )
    inputs = keras.Input(shape=input_shape, name="image")
    features = without_preprocessing(backbone, inputs)
    return _with_head(inputs, features, num_classes, activation, dropout, l2, "efficientnetb0")


@option_check("efficientnetb0")
def _check_efficientnetb0(input_shape: tuple, weights=None, **_):
    _check_backbone("EfficientNet-B0", input_shape, weights)


def without_preprocessing(backbone, inputs):
    """`backbone`'s graph again on `inputs`, without its Rescaling and Normalization layers: new layers
    (one use each, as QAT and pruning need) holding the same weights and trainable flags."""
    import keras

    dropped = (keras.layers.Rescaling, keras.layers.Normalization)
    copies = []

    def clone(op):
        if isinstance(op, dropped):
            return lambda x: x
        if not isinstance(op, keras.layers.Layer):
            return op  # a stateless op
        new = type(op).from_config(op.get_config())
        copies.append((op, new))
        return new

    features = keras.models.clone_model(backbone, input_tensors=inputs, clone_function=clone).output
    for old, new in copies:
        new.set_weights(old.get_weights())
        new.trainable = old.trainable
    return features


HEAD_LAYERS = ("gap", "flatten", "hidden", "head_dropout", "predictions")


def backbone_layers(model) -> list:
    """The layers below the classifier head (excluding the input)."""
    import keras

    return [l for l in model.layers if l.name not in HEAD_LAYERS and not isinstance(l, keras.layers.InputLayer)]
