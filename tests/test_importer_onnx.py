"""edgecls.importer.onnx_source (and the bundle writer it shares, foreign_bundle): ONNX models from elsewhere.

The models are real (tests/foreign_onnx.py, built with onnx.helper, not by our converter); the references are
ONNX Runtime called directly with the user's own NumPy preprocessing; predictions come from the real
`edgecls predict` command in a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecls.importer.onnx_source import import_onnx
from edgecls.importer.request import Declared, ImportRequest
from edgecls.runtime.bundle import load_bundle, sha256_file
from edgecls.runtime.errors import EdgeclsError
from tests import foreign_onnx
from tests.conftest import _session_folder, run_cli
from tests.sshd import sshd  # noqa: F401  (fixture)

IMAGENET = Declared(mean=foreign_onnx.IMAGENET_MEAN, std=foreign_onnx.IMAGENET_STD)


@pytest.fixture(scope="session")
def pytorch_onnx(tmp_path_factory, shapes_folder) -> tuple:
    """(model.onnx, labels.txt): NCHW float input, ImageNet mean/std expected, logits out."""
    folder = _session_folder(tmp_path_factory, "foreign-onnx", lambda f: foreign_onnx.pytorch_style(f, shapes_folder))
    return folder / "model.onnx", folder / "labels.txt"


@pytest.fixture(scope="session")
def onnx_bundle(tmp_path_factory, pytorch_onnx, shapes_folder) -> tuple:
    """(bundle, ImportResult) of the PyTorch-style model imported with --data (fp32 as it is, and int8)."""
    model, labels = pytorch_onnx
    out = tmp_path_factory.mktemp("onnx-import") / "bundle"
    result = import_onnx(ImportRequest(model, out, labels, data=shapes_folder, declared=IMAGENET), print)
    return out, result


@pytest.fixture(scope="session")
def photo_paths(tmp_path_factory) -> list:
    return foreign_onnx.photos(tmp_path_factory.mktemp("photos"), count=60)


def _onnxruntime_probs(model: Path, paths: list) -> np.ndarray:
    """What a PyTorch user does: decode, normalize, NCHW, run, softmax."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = np.concatenate([foreign_onnx.user_preprocess(foreign_onnx.read_rgb(p)) for p in paths])
    logits = session.run(None, {"input": x})[0].astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _predict_cli(bundle: Path, paths: list, artifact: str, classes: int) -> tuple:
    """(top-1 labels, probabilities in label order) from the real `edgecls predict --json`."""
    done = run_cli("predict", bundle, *paths, "--json", "--top-k", classes, "--artifact", artifact)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    labels = load_bundle(bundle).labels
    probs = np.array([[{t["label"]: t["score"] for t in r["topk"]}[label] for label in labels] for r in rows])
    return [r["top1"] for r in rows], probs


def test_edgecls_predict_gives_what_onnxruntime_gives_with_the_users_own_preprocessing(
    onnx_bundle, pytorch_onnx, photo_paths
):
    bundle, _ = onnx_bundle
    labels = load_bundle(bundle).labels
    expected = _onnxruntime_probs(pytorch_onnx[0], photo_paths)
    top1, probs = _predict_cli(bundle, photo_paths, "onnx-fp32", len(labels))
    agreement = np.mean([t == labels[k] for t, k in zip(top1, expected.argmax(1))])
    print(
        f"onnx-fp32 vs onnxruntime on {len(photo_paths)} photos: top-1 agreement {agreement:.4f}, "
        f"max |dp| {np.abs(probs - expected).max():.2e}"
    )
    assert len(photo_paths) >= 50
    assert agreement == 1.0
    assert np.abs(probs - expected).max() <= 1e-5  # predict rounds scores to 6 decimals
    assert len(set(top1)) > 1  # the photos do not all fall in one class: the comparison sees the classes apart


