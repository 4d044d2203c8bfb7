"""edgecls.importer.keras_source: each Keras kind (.keras, Keras 2 .h5, Teachable Machine, SavedModel) ->
bundle -> `edgecls predict`, with top-1 agreement against the source model run in its own framework."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgecls.importer.api import import_model
from edgecls.importer.request import Declared, ImportRequest
from tests import foreign_keras as fk

TEACHABLE_GATE = 10.0
GATE = 3.0  # accuracy points: the test half holds 75 images, one image is 1.33 points


@pytest.fixture(scope="session")
def foreign(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign_keras")
    data = fk.shapes_folder(folder / "data")
    (folder / "labels.txt").write_text("\n".join(fk.LABELS) + "\n")
    return folder, data


def _predict(bundle, data, artifact: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "edgecls.cli", "predict", str(bundle), str(data), "--json", "--artifact", artifact],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["path"]: row["top1"] for row in rows}


def _source_top1(predict, data, scale: bool) -> dict:
    """The source model's own answers, on its own preprocessing (RGB pixels, -1..1 when `scale`)."""
    x, _ = fk._pixels(data)
    paths = [str(p) for label in fk.LABELS for p in sorted((data / label).glob("*.png"))]
    probs = np.asarray(predict(x / 127.5 - 1 if scale else x))
    return dict(zip(paths, (fk.LABELS[i] for i in probs.argmax(1))))


def _agreement(ours: dict, source: dict) -> float:
    common = sorted(set(ours) & set(source))
    assert len(common) >= 50
    return float(np.mean([ours[p] == source[p] for p in common]))


def test_a_keras_file_with_its_own_rescaling_imports_verified_on_data(foreign, tmp_path):
    import keras

    folder, data = foreign
    model_file = fk.mobilenetv3_keras(folder, data)
    result = import_model(ImportRequest(model_file, tmp_path / "b", folder / "labels.txt", data=data, max_drop=GATE))
    source = result.manifest["source"]
    assert (source["framework"], source["verified_on_data"], source["preprocessing_from"]["mean"]) == (
        "keras",
        True,
        "model",
    )
    assert result.manifest["input"]["mean"] == [127.5] and result.manifest["input"]["std"] == [127.5]
    assert {"tflite-int8", "onnx-int8"} <= {a["name"] for a in result.manifest["artifacts"]}
    reference = keras.models.load_model(model_file, compile=False)
    truth = _source_top1(lambda x: reference.predict(x, verbose=0), data, scale=False)
    assert _agreement(_predict(tmp_path / "b", data, "tflite-fp32"), truth) >= 0.99


def test_a_keras_h5_without_data_skips_int8_and_says_it_is_not_verified(foreign, tmp_path):
    import keras

    folder, data = foreign
    model_file = fk.mobilenetv2_h5(folder, data)
    lines = []
    request = ImportRequest(model_file, tmp_path / "b", folder / "labels.txt", declared=Declared(normalize="symmetric"))
    result = import_model(request, progress=lines.append)
    assert any(line.startswith("int8 skipped: no --data to calibrate on") for line in lines)
    assert result.manifest["source"]["verified_on_data"] is False
    assert result.manifest["reference_accuracy"] is None
    assert {a["name"] for a in result.manifest["artifacts"]} == {"tflite-fp32", "tflite-fp16", "onnx-fp32"}
    reference = keras.models.load_model(model_file, compile=False)
    truth = _source_top1(lambda x: reference.predict(x, verbose=0), data, scale=True)
    assert _agreement(_predict(tmp_path / "b", data, "onnx-fp32"), truth) >= 0.99


def test_a_teachable_machine_folder_imports_with_its_labels_and_preprocessing(foreign, tmp_path):
    import tf_keras

    folder, data = foreign
    export = fk.teachable_folder(folder / "teachable", data)
    lines = []
    # The stand-in export is trained to about 40 % on 5 classes: its int8 answers move by up to ~5 of the 75 test
    # images (1.33 points each). This test guards labels, preprocessing and fp32 agreement; int8 must be made.
    request = ImportRequest(export, tmp_path / "b", data=data, max_drop=TEACHABLE_GATE)
    result = import_model(request, progress=lines.append)
    assert any("Teachable Machine export: center-crop" in line for line in lines)
    assert result.manifest["labels"] == fk.LABELS
    assert result.manifest["input"]["resize"] == "center-crop"
    assert result.manifest["source"]["framework"] == "keras-h5"
    reference = tf_keras.models.load_model(export / "keras_model.h5", compile=False)
    truth = _source_top1(lambda x: reference.predict(x, verbose=0), data, scale=True)
    assert _agreement(_predict(tmp_path / "b", data, "tflite-fp32"), truth) >= 0.99
    assert "tflite-int8" in {a["name"] for a in result.manifest["artifacts"]}


