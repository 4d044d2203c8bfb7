"""edgecls.importer (detect, keras_layers, api) and `edgecls import`: detection by content, options, refusals."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from edgecls.importer.api import import_model
from edgecls.importer.detect import KERAS, KERAS_H5, ONNX, SAVEDMODEL, TEACHABLE, TFLITE, detect
from edgecls.importer.request import ImportRequest
from edgecls.runtime.errors import EdgeclsError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 16x16 RGB Keras model with 3 softmax outputs, saved as .keras and .h5."""
    import keras

    folder = tmp_path_factory.mktemp("tiny")
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.save(folder / "tiny.keras")
    model.save(folder / "tiny.h5")
    return folder


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "edgecls.cli", *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_a_keras_zip_is_found_by_content_even_renamed(tiny, tmp_path):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes((tiny / "tiny.keras").read_bytes())
    assert detect(renamed).kind == KERAS


def test_an_h5_that_holds_a_keras_model_is_keras_h5(tiny):
    assert detect(tiny / "tiny.h5").kind == KERAS_H5


def test_an_h5_without_model_config_is_not_a_keras_model(tmp_path):
    import h5py

    with h5py.File(tmp_path / "weights.h5", "w") as f:
        f["w"] = np.zeros(3)
    with pytest.raises(EdgeclsError, match=r"not a Keras model \(no model_config\).*model\.save"):
        detect(tmp_path / "weights.h5")


def test_a_text_file_names_what_import_takes(tmp_path):
    (tmp_path / "notes.h5").write_text("hello\n")
    with pytest.raises(EdgeclsError, match="not a model edgecls import can read: give a .keras file"):
        detect(tmp_path / "notes.h5")


def test_a_zip_without_config_json_is_not_a_keras_file(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.keras", "w") as z:
        z.writestr("other.txt", "x")
    with pytest.raises(EdgeclsError, match="no config.json"):
        detect(tmp_path / "x.keras")


def test_a_flatbuffer_with_the_tfl3_identifier_is_tflite(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(32))
    assert detect(tmp_path / "m.bin").kind == TFLITE


def test_an_onnx_model_proto_is_onnx(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.model")
    assert detect(tmp_path / "m.model").kind == ONNX


def test_a_teachable_machine_folder_brings_its_labels(tiny, tmp_path):
    (tmp_path / "keras_model.h5").write_bytes((tiny / "tiny.h5").read_bytes())
    (tmp_path / "labels.txt").write_text("0 a\n1 b\n2 c\n")
    source = detect(tmp_path)
    assert (source.kind, source.labels, source.framework) == (TEACHABLE, tmp_path / "labels.txt", KERAS_H5)


def test_a_savedmodel_folder_is_found_by_saved_model_pb(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert detect(tmp_path).kind == SAVEDMODEL


def test_a_folder_with_neither_is_refused(tmp_path):
    with pytest.raises(EdgeclsError, match="neither saved_model.pb"):
        detect(tmp_path)


def test_a_labels_file_with_the_wrong_count_is_one_line(tiny, tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(EdgeclsError, match="has 2 labels but the model has 3 outputs"):
        import_model(ImportRequest(tiny / "tiny.keras", tmp_path / "out", tmp_path / "labels.txt"))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".edgecls-import")] == []


def test_a_model_whose_input_is_not_an_image_is_refused(tmp_path):
    import keras

    inputs = keras.Input((10,))
    keras.Model(inputs, keras.layers.Dense(3)(inputs)).save(tmp_path / "vector.keras")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(EdgeclsError, match=r"the model's input is not an image \(rank 2, shape \(None, 10\)\)"):
        import_model(ImportRequest(tmp_path / "vector.keras", tmp_path / "out", tmp_path / "labels.txt"))


def test_a_model_without_normalization_asks_for_normalize(tiny, tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(EdgeclsError, match="--normalize scale|symmetric"):
        import_model(ImportRequest(tiny / "tiny.keras", tmp_path / "out", tmp_path / "labels.txt"))


def test_an_out_folder_that_is_not_ours_is_refused_before_loading(tiny, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "photo.jpg").write_bytes(b"x")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(EdgeclsError, match="out"):
        import_model(ImportRequest(tiny / "tiny.keras", tmp_path / "out", tmp_path / "labels.txt", overwrite=True))
    assert (tmp_path / "out" / "photo.jpg").read_bytes() == b"x"


def test_rescaling_and_normalization_at_the_input_fold_into_mean_and_std():
    import keras

    from edgecls.importer.keras_layers import fold_input_layers

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Normalization(mean=[0.485, 0.456, 0.406], variance=np.square([0.229, 0.224, 0.225]))(x)
    x = keras.layers.Conv2D(2, 3)(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x)))
    cut, mean, std = fold_input_layers(model)
    np.testing.assert_allclose(mean, (123.675, 116.28, 103.53), rtol=1e-6)
    np.testing.assert_allclose(std, (58.395, 57.12, 57.375), rtol=1e-6)
    assert not any(isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)) for layer in cut.layers)


