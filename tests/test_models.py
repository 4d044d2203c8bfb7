"""The model registry's Keras applications backbones (edgecls.models): each builds on our input without its own
preprocessing layers, sees what its weights expect from our one preprocessing function, trains, checks its
options in one line, names the ImageNet file Keras downloads, and goes through convert to tflite-int8 or
fails there loudly."""

import numpy as np
import pytest

from edgecls.models import create_model, default_normalization, imagenet_weights_file, model_entry, pretrained_models
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec, preprocess

KERAS_BACKBONES = ("mobilenetv2", "mobilenetv3small", "mobilenetv3large", "efficientnetb0")
SIZE = 32  # the smallest these backbones take: fast


def test_every_keras_backbone_is_registered_as_pretrained():
    assert set(KERAS_BACKBONES) <= set(pretrained_models())


@pytest.mark.parametrize("name", KERAS_BACKBONES)
def test_a_backbone_has_no_preprocessing_layer_and_trains_a_step(name):
    import keras

    model = create_model(name, 3, (SIZE, SIZE, 3))
    kinds = {type(op).__name__ for op in model.operations}
    assert not kinds & {"Rescaling", "Normalization"}, kinds
    assert model.layers[0].name == "image" and model.output.shape == (None, 3)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    before = [w.copy() for w in model.get_layer("predictions").get_weights()]
    loss = model.train_on_batch(x, np.array([0, 1, 2, 0]))
    assert np.isfinite(loss)
    after = model.get_layer("predictions").get_weights()
    assert not np.allclose(before[0], after[0])  # a step moved the head


@pytest.mark.parametrize("name", KERAS_BACKBONES)
def test_a_backbone_batchnorm_settles_in_tens_of_steps_not_thousands(name):
    """Keras' 0.999 momentum left a few-epoch run from scratch predicting one class in inference mode."""
    import keras

    model = create_model(name, 3, (SIZE, SIZE, 3))
    momentums = {l.momentum for l in model.layers if isinstance(l, keras.layers.BatchNormalization)}
    assert momentums == {0.9}


def _keras_reference(name: str):
    """Keras' own backbone with its own preprocessing (what its ImageNet weights are used with), random weights."""
    import keras

    shape = (SIZE, SIZE, 3)
    if name == "mobilenetv2":  # no layer: keras.applications.mobilenet_v2.preprocess_input is its preprocessing
        backbone = keras.applications.MobileNetV2(input_shape=shape, include_top=False, weights=None)
        return backbone, lambda raw: backbone(keras.applications.mobilenet_v2.preprocess_input(raw.copy()))
    if name.startswith("mobilenetv3"):
        factory = keras.applications.MobileNetV3Small if name.endswith("small") else keras.applications.MobileNetV3Large
        backbone = factory(input_shape=shape, include_top=False, weights=None, include_preprocessing=True)
        return backbone, backbone
    backbone = keras.applications.EfficientNetB0(input_shape=shape, include_top=False, weights=None)
    norm = next(l for l in backbone.layers if isinstance(l, keras.layers.Normalization))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # ImageNet's, in 0..1 units
    norm.set_weights([mean, std**2, np.array(0)])
    return backbone, backbone


@pytest.mark.parametrize("name", KERAS_BACKBONES)
def test_a_backbone_given_our_preprocessing_computes_what_keras_computes_with_its_own(name, tmp_path):
    """Its weights from a file (--weights FILE) and its default normalization: the features match Keras' own model
    fed raw pixels through Keras' own preprocessing, so the preprocessing is ours alone and the one its weights need;
    and the backbone starts frozen (transfer learning)."""
    import keras

    keras.utils.set_random_seed(0)
    backbone, reference = _keras_reference(name)
    weights = tmp_path / "backbone.weights.h5"
    backbone.save_weights(weights)
    model = create_model(name, 3, (SIZE, SIZE, 3), weights=str(weights))
    features = keras.Model(model.inputs, model.get_layer("gap").input)
    raw = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
    spec = PreprocessSpec.normalized(SIZE, SIZE, default_normalization(name))
    ours = features(np.stack([preprocess(image, spec) for image in raw]))
    expected = reference(raw.astype(np.float32))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-3, atol=1e-3)
    trainable = [l.name for l in features.layers if l.trainable and l.weights]
    assert trainable == [], trainable[:3]


