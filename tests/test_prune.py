"""Pruning in Keras 3: structured rebuilds a smaller model; sparsity follows its schedule."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from converters.macs import count_macs
from converters.prune import _magnitude_mask, _polynomial, parse_prune, sparsity_callback, sparsity_of, structured_prune
from edgecls.models import create_model
from runtime.errors import EdgeclsError


def _zero_half_the_channels(model):
    """Set gamma = beta = 0 on the weaker half of every BN: those channels are exactly 0 after ReLU."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            n = len(gamma)
            gamma = np.random.default_rng(0).uniform(0.5, 1.5, n).astype("float32")
            dead = np.arange(n) % 2 == 1
            gamma[dead], beta[dead] = 0.0, 0.0
            layer.set_weights([gamma, np.where(dead, 0.0, beta).astype("float32"), mean, var])


def test_structured_pruning_of_dead_channels_is_exact_and_4x_cheaper():
    model = create_model("simple", 4, (32, 32, 3), widths=(8, 16, 32))
    _zero_half_the_channels(model)
    x = np.random.default_rng(1).random((6, 32, 32, 3)).astype("float32")
    smaller, kept = structured_prune(model, 0.5)
    assert all(n == f // 2 for n, f in zip(kept.values(), [8, 8, 16, 16, 32, 32]))
    assert count_macs(model) / count_macs(smaller) > 3.5
    assert smaller.count_params() < model.count_params() / 3
    np.testing.assert_allclose(smaller.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_structured_pruning_keeps_residual_shapes_in_mobilenetv2():
    model = create_model("mobilenetv2", 3, (32, 32, 3), alpha=0.35)
    smaller, kept = structured_prune(model, 0.5)
    # expansion convs keep their channels inside the block; projections that feed an Add stay whole
    assert any("expand" in name for name in kept)
    assert "block_2_project" not in kept and "block_1_project" not in kept  # block_2_add joins both
    adds = [l for l in smaller.layers if isinstance(l, keras.layers.Add)]
    assert adds and all(l.output.shape[-1] == model.get_layer(l.name).output.shape[-1] for l in adds)
    assert count_macs(smaller) < count_macs(model)
    assert smaller.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).shape == (1, 3)


def test_polynomial_schedule_and_magnitude_mask():
    assert _polynomial(0, 100, 0.7) == 0.0 and _polynomial(100, 100, 0.7) == pytest.approx(0.7)
    assert 0 < _polynomial(30, 100, 0.7) < _polynomial(60, 100, 0.7) < 0.7
    w = np.random.default_rng(0).normal(size=(3, 3, 8, 8))
    mask = _magnitude_mask(w, 0.7)
    assert (~mask).mean() == pytest.approx(0.7, abs=0.01)
    assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()


def test_sparsity_callback_reaches_the_target_during_training():
    model = create_model("simple", 3, (16, 16, 1), widths=(8, 16))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 16, 16, 1)).astype("float32"), rng.integers(0, 3, 64)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[sparsity_callback(model, 0.6, end_step=16, frequency=4)])
    assert sparsity_of(model) == pytest.approx(0.6, abs=0.02)


@pytest.mark.parametrize("bad", ["structured", "structured=1.5", "sparsity=0", "channels=0.5"])
def test_bad_prune_specs_are_rejected(bad):
    with pytest.raises(EdgeclsError, match="structured=RATIO or sparsity=RATIO"):
        parse_prune(bad)
