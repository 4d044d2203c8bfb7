"""Pruning in Keras 3: structured rebuilds a smaller model; sparsity follows its schedule."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgecls.converters.calibration import representative_set
from edgecls.converters.macs import count_macs
from edgecls.converters.prune import (
    _magnitude_mask,
    _polynomial,
    _stats_size,
    parse_prune,
    prune_model,
    recalibrate_batchnorm,
    sparsity_callback,
    sparsity_of,
    structured_prune,
)
from edgecls.models import create_model
from edgecls.runtime.errors import EdgeclsError


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
    model.fit(
        x, y, epochs=3, batch_size=8, verbose=0, callbacks=[sparsity_callback(model, 0.6, end_step=16, frequency=4)]
    )
    assert sparsity_of(model) == pytest.approx(0.6, abs=0.02)


@pytest.mark.parametrize("bad", ["structured", "structured=1.5", "sparsity=0", "channels=0.5"])
def test_bad_prune_specs_are_rejected(bad):
    with pytest.raises(EdgeclsError, match="structured=RATIO or sparsity=RATIO"):
        parse_prune(bad)


# ---------------------------------------------------------------- issue 15 point 13: refit and BN recalibration


def _shift_the_weak_channels(model, gamma_weak: float, beta_weak: float = 2.0):
    """Odd BN channels get a small scale (so they are the ones pruned) and a large shift."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            weak = np.arange(len(gamma)) % 2 == 1
            gamma = np.where(weak, gamma_weak, rng.uniform(0.5, 1.5, len(gamma))).astype("float32")
            beta = np.where(weak, beta_weak, rng.normal(0, 0.2, len(beta))).astype("float32")
            layer.set_weights([gamma, beta, mean, var])


def _images(n, shape, seed=1):
    return np.random.default_rng(seed).random((n, *shape)).astype("float32")


def test_constant_removed_channels_are_folded_exactly_into_the_dense_bias():
    # one conv -> BN -> ReLU -> pool -> GAP -> Dense: the removed channels output relu(2.0) everywhere
    keras.utils.set_random_seed(0)
    model = create_model("simple", 3, (16, 16, 1), widths=(8,), convs_per_block=1, dropout=0.0)
    _shift_the_weak_channels(model, gamma_weak=0.0)
    x, sample = _images(8, (16, 16, 1)), _images(32, (16, 16, 1), seed=2)
    before = model.predict(x, verbose=0)
    folded, _ = structured_prune(model, 0.5, sample)
    sliced, _ = structured_prune(model, 0.5)
    assert np.abs(sliced.predict(x, verbose=0) - before).max() > 0.05  # dropping the constant is visible
    np.testing.assert_allclose(folded.predict(x, verbose=0), before, atol=2e-4)
    dense_old, dense_new = model.get_layer("predictions"), folded.get_layer("predictions")
    kept = np.arange(8) % 2 == 0
    expected_bias = dense_old.bias.numpy() + 2.0 * dense_old.kernel.numpy()[~kept].sum(axis=0)
    np.testing.assert_allclose(dense_new.bias.numpy(), expected_bias, rtol=1e-3, atol=1e-3)


def test_refit_keeps_the_pruned_model_much_closer_before_fine_tuning():
    # removed channels are nearly constant (small scale, large shift) through two blocks of convs
    keras.utils.set_random_seed(0)
    model = create_model("simple", 4, (16, 16, 3), widths=(8, 16), dropout=0.0)
    x, sample = _images(16, (16, 16, 3)), _images(64, (16, 16, 3), seed=2)
    recalibrate_batchnorm(model, sample)  # a fresh model's (0, 1) statistics: measure them, as training would
    _shift_the_weak_channels(model, gamma_weak=0.05)
    before = model.predict(x, verbose=0)
    errors = [np.abs(structured_prune(model, 0.5, s)[0].predict(x, verbose=0) - before).mean() for s in (sample, None)]
    with_fold, without = errors
    assert without > 0.05 and with_fold < 0.05 * without, errors


