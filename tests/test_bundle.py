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