def test_a_model_without_input_layers_folds_nothing(tiny):
    import keras

    from edgecls.importer.keras_layers import fold_input_layers

    model = keras.models.load_model(tiny / "tiny.keras", compile=False)
    assert fold_input_layers(model) == (model, None, None)


def test_the_cli_prints_a_text_file_refusal_in_one_line(tmp_path):
    (tmp_path / "model.txt").write_text("not a model\n")
    done = _cli("import", tmp_path / "model.txt", "--labels", tmp_path / "model.txt", "--out", tmp_path / "b")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--size", "0"], "--size '0' is not N or WxH"),
        (["--mean", "1,2"], "--mean '1,2' has 2 values"),
        (["--normalize", "scale", "--mean", "1", "--std", "2"], "--normalize and --mean/--std both"),
        (["--max-drop", "nan"], "--max-drop nan is not a number"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, option, message):
    done = _cli("import", "m.keras", "--out", tmp_path / "b", *option)
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_size_takes_n_or_width_by_height():
    from edgecls.commands.import_ import _size

    assert (_size("224"), _size("320x240")) == ((224, 224), (240, 320))


def test_a_named_normalization_becomes_the_spec_mean_and_std():
    from edgecls.importer.request import Declared, ModelHints, resolve_spec

    spec, output = resolve_spec(ModelHints(size=(8, 8), channels=3), Declared(normalize="imagenet"), print)
    assert (spec.mean, spec.std, output) == ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "probs")


def test_a_declared_value_that_differs_from_the_model_warns_and_wins():
    from edgecls.importer.request import Declared, ModelHints, resolve_spec

    said = []
    hints = ModelHints(size=(8, 8), channels=3, mean=(127.5,), std=(127.5,))
    spec, _ = resolve_spec(hints, Declared(normalize="scale"), said.append)
    assert (spec.mean, spec.std) == ((0.0,), (255.0,))
    assert any("--mean says 0" in line for line in said)


def test_a_keras2_depthwise_conv_with_groups_loads_as_keras_own_layer(tmp_path):
    """Teachable Machine's .h5 names groups=1 on DepthwiseConv2D, which Keras 3 refuses; the layer saved
    again (the work run's model.keras) must read back as Keras's own DepthwiseConv2D."""
    import json

    import h5py
    import keras

    from edgecls.importer.detect import detect
    from edgecls.importer.keras_load import load_model

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    model.save(tmp_path / "tm.h5")
    with h5py.File(tmp_path / "tm.h5", "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "DepthwiseConv2D":
                layer["config"]["groups"] = 1
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(Exception, match="groups"):
        keras.models.load_model(tmp_path / "tm.h5", compile=False)
    loaded, opaque = load_model(detect(tmp_path / "tm.h5"), tmp_path, print)
    assert not opaque
    loaded.save(tmp_path / "again.keras")
    again = keras.models.load_model(tmp_path / "again.keras", compile=False)
    assert type(again.get_layer("dw")) is keras.layers.DepthwiseConv2D
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_data_folders_that_differ_from_the_labels_are_named_in_one_line(tiny, tmp_path):
    from edgecls.importer.request import Declared

    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    for name in ("a", "b", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
    request = ImportRequest(
        tiny / "tiny.keras",
        tmp_path / "out",
        tmp_path / "labels.txt",
        data=tmp_path / "data",
        declared=Declared(normalize="scale"),
    )
    with pytest.raises(EdgeclsError, match=r"dog unknown to the model; c missing") as caught:
        import_model(request)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_loaded_sequential_folds_its_rescaling(tmp_path):
    """A Sequential read from a file has several nodes per layer: the chain is traced through this model's own."""
    import keras

    from edgecls.importer.keras_layers import fold_input_layers

    layers = keras.layers
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), layers.Rescaling(1 / 255), layers.Conv2D(2, 3), layers.GlobalAveragePooling2D()]
        + [layers.Dense(3, activation="softmax")]
    )
    model.save(tmp_path / "seq.keras")
    loaded = keras.models.load_model(tmp_path / "seq.keras", compile=False)
    cut, mean, std = fold_input_layers(loaded)
    assert (mean, std) == ((0.0,), (255.0,))
    assert not any(isinstance(layer, layers.Rescaling) for layer in cut.layers)