def test_an_imported_onnx_model_keeps_its_file_and_adds_a_gated_int8(onnx_bundle, pytorch_onnx, shapes_folder):
    bundle, result = onnx_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    fp32, int8 = (next(a for a in manifest["artifacts"] if a["name"] == n) for n in ("onnx-fp32", "onnx-int8"))
    assert fp32["sha256"] == manifest["source"]["sha256"] == sha256_file(pytorch_onnx[0])
    assert manifest["output"] == "logits" and manifest["input"]["layout"] == "NCHW"
    assert manifest["input"]["shape"] == [1, 3, 32, 32]
    assert manifest["source"]["verified_on_data"] is True
    assert manifest["source"]["data"] == str(shapes_folder.resolve())
    assert manifest["source"]["preprocessing_from"] == {
        "size": "model",
        "color": "default",
        "layout": "model",
        "mean": "option",
        "std": "option",
        "resize": "default",
        "output": "model",
    }
    images = manifest["source"]["test_images"]
    right = round(manifest["reference_accuracy"] * images)
    print(
        f"onnx import on {images} test images: source accuracy {manifest['reference_accuracy']:.4f}, "
        f"fp32 {fp32['accuracy']:.4f} (agreement {fp32['agreement']:.4f}), "
        f"int8 {int8['accuracy']:.4f} (agreement {int8['agreement']:.4f}, max |dp| {int8['max_prob_diff']:.4f})"
    )
    assert manifest["reference_accuracy"] >= 0.8  # the fitted model really separates the classes
    assert fp32["agreement"] == 1.0 and fp32["max_prob_diff"] < 1e-5
    assert right - round(int8["accuracy"] * images) <= images * 1.0 / 100  # the default --max-drop, 1 point
    assert int8["notes"]["calibration_images"] == manifest["calibration"]["size"] > 0
    assert set(manifest["reference"]) == {"onnx-fp32", "onnx-int8"} and manifest["checks"]
    assert "int8 skipped" not in " ".join(result.lines)


def test_an_onnx_model_whose_outputs_are_not_probabilities_is_taken_as_logits(onnx_bundle):
    _, result = onnx_bundle
    line = next(l for l in result.lines if l.startswith("output:"))
    assert "logits" in line and "--output probs" in line


def test_an_onnx_model_ending_in_softmax_is_taken_as_probabilities(tmp_path):
    model = foreign_onnx.with_softmax(tmp_path / "softmax.onnx")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    result = import_onnx(ImportRequest(model, tmp_path / "b", tmp_path / "labels.txt", declared=IMAGENET), print)
    assert result.manifest["output"] == "probs"


def test_without_data_the_onnx_import_skips_int8_and_says_it_was_not_verified(pytorch_onnx, tmp_path):
    model, labels = pytorch_onnx
    result = import_onnx(ImportRequest(model, tmp_path / "b", labels, declared=IMAGENET), print)
    manifest = result.manifest
    assert [a["name"] for a in manifest["artifacts"]] == ["onnx-fp32"]
    assert manifest["source"]["verified_on_data"] is False and manifest["reference_accuracy"] is None
    assert any(line.startswith("int8 skipped: no --data") for line in result.lines)
    assert load_bundle(tmp_path / "b").manifest.output == "logits"


@pytest.mark.parametrize(
    "pixel_format, pixel_range, expected",
    [("Bgr8", "Normalized_0_1", ("bgr", [0.0], [255.0])), ("Rgb8", "Normalized_1_1", ("rgb", [127.5], [127.5]))],
)
def test_windows_ml_image_metadata_sets_colour_and_range(pixel_format, pixel_range, expected, tmp_path):
    model = foreign_onnx.winml(tmp_path / "winml.onnx", pixel_format, pixel_range)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    result = import_onnx(ImportRequest(model, tmp_path / "b", tmp_path / "labels.txt"), print)
    spec, source = result.manifest["input"], result.manifest["source"]
    assert (spec["color"], spec["mean"], spec["std"]) == expected
    assert source["preprocessing_from"]["color"] == source["preprocessing_from"]["mean"] == "model"


def _error(request: ImportRequest) -> str:
    with pytest.raises(EdgeclsError) as caught:
        import_onnx(request, print)
    message = str(caught.value)
    assert "\n" not in message
    assert not request.out.exists()
    return message


def test_an_onnx_model_with_two_inputs_is_refused_as_not_single_image_input(tmp_path):
    model = foreign_onnx.two_inputs(tmp_path / "two.onnx")
    message = _error(ImportRequest(model, tmp_path / "b", declared=IMAGENET))
    assert "2 inputs (input, scale)" in message and "only input is the image" in message
    assert "--input" not in message  # naming one of them cannot help: the other still needs feeding


