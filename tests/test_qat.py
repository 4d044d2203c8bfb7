"""edgecls.converters.qat: quantization-aware training, fake-quantized Keras model -> full-int8 TFLite."""

from __future__ import annotations

import numpy as np
import pytest

from edgecls.runtime.errors import EdgeclsError


def _with_random_batchnorm(model, seed: int = 1):
    """Trained-looking BN statistics (fresh ones are identity), so that folding them is really tested."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 2, n), rng.normal(0, 0.3, n), rng.normal(0, 0.2, n), rng.uniform(0.3, 3, n)]
            )
    return model


def _tflite_session(data: bytes, tmp_path, head: str = "softmax"):
    from edgecls.runtime.session import ModelSession

    path = tmp_path / "model_qat.tflite"
    path.write_bytes(data)
    return ModelSession(path, "tflite", head=head)


def test_folded_batchnorm_gives_the_models_own_outputs():
    """With rounding off (calibration mode), the rebuilt graph is the original model: BN folded exactly."""
    import keras

    from edgecls.converters import qat
    from edgecls.models import create_model

    keras.utils.set_random_seed(0)
    model = _with_random_batchnorm(create_model("simple", 3, (16, 16, 3), widths=(4, 8)))
    q = qat.build_qat_model(model, (0.0, 1.0))
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in q.layers)
    x = np.random.default_rng(0).uniform(0, 1, (8, 16, 16, 3)).astype(np.float32)
    qat.set_observing(q, True)
    np.testing.assert_allclose(np.asarray(q(x)), np.asarray(model(x, training=False)), atol=1e-5)


def test_qat_tflite_is_full_int8_and_matches_its_keras_accuracy(tiny_run_dir, tmp_path):
    from edgecls.converters import qat
    from edgecls.converters.quiet import quiet
    from edgecls.core.metrics import probabilities
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run

    run = open_run(tiny_run_dir)
    splits = load_run_splits(run, ("train", "test"))
    with quiet():
        result = qat.quantization_aware_tflite(
            run.load_model(), run, splits, qat.QatOptions(epochs=1, calibration_size=32)
        )
    assert qat.float_tensors(result.tflite) == []  # no float op anywhere, input and output included
    session = _tflite_session(result.tflite, tmp_path, run.metadata["head"])
    spec_in, spec_out = session.backend.input_spec, session.backend.output_spec
    assert (spec_in.dtype, spec_out.dtype) == ("int8", "int8")
    # the input range is the preprocessing's (0..1): every 8-bit pixel is one int8 step, exactly
    assert spec_in.scale == pytest.approx(1 / 255) and spec_in.zero_point == -128

    x = np.concatenate([splits["train"].x, splits["test"].x])
    y = np.concatenate([splits["train"].y, splits["test"].y])
    keras_probs = probabilities(result.model.predict(x, verbose=0))
    lite_probs = session.predict(x)
    keras_acc, lite_acc = (keras_probs.argmax(1) == y).mean(), (lite_probs.argmax(1) == y).mean()
    assert abs(keras_acc - lite_acc) <= 0.01, (keras_acc, lite_acc)
    assert np.abs(keras_probs - lite_probs).max() < 0.05  # a few output steps (1/256) at most
    assert result.notes["qat"]["epochs"] == 1 and result.notes["calibration_images"] == 32


def test_sigmoid_head_converts_full_int8(tmp_path):
    import keras

    from edgecls.converters import qat
    from edgecls.converters.quiet import quiet
    from edgecls.core.metrics import probabilities
    from edgecls.models import create_model

    keras.utils.set_random_seed(0)
    model = _with_random_batchnorm(create_model("simple", 2, (16, 16, 3), widths=(4,)))
    assert model.output_shape == (None, 1)
    q = qat.build_qat_model(model, (0.0, 1.0))
    x = np.random.default_rng(0).uniform(0, 1, (32, 16, 16, 3)).astype(np.float32)
    qat.calibrate(q, x)
    with quiet():
        data = qat.to_tflite_int8(q)
    assert qat.float_tensors(data) == []
    lite = _tflite_session(data, tmp_path, "sigmoid").predict(x)
    np.testing.assert_allclose(lite, probabilities(q.predict(x, verbose=0)), atol=0.02)


def test_a_sequential_read_from_a_file_converts_full_int8(tmp_path):
    """A loaded Sequential's layers have several nodes and the Sequential has no `operations` of its own."""
    import keras

    from edgecls.converters import qat
    from edgecls.converters.quiet import quiet

    layers = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), layers.Conv2D(4, 3, activation="relu"), layers.GlobalAveragePooling2D()]
        + [layers.Dense(3, activation="softmax")]
    )
    model.save(tmp_path / "seq.keras")
    loaded = keras.models.load_model(tmp_path / "seq.keras", compile=False)
    q = qat.build_qat_model(loaded, (0.0, 1.0))
    x = np.random.default_rng(0).uniform(0, 1, (32, 16, 16, 3)).astype(np.float32)
    qat.calibrate(q, x)
    with quiet():
        data = qat.to_tflite_int8(q)
    assert qat.float_tensors(data) == []
    np.testing.assert_allclose(_tflite_session(data, tmp_path).predict(x), q.predict(x, verbose=0), atol=0.02)


