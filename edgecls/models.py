"""Model registry: `create_model(name, num_classes, input_shape, **options)`.

Adding an architecture is one decorated builder. Heads: sigmoid (one unit) for two classes by
default, softmax otherwise.
"""

from __future__ import annotations

from typing import Callable

from runtime.errors import EdgeclsError

_REGISTRY: dict = {}


def register_model(fn: Callable) -> Callable:
    _REGISTRY[fn.__name__.removeprefix("build_")] = fn
    return fn


def list_models() -> list:
    return sorted(_REGISTRY)


def head_activation(num_classes: int, head: str = "auto") -> str:
    if head == "auto":
        return "sigmoid" if num_classes == 2 else "softmax"
    if head == "sigmoid" and num_classes != 2:
        raise EdgeclsError(f"a sigmoid head needs exactly 2 classes, the data has {num_classes}: use --head softmax")
    if head not in ("sigmoid", "softmax"):
        raise EdgeclsError(f"unknown head {head!r}: use auto, sigmoid or softmax")
    return head


def create_model(name: str, num_classes: int, input_shape: tuple, head: str = "auto", **options):
    if name not in _REGISTRY:
        raise EdgeclsError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    activation = head_activation(num_classes, head)
    return _REGISTRY[name](num_classes=num_classes, input_shape=tuple(input_shape), activation=activation, **options)


def _classifier_head(x, num_classes: int, activation: str, dropout: float, l2: float):
    import keras
    from keras import layers

    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    units = 1 if activation == "sigmoid" else num_classes
    reg = keras.regularizers.L2(l2) if l2 else None
    return layers.Dense(units, activation=activation, kernel_regularizer=reg, name="predictions")(x)


@register_model
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
    **unused,
):
    """The seeds' Conv2D -> MaxPooling -> ... -> Dense stack.

    `widths` gives filters per block (one MaxPooling per block); `pooling` is "global"
    (GlobalAveragePooling) or "flatten"; `dense` adds a hidden Dense layer of that width.
    """
    import keras
    from keras import layers

    _check_unused(unused)
    min_side = 2 ** len(widths)
    if min(input_shape[:2]) < min_side:
        raise EdgeclsError(
            f"image size {input_shape[0]}x{input_shape[1]} is too small for {len(widths)} pooling blocks: "
            f"use --image-size {min_side} or more, or fewer --widths"
        )
    if pooling not in ("global", "flatten"):
        raise EdgeclsError(f"unknown pooling {pooling!r}: use global or flatten")
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for b, width in enumerate(widths):
        for c in range(convs_per_block):
            x = layers.Conv2D(width, 3, padding="same", use_bias=not batch_norm, kernel_regularizer=reg, name=f"block{b}_conv{c}")(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=0.9, name=f"block{b}_bn{c}")(x)  # small data: fast-settling stats
            x = layers.ReLU(name=f"block{b}_relu{c}")(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x) if pooling == "global" else layers.Flatten(name="flatten")(x)
    if dense:
        x = layers.Dense(dense, activation="relu", kernel_regularizer=reg, name="hidden")(x)
    outputs = _classifier_head(x, num_classes, activation, dropout, l2)
    return keras.Model(inputs, outputs, name="simple")


@register_model
def build_mobilenetv2(
    num_classes: int,
    input_shape: tuple,
    activation: str,
    alpha: float = 1.0,
    weights: str | None = None,
    dropout: float = 0.2,
    l2: float = 0.0,
    **unused,
):
    """keras.applications.MobileNetV2 backbone + GAP + classifier head.

    `weights` is None (random init) or a local weights file for the backbone (include_top=False);
    with weights the backbone layers start frozen (transfer learning), see `train --fine-tune-layers`.
    Inputs are expected in [-1, 1] (the default preprocessing for this model).
    """
    import keras
    from keras import layers

    _check_unused(unused)
    if min(input_shape[:2]) < 32:
        raise EdgeclsError(f"MobileNetV2 needs images of at least 32x32, got {input_shape[0]}x{input_shape[1]}: raise --image-size")
    if input_shape[2] != 3:
        raise EdgeclsError("MobileNetV2 needs 3-channel input: use --color rgb")
    inputs = keras.Input(shape=input_shape, name="image")
    # input_tensor makes the backbone's layers part of this model (a flat graph), which structured
    # pruning and per-layer freezing need.
    backbone = keras.applications.MobileNetV2(
        input_tensor=inputs, alpha=alpha, include_top=False, weights=None, pooling=None
    )
    if weights:
        try:
            backbone.load_weights(weights)
        except (OSError, ValueError) as exc:
            raise EdgeclsError(
                f"cannot load MobileNetV2 weights from {weights}: {str(exc).splitlines()[0]} "
                f"(it must be a no-top weights file for alpha={alpha}, input {input_shape[0]}x{input_shape[1]})"
            ) from exc
        for layer in backbone.layers:
            layer.trainable = False  # transfer learning: train the head first
    x = layers.GlobalAveragePooling2D(name="gap")(backbone.output)
    outputs = _classifier_head(x, num_classes, activation, dropout, l2)
    return keras.Model(inputs, outputs, name="mobilenetv2")


HEAD_LAYERS = ("gap", "flatten", "hidden", "head_dropout", "predictions")


def backbone_layers(model) -> list:
    """The layers below the classifier head (excluding the input)."""
    import keras

    return [l for l in model.layers if l.name not in HEAD_LAYERS and not isinstance(l, keras.layers.InputLayer)]


def _check_unused(unused: dict) -> None:
    if unused:
        raise EdgeclsError(f"unknown model option(s) {', '.join(sorted(unused))}")
