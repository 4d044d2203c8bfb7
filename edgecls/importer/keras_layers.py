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

    chain = _leading_chain(model)
    if not chain:
        return model, None, None
    channels = int(model.input_shape[-1])
    a, b = np.ones(channels), np.zeros(channels)
    for layer in chain:
        scale, offset = _affine(layer, channels)
        a, b = a * scale, b * scale + offset
    if np.any(a == 0):
        raise EdgeclsError(f"the model's {chain[-1].name} layer scales a channel by 0: its input cannot be normalized")
    cut = keras.Model(chain[-1].output, model.output)
    mean, std = tuple(float(v) for v in -b / a), tuple(float(v) for v in 1 / a)
    _check_fold(model, cut, mean, std)
    return cut, _one_if_equal(mean), _one_if_equal(std)


def _leading_chain(model) -> list:
    """The Rescaling/Normalization layers that follow the input one after another (each the only user)."""
    import keras

    kinds = (keras.layers.Rescaling, keras.layers.Normalization)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    chain = []
    for layer in layers:
        if not isinstance(layer, kinds) or len(layer._inbound_nodes) != 1:
            break
        chain.append(layer)
    if not chain or not _consumes_input(model, chain[0]):
        return []
    return chain


def _consumes_input(model, layer) -> bool:
    inputs = layer._inbound_nodes[0].input_tensors
    return len(inputs) == 1 and len(model.inputs) == 1 and inputs[0] is model.inputs[0]


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


def _one_if_equal(values: tuple) -> tuple:
    return values[:1] if all(abs(v - values[0]) < 1e-9 for v in values) else values
