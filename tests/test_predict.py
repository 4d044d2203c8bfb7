"""edgecls.commands.predict: `edgecls predict` checks the whole bundle, as flash does, before it classifies anything."""

import json
import shutil

import pytest

from tests.conftest import cli_error, run_cli


@pytest.mark.parametrize("edit", ["swapped-labels", "check-image"])
def test_predict_refuses_a_bundle_whose_listed_files_were_edited(tiny_bundle, tmp_path, edit):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    image = bundle / manifest["checks"][0]["file"]
    if edit == "swapped-labels":  # the manifest's labels swapped and labels.txt edited to agree with it
        manifest["labels"][0], manifest["labels"][1] = manifest["labels"][1], manifest["labels"][0]
        for check in manifest["checks"]:
            check["label"] = {
                manifest["labels"][0]: manifest["labels"][1],
                manifest["labels"][1]: manifest["labels"][0],
            }.get(check["label"], check["label"])
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        (bundle / "labels.txt").write_text("\n".join(manifest["labels"]) + "\n")
    else:
        image.write_bytes(image.read_bytes()[:-1] + b"\0")
    error = cli_error(run_cli("predict", bundle, image, "--artifact", "tflite-fp32"))
    assert "does not match the manifest" in error and "convert it again" in error
