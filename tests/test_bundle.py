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


_SCALED_UINT8 = {"dtype": "uint8", "scale": 2 / 255, "zero_point": 128}
_UNIT_UINT8 = {"dtype": "uint8", "scale": 1.0, "zero_point": 0}


@pytest.mark.parametrize(
    "spec, manifest_kw, artifact_kw, needs",
    [
        ({}, {}, {}, []),
        ({"layout": "NCHW"}, {}, {}, ["nchw-input"]),
        ({}, {"output": "logits"}, {}, ["logits-output"]),
        ({}, {}, {"output_name": "logits"}, ["named-tensors"]),
        ({}, {}, {"input_name": "pixel_values"}, ["named-tensors"]),
        ({"dtype": "uint8"}, {}, {"input": _SCALED_UINT8}, ["raw-pixel-input"]),
        ({"dtype": "uint8"}, {}, {"input": _UNIT_UINT8}, []),  # 0.2.0 fed these pixels the same way
        ({"dtype": "uint8"}, {}, {}, []),  # a float input: cast either way
        (
            {"layout": "NCHW"},
            {"output": "logits"},
            {"output_name": "y"},
            ["logits-output", "named-tensors", "nchw-input"],
        ),
    ],
)
def test_a_manifest_requires_what_its_own_fields_need_and_an_old_style_one_nothing(
    spec, manifest_kw, artifact_kw, needs
):
    """edgecls 0.2.0 served such bundles wrongly (an NCHW bundle 'inconsistent', logits as confidences, the first
    output instead of the named one, camera bytes quantized again): `requires` says what the reader must know."""
    from edgecls.runtime.bundle import Artifact

    artifact = Artifact.from_dict(_artifact(**artifact_kw))
    manifest = Manifest(["a", "b"], PreprocessSpec(16, 16, **spec), "softmax", [artifact], **manifest_kw)
    written = manifest.to_dict()
    assert written.get("requires", []) == needs and ("requires" in written) == bool(needs)
    assert Manifest.from_dict(json.loads(json.dumps(written))).to_dict() == written


def test_an_old_style_manifest_is_written_byte_for_byte_as_before(tiny_bundle):
    """No `requires` key at all when nothing is needed: a bundle convert wrote reads and writes back the same."""
    raw = (tiny_bundle / "manifest.json").read_text()
    manifest = load_bundle(tiny_bundle).manifest
    assert "requires" not in json.loads(raw) and manifest.to_dict() == json.loads(raw)


def test_a_bundle_needing_what_this_edgecls_does_not_know_is_refused_in_one_line(tmp_path):
    """What protects every later feature: a loader that does not know one says so instead of guessing."""
    from importlib import metadata

    bundle = _bundle(tmp_path / "b", fields={"requires": ["nchw-input", "hdr-input"]})
    why = (
        f"this bundle needs 'hdr-input', which edgecls {metadata.version('edgecls')} here does not have: "
        r"update edgecls on this device \(`edgecls flash ... --setup`"
    )
    with pytest.raises(BundleError, match=why):
        load_bundle(bundle)
    image = write_image(tmp_path / "x.png", np.zeros((16, 16, 3), np.uint8))
    error = cli_error(run_cli("predict", bundle, image))
    assert "needs 'hdr-input', which edgecls" in error and "--setup" in error and "\n" not in error.strip()


@pytest.mark.parametrize(
    "version, missing",
    [("0.2.0", ["nchw-input", "logits-output"]), ("0.1.0", ["nchw-input", "logits-output"]), ("0.3.0", [])]
    + [("0.3.0.dev1", []), ("0.10.0", []), ("1.0", [])],
)
def test_a_device_version_before_a_feature_does_not_serve_it(version, missing):
    from edgecls.runtime.bundle import unserved

    assert unserved(["nchw-input", "logits-output"], version) == missing