def test_a_savedmodel_folder_imports_as_one_opaque_layer(foreign, tmp_path):
    import tensorflow as tf

    folder, data = foreign
    keras_file = folder / "mobilenetv3.keras"
    if not keras_file.exists():
        fk.mobilenetv3_keras(folder, data)
    saved = fk.savedmodel_folder(folder / "savedmodel", keras_file)
    lines = []
    request = ImportRequest(
        saved, tmp_path / "b", folder / "labels.txt", declared=Declared(normalize="none"), formats="tflite-fp32"
    )
    result = import_model(request, progress=lines.append)
    assert any("no pruning or QAT" in line for line in lines)
    assert result.manifest["source"]["framework"] == "savedmodel"
    serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
    truth = _source_top1(lambda x: next(iter(serve(tf.constant(x, tf.float32)).values())).numpy(), data, False)
    assert _agreement(_predict(tmp_path / "b", data, "tflite-fp32"), truth) >= 0.99


def _tiny_import(tmp_path, model, **request):
    """Import a tiny untrained model saved as .keras (tflite-fp32 only, no --data): (result, lines)."""
    from edgecls.importer.request import Declared

    model.save(tmp_path / "m.keras")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    lines = []
    declared = request.pop("declared", Declared(normalize="none"))
    result = import_model(
        ImportRequest(
            tmp_path / "m.keras",
            tmp_path / "b",
            tmp_path / "labels.txt",
            declared=declared,
            formats="tflite-fp32",
            **request,
        ),
        progress=lines.append,
    )
    return result, lines


def _bundle_probs(tmp_path, x):
    from edgecls.runtime.classifier import Classifier

    return Classifier(tmp_path / "b", "tflite-fp32").probabilities(x)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_a_nested_logits_head_is_found_by_its_outputs_and_gets_a_softmax(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    head = keras.Sequential([layers.Dense(3, kernel_initializer="he_normal")])
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, head(layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inputs))))
    result, lines = _tiny_import(tmp_path, model)
    assert any(line.startswith("output: logits") for line in lines)
    assert result.manifest["source"]["preprocessing_from"]["output"] == "model"
    x = np.random.default_rng(1).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(_bundle_probs(tmp_path, x), _softmax(model.predict(x, verbose=0)), atol=1e-4)


def test_a_loaded_sequential_ending_in_logits_imports(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), layers.Rescaling(1 / 255), layers.Conv2D(4, 3), layers.GlobalAveragePooling2D()]
        + [layers.Dense(3)]
    )
    from edgecls.importer.request import Declared

    result, lines = _tiny_import(tmp_path, model, declared=Declared())
    assert (result.manifest["input"]["mean"], result.manifest["input"]["std"]) == ([0.0], [255.0])
    x = np.random.default_rng(1).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(_bundle_probs(tmp_path, x / 255), _softmax(model.predict(x, verbose=0)), atol=1e-4)


def test_a_dynamic_input_size_takes_size(tmp_path):
    import keras

    from edgecls.importer.request import Declared

    layers = keras.layers
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(inputs)))
    result, _ = _tiny_import(tmp_path, model, declared=Declared(normalize="none", size=(24, 16)))
    assert result.manifest["input"]["shape"] == [1, 24, 16, 3]
    x = np.random.default_rng(1).uniform(0, 255, (4, 24, 16, 3)).astype("float32")
    np.testing.assert_allclose(_bundle_probs(tmp_path, x), model.predict(x, verbose=0), atol=1e-4)


def test_a_dynamic_input_size_over_the_largest_side_is_refused(tmp_path):
    import keras

    from edgecls.importer.request import Declared
    from edgecls.runtime.errors import EdgeclsError

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs)))
    with pytest.raises(EdgeclsError, match="over 4096 pixels a side"):
        _tiny_import(tmp_path, model, declared=Declared(normalize="none", size=(5000, 5000)))
    with pytest.raises(EdgeclsError, match="--size"):
        _tiny_import(tmp_path, model)


def test_a_two_output_model_imports_the_output_named(tmp_path):
    import keras

    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(
        inputs, [layers.Dense(4, name="boxes")(x), layers.Dense(3, activation="softmax", name="cls")(x)]
    )
    result, _ = _tiny_import(tmp_path, model, output_name="cls")
    x = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(_bundle_probs(tmp_path, x), model.predict(x, verbose=0)[1], atol=1e-4)