def test_an_onnx_model_whose_input_is_not_an_image_is_refused(tmp_path):
    model = foreign_onnx.rank2_input(tmp_path / "tabular.onnx")
    assert "the model's input is not an image" in _error(ImportRequest(model, tmp_path / "b", declared=IMAGENET))


def test_a_text_file_named_onnx_is_refused(tmp_path):
    (tmp_path / "model.onnx").write_text("this is not a model\n")
    message = _error(ImportRequest(tmp_path / "model.onnx", tmp_path / "b", declared=IMAGENET))
    assert "is not an ONNX model" in message


def test_a_labels_file_with_the_wrong_count_is_refused(pytorch_onnx, tmp_path):
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    message = _error(ImportRequest(pytorch_onnx[0], tmp_path / "b", tmp_path / "labels.txt", declared=IMAGENET))
    assert "has 2 labels but the model has 3 outputs" in message


def test_an_imported_model_that_fails_the_gate_leaves_no_bundle(pytorch_onnx, shapes_folder, tmp_path):
    model, labels = pytorch_onnx
    request = ImportRequest(model, tmp_path / "b", labels, data=shapes_folder, declared=IMAGENET, max_drop=-1.0)
    message = _error(request)  # -1 demands a gain: even the file as it is fails
    assert "onnx-fp32 loses more than -1.0 accuracy points whatever we try" in message
    assert "raise --max-drop" in message and "--formats" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no stage left behind


def _with_props(source: Path, path: Path, props: dict) -> Path:
    import onnx

    model = onnx.load(str(source))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def test_edgecls_own_onnx_metadata_gives_labels_and_preprocessing(pytorch_onnx, tmp_path):
    from edgecls.converters.onnx import set_metadata
    from edgecls.runtime.preprocess import PreprocessSpec

    model = tmp_path / "ours.onnx"
    model.write_bytes(pytorch_onnx[0].read_bytes())
    spec = PreprocessSpec(32, 32, mean=foreign_onnx.IMAGENET_MEAN, std=foreign_onnx.IMAGENET_STD, layout="NCHW")
    set_metadata(model, {"labels": ["red", "green", "blue"], "preprocess": spec.to_dict(), "head": "softmax"})
    result = import_onnx(ImportRequest(model, tmp_path / "b"), print)  # no --labels, no options
    manifest = result.manifest
    assert manifest["labels"] == ["red", "green", "blue"]
    assert (manifest["input"]["mean"], manifest["input"]["std"]) == (list(spec.mean), list(spec.std))
    assert manifest["output"] == "probs"  # our converter's models end in their softmax
    assert manifest["source"]["preprocessing_from"]["mean"] == "model"


def test_ultralytics_names_give_the_labels(pytorch_onnx, tmp_path):
    names = "{0: 'circle', 1: 'square', 2: 'triangle'}"
    model = _with_props(pytorch_onnx[0], tmp_path / "yolo.onnx", {"names": names, "imgsz": "[32, 32]"})
    result = import_onnx(ImportRequest(model, tmp_path / "b", declared=IMAGENET), print)
    assert result.manifest["labels"] == ["circle", "square", "triangle"]


def test_an_onnx_model_newer_than_onnxruntime_is_one_line(pytorch_onnx, tmp_path):
    import onnx

    model = onnx.load(str(pytorch_onnx[0]))
    model.ir_version = 99
    onnx.save(model, str(tmp_path / "future.onnx"))
    message = _error(ImportRequest(tmp_path / "future.onnx", tmp_path / "b", pytorch_onnx[1], declared=IMAGENET))
    assert "cannot load" in message and "opset_version" in message and "upgrade onnxruntime" in message


def test_data_folders_must_be_named_after_the_labels(pytorch_onnx, shapes_folder, tmp_path):
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    request = ImportRequest(pytorch_onnx[0], tmp_path / "b", tmp_path / "labels.txt", shapes_folder, IMAGENET)
    assert "--data folder 'circle' is not one of the model's labels (red, green, blue)" in _error(request)


