"""Review of issue 15 points 12 and 13 as landed: what the converters' own tests could not see."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgecls.converters.calibration import fingerprint, representative_set
from edgecls.converters.prune import _stats_size, prune_model, recalibrate_batchnorm, structured_prune
from edgecls.models import create_model


def _images(n, shape, seed=1):
    return np.random.default_rng(seed).random((n, *shape)).astype("float32")


def _splits(run_dir):
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run

    run = open_run(run_dir)
    return run, load_run_splits(run, ("train", "val", "test"))


def test_i15_p13_convert_path_refits_and_recalibrates_on_the_training_sample(tiny_run_dir):
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


def test_i15_p13_structured_pruning_refits_a_mixed_precision_model():
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


def test_i15_p12_an_artifact_built_by_a_remedy_records_the_calibration_set_it_used(tiny_run_dir, tmp_path, monkeypatch):
    from edgecls.converters.export import ExportContext
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert

    every = ExportContext.attempts
    # the real "more calibration data" remedy, run first instead of after a failure
    monkeypatch.setattr(
        ExportContext, "attempts", lambda self, fmt: [a for a in every(self, fmt) if a[0].startswith("more")]
    )
    result = convert(
        tiny_run_dir,
        tmp_path / "bundle",
        ConvertOptions(formats=parse_formats("tflite-int8,onnx-int8"), calibration_size=8, max_drop=100.0),
    )
    train = _splits(tiny_run_dir)[1]["train"].x
    used = representative_set(train, min(32, len(train)), 0)
    assert len(used) > 8
    top = result.manifest["calibration"]
    assert top["size"] == 8 and top["fingerprint"] == fingerprint(representative_set(train, 8, 0))
    for art in result.manifest["artifacts"]:
        notes = art["notes"]
        assert notes["calibration"] == f"more calibration data ({len(used)} images)"
        assert notes["calibration_images"] == len(used)
        assert notes["calibration_fingerprint"] == fingerprint(used) != top["fingerprint"]