def test_unsupported_layer_is_refused_in_one_line():
    import keras

    from edgecls.converters import qat

    inputs = keras.Input(shape=(8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    with pytest.raises(EdgeclsError) as excinfo:
        qat.build_qat_model(model)
    assert "\n" not in str(excinfo.value)
    assert "does not support layer norm (LayerNormalization)" in str(excinfo.value)


def _se_model(gate_activation: str = "sigmoid", body: str = "relu", ops_gate: bool = False):
    """conv -> squeeze-excitation (GAP, two 1x1 convs, a gate multiplied back in) -> GAP -> softmax."""
    import keras

    layers = keras.layers
    inputs = keras.Input(shape=(8, 8, 3))
    x = layers.Conv2D(4, 3, activation=body, name="conv")(inputs)
    s = layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    s = layers.Conv2D(2, 1, activation="relu", name="reduce")(s)
    s = layers.Conv2D(4, 1, name="expand")(s)
    s = (
        layers.ReLU(6.0, name="gate_relu6")(s + 3.0) * (1.0 / 6.0)
        if ops_gate
        else layers.Activation(gate_activation)(s)
    )
    x = layers.Multiply(name="excite")([x, s])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x))


@pytest.mark.parametrize(
    "model_kw, expected",
    [
        ({}, "layer excite (Multiply, squeeze-excitation multiply)"),  # EfficientNet's SE: sigmoid gate
        ({"ops_gate": True}, "(Add, a keras.ops operation outside a layer)"),  # MobileNetV3's hard-sigmoid: x + 3
        ({"body": "silu"}, "layer conv (Conv2D, activation silu (SiLU/swish))"),  # EfficientNet's fused activation
        ({"body": "hard_swish"}, "layer conv (Conv2D, activation hard_silu (hard-swish))"),  # MobileNetV3's
    ],
)
def test_squeeze_excitation_silu_and_hard_swish_are_refused_in_one_line_naming_them(model_kw, expected):
    """TFLite's int8 kernels for these round where this rewrite puts no fake-quantization: refused, never a QAT
    model that trains against the wrong rounding."""
    from edgecls.converters import qat

    with pytest.raises(EdgeclsError) as excinfo:
        qat.build_qat_model(_se_model(**model_kw))
    line = str(excinfo.value)
    assert expected in line and "\n" not in line, line
    assert line.endswith("(convert --no-qat, or leave tflite-int8 out with --formats)"), line


@pytest.mark.slow
def test_mobilenetv2_depthwise_and_residuals_convert_full_int8(tmp_path):
    """Depthwise convs (per-channel), ReLU6, zero padding and residual Adds: still no float op."""
    import keras

    from edgecls.converters import qat
    from edgecls.converters.quiet import quiet
    from edgecls.core.metrics import probabilities
    from edgecls.models import create_model

    keras.utils.set_random_seed(0)
    model = _with_random_batchnorm(create_model("mobilenetv2", 3, (32, 32, 3), alpha=0.35))
    q = qat.build_qat_model(model, (-1.0, 1.0))
    x = np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
    qat.set_observing(q, True)
    np.testing.assert_allclose(np.asarray(q(x)), np.asarray(model(x, training=False)), atol=1e-4)
    qat.set_observing(q, False)
    qat.calibrate(q, x)
    with quiet():
        data = qat.to_tflite_int8(q)
    assert qat.float_tensors(data) == []
    lite = _tflite_session(data, tmp_path).predict(x)
    assert (lite.argmax(1) == probabilities(q.predict(x, verbose=0)).argmax(1)).mean() >= 0.9