def test_edgecls_import_on_the_command_line_writes_a_bundle_predict_reads(pytorch_onnx, photo_paths, tmp_path):
    from tests.conftest import cli_error

    model, labels = pytorch_onnx
    mean, std = (",".join(map(str, v)) for v in (foreign_onnx.IMAGENET_MEAN, foreign_onnx.IMAGENET_STD))
    done = run_cli("import", model, "--labels", labels, "--out", tmp_path / "b", "--mean", mean, "--std", std)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "int8 skipped: no --data" in done.stderr and "output: logits" in done.stderr
    top1, _ = _predict_cli(tmp_path / "b", photo_paths[:5], "onnx-fp32", 3)
    assert len(top1) == 5
    two = foreign_onnx.two_inputs(tmp_path / "two.onnx")
    error = cli_error(run_cli("import", two, "--labels", labels, "--out", tmp_path / "c", "--mean", mean, "--std", std))
    assert "only input is the image" in error and not (tmp_path / "c").exists()


def test_an_imported_onnx_bundle_flashes_and_runs_unchanged(onnx_bundle, shapes_folder, tmp_path):
    bundle, _ = onnx_bundle
    rows = foreign_onnx.flash_and_run(bundle, tmp_path / "device", shapes_folder / "circle")
    assert rows and rows[0]["model"]["artifact"] in ("onnx-int8", "onnx-fp32")
    assert {r["top1"] for r in rows} <= set(load_bundle(bundle).labels)


def test_formats_picks_among_what_an_onnx_source_yields(pytorch_onnx, shapes_folder, tmp_path):
    model, labels = pytorch_onnx
    only = ImportRequest(model, tmp_path / "b", labels, shapes_folder, IMAGENET, formats="onnx-fp32")
    manifest = import_onnx(only, print).manifest
    assert [a["name"] for a in manifest["artifacts"]] == ["onnx-fp32"] and manifest["calibration"] == {}
    other = ImportRequest(model, tmp_path / "c", labels, declared=IMAGENET, formats="tflite-int8")
    assert "an ONNX model yields onnx-fp32, onnx-int8, not tflite-int8" in _error(other)
    int8 = ImportRequest(model, tmp_path / "d", labels, declared=IMAGENET, formats="onnx-int8")
    assert "onnx-int8 needs --data DIR" in _error(int8)


def test_an_onnx_model_without_a_fixed_size_needs_size(tmp_path):
    model = foreign_onnx.dynamic_size(tmp_path / "dynamic.onnx")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    message = _error(ImportRequest(model, tmp_path / "b", tmp_path / "labels.txt", declared=IMAGENET))
    assert "--size N" in message
    sized = Declared(size=(48, 40), mean=foreign_onnx.IMAGENET_MEAN, std=foreign_onnx.IMAGENET_STD)
    result = import_onnx(ImportRequest(model, tmp_path / "b", tmp_path / "labels.txt", declared=sized), print)
    assert result.manifest["input"]["shape"] == [1, 3, 48, 40]
    assert result.manifest["source"]["preprocessing_from"]["size"] == "option"


def test_data_of_some_of_the_classes_verifies_the_import(pytorch_onnx, shapes_folder, tmp_path):
    import shutil

    data = tmp_path / "data"
    for label in ("square", "triangle"):  # folders in another order than the labels, one class missing
        shutil.copytree(shapes_folder / label, data / label)
    model, labels = pytorch_onnx
    manifest = import_onnx(ImportRequest(model, tmp_path / "b", labels, data, IMAGENET), print).manifest
    assert manifest["source"]["test_split"]["per_class"] == {"square": 12, "triangle": 12}
    assert {c["label"] for c in manifest["checks"]} == {"square", "triangle"}
    assert manifest["reference_accuracy"] >= 0.8  # class indices follow the labels file, not the folder order


def test_an_imported_onnx_bundle_flashes_over_ssh_with_its_smoke_test(onnx_bundle, sshd, tmp_path):  # noqa: F811
    from edgecls.devices.flash import FlashOptions, flash

    bundle, _ = onnx_bundle
    [result] = flash(bundle, [sshd.target(tmp_path / "pi")], FlashOptions(ssh_config=str(sshd.ssh_config)))
    assert result.result == "installed", result.reason
    checks = json.loads((bundle / "manifest.json").read_text())["checks"]
    assert result.smoke["correct"] == len(checks) > 0 and result.smoke["artifact"].startswith("onnx-")


