"""edgecls.runtime.backends.openvino: OpenVINO on the bundle's ONNX artifacts, against ONNX Runtime on the same file.

Real images (the shapes set the tiny bundle was trained on, its test split, scikit-learn's photos), real
conversions, real engines; an imported PyTorch-style NCHW logits model (tests/foreign_onnx.py); the real
`edgecls predict` and the bench's fresh worker processes.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from edgecls.runtime.bundle import load_bundle
from edgecls.runtime.classifier import Classifier
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import load_image, preprocess
from edgecls.runtime.session import ModelSession
from tests import foreign_onnx
from tests.conftest import _session_folder, cli_error, run_cli

try:
    import openvino as ov
except ImportError:  # the engine tests skip, naming the extra; the device choice below needs no engine
    ov = None
needs_openvino = pytest.mark.skipif(ov is None, reason="openvino is not installed: pip install 'edgecls[openvino]'")

IMAGE_SUFFIXES = (".png", ".jpg", ".bmp", ".webp")


def _images(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _batch(bundle, paths) -> np.ndarray:
    spec = bundle.manifest.preprocess
    return np.stack([preprocess(load_image(p), spec) for p in paths])


def _both(bundle, name: str, **openvino_options) -> tuple:
    """(ONNX Runtime, OpenVINO) sessions on the very same artifact file, one thread each."""
    artifact = bundle.artifact(name)
    path = bundle.verify(artifact)
    ort = ModelSession.for_artifact(path, bundle.manifest, artifact, threads=1)
    openvino = ModelSession.for_artifact(
        path, bundle.manifest, artifact, threads=1, prefer=("openvino",), **openvino_options
    )
    assert (ort.backend.name, openvino.backend.name) == ("onnxruntime", "openvino")
    return ort, openvino


@pytest.fixture(scope="module")
def real_images(shapes_folder, tmp_path_factory) -> list:
    """The 72 shape images plus 40 photo crops: real pictures, most of them never seen in training."""
    photos = foreign_onnx.photos(tmp_path_factory.mktemp("ov-photos"), count=40)
    return _images(shapes_folder) + photos


@needs_openvino
def test_fp32_artifact_gives_onnx_runtimes_probabilities_to_1e_4(tiny_bundle, real_images):
    bundle = load_bundle(tiny_bundle)
    ort, openvino = _both(bundle, "onnx-fp32")
    assert openvino.backend.config["INFERENCE_PRECISION_HINT"] == "f32"
    x = _batch(bundle, real_images)
    p_ort, p_ov = ort.predict(x), openvino.predict(x)
    assert p_ov.shape == p_ort.shape == (len(real_images), len(bundle.labels))
    assert np.array_equal(p_ort.argmax(1), p_ov.argmax(1))
    assert float(np.abs(p_ort - p_ov).max()) <= 1e-4


@needs_openvino
def test_int8_artifact_agrees_with_onnx_runtime_on_top1(tiny_bundle, real_images):
    bundle = load_bundle(tiny_bundle)
    ort, openvino = _both(bundle, "onnx-int8")
    x = _batch(bundle, real_images)
    p_ort, p_ov = ort.predict(x), openvino.predict(x)
    agreement = float((p_ort.argmax(1) == p_ov.argmax(1)).mean())
    delta = float(np.abs(p_ort - p_ov).max())
    print(f"onnx-int8 on {len(x)} images: top-1 agreement {agreement:.4f}, max |dp| {delta:.5f}")
    assert agreement >= 0.99
    assert delta < 0.1  # the same integer graph: a few quantization steps at most, never another model


@needs_openvino
def test_a_profile_asking_bf16_runs_fp32_artifacts_in_bf16(tiny_bundle, real_images, tmp_path):
    """OpenVINO's own default on a bf16 CPU, which edgecls turns off for fp32 artifacts: a profile may ask for it
    back (on a MobileNetV2 trained on photos, bf16 lost 1.39 points of test accuracy, past convert's 1.0 gate)."""
    from edgecls.devices.profiles import load_profile

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16: OpenVINO runs f32 whatever the hint")
    profile = tmp_path / "bf16.json"
    profile.write_text(json.dumps({"name": "bf16", "backends": ["openvino"], "openvino_precision": "bf16"}))
    bundle = load_bundle(tiny_bundle)
    chosen = Classifier(bundle, artifact="onnx-fp32", profile=load_profile(str(profile)))
    assert chosen.session.backend.config["INFERENCE_PRECISION_HINT"] == "bf16"
    ort, _ = _both(bundle, "onnx-fp32")
    x = _batch(bundle, real_images)
    delta = float(np.abs(chosen.session.predict(x) - ort.predict(x)).max())
    assert 1e-4 < delta < 0.1, delta  # bf16's 8-bit mantissa shows; still the same model


@needs_openvino
def test_a_profile_naming_openvino_serves_onnx_artifacts_with_it_and_others_keep_onnx_runtime(tiny_bundle):
    from edgecls.devices.profiles import load_profile

    chosen = Classifier(tiny_bundle, profile=load_profile("intel-cpu"))
    assert (chosen.artifact.name, chosen.backend_name) == ("onnx-int8", "openvino")
    assert chosen.session.backend.device == "CPU"
    default = Classifier(tiny_bundle, artifact="onnx-int8", profile=load_profile("desktop-cpu"))
    assert default.backend_name == "onnxruntime"  # installed OpenVINO is never chosen unasked
    image = load_image(_images(tiny_bundle)[0])
    assert chosen.classify(image).label == default.classify(image).label


@needs_openvino
def test_igpu_profile_falls_back_to_the_cpu_with_a_warning_when_no_gpu_is_present(tiny_bundle, caplog):
    from edgecls.devices.profiles import load_profile

    if any(d.startswith("GPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an OpenVINO GPU: the fallback cannot be seen here")
    with caplog.at_level(logging.WARNING, logger="edgecls.runtime"):
        classifier = Classifier(tiny_bundle, profile=load_profile("intel-igpu"))
    assert classifier.backend_name == "openvino" and classifier.session.backend.device == "CPU"
    assert any("GPU not present here" in r.getMessage() and "using CPU" in r.getMessage() for r in caplog.records)


@needs_openvino
def test_a_device_openvino_does_not_see_is_one_line_naming_the_devices_it_sees(tiny_bundle, tmp_path):
    profile = tmp_path / "npu-only.json"
    profile.write_text(json.dumps({"name": "npu-only", "backends": ["openvino"], "openvino_device": "NPU"}))
    if "NPU" in ov.Core().available_devices:
        pytest.skip("this machine has an NPU")
    from edgecls.devices.profiles import load_profile

    with pytest.raises(EdgeclsError, match=r"OpenVINO sees no device NPU: it sees CPU.*CPU as fallback\)$"):
        Classifier(tiny_bundle, artifact="onnx-fp32", profile=load_profile(str(profile)))
    image = _images(tiny_bundle)[0]
    error = cli_error(run_cli("predict", tiny_bundle, image, "--artifact", "onnx-fp32", "--device", profile))
    assert "OpenVINO sees no device NPU: it sees CPU" in error


@needs_openvino
def test_edgecls_predict_with_the_intel_cpu_profile_runs_openvino(tiny_bundle):
    image = _images(tiny_bundle)[0]
    done = run_cli("-v", "predict", tiny_bundle, image, "--device", "intel-cpu", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded onnx-int8 (model_int8.onnx) with openvino" in done.stderr  # -v names the engine
    via_ort = run_cli("-v", "predict", tiny_bundle, image, "--artifact", "onnx-int8", "--json")
    assert "with onnxruntime" in via_ort.stderr
    ours, theirs = json.loads(done.stdout), json.loads(via_ort.stdout)
    assert ours["top1"] == theirs["top1"] and abs(ours["score"] - theirs["score"]) < 0.1


@pytest.fixture(scope="module")
def imported_nchw_bundle(tmp_path_factory, shapes_folder):
    """A PyTorch-style model (NCHW float input, ImageNet mean/std, logits out) imported as a bundle, with int8."""
    from edgecls.importer.onnx_source import import_onnx
    from edgecls.importer.request import Declared, ImportRequest

    folder = _session_folder(tmp_path_factory, "foreign-onnx", lambda f: foreign_onnx.pytorch_style(f, shapes_folder))
    out = tmp_path_factory.mktemp("ov-import") / "bundle"
    declared = Declared(mean=foreign_onnx.IMAGENET_MEAN, std=foreign_onnx.IMAGENET_STD)
    import_onnx(ImportRequest(folder / "model.onnx", out, folder / "labels.txt", shapes_folder, declared), print)
    return out


@needs_openvino
@pytest.mark.parametrize("artifact", ["onnx-fp32", "onnx-int8"])
def test_an_imported_nchw_logits_model_is_served_by_openvino_as_by_onnx_runtime(
    imported_nchw_bundle, real_images, artifact
):
    bundle = load_bundle(imported_nchw_bundle)
    assert bundle.manifest.preprocess.layout == "NCHW" and bundle.manifest.output == "logits"
    ort, openvino = _both(bundle, artifact)
    assert openvino.input_spec.shape[1:] == (3, foreign_onnx.SIZE, foreign_onnx.SIZE)
    # Through the serving path: the input table writes the (3, H, W) planes, the session turns logits into softmax.
    prepare = Classifier(bundle, artifact=artifact).prepare
    prepared = np.stack([prepare(load_image(p)) for p in real_images])
    p_ort, p_ov = ort.run_prepared(prepared), openvino.run_prepared(prepared)
    assert np.allclose(p_ov.sum(1), 1.0, atol=1e-5)  # probabilities, not the model's logits
    assert np.array_equal(p_ort.argmax(1), p_ov.argmax(1))
    assert float(np.abs(p_ort - p_ov).max()) <= (1e-4 if artifact == "onnx-fp32" else 0.1)


def test_the_first_device_openvino_sees_is_chosen_and_the_skipped_ones_named(caplog):
    from edgecls.runtime.backends.openvino import choose_device

    assert choose_device("GPU", ["CPU", "GPU.0", "GPU.1"]) == "GPU"  # OpenVINO numbers several GPUs
    assert choose_device("GPU.1,CPU", ["CPU", "GPU.0", "GPU.1"]) == "GPU.1"
    assert choose_device(None, ["CPU"]) == "CPU" and choose_device("AUTO", ["CPU"]) == "AUTO"
    with caplog.at_level(logging.WARNING, logger="edgecls.runtime"):
        assert choose_device("NPU,GPU,CPU", ["CPU"]) == "CPU"
    assert [r.getMessage() for r in caplog.records] == [
        "openvino: NPU, GPU not present here (it sees ['CPU']); using CPU"
    ]
    with pytest.raises(EdgeclsError, match=r"^OpenVINO sees no device GPU or NPU: it sees CPU \(install"):
        choose_device("GPU,NPU", ["CPU"])


@needs_openvino
def test_one_openvino_classifier_shared_by_two_threads_gives_each_its_own_scores(tiny_bundle, real_images):
    """Each calling thread runs its own infer request: two threads asking for different images at the same time
    get exactly the single-threaded scores (a shared request would hand one thread the other's output)."""
    import threading

    from edgecls.devices.profiles import load_profile

    classifier = Classifier(tiny_bundle, artifact="onnx-fp32", profile=load_profile("intel-cpu"))
    assert classifier.backend_name == "openvino"
    images = [load_image(p) for p in real_images[::7]]
    k = len(classifier.labels)
    expected = [classifier.classify(im, top_k=k).topk for im in images]
    assert len({tuple(t) for t in expected}) > 5  # distinct scores, so a mix-up would show
    wrong, start = [], threading.Barrier(2)

    def work(t):
        start.wait()
        for i in range(300):
            j = (i * (t + 1) + t) % len(images)
            try:
                if classifier.classify(images[j], top_k=k).topk != expected[j]:
                    wrong.append((t, i, "other scores"))
            except Exception as exc:  # counted, not raised: a shared request says "Infer Request is busy"
                wrong.append((t, i, repr(exc)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not wrong, wrong[:3]
    assert not any(thread.is_alive() for thread in threads)


@needs_openvino
def test_an_output_named_through_an_identity_node_is_found_by_that_name(tmp_path, real_images):
    """Identity(probs) -> scores leaves the compiled port two names, {'probs', 'scores'}: the manifest's 'scores'
    is found among them (get_any_name() gave 'probs', and the model was refused) and kept as the output's name."""
    import onnx
    from onnx import helper

    model = onnx.load(foreign_onnx.with_softmax(tmp_path / "softmax.onnx"))
    model.graph.node.append(helper.make_node("Identity", ["probs"], ["scores"], name="rename"))
    model.graph.output[0].name = "scores"
    path = tmp_path / "scores.onnx"
    onnx.save(model, path)
    x = np.concatenate([foreign_onnx.user_preprocess(foreign_onnx.read_rgb(p)) for p in real_images[-20:]])
    ort = ModelSession(path, "onnx", threads=1, layout="NCHW", output_name="scores")
    openvino = ModelSession(path, "onnx", threads=1, prefer=("openvino",), layout="NCHW", output_name="scores")
    assert openvino.backend.name == "openvino" and openvino.backend.output_spec.name == "scores"
    p_ort, p_ov = ort.run_prepared(x), openvino.run_prepared(x)
    assert float(np.abs(p_ort - p_ov).max()) <= 1e-4
    with pytest.raises(EdgeclsError, match=r"has no output named 'logits': its outputs are 'probs', 'scores' \(fix"):
        ModelSession(path, "onnx", prefer=("openvino",), layout="NCHW", output_name="logits")


@needs_openvino
@pytest.mark.parametrize("artifact", ["onnx-fp32", "onnx-int8"])
def test_every_artifact_compiles_with_f32_float_ops_and_the_threads_asked(tiny_bundle, artifact):
    """The compiled model's own properties, not the config we passed: an int8 artifact's float ops (softmax, the
    ops between QDQ pairs) ran in bf16 on a bf16 CPU, and a backend that dropped INFERENCE_NUM_THREADS passed."""
    bundle = load_bundle(tiny_bundle)
    for threads in (1, 2):
        session = ModelSession.for_artifact(
            bundle.verify(bundle.artifact(artifact)),
            bundle.manifest,
            bundle.artifact(artifact),
            threads=threads,
            prefer=("openvino",),
        )
        compiled = session.backend._compiled
        assert compiled.get_property("INFERENCE_NUM_THREADS") == threads
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == str(ov.Type.f32)


def test_openvinos_own_device_lists_after_auto_multi_or_hetero_stay_whole():
    """'AUTO:GPU,CPU' is one OpenVINO device (AUTO choosing between GPU and CPU): split at its comma it became
    'AUTO:GPU', the CPU fallback dropped."""
    from edgecls.runtime.backends.openvino import choose_device

    assert choose_device("AUTO:GPU,CPU", ["CPU"]) == "AUTO:GPU,CPU"
    assert choose_device("MULTI:GPU,CPU", ["CPU"]) == "MULTI:GPU,CPU"
    assert choose_device("NPU,HETERO:GPU,CPU", ["CPU"]) == "HETERO:GPU,CPU"


@needs_openvino
def test_an_openvino_load_error_names_its_cause_not_the_source_line_it_came_from(tmp_path):
    """OpenVINO's messages start with 'Exception from src/inference/src/cpp/core.cpp:84:' lines; the cause is last."""
    damaged = tmp_path / "model_fp32.onnx"
    damaged.write_bytes(b"\x08\x07 a damaged download")
    with pytest.raises(EdgeclsError) as error:
        ModelSession(damaged, "onnx", prefer=("openvino",))
    message = str(error.value)
    assert message.startswith(f"openvino cannot load {damaged}: Unable to read the model"), message
    assert "Exception from" not in message and "\n" not in message