def test_efficientnet_defaults_to_imagenet_mean_and_std_and_the_mobilenets_to_symmetric():
    assert {name: default_normalization(name) for name in KERAS_BACKBONES} == {
        "mobilenetv2": "symmetric",
        "mobilenetv3small": "symmetric",
        "mobilenetv3large": "symmetric",
        "efficientnetb0": "imagenet",
    }


@pytest.mark.parametrize(
    "name, shape, options, expected",
    [
        ("mobilenetv3small", (31, 31, 3), {}, "MobileNetV3-Small needs images of at least 32x32, got 31x31"),
        ("efficientnetb0", (64, 64, 1), {}, "EfficientNet-B0 needs 3-channel input: use --color rgb"),
        ("mobilenetv3large", (64, 64, 3), {"alpha": 0.0}, "alpha 0.0 is out of range"),
        ("mobilenetv3small", (64, 64, 3), {"alpha": 0.5, "weights": "imagenet"}, "for alpha 0.75, 1 only, not 0.5"),
        (
            "mobilenetv3large",
            (64, 64, 3),
            {"alpha": 0.75, "minimalistic": True, "weights": "imagenet"},
            "for alpha 1 only, not 0.75",
        ),
        ("mobilenetv2", (64, 64, 3), {"alpha": 0.6, "weights": "imagenet"}, "alpha 0.35, 0.5, 0.75, 1, 1.3, 1.4 only"),
        ("efficientnetb0", (64, 64, 3), {"weights": "no/such.h5"}, "weights file no/such.h5 does not exist"),
        ("efficientnetb0", (64, 64, 3), {"weights": "/tmp"}, "weights /tmp is a folder, not a file"),
        ("efficientnetb0", (64, 64, 3), {"alpha": 0.5}, "model efficientnetb0 has no option(s) alpha"),
    ],
)
def test_bad_backbone_options_are_refused_in_one_line_before_building(name, shape, options, expected):
    with pytest.raises(EdgeclsError) as refused:
        create_model(name, 3, shape, **options)
    assert expected in str(refused.value) and "\n" not in str(refused.value)


def test_a_truncated_imagenet_file_in_the_keras_cache_says_to_delete_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = tmp_path / "models" / imagenet_weights_file("mobilenetv2", (96, 96, 3), 0.35).name
    cached.parent.mkdir()
    cached.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(EdgeclsError) as refused:
        create_model("mobilenetv2", 3, (96, 96, 3), alpha=0.35, weights="imagenet")
    assert f"delete {cached} to download it again" in str(refused.value)


def test_imagenet_files_are_the_ones_keras_applications_downloads():
    """The names, URLs and md5s keras.applications' source builds for each no-top file (the installed Keras)."""
    from keras.src.applications import efficientnet, mobilenet_v2, mobilenet_v3

    v2 = imagenet_weights_file("mobilenetv2", (96, 96, 3), 0.35)
    assert v2.name == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    assert v2.url == mobilenet_v2.BASE_WEIGHT_PATH + v2.name
    assert imagenet_weights_file("mobilenetv2", (100, 100, 3)).name.endswith("_1.0_224_no_top.h5")  # Keras' fallback
    for model, alpha, minimalistic in [
        ("mobilenetv3small", 1.0, False),
        ("mobilenetv3small", 0.75, False),
        ("mobilenetv3large", 1.0, True),
    ]:
        key = f"{model[11:]}{'_minimalistic' if minimalistic else ''}_224_{alpha}_float"
        file = imagenet_weights_file(model, (64, 64, 3), alpha, minimalistic)
        assert file.name == f"weights_mobilenet_v3_{key}_no_top_v2.h5"
        assert (file.url, file.md5) == (mobilenet_v3.BASE_WEIGHT_PATH + file.name, mobilenet_v3.WEIGHTS_HASHES[key][1])
    b0 = imagenet_weights_file("efficientnetb0", (64, 64, 3))
    assert (b0.name, b0.url, b0.md5) == (
        "efficientnetb0_notop.h5",
        efficientnet.BASE_WEIGHTS_PATH + "efficientnetb0_notop.h5",
        efficientnet.WEIGHTS_HASHES["b0"][1],
    )