def _labels3(tmp_path: Path) -> Path:
    (tmp_path / "labels.txt").write_text("circle\nsquare\ntriangle\n")
    return tmp_path / "labels.txt"


def test_an_onnx_model_with_a_fixed_batch_of_one_imports(tmp_path):
    model = foreign_onnx.variant(tmp_path / "batch1.onnx", shape=(1, 3, 32, 32))
    result = import_onnx(ImportRequest(model, tmp_path / "b", _labels3(tmp_path), declared=IMAGENET), print)
    assert result.manifest["output"] == "logits"  # probed on 4 images, fed one at a time


def test_an_onnx_model_with_a_fixed_batch_of_one_imports_verified_on_data(shapes_folder, tmp_path):
    model = foreign_onnx.variant(tmp_path / "batch1.onnx", shape=(1, 3, 32, 32))
    request = ImportRequest(model, tmp_path / "b", _labels3(tmp_path), shapes_folder, IMAGENET, max_drop=100.0)
    manifest = import_onnx(request, print).manifest
    assert manifest["source"]["verified_on_data"] is True


def test_a_float16_input_onnx_model_imports_without_int8(shapes_folder, tmp_path):
    model = foreign_onnx.variant(tmp_path / "half.onnx", elem_type="FLOAT16")
    result = import_onnx(ImportRequest(model, tmp_path / "b", _labels3(tmp_path), declared=IMAGENET), print)
    assert any(line.startswith("int8 skipped: the model's input is float16") for line in result.lines)


@pytest.mark.parametrize("kind, skipped", [("uint8", "input is uint8"), ("ir3", "lists its weights as inputs")])
def test_an_onnx_model_int8_cannot_calibrate_imports_without_int8(kind, skipped, shapes_folder, tmp_path):
    options = {"elem_type": "UINT8"} if kind == "uint8" else {"weights_as_inputs": True}
    model = foreign_onnx.variant(tmp_path / f"{kind}.onnx", **options)
    declared = Declared(normalize="imagenet")
    request = ImportRequest(model, tmp_path / "b", _labels3(tmp_path), shapes_folder, declared, max_drop=100.0)
    result = import_onnx(request, print)
    assert [a["name"] for a in result.manifest["artifacts"]] == ["onnx-fp32"]
    assert any(line.startswith("int8 skipped") and skipped in line for line in result.lines)
    if kind == "uint8":  # the options' normalization cannot apply to raw pixels: said, and recorded as the model's
        assert "warning: the model takes uint8 pixels as they are: --normalize/--mean/--std ignored" in result.lines
        assert result.manifest["source"]["preprocessing_from"]["mean"] == "model"


@pytest.mark.parametrize(
    "declared, expected",
    [
        (Declared(size=(64, 64), normalize="imagenet"), "--size 64x64 contradicts the model's fixed input 32x32"),
        (Declared(layout="nhwc", normalize="imagenet"), "--layout nhwc contradicts the model's input shape"),
        (Declared(mean=(float("nan"),), std=(1.0,)), "--mean/--std gives mean (nan,): it must be finite"),
        (Declared(mean=(0.0,), std=(float("inf"),)), "--mean/--std gives std (inf,): it must be finite"),
    ],
)
def test_options_that_cannot_run_the_onnx_model_are_one_line(declared, expected, pytorch_onnx, tmp_path):
    assert expected in _error(ImportRequest(pytorch_onnx[0], tmp_path / "b", pytorch_onnx[1], declared=declared))


