"""Parameter and multiply-accumulate counts of a Keras model (Conv2D, DepthwiseConv2D, Dense)."""

from __future__ import annotations

import numpy as np


def count_macs(model) -> int:
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * kh * kw * c
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            total += h * w * kh * kw * c_in * c_out // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.input.shape[1:])) * layer.units
    return int(total)


def count_params(model) -> int:
    return int(model.count_params())
