"""Review of the training-side fixes (issue 16 points 1, 8; issue 15 point 12): the cases they missed."""

import json
import os
import subprocess
import sys
import time

import pytest

from edgecls.core.outputs import bundle_contents, bundle_guard, run_guard
from edgecls.core.rundir import open_run
from edgecls.runtime.atomic import check_output, host_tag, staged_dir
from edgecls.runtime.errors import EdgeclsError
from edgecls.train import TrainConfig, train
from tests.conftest import cli_error, run_cli


def snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def our_run(path, **metadata):
    path.mkdir(parents=True)
    meta = {"format": "edgecls-run/1", "labels": ["a", "b"], "input_shape": [16, 16, 3], "preprocess": {}, **metadata}
    (path / "metadata.json").write_text(json.dumps(meta))
    (path / "model.keras").write_bytes(b"old model")
    return path


def test_overwrite_keeps_a_run_someone_put_their_own_files_into(tmp_path, shapes_folder):
    run = our_run(tmp_path / "run")
    (run / "holiday").mkdir()
    (run / "holiday" / "beach.jpg").write_bytes(b"irreplaceable")
    before = snapshot(tmp_path)
    with pytest.raises(EdgeclsError, match="also holds holiday, which edgecls did not write"):
        train(
            TrainConfig(
                data=str(shapes_folder),
                out=str(run),
                overwrite=True,
                epochs=1,
                image_size=16,
                model_options={"widths": (8,)},
                verbose=0,
            )
        )
    with pytest.raises(EdgeclsError, match="also holds holiday"):  # the commit checks again
        with staged_dir(run, overwrite=True, **run_guard(shapes_folder)) as stage:
            (stage / "metadata.json").write_text("{}")
    assert snapshot(tmp_path) == before


def test_overwrite_still_replaces_a_run_of_only_our_files_and_our_temp_leftovers(tmp_path, shapes_folder):
    run = our_run(tmp_path / "run")
    for name in ("metrics.json", "split.json", "curves.png", ".metrics.json.k2j4h5x1.tmp"):
        (run / name).write_text("x")
    (run / "tensorboard" / "train").mkdir(parents=True)
    with staged_dir(run, overwrite=True, **run_guard(shapes_folder)) as stage:
        (stage / "metadata.json").write_text(json.dumps({"format": "edgecls-run/1"}))
    assert sorted(p.name for p in run.iterdir()) == ["metadata.json"]


def test_overwrite_keeps_a_bundle_holding_files_its_manifest_does_not_list(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = {
        "format": "edgecls-bundle/1",
        "artifacts": [{"file": "model_fp32.tflite"}],
        "files": {"labels.txt": "0"},
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for name in ("model_fp32.tflite", "labels.txt", "verification.txt"):
        (bundle / name).write_text("x")
    check_output(bundle, True, marker="manifest.json", contents=bundle_contents)  # only its own files: replaceable
    (bundle / "notes.md").write_text("mine")
    with pytest.raises(EdgeclsError, match="also holds notes.md"):
        check_output(bundle, True, marker="manifest.json", contents=bundle_contents)


def test_convert_never_writes_into_the_built_in_dataset_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "shapes-v1" / "circle").mkdir(parents=True)
    run = our_run(tmp_path / "run", dataset={"source": "shapes", "builtin": "shapes"})
    before = snapshot(cache)
    result = run_cli("convert", run, "--out", cache / "shapes-v1" / "bundle", env={"EDGECLS_DATA": str(cache)})
    assert "lies inside the built-in dataset cache" in cli_error(result)
    assert snapshot(cache) == before
    monkeypatch.setenv("EDGECLS_DATA", str(cache))
    with pytest.raises(EdgeclsError, match="is the built-in dataset cache"):
        check_output(cache, True, **bundle_guard(open_run(run)))


def test_out_dot_inside_our_run_is_replaced_instead_of_failing_after_training(tmp_path, monkeypatch):
    """`--out .` staged its folder inside `.` and then could not rename `.` (EBUSY) once training was done."""
    run = our_run(tmp_path / "run")
    monkeypatch.chdir(run)
    with staged_dir(".", overwrite=True, marker="metadata.json") as stage:
        (stage / "metadata.json").write_text(json.dumps({"format": "edgecls-run/1", "new": True}))
    assert json.loads((tmp_path / "run" / "metadata.json").read_text())["new"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_i15_p12_a_restored_previous_run_is_refused_before_the_work_not_after_it(tmp_path):
    """A stale `.old` was put back only after the check passed, so the run trained and then failed."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    previous = tmp_path / f".run.{dead.pid}@{host_tag()}.abcd1234.old"
    previous.mkdir()
    (previous / "metadata.json").write_text(json.dumps({"format": "edgecls-run/1"}))
    worked = []
    with pytest.raises(EdgeclsError, match="already exists"):
        with staged_dir(tmp_path / "run", marker="metadata.json") as stage:
            worked.append(stage)
    assert worked == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the previous run is back, intact


def test_i15_p12_a_stage_whose_pid_was_reused_by_a_newer_process_is_stale(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stage = tmp_path / f".run.{live.pid}@{host_tag()}.abcd1234.partial"
        (stage / "sub").mkdir(parents=True)
        an_hour_ago = time.time() - 3600
        os.utime(stage, (an_hour_ago, an_hour_ago))  # written long before that process started
        own = tmp_path / f".other.{os.getpid()}@{host_tag()}.efgh5678.partial"
        own.mkdir()
        os.utime(own, (an_hour_ago, an_hour_ago))  # this process's own stage is never stale
        with staged_dir(tmp_path / "another") as out:
            (out / "f").write_text("x")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["another", own.name])
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--widths", "8,,16"], "--widths '8,,16' is invalid"),
        (["--seed", "-1"], "'--seed': -1 is not in the range"),
        (["--seed", str(2**32)], "'--seed': 4294967296 is not in the range"),
    ],
)
def test_i16_p8_seed_and_widths_typos_are_one_line_errors(tmp_path, shapes_folder, args, message):
    result = run_cli(
        "train", "--data", shapes_folder, "--out", tmp_path / "run", "--epochs", "1", "--image-size", "16", *args
    )
    assert message in cli_error(result)
    assert not (tmp_path / "run").exists()


def test_i16_p8_the_api_refuses_a_seed_numpy_cannot_take_before_reading_data(tmp_path):
    with pytest.raises(EdgeclsError, match="--seed -1 is out of range"):
        train(TrainConfig(data=str(tmp_path / "missing"), out=str(tmp_path / "run"), seed=-1))
