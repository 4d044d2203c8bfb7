"""A Keras model's own input preprocessing (`Rescaling`, `Normalization` right after the input) read into
mean/std and cut off, so edgecls's one preprocessing function stays the only one.

Each such layer is `x * a + b` per channel; a chain of them composes to one `x * a + b`, which is
`(x - mean) / std` with std = 1/a and mean = -b/a (pixel units). The cut model is checked against the
whole one: the source on raw pixels and ours on normalized input must agree.
"""

from __future__ import annotations

import numpy as np

from edgecls.runtime.errors import EdgeclsError


def fold_input_layers(model) -> tuple:
    """(model without its leading Rescaling/Normalization layers, mean, std), or (model, None, None)."""
    import keras

    channels = int(model.input_shape[-1])
    chain, cut_at = _leading_chain(model, channels)
    if not chain:
        return model, None, None
    a, b = np.ones(channels), np.zeros(channels)
    for layer in chain:
        scale, offset = _affine(layer, channels)
        a, b = a * scale, b * scale + offset
    if np.any(a == 0):
        raise EdgeclsError(f"the model's {chain[-1].name} layer scales a channel by 0: its input cannot be normalized")
    cut = keras.Model(cut_at, model.outputs[0])
    mean, std = tuple(_plain(-v) for v in b / a), tuple(_plain(v) for v in 1 / a)
    _check_fold(model, cut, mean, std)
    return cut, _one_if_equal(mean), _one_if_equal(std)


def normalizing_layers(model) -> list:
    """Names of the Rescaling/Normalization layers anywhere in the model (nested models too)."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            found.append(layer.name)
        elif isinstance(layer, keras.Model):
            found.extend(normalizing_layers(layer))
    return found


def _leading_chain(model, channels: int) -> tuple:
    """(the Rescaling/Normalization layers that follow the input one after another, the chain's last tensor).

    Traced through this model's own nodes (a layer of a Sequential read from a file has several): each
    tensor of the chain must have one consumer. Random* augmentation layers (identity at inference, the
    tutorial's `data_augmentation` Sequential) may come before or between them; they go with the cut."""
    import keras

    kinds = (keras.layers.Rescaling, keras.layers.Normalization)
    consumers = _consumers(getattr(model, "_functional", None) or model)
    if len(model.inputs) != 1:
        return [], None
    tensor, chain, cut_at = model.inputs[0], [], None
    while len(consumers.get(id(tensor), [])) == 1:
        layer, node = consumers[id(tensor)][0]
        if len(node.input_tensors) != 1 or len(node.output_tensors) != 1:
            break
        if isinstance(layer, kinds) and _per_channel(layer, channels):
            chain.append(layer)
            cut_at = node.output_tensors[0]
        elif not _augmentation(layer):
            break
        tensor = node.output_tensors[0]
    return chain, cut_at


def _consumers(model) -> dict:
    """id(tensor) -> [(layer, node)] of this model's nodes that take it."""
    found = {}
    for layer in model.layers:
        for index, node in enumerate(layer._inbound_nodes):
            if f"{id(layer)}_ib-{index}" in model._nodes:
                for tensor in node.input_tensors:
                    found.setdefault(id(tensor), []).append((layer, node))
    return found


def _augmentation(layer) -> bool:
    """A Random* augmentation layer, or a model made only of them: identity at inference."""
    import keras

    if isinstance(layer, keras.Model):
        return bool(layer.layers) and all(_augmentation(inner) for inner in layer.layers)
    return type(layer).__name__.startswith("Random") and type(layer).__module__.startswith("keras")


def _per_channel(layer, channels: int) -> bool:
    """Whether the layer is one `x * a + b` per channel (a Normalization over other axes is kept inside)."""
    import keras

    if isinstance(layer, keras.layers.Rescaling):
        values = (layer.scale, layer.offset)
    else:
        values = (layer.mean, layer.variance)
    return all(np.asarray(v).size in (1, channels) for v in values)


def _affine(layer, channels: int) -> tuple:
    import keras

    if isinstance(layer, keras.layers.Rescaling):
        scale = np.broadcast_to(np.asarray(layer.scale, dtype="float64"), (channels,))
        offset = np.broadcast_to(np.asarray(layer.offset, dtype="float64"), (channels,))
        return scale, offset
    if getattr(layer, "invert", False):
        raise EdgeclsError(
            f"the model's {layer.name} layer inverts a normalization at its input: edgecls cannot fold it"
        )
    mean = np.broadcast_to(np.asarray(layer.mean, dtype="float64").reshape(-1), (channels,))
    variance = np.broadcast_to(np.asarray(layer.variance, dtype="float64").reshape(-1), (channels,))
    scale = 1 / np.maximum(np.sqrt(variance), keras.backend.epsilon())
    return scale, -mean * scale


def _check_fold(model, cut, mean: tuple, std: tuple) -> None:
    pixels = np.random.default_rng(0).uniform(0, 255, (4, *model.input_shape[1:])).astype("float32")
    normalized = ((pixels - np.asarray(mean)) / np.asarray(std)).astype("float32")
    whole, ours = model.predict(pixels, verbose=0), cut.predict(normalized, verbose=0)
    gap = float(np.abs(whole - ours).max())
    if gap > 1e-4 * max(1.0, float(np.abs(whole).max())):
        raise EdgeclsError(
            f"folding the model's input preprocessing into mean {mean} std {std} changed its answers by {gap:.2g}: "
            "save the model without its Rescaling/Normalization layers and give --mean/--std"
        )


def _plain(value) -> float:
    """A Python float, -0.0 written as 0.0 (a manifest says mean [0.0], never [-0.0])."""
    return float(value) + 0.0


def _one_if_equal(values: tuple) -> tuple:
    return values[:1] if all(abs(v - values[0]) < 1e-9 for v in values) else values
