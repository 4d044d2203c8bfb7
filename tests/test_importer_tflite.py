"""edgecls.importer.tflite_source and tflite_metadata: .tflite models from elsewhere, taken as they are.

The models are real TFLite conversions (tests/foreign_tflite.py), one carrying TFLite Metadata written
offline; the references are LiteRT's Interpreter called directly with the user's own NumPy preprocessing;
predictions come from the real `edgecls predict` command in a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecls.importer.request import Declared, ImportRequest
from edgecls.importer.tflite_metadata import read_metadata
from edgecls.importer.tflite_source import import_tflite
from edgecls.runtime.bundle import load_bundle, sha256_file
from edgecls.runtime.errors import EdgeclsError
from tests import foreign_onnx, foreign_tflite
from tests.conftest import _session_folder, run_cli


@pytest.fixture(scope="session")
def tflite_models(tmp_path_factory, shapes_folder) -> Path:
    """A folder with with_metadata.tflite, plain.tflite (+ labels.txt), and uint8.tflite (+ labels.txt) in uint8/
    (normalized inside the model) and uint8-quantized/ (normalized by its input's quantization)."""

    def build(folder: Path) -> None:
        foreign_tflite.with_metadata(folder, shapes_folder)
        foreign_tflite.without_metadata(folder, shapes_folder)
        foreign_tflite.uint8_int8(folder / "uint8", shapes_folder)
        foreign_tflite.uint8_int8(folder / "uint8-quantized", shapes_folder, in_model=False)

    return _session_folder(tmp_path_factory, "foreign-tflite", build)


@pytest.fixture(scope="session")
def photo_paths(tmp_path_factory) -> list:
    return foreign_onnx.photos(tmp_path_factory.mktemp("photos"), count=60)


def _litert(model: Path, paths: list, normalize: tuple | None) -> np.ndarray:
    """What a TFLite user does: decode, normalize (or feed uint8 pixels), invoke image by image, dequantize."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for path in paths:
        image = foreign_onnx.read_rgb(path)
        x = (image.astype(np.float32) - normalize[0]) / normalize[1] if normalize else image
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        scale, zero = out["quantization"]
        rows.append((y.astype(np.float64) - zero) * scale if scale else y)
    return np.array(rows)


def _predict_cli(bundle: Path, paths: list) -> tuple:
    labels = load_bundle(bundle).labels
    done = run_cli("predict", bundle, *paths, "--json", "--top-k", len(labels))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    probs = np.array([[{t["label"]: t["score"] for t in r["topk"]}[label] for label in labels] for r in rows])
    return labels, [r["top1"] for r in rows], probs


def _agree(name: str, labels: list, top1: list, probs: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    agreement = np.mean([t == labels[k] for t, k in zip(top1, expected.argmax(1))])
    diff = np.abs(probs - expected).max()
    print(f"{name} vs LiteRT on {len(top1)} photos: top-1 agreement {agreement:.4f}, max |dp| {diff:.2e}")
    assert len(top1) >= 50 and agreement == 1.0 and diff <= tolerance
    assert len(set(top1)) > 1  # the photos reach more than one class


def test_tflite_metadata_gives_normalization_and_labels(tflite_models, shapes_folder, photo_paths, tmp_path):
    model = tflite_models / "with_metadata.tflite"
    metadata = read_metadata(model)
    assert (metadata.mean, metadata.std, metadata.color) == ({0: (127.5,)}, {0: (63.75,)}, {0: "rgb"})
    result = import_tflite(ImportRequest(model, tmp_path / "b", data=shapes_folder), print)  # no --labels, no options
    manifest = result.manifest
    assert manifest["labels"] == sorted(p.name for p in shapes_folder.iterdir())
    assert (manifest["input"]["mean"], manifest["input"]["std"]) == ([127.5], [63.75])
    assert manifest["source"]["preprocessing_from"]["mean"] == "model"
    assert [a["name"] for a in manifest["artifacts"]] == ["tflite-fp32"]
    assert manifest["artifacts"][0]["sha256"] == sha256_file(model) and manifest["artifacts"][0]["agreement"] == 1.0
    assert manifest["reference"] and manifest["checks"] and manifest["source"]["verified_on_data"] is True
    labels, top1, probs = _predict_cli(tmp_path / "b", photo_paths)
    _agree("tflite-fp32 (metadata)", labels, top1, probs, _litert(model, photo_paths, (127.5, 63.75)), 1e-5)


def test_a_tflite_model_without_metadata_needs_its_normalization_declared(tflite_models, tmp_path):
    model, labels = tflite_models / "plain.tflite", tflite_models / "labels.txt"
    with pytest.raises(EdgeclsError, match="does not say how its input is normalized") as caught:
        import_tflite(ImportRequest(model, tmp_path / "b", labels), print)
    assert "\n" not in str(caught.value) and not (tmp_path / "b").exists()
    declared = Declared(mean=(127.5,), std=(127.5,))
    result = import_tflite(ImportRequest(model, tmp_path / "b", labels, declared=declared), print)
    assert result.manifest["source"]["preprocessing_from"]["mean"] == "option"
    assert result.manifest["source"]["verified_on_data"] is False


@pytest.mark.parametrize("kind", ["uint8", "uint8-quantized"])
def test_a_uint8_input_int8_tflite_model_takes_raw_pixels(kind, tflite_models, shapes_folder, photo_paths, tmp_path):
    """Normalized inside the model (input scale 1) or by its input's quantization (scale 2/255, zero point 127):
    either way the user feeds the raw pixels, and so must the runtime."""
    model, labels = tflite_models / kind / "uint8.tflite", tflite_models / kind / "labels.txt"
    result = import_tflite(ImportRequest(model, tmp_path / "b", labels, data=shapes_folder), print)
    manifest = result.manifest
    artifact = manifest["artifacts"][0]
    assert artifact["name"] == "tflite-int8" and artifact["input"]["dtype"] == "uint8"
    assert manifest["input"]["dtype"] == "uint8" and manifest["output"] == "probs"
    accuracy = manifest["reference_accuracy"]
    print(f"tflite-int8 import ({kind}): source accuracy {accuracy:.4f}, artifact {artifact['accuracy']:.4f}")
    assert accuracy >= 0.8 and artifact["agreement"] == 1.0
    labels_, top1, probs = _predict_cli(tmp_path / "b", photo_paths)
    _agree(f"tflite-int8 ({kind})", labels_, top1, probs, _litert(model, photo_paths, None), 1e-5)


def test_a_tflite_labels_file_with_the_wrong_count_is_refused(tflite_models, tmp_path):
    (tmp_path / "labels.txt").write_text("0 cat\n1 dog\n")
    with pytest.raises(EdgeclsError, match="has 2 labels but the model has 3 outputs"):
        import_tflite(
            ImportRequest(tflite_models / "with_metadata.tflite", tmp_path / "b", tmp_path / "labels.txt"), print
        )


def test_a_file_that_is_not_tflite_is_refused(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"\x00\x00\x00\x00TFL3" + b"\x00" * 40)
    with pytest.raises(EdgeclsError, match="is not a TFLite model LiteRT can load") as caught:
        import_tflite(ImportRequest(tmp_path / "model.tflite", tmp_path / "b"), print)
    assert "\n" not in str(caught.value)


def test_an_imported_tflite_bundle_flashes_and_runs_unchanged(tflite_models, shapes_folder, tmp_path):
    model = tflite_models / "with_metadata.tflite"
    import_tflite(ImportRequest(model, tmp_path / "b", data=shapes_folder), print)
    rows = foreign_onnx.flash_and_run(tmp_path / "b", tmp_path / "device", shapes_folder / "square")
    assert rows and rows[0]["model"]["artifact"] == "tflite-fp32"


def _plain_with(tflite_models: Path, path: Path, metadata: bytes, files: dict) -> Path:
    path.write_bytes(foreign_tflite.add_metadata((tflite_models / "plain.tflite").read_bytes(), metadata, files))
    return path


def test_a_label_file_over_a_megabyte_in_the_model_is_not_read(tflite_models, tmp_path):
    from edgecls.importer import tflite_metadata

    big = b"circle\nsquare\ntriangle\n" + b"x" * 2_000_000  # a zip bomb's entry, stored: the limit is what counts
    model = _plain_with(
        tflite_models, tmp_path / "big.tflite", foreign_tflite._metadata("labels.txt"), {"labels.txt": big}
    )
    metadata = read_metadata(model)
    assert metadata.labels == {} and "over 1 MB" in metadata.warnings[0]
    with pytest.raises(EdgeclsError, match="over 1 MB"):
        tflite_metadata.associated_file(model, "labels.txt")


def _damaged_metadata() -> bytes:
    """Real TFLite Metadata with its bytes after the M001 identifier scrambled: offsets that point nowhere."""
    good = foreign_tflite._metadata("labels.txt")
    return good[:8] + bytes(b ^ 0x5A for b in good[8:40]) + good[40:]


@pytest.mark.parametrize("kind, why", [("foreign", "(no M001 identifier)"), ("damaged", "(TypeError: bad number")])
def test_tflite_metadata_that_does_not_read_is_a_warning_and_the_options_decide(kind, why, tflite_models, tmp_path):
    metadata = b"\x10\x00\x00\x00NOPE" + bytes(40) if kind == "foreign" else _damaged_metadata()
    model = _plain_with(tflite_models, tmp_path / "odd.tflite", metadata, {})
    declared = Declared(mean=(127.5,), std=(127.5,))
    result = import_tflite(ImportRequest(model, tmp_path / "b", tflite_models / "labels.txt", declared=declared), print)
    warning = next(line for line in result.lines if "does not read as TFLite Metadata" in line)
    assert why in warning and warning.startswith("warning: ") and warning.endswith("the options decide")
    assert result.manifest["source"]["preprocessing_from"]["mean"] == "option"


def test_labels_option_over_the_tflite_label_file_warns_naming_both(tflite_models, tmp_path):
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    model = tflite_models / "with_metadata.tflite"
    result = import_tflite(ImportRequest(model, tmp_path / "b", tmp_path / "labels.txt"), print)
    assert result.manifest["labels"] == ["red", "green", "blue"]
    assert any("TFLite Metadata names other labels than --labels" in line for line in result.lines)


def test_a_tflite_model_with_a_dynamic_height_and_width_is_refused_in_one_line(tflite_models, tmp_path):
    model = foreign_tflite.dynamic_size(tmp_path / "dynamic.tflite")
    request = ImportRequest(model, tmp_path / "b", tflite_models / "labels.txt", declared=Declared(size=(32, 32)))
    with pytest.raises(EdgeclsError, match="height and width are not fixed") as caught:
        import_tflite(request, print)
    assert "\n" not in str(caught.value) and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "declared, expected",
    [
        (Declared(size=(64, 64), normalize="symmetric"), "--size 64x64 contradicts the model's fixed input 32x32"),
        (Declared(layout="nchw", normalize="symmetric"), "--layout nchw contradicts the model's input shape"),
    ],
)
def test_tflite_options_that_contradict_the_input_shape_are_one_line(declared, expected, tflite_models, tmp_path):
    request = ImportRequest(
        tflite_models / "plain.tflite", tmp_path / "b", tflite_models / "labels.txt", declared=declared
    )
    with pytest.raises(EdgeclsError, match=expected) as caught:
        import_tflite(request, print)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("mean, std, why", [(127.5, 0.0, "it must not be 0"), (float("nan"), 127.5, "must be finite")])
def test_tflite_metadata_normalization_that_cannot_run_names_the_metadata_and_the_options(
    mean, std, why, tflite_models, tmp_path
):
    model = _plain_with(tflite_models, tmp_path / "m.tflite", foreign_tflite._metadata("x.txt", mean, std), {})
    labels = tflite_models / "labels.txt"
    with pytest.raises(EdgeclsError, match=why) as caught:
        import_tflite(ImportRequest(model, tmp_path / "b", labels), print)
    assert str(caught.value).startswith("the model's TFLite Metadata gives") and "--mean/--std" in str(caught.value)
    declared = Declared(mean=(127.5,), std=(127.5,))
    result = import_tflite(ImportRequest(model, tmp_path / "b", labels, declared=declared), print)
    assert result.manifest["input"]["std"] == [127.5]
