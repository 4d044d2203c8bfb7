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


def test_predict_on_a_text_file_says_so_in_one_error_line(tiny_bundle, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    result = run_cli("predict", tiny_bundle, notes)
    assert result.returncode == 1 and not result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot decode image ") and str(notes) in lines[0], lines


def test_predict_skips_an_unreadable_file_among_images_with_one_error_line(tiny_bundle, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image\n")
    image = tiny_bundle / json.loads((tiny_bundle / "manifest.json").read_text())["checks"][0]["file"]
    result = run_cli("predict", tiny_bundle, notes, image)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{image}\t")  # the readable image is still classified
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: 1 of 2 images could not be read (skipped above); the others are classified"]
    assert f"skipped: cannot decode image {notes}" in result.stderr


def test_predict_when_every_file_fails_says_nothing_was_classified(tiny_bundle, tmp_path):
    notes, bad = tmp_path / "notes.txt", tmp_path / "bad.png"
    notes.write_text("not an image\n")
    bad.write_bytes(b"\x89PNG broken")
    result = run_cli("predict", tiny_bundle, notes, bad)
    assert result.returncode == 1 and not result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: none of the 2 images could be read (skipped above); nothing was classified"], errors


def test_predict_json_gives_a_bad_file_its_record_whether_alone_or_among_others(tiny_bundle, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    alone = run_cli("predict", tiny_bundle, notes, "--json")
    two = run_cli("predict", tiny_bundle, notes, notes, "--json")
    assert alone.returncode == two.returncode == 1
    records = [json.loads(line) for line in alone.stdout.splitlines()]
    assert records == [json.loads(two.stdout.splitlines()[0])] and records[0]["path"] == str(notes)
    assert records[0]["error"].startswith("cannot decode image "), records
    assert cli_error(alone).startswith("error: cannot decode image ")  # still its own one error line
