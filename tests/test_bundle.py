"""edgecls.runtime.bundle: what a bundle's manifest must look like, and labels.txt read as convert writes it."""

import json

import numpy as np
import pytest

from edgecls.runtime.bundle import BundleError, Manifest, load_bundle, sha256_file
from edgecls.runtime.preprocess import PreprocessSpec
from tests.conftest import cli_error, run_cli, write_image


def _bundle(folder, labels=("a", "b"), fields=None):
    """A bundle folder as convert writes it (no artifact needed to check its manifest), `fields` overriding."""
    folder.mkdir()
    (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")  # convert's own writing
    manifest = Manifest(list(labels), PreprocessSpec(16, 16), "softmax", []).to_dict()
    manifest["files"] = {"labels.txt": sha256_file(folder / "labels.txt")}
    manifest.update(fields or {})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_labels_holding_a_line_separator_or_a_vertical_tab_match_the_labels_txt_convert_wrote(tmp_path):
    bundle = _bundle(tmp_path / "b", labels=("zero\u2028nil", "one\x0bsolo", "two\x1cfs"))
    load_bundle(bundle).verify_files()


@pytest.mark.parametrize(
    "field, value",
    [("files", None), ("files", ["labels.txt"]), ("files", "labels.txt"), ("files", {"labels.txt": 1})]
    + [("checks", None), ("checks", ["check-00.png"]), ("artifacts", None), ("artifacts", [7])]
    + [("labels", "ab"), ("labels", [1, 2]), ("input", None)],
)
def test_a_manifest_field_of_the_wrong_json_type_is_one_malformed_error(tmp_path, field, value):
    bundle = _bundle(tmp_path / "b", fields={field: value})
    with pytest.raises(BundleError, match=r"manifest.json is malformed .*: convert the model again"):
        load_bundle(bundle).verify_files()


def test_predict_names_a_malformed_manifest_in_one_line(tmp_path):
    bundle = _bundle(tmp_path / "b", fields={"files": None})
    image = write_image(tmp_path / "x.png", np.zeros((16, 16, 3), np.uint8))
    assert "manifest.json is malformed (TypeError: files is null" in cli_error(run_cli("predict", bundle, image))


@pytest.mark.parametrize(
    "name", ["release.json", "manifest.json", "manifest.json.sig", ".hidden.png", "check-00.part", "notes.tmp"]
)
def test_a_bundle_listing_a_file_named_like_a_devices_own_is_refused(tmp_path, name):
    """Flash would overwrite, forge or delete such a file after checking it: the bundle side refuses it too."""
    bundle = _bundle(tmp_path / "b")
    if name != "manifest.json":
        (bundle / name).write_bytes(b"x")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(bundle / name) if name != "manifest.json" else "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"the files list names the file '{name}', which devices keep for"):
        load_bundle(bundle).verify_files()


def test_predict_refuses_a_bundle_listing_release_json_in_one_line(tmp_path):
    bundle = _bundle(tmp_path / "b")
    (bundle / "release.json").write_text("{}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["release.json"] = sha256_file(bundle / "release.json")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    image = write_image(tmp_path / "x.png", np.zeros((16, 16, 3), np.uint8))
    error = cli_error(run_cli("predict", bundle, image))
    assert "names the file 'release.json', which devices keep for themselves" in error and "convert again" in error


def test_a_manifest_without_output_or_tensor_names_means_probabilities_from_the_first_tensors(tmp_path):
    fields = {"artifacts": [_artifact()]}
    bundle = _bundle(tmp_path / "b", fields=fields)
    raw = json.loads((bundle / "manifest.json").read_text())
    del raw["output"], raw["input"]["layout"]
    (bundle / "manifest.json").write_text(json.dumps(raw))
    manifest = load_bundle(bundle).manifest
    assert manifest.output == "probs" and manifest.preprocess.layout == "NHWC"
    assert (manifest.artifacts[0].input_name, manifest.artifacts[0].output_name) == ("", "")
    assert manifest.to_dict()["output"] == "probs" and manifest.to_dict()["input"]["shape"] == [1, 16, 16, 3]


def _artifact(**kw):
    quant = {"dtype": "float32", "scale": 0.0, "zero_point": 0}
    fields = {"name": "onnx-fp32", "file": "m.onnx", "format": "onnx", "precision": "fp32", "size_bytes": 1}
    return {**fields, "sha256": "0" * 64, "input": quant, "output": quant, **kw}


def test_an_nchw_logits_manifest_round_trips_with_its_tensor_names(tmp_path):
    spec = PreprocessSpec(24, 32, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), layout="nchw")
    assert spec.layout == "NCHW" and spec.shape == (24, 32, 3) and spec.tensor_shape == (3, 24, 32)
    manifest = Manifest(["a", "b"], spec, "softmax", [], output="logits")
    fields = {**manifest.to_dict(), "artifacts": [_artifact(input_name="pixel_values", output_name="logits")]}
    assert fields["input"]["shape"] == [1, 3, 24, 32] and fields["output"] == "logits"
    loaded = load_bundle(_bundle(tmp_path / "b", fields=fields)).manifest
    assert loaded.output == "logits" and loaded.preprocess == spec
    assert (loaded.artifacts[0].input_name, loaded.artifacts[0].output_name) == ("pixel_values", "logits")
    assert loaded.to_dict()["artifacts"][0]["output_name"] == "logits"


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda m: m.update(output="softmax"), r"output is \"softmax\": use one of probs, logits"),
        (lambda m: m["artifacts"][0].update(output_name=3), r"output_name is 3, not a string"),
    ],
)
def test_a_bad_output_kind_or_tensor_name_is_one_malformed_error(tmp_path, edit, why):
    fields = {"artifacts": [_artifact()]}
    bundle = _bundle(tmp_path / "b", fields=fields)
    raw = json.loads((bundle / "manifest.json").read_text())
    edit(raw)
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=why):
        load_bundle(bundle)


def test_an_unknown_layout_names_the_ones_there_are():
    from edgecls.runtime.errors import EdgeclsError

    with pytest.raises(EdgeclsError, match="unknown preprocessing layout 'NCWH': use one of NHWC, NCHW"):
        PreprocessSpec(8, 8, layout="NCWH")