def test_refit_gives_a_bias_to_a_conv_without_one():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 2))
    h = keras.layers.Conv2D(6, 3, padding="same", name="first")(inputs)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(4, 3, padding="valid", use_bias=False, name="second")(h)
    h = keras.layers.Flatten()(h)  # keeps "second" whole: only "first" is pruned
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))
    kernel, bias = model.get_layer("first").get_weights()
    weak = np.arange(6) % 2 == 1
    kernel[..., weak], bias[weak] = 0.0, 1.5  # removed filters output relu(1.5) wherever they look
    model.get_layer("first").set_weights([kernel, bias])
    x, sample = _images(8, (12, 12, 2)), _images(32, (12, 12, 2), seed=2)
    pruned, kept = structured_prune(model, 0.5, sample)
    assert kept == {"first": 3} and pruned.get_layer("second").use_bias
    before, sliced = model.predict(x, verbose=0), structured_prune(model, 0.5)[0].predict(x, verbose=0)
    assert np.abs(sliced - before).max() > 0.05
    np.testing.assert_allclose(pruned.predict(x, verbose=0), before, atol=2e-4)


def test_recalibrated_batchnorm_holds_the_batch_statistics_of_the_new_inputs():
    keras.utils.set_random_seed(0)
    model = create_model("simple", 3, (16, 16, 3), widths=(8, 16), dropout=0.0)
    _shift_the_weak_channels(model, gamma_weak=0.3)
    pruned, _ = structured_prune(model, 0.5)
    x = _images(40, (16, 16, 3))
    stale = pruned(x, training=False).numpy()
    assert recalibrate_batchnorm(pruned, x, batch_size=16) == 4  # batches of 16, 16, 8
    for bn in [l for l in pruned.layers if isinstance(l, keras.layers.BatchNormalization)]:
        seen = keras.Model(pruned.inputs, bn.input).predict(x, verbose=0).reshape(-1, bn.input.shape[-1])
        np.testing.assert_allclose(bn.moving_mean.numpy(), seen.mean(axis=0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), seen.var(axis=0), rtol=1e-3, atol=1e-5)
    # the same as training mode's batch statistics over x as one batch
    inference = pruned(x, training=False).numpy()
    assert np.abs(inference - stale).max() > 1e-3
    np.testing.assert_allclose(pruned(x, training=True).numpy(), inference, atol=1e-5)


def _splits(run_dir):
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run

    run = open_run(run_dir)
    return run, load_run_splits(run, ("train", "val", "test"))


def test_convert_path_refits_and_recalibrates_on_the_training_sample(tiny_run_dir):
    # prune_model is what `convert --prune` runs; with no fine-tuning its model is the refit and the
    # recalibration alone, so a refit skipped or done on the wrong images shows
    run, splits = _splits(tiny_run_dir)
    x = np.concatenate([s.x for s in splits.values()])
    original = run.load_model()
    reference = original.predict(x, verbose=0)
    pruned, report = prune_model(run.load_model(), "structured=0.5", splits, run, epochs=0, seed=0)

    stats = representative_set(splits["train"].x, _stats_size(original), 0)
    assert report["refit_images"] == len(stats) and report["batchnorm_recalibrated"] == 4
    for bn in [l for l in pruned.layers if isinstance(l, keras.layers.BatchNormalization)]:
        seen = keras.Model(pruned.inputs, bn.input).predict(stats, verbose=0).reshape(-1, bn.input.shape[-1])
        np.testing.assert_allclose(bn.moving_mean.numpy(), seen.mean(axis=0), rtol=1e-4, atol=1e-5)
    sliced, _ = structured_prune(original, 0.5)
    recalibrate_batchnorm(sliced, stats)
    error = np.abs(pruned.predict(x, verbose=0) - reference).mean()
    sliced_error = np.abs(sliced.predict(x, verbose=0) - reference).mean()
    assert error < 0.4 * sliced_error, (error, sliced_error)


def test_structured_pruning_refits_a_mixed_precision_model():
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = create_model("simple", 3, (16, 16, 3), widths=(8, 16), dropout=0.0)
        x, sample = _images(8, (16, 16, 3)), _images(32, (16, 16, 3), seed=2)
        pruned, kept = structured_prune(model, 0.5, sample)  # was: Conv2D expected a half tensor, got float
        assert kept == {"block0_conv0": 4, "block0_conv1": 4, "block1_conv0": 8, "block1_conv1": 8}
        assert recalibrate_batchnorm(pruned, sample) == 4
        out = pruned.predict(x, verbose=0)
        assert np.isfinite(out).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-2)
    finally:
        keras.mixed_precision.set_global_policy(policy)
