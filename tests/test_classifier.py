"""edgecls.runtime.classifier: the TensorFlow-free Classifier, its backends and `edgecls predict` on a real bundle."""

import json
import logging
import shutil

import numpy as np
import pytest

from edgecls.devices import load_profile
from edgecls.runtime.bundle import BundleError, load_bundle
from edgecls.runtime.classifier import Classifier, choose_artifact
from tests.conftest import cli_error, run_cli


def _test_files(run_dir):
    from edgecls.core.rundata import run_dataset
    from edgecls.core.rundir import open_run

    samples = run_dataset(open_run(run_dir)).splits["test"]
    return [s.path for s in samples], np.array([s.label for s in samples])


def _keras_probs_for_files(run_dir, files):
    import keras

    from edgecls.core.metrics import probabilities
    from edgecls.core.rundir import open_run
    from edgecls.runtime.preprocess import preprocess_file

    run = open_run(run_dir)
    x = np.stack([preprocess_file(f, run.preprocess) for f in files])
    return probabilities(keras.models.load_model(run.model_path, compile=False).predict(x, verbose=0))


@pytest.mark.parametrize("artifact", ["tflite-fp32", "onnx-fp32", "tflite-fp16", "tflite-int8", "onnx-int8"])
def test_runtime_top1_and_probabilities_match_keras_for_the_same_files(tiny_run_dir, tiny_bundle, artifact):
    files, _ = _test_files(tiny_run_dir)
    ref = _keras_probs_for_files(tiny_run_dir, files)
    classifier = Classifier(tiny_bundle, artifact=artifact, top_k=3)
    preds = [classifier.classify_file(f) for f in files]
    labels = classifier.labels
    probs = np.array([[dict(p.topk)[l] for l in labels] for p in preds])
    tolerance = classifier.artifact.max_prob_diff + 1e-4  # the gate measured it on the same test images
    if classifier.artifact.precision == "fp32":
        assert [p.label for p in preds] == [labels[i] for i in ref.argmax(1)]
        assert np.abs(probs - ref).max() < 1e-4
    assert np.abs(probs - ref).max() <= tolerance
    assert all(p.latency_ms > 0 for p in preds)


def test_batches_equal_single_frames_and_bgr_frames_equal_rgb(tiny_bundle, tiny_run_dir):
    from edgecls.runtime.preprocess import load_image

    files, _ = _test_files(tiny_run_dir)
    images = [load_image(f) for f in files[:5]]
    classifier = Classifier(tiny_bundle, artifact="tflite-int8")
    batch = classifier.classify_batch(images)
    single = [classifier.classify(im) for im in images]
    bgr = [classifier.classify(np.ascontiguousarray(im[..., ::-1]), order="bgr") for im in images]
    assert [p.topk for p in batch] == [p.topk for p in single] == [p.topk for p in bgr]


def test_device_profiles_choose_the_artifact(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert choose_artifact(bundle, preference=load_profile("raspberry-pi-4").artifacts).name == "tflite-int8"
    assert choose_artifact(bundle, preference=load_profile("jetson-orin-nano").artifacts).name == "onnx-fp32"
    assert choose_artifact(bundle).name == "tflite-int8"


def test_missing_gpu_providers_are_logged_and_cpu_is_used(tiny_bundle, caplog):
    with caplog.at_level(logging.INFO, logger="edgecls.runtime"):
        classifier = Classifier(tiny_bundle, profile=load_profile("jetson-orin-nano"))
    assert classifier.backend_name == "onnxruntime"
    assert classifier.session.backend.providers[0] == "CPUExecutionProvider"
    text = caplog.text
    assert "skipping TensorrtExecutionProvider" in text and "skipping CUDAExecutionProvider" in text
    assert "running on CPUExecutionProvider" in text


def test_tampered_or_incomplete_bundles_are_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / "model_int8.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model_int8.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the manifest"):
        Classifier(copy, artifact="tflite-int8")
    (copy / "model_fp32.onnx").unlink()
    with pytest.raises(BundleError, match="model_fp32.onnx is missing"):
        Classifier(copy, artifact="onnx-fp32")
    with pytest.raises(BundleError, match="no artifact 'onnx-int4'"):
        Classifier(copy, artifact="onnx-int4")
    with pytest.raises(BundleError, match="is not a bundle"):
        load_bundle(tmp_path)