def test_augmentation_before_the_rescaling_is_dropped_with_it(tmp_path):
    """The tutorial's Sequential([data_augmentation, Rescaling(1/255), ...]): augmentation is identity at inference."""
    import keras

    from edgecls.importer.keras_layers import fold_input_layers

    layers = keras.layers
    augmentation = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)])
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), augmentation, layers.Rescaling(1 / 255), layers.Conv2D(2, 3)]
        + [layers.GlobalAveragePooling2D(), layers.Dense(3)]
    )
    model.save(tmp_path / "tutorial.keras")
    cut, mean, std = fold_input_layers(keras.models.load_model(tmp_path / "tutorial.keras", compile=False))
    assert (mean, std) == ((0.0,), (255.0,))


def test_a_declared_normalization_over_a_rescaling_left_inside_is_refused(tmp_path):
    """A Rescaling that cannot be folded (it follows a layer) would scale the input twice with --normalize scale."""
    import keras

    from edgecls.importer.request import Declared

    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.Rescaling(1 / 255)(layers.Conv2D(2, 3)(inputs))
    keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x))).save(tmp_path / "inside.keras")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    request = ImportRequest(
        tmp_path / "inside.keras", tmp_path / "out", tmp_path / "labels.txt", declared=Declared(normalize="scale")
    )
    with pytest.raises(EdgeclsError, match="--normalize none") as caught:
        import_model(request)
    assert "rescaling" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_an_undeclared_normalization_message_offers_normalize_none(tiny, tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(EdgeclsError, match="none"):
        import_model(ImportRequest(tiny / "tiny.keras", tmp_path / "out", tmp_path / "labels.txt"))


def test_a_per_pixel_normalization_is_not_folded():
    import keras

    from edgecls.importer.keras_layers import fold_input_layers

    inputs = keras.Input((4, 4, 3))
    norm = keras.layers.Normalization(axis=(1, 2, 3))
    norm.adapt(np.random.default_rng(0).uniform(0, 255, (8, 4, 4, 3)).astype("float32"))
    x = keras.layers.Flatten()(norm(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    assert fold_input_layers(model) == (model, None, None)


def test_an_input_feeding_a_rescaling_and_another_layer_folds_nothing():
    import keras

    from edgecls.importer.keras_layers import fold_input_layers

    inputs = keras.Input((4, 4, 3))
    a = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    b = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    assert fold_input_layers(model) == (model, None, None)


def test_a_model_with_two_outputs_is_one_line_naming_output_name(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = [keras.layers.Dense(3, name="classes")(x), keras.layers.Dense(4, name="boxes")(x)]
    keras.Model(inputs, outputs).save(tmp_path / "two.keras")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(EdgeclsError, match="2 outputs.*--output-name") as caught:
        import_model(ImportRequest(tmp_path / "two.keras", tmp_path / "out", tmp_path / "labels.txt"))
    assert "classes" in str(caught.value)


def test_a_model_with_two_inputs_says_to_export_the_image_alone(tmp_path):
    import keras

    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))
    keras.Model([a, b], keras.layers.Dense(3)(x)).save(tmp_path / "two.keras")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(EdgeclsError, match="only input is the image"):
        import_model(ImportRequest(tmp_path / "two.keras", tmp_path / "out", tmp_path / "labels.txt"))


def test_a_teachable_machine_folder_keeps_a_declared_normalize():
    from edgecls.importer.keras_source import _teachable
    from edgecls.importer.request import Declared

    assert _teachable(Declared(normalize="scale"), print).normalize == "scale"
    assert _teachable(Declared(), print).normalize == "symmetric"
    assert _teachable(Declared(mean=(1.0,), std=(2.0,)), print).normalize is None


def test_an_import_removes_work_folders_of_dead_imports_and_creates_missing_parents(tiny, tmp_path):
    from edgecls.runtime.atomic import host_tag

    (tmp_path / "labels.txt").write_text("a\nb\n")  # the wrong count: refused after the work folder exists
    out = tmp_path / "nope" / "deeper" / "b"
    out.parent.mkdir(parents=True)
    stale = out.parent / f".b-import.{2**22 + 7}@{host_tag()}.abc_1.partial"
    stale.mkdir()
    with pytest.raises(EdgeclsError, match="label"):
        import_model(ImportRequest(tiny / "tiny.keras", out, tmp_path / "labels.txt"))
    assert list(out.parent.iterdir()) == []
    with pytest.raises(EdgeclsError, match="label"):
        import_model(ImportRequest(tiny / "tiny.keras", tmp_path / "x" / "y" / "b", tmp_path / "labels.txt"))


def test_a_keras_file_with_an_unregistered_custom_layer_names_it(tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="edgecls_test")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inputs = keras.Input((4, 4, 3))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(Twice()(inputs)))).save(tmp_path / "c.keras")
    del keras.saving.get_custom_objects()["edgecls_test>Twice"]
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(EdgeclsError) as caught:
        import_model(ImportRequest(tmp_path / "c.keras", tmp_path / "out", tmp_path / "labels.txt"))
    message = str(caught.value)
    assert "custom layer or function Twice" in message and "register_keras_serializable" in message
    assert "Keras 3 .keras file?" not in message and "\n" not in message