@pytest.mark.slow
def test_convert_qat_always_ships_a_verified_full_int8_artifact(tiny_run_dir, tmp_path):
    import json

    from conftest import run_cli

    from edgecls.converters import qat
    from edgecls.runtime.bundle import load_bundle
    from edgecls.runtime.preprocess import preprocess_file
    from edgecls.runtime.session import ModelSession

    bundle = tmp_path / "bundle"
    done = run_cli(
        "convert",
        tiny_run_dir,
        "--out",
        bundle,
        "--formats",
        "tflite-int8",
        "--qat",
        "always",
        "--qat-epochs",
        "1",
        "--calibration-size",
        "32",
        "--max-drop",
        "100",
        "--check-images",
        "2",
    )
    assert done.returncode == 0, done.stderr[-2000:]  # the mechanics; the accuracy: the tests above, benchmarks/qat.py
    manifest = json.loads((bundle / "manifest.json").read_text())
    artifact = manifest["artifacts"][0]
    assert artifact["notes"]["calibration"] == "quantization-aware training (1 epoch)"  # no post-training attempt first
    assert "failed_attempts" not in artifact["notes"] and artifact["notes"]["qat"]["epochs"] == 1
    assert "quantization-aware training (1 epoch)" in (bundle / "verification.txt").read_text()
    assert artifact["input"]["dtype"] == artifact["output"]["dtype"] == "int8"
    assert qat.float_tensors((bundle / "model_int8.tflite").read_bytes()) == []
    loaded = load_bundle(bundle)  # what a device does before it loads the model: names and sha256
    path = loaded.verify(loaded.artifact("tflite-int8"))
    # the check images were classified right by Keras and by this artifact during convert's verification
    session = ModelSession(path, "tflite", head=manifest["head"])
    assert len(manifest["checks"]) == 2
    for check in manifest["checks"]:
        x = preprocess_file(bundle / check["file"], loaded.manifest.preprocess)[None]
        assert manifest["labels"][int(session.predict(x).argmax())] == check["label"]


def test_convert_qat_never_does_not_train(tiny_run_dir, tmp_path, capsys):
    """With every attempt failing the gate (max_drop -100: the library's way; the CLI refuses a negative limit),
    the default would end with QAT; never does not."""
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import AccuracyGateError, ConvertOptions, convert

    options = ConvertOptions(formats=parse_formats("tflite-int8"), qat="never", calibration_size=8, max_drop=-100.0)
    with pytest.raises(AccuracyGateError) as refused:
        convert(tiny_run_dir, tmp_path / "b", options)
    line = str(refused.value)
    assert "tflite-int8 loses more than -100.0 accuracy points whatever we try" in line
    assert "per-channel, 8 calibration images" in line
    assert "quantization-aware" not in capsys.readouterr().err  # neither tried nor announced
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_convert_qat_remedy_is_the_gates_last_attempt(tiny_run_dir, tmp_path):
    """The control for the test above: the same options without qat never end with QAT."""
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import AccuracyGateError, ConvertOptions, convert

    options = ConvertOptions(formats=parse_formats("tflite-int8"), qat_epochs=1, calibration_size=8, max_drop=-100.0)
    with pytest.raises(AccuracyGateError) as refused:
        convert(tiny_run_dir, tmp_path / "b", options)
    line = str(refused.value)
    assert line.index("per-channel, 8 calibration images") < line.index("quantization-aware training (1 epoch)")


def test_convert_qat_option_errors_are_one_line(tiny_run_dir, tmp_path):
    from conftest import cli_error, run_cli

    line = cli_error(run_cli("convert", tiny_run_dir, "--out", tmp_path / "b", "--qat", "sometimes"))
    assert "'sometimes' is not one of 'remedy', 'always', 'never'" in line
    line = cli_error(run_cli("convert", tiny_run_dir, "--out", tmp_path / "b", "--qat", "always", "--no-qat"))
    assert "--no-qat contradicts --qat always" in line
    assert not (tmp_path / "b").exists()


def test_train_no_batch_norm_reaches_the_model(shapes_folder, tmp_path):
    """`--no-batch-norm` (benchmarks/qat.py's natural case) builds the simple CNN without BatchNormalization."""
    import json

    import keras
    from conftest import run_cli

    out = tmp_path / "run"
    done = run_cli(
        "train",
        "--data",
        shapes_folder,
        "--out",
        out,
        "--image-size",
        "16",
        "--widths",
        "4",
        "--epochs",
        "1",
        "--no-batch-norm",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "metadata.json").read_text())["model"]["options"]["batch_norm"] is False
    model = keras.models.load_model(out / "model.keras", compile=False)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
    assert any(isinstance(l, keras.layers.Conv2D) and l.use_bias for l in model.layers)