@pytest.mark.parametrize(
    "props, expected",
    [
        ({"imgsz": "[60000, 60000]"}, "input size 60000x60000 is over 4096 pixels a side"),
        ({"preprocess": '{"height": 32, "width": 32, "mean": "abc", "std": [1]}'}, "edgecls metadata does not read"),
        ({"preprocess": '{"height": 32, "width": 32, "mean": [NaN], "std": [1]}'}, "must be finite numbers"),
        ({"preprocess": '{"height": 32, "width": 32, "mean": [0], "std": [0]}'}, "it must not be 0 (override it"),
        ({"preprocess": '{"height": 32, "width": 32, "mean": [1, 2], "std": [1]}'}, "needs 1 or 3 (override it"),
    ],
)
def test_metadata_that_cannot_run_the_onnx_model_is_one_line(props, expected, pytorch_onnx, tmp_path):
    source = foreign_onnx.dynamic_size(tmp_path / "dynamic.onnx")  # the size is the metadata's to say
    model = _with_props(source, tmp_path / "meta.onnx", props)
    declared = IMAGENET if "imgsz" in props else Declared()
    message = _error(ImportRequest(model, tmp_path / "b", pytorch_onnx[1], declared=declared))
    assert expected in message
    if "preprocess" in props and "abc" not in props["preprocess"]:
        assert "the model's edgecls metadata gives" in message and "--mean/--std" in message


def test_a_huge_fixed_onnx_input_is_refused_before_any_allocation(tmp_path):
    model = foreign_onnx.variant(tmp_path / "huge.onnx", shape=("N", 3, 200000, 200000))
    assert "over 4096 pixels a side" in _error(
        ImportRequest(model, tmp_path / "b", _labels3(tmp_path), declared=IMAGENET)
    )


def test_an_onnx_model_with_external_data_is_refused_in_one_line(pytorch_onnx, tmp_path):
    import onnx

    model = onnx.load(str(pytorch_onnx[0]))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    message = _error(ImportRequest(tmp_path / "ext.onnx", tmp_path / "b", pytorch_onnx[1], declared=IMAGENET))
    assert "external data" in message and "save_as_external_data=False" in message


def test_model_labels_holding_a_line_break_are_refused_not_split(pytorch_onnx, tmp_path):
    model = _with_props(pytorch_onnx[0], tmp_path / "m.onnx", {"labels": '["circle\\nsquare", "triangle"]'})
    message = _error(ImportRequest(model, tmp_path / "b", declared=IMAGENET))
    assert "has 2 labels but the model has 3 outputs" in message


def test_labels_option_over_the_model_labels_warns_naming_both(pytorch_onnx, tmp_path):
    names = "{0: 'red', 1: 'green', 2: 'blue'}"
    model = _with_props(pytorch_onnx[0], tmp_path / "yolo.onnx", {"names": names})
    result = import_onnx(ImportRequest(model, tmp_path / "b", pytorch_onnx[1], declared=IMAGENET), print)
    assert result.manifest["labels"] == ["circle", "square", "triangle"]
    assert any("Ultralytics metadata names other labels than --labels" in line for line in result.lines)


def test_edgecls_own_onnx_metadata_keeps_its_letterbox(pytorch_onnx, tmp_path):
    from edgecls.converters.onnx import set_metadata
    from edgecls.runtime.preprocess import PreprocessSpec

    model = tmp_path / "ours.onnx"
    model.write_bytes(pytorch_onnx[0].read_bytes())
    spec = PreprocessSpec(32, 32, resize="letterbox", pad_value=114, mean=(0.0,), std=(255.0,), layout="NCHW")
    set_metadata(model, {"labels": ["red", "green", "blue"], "preprocess": spec.to_dict(), "head": "softmax"})
    manifest = import_onnx(ImportRequest(model, tmp_path / "b"), print).manifest
    assert (manifest["input"]["resize"], manifest["input"]["pad_value"]) == ("letterbox", 114)
    result = import_onnx(ImportRequest(model, tmp_path / "c", declared=Declared(resize="center-crop")), print)
    assert result.manifest["input"]["resize"] == "center-crop"
    assert "warning: the model's edgecls metadata says resize letterbox, --resize says center-crop: using --resize" in (
        result.lines
    )


def test_data_with_two_images_per_class_asks_for_three(pytorch_onnx, shapes_folder, tmp_path):
    import shutil

    for label in ("circle", "square"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for path in sorted((shapes_folder / label).iterdir())[:2]:
            shutil.copy(path, tmp_path / "data" / label / path.name)
    request = ImportRequest(pytorch_onnx[0], tmp_path / "b", pytorch_onnx[1], tmp_path / "data", IMAGENET)
    assert "give at least three images per class" in _error(request)