def _savedmodel(folder, signatures: dict):
    import tensorflow as tf

    module = tf.Module()
    module.w = tf.Variable(tf.ones((3, 3)))

    @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 3), tf.float32)])
    def predict(x):
        return {"scores": tf.nn.softmax(tf.reduce_mean(x, axis=(1, 2)) @ module.w)}

    tf.saved_model.save(module, str(folder), signatures={name: predict for name in signatures})
    return folder


def test_a_savedmodel_without_serving_default_uses_its_one_signature(tmp_path):
    from edgecls.importer.detect import detect
    from edgecls.importer.keras_load import load_model

    model, opaque = load_model(detect(_savedmodel(tmp_path / "sm", {"predict": 1})), tmp_path, print)
    assert opaque and tuple(model.input_shape) == (None, 8, 8, 3)


def test_a_savedmodel_with_several_signatures_and_no_serving_default_lists_them(tmp_path):
    from edgecls.importer.detect import detect
    from edgecls.importer.keras_load import load_model

    folder = _savedmodel(tmp_path / "sm", {"predict": 1, "classify": 1})
    with pytest.raises(EdgeclsError, match="no serving_default signature.*classify, predict"):
        load_model(detect(folder), tmp_path, print)


def test_a_keras_file_with_a_lambda_layer_says_to_re_save_it_without(tmp_path):
    import keras

    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2)(inputs))
    keras.Model(inputs, keras.layers.Dense(2)(x)).save(tmp_path / "l.keras")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(EdgeclsError, match="holds a Lambda layer.*re-save the model") as caught:
        import_model(ImportRequest(tmp_path / "l.keras", tmp_path / "out", tmp_path / "labels.txt"))
    assert "Keras 3 .keras file?" not in str(caught.value)