def test_bundle_tar_loads_like_the_directory(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLS_BUNDLE_CACHE", str(tmp_path))  # not the user's ~/.cache
    tar = tiny_bundle.with_name("tiny-bundle.tar")
    assert load_bundle(tar).manifest.to_dict() == load_bundle(tiny_bundle).manifest.to_dict()
    assert Classifier(tar).artifact.name == "tflite-int8"


def test_predict_cli_prints_one_json_object_per_image_recursively(tiny_bundle, shapes_folder, tmp_path):
    result = run_cli("predict", tiny_bundle, shapes_folder, "--json", "--top-k", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 72  # every image in every class folder
    for row in rows:
        assert set(row) == {"path", "top1", "score", "topk", "latency_ms"}
        assert row["top1"] in ("circle", "square", "triangle") and len(row["topk"]) == 2
        assert row["topk"][0]["label"] == row["top1"] and 0 <= row["score"] <= 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-bundle", "does not exist"),
        ("tampered", "does not match the manifest"),
        ("bad-image", "cannot decode image"),
        ("no-images", "no images found"),
    ],
)
def test_predict_cli_errors_are_one_line(tiny_bundle, tmp_path, case, message):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG not really")
    args = [bundle, image]
    if case == "missing-bundle":
        args = [tmp_path / "nothing", image]
    if case == "tampered":
        (bundle / "model_int8.tflite").write_bytes(b"evil")
    if case == "no-images":
        (tmp_path / "empty").mkdir()
        args = [bundle, tmp_path / "empty"]
    # bad-image: a file given alone that is not an image is its own error (edgecls/commands/predict.py)
    assert message in cli_error(run_cli("predict", *args), single=False)


def test_tflite_runtime_preference_falls_back_to_litert_when_absent(tiny_bundle, caplog):
    from edgecls.runtime.backends import available_backends, open_backend

    path = load_bundle(tiny_bundle).root / "model_int8.tflite"
    backend = open_backend(path, "tflite", prefer=("tflite-runtime", "litert"))
    expected = "tflite-runtime" if available_backends()["tflite-runtime"] else "litert"
    assert backend.name == expected
    assert backend.input_spec.dtype == "int8" and backend.input_spec.scale > 0


def test_a_device_with_no_backend_is_told_which_package_to_install(tiny_bundle, monkeypatch):
    import sys

    from edgecls.runtime.bundle import load_bundle
    from edgecls.runtime.classifier import choose_artifact
    from edgecls.runtime.errors import MissingDependencyError

    bundle = load_bundle(tiny_bundle)
    for module in ("ai_edge_litert", "tflite_runtime", "onnxruntime"):  # None in sys.modules: "not installed"
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError) as caught:
        choose_artifact(bundle)
    assert str(caught.value) == (
        "ai-edge-litert is not installed (no installed backend runs this bundle's onnx, "
        "tflite artifacts): install it with `pip install 'edgecls[runtime]'`"
    )


def test_the_profiles_provider_order_reaches_the_onnxruntime_session(tmp_path, caplog):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from edgecls.runtime.backends.onnxrt import OnnxRuntimeBackend

    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs a second provider that any CPU build has (AzureExecutionProvider)")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "relu.onnx")
    # left to itself onnxruntime would pick CPU only; the profile's list must be what the session uses
    with caplog.at_level("WARNING", logger="edgecls.runtime"):
        backend = OnnxRuntimeBackend(
            tmp_path / "relu.onnx", providers=["AzureExecutionProvider", "CPUExecutionProvider"]
        )
    assert backend.providers == ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert not caplog.records  # every provider asked for was initialised: nothing to warn about
    if "CUDAExecutionProvider" not in ort.get_available_providers():  # and the warnings do reach caplog
        with caplog.at_level("WARNING", logger="edgecls.runtime"):
            OnnxRuntimeBackend(tmp_path / "relu.onnx", providers=["CUDAExecutionProvider"])
        assert [r.getMessage().split(":")[1].strip() for r in caplog.records] == ["skipping CUDAExecutionProvider"]
    np.testing.assert_array_equal(backend.run(np.array([[-1, 0, 2]], np.float32)), [[0, 0, 2]])