def test_the_tune_search_of_a_backbone_searches_depth_with_weights_and_width_without():
    import keras_tuner

    for name, width in (("mobilenetv3small", {"alpha"}), ("efficientnetb0", set())):
        search = model_entry(name).search
        for pretrained, expected in ((True, {"fine_tune_layers"}), (False, width)):
            hp = keras_tuner.HyperParameters()
            search.declare(hp, 64, pretrained)
            assert set(hp.values) == expected, (name, pretrained)


# convert: a tiny run of each activation family, through the real pipeline (LiteRT verification)


@pytest.fixture(scope="module")
def backbone_runs(tmp_path_factory, shapes_folder):
    from edgecls.train import TrainConfig, train

    root = tmp_path_factory.mktemp("backbone-runs")
    runs = {}
    for key, model, options in (
        ("hard-swish", "mobilenetv3small", {"alpha": 0.75}),
        ("minimalistic", "mobilenetv3small", {"alpha": 0.75, "minimalistic": True}),
    ):
        cfg = TrainConfig(
            data=str(shapes_folder),
            out=str(root / key),
            model=model,
            model_options=options,
            image_size=SIZE,
            epochs=2,
            batch_size=16,
            seed=0,
            verbose=0,
        )
        train(cfg)
        runs[key] = root / key
    return runs


def _int8_options(**kw):
    from edgecls.converters.formats import FORMATS
    from edgecls.converters.pipeline import ConvertOptions
    from edgecls.runtime.formats import TFLITE_INT8

    return ConvertOptions(formats=[FORMATS[TFLITE_INT8.name]], calibration_size=16, qat_epochs=1, **kw)


@pytest.mark.slow
def test_a_hard_swish_backbone_converts_to_full_int8_tflite_verified_in_litert(backbone_runs, tmp_path):
    import json

    from ai_edge_litert.interpreter import Interpreter

    from edgecls.converters.pipeline import convert

    result = convert(backbone_runs["hard-swish"], tmp_path / "bundle", _int8_options(max_drop=100.0, qat="never"))
    (artifact,) = result.manifest["artifacts"]
    assert artifact["name"] == "tflite-int8" and 0 <= artifact["accuracy"] <= 1
    interpreter = Interpreter(model_path=str(tmp_path / "bundle" / artifact["file"]))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    ops = {d["op_name"] for d in interpreter._get_ops_details()}
    assert "HARD_SWISH" in ops, ops  # hard-swish stays one int8 op, as TFLite has it
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["artifacts"][0]["name"] == "tflite-int8"


@pytest.mark.slow
def test_a_hard_swish_backbone_failing_the_gate_ends_in_the_qat_refusal_and_leaves_no_bundle(backbone_runs, tmp_path):
    """Post-training int8 fails the gate (a negative limit fails every attempt: the library's way), then the QAT
    remedy refuses hard-swish in one line naming it: never a QAT model that rounds where TFLite does not."""
    from edgecls.converters.pipeline import convert

    with pytest.raises(EdgeclsError) as refused:
        convert(backbone_runs["hard-swish"], tmp_path / "bundle", _int8_options(max_drop=-100.0))
    line = str(refused.value)
    assert "quantization-aware training does not support" in line and "hard_silu (hard-swish)" in line, line
    assert "--no-qat" in line and "\n" not in line
    assert not (tmp_path / "bundle").exists()


@pytest.mark.slow
def test_a_minimalistic_mobilenetv3_is_rescued_by_quantization_aware_training(backbone_runs, tmp_path):
    """ReLU and no squeeze-excitation: the QAT remedy takes it and makes a full-int8 model that passes the gate."""
    from edgecls.converters.pipeline import convert
    from edgecls.converters.qat import float_tensors

    result = convert(backbone_runs["minimalistic"], tmp_path / "bundle", _int8_options(max_drop=100.0, qat="always"))
    (artifact,) = result.manifest["artifacts"]
    assert artifact["notes"]["qat"]["epochs"] == 1, artifact["notes"]
    assert float_tensors((tmp_path / "bundle" / artifact["file"]).read_bytes()) == []
