"""`--overwrite` replaces only what edgecls wrote; an interrupted run's stage is cleaned up next time.

Issue 16 point 1 (train and convert) and issue 15 point 12 (stale `.NAME.*.partial` directories).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from edgecls.core.outputs import run_guard
from edgecls.runtime.atomic import host_tag, staged_dir
from edgecls.runtime.errors import EdgeclsError
from edgecls.train import TrainConfig, train
from tests.conftest import REPO, cli_error, make_home_like, run_cli, snapshot
from tests.daemon_helpers import wait_for

TINY = ["--epochs", "1", "--image-size", "16", "--widths", "8", "--quiet"]


@pytest.fixture
def dataset(tmp_path, shapes_folder):
    data = tmp_path / "victim_ds"
    shutil.copytree(shapes_folder, data)
    return data


@pytest.fixture
def home(tmp_path):
    return make_home_like(tmp_path / "fakehome")


@pytest.mark.parametrize("target", ["dataset", "inside-dataset", "parent-of-dataset", "home"])
def test_train_overwrite_refuses_what_is_not_a_run_and_every_file_stays(tmp_path, dataset, home, target):
    out = {"dataset": dataset, "inside-dataset": dataset / "run", "parent-of-dataset": tmp_path, "home": home}[target]
    before = snapshot(tmp_path)
    result = run_cli("train", "--data", dataset, "--out", out, "--overwrite", *TINY)
    message = cli_error(result)
    assert ("dataset" in message) if target != "home" else ("not an edgecls run" in message)
    assert "data:" not in result.stderr  # refused before anything was loaded
    assert snapshot(tmp_path) == before


def test_train_api_refuses_the_dataset_as_output(dataset):
    before = snapshot(dataset)
    with pytest.raises(EdgeclsError, match="is the dataset"):
        train(
            TrainConfig(
                data=str(dataset),
                out=str(dataset),
                overwrite=True,
                epochs=1,
                image_size=16,
                model_options={"widths": (8,)},
                verbose=0,
            )
        )
    assert snapshot(dataset) == before


@pytest.mark.parametrize("target", ["home", "run", "parent-of-run", "dataset"])
def test_convert_overwrite_refuses_what_is_not_a_bundle_and_every_file_stays(
    tmp_path, tiny_run_dir, shapes_folder, home, target
):
    out = {"home": home, "run": tiny_run_dir, "parent-of-run": tiny_run_dir.parent, "dataset": shapes_folder}[target]
    watched = [tmp_path, tiny_run_dir.parent, shapes_folder]
    before = [snapshot(p) for p in watched]
    result = run_cli("convert", tiny_run_dir, "--out", out, "--overwrite")
    message = cli_error(result)
    expected = {
        "home": "not an edgecls bundle",
        "run": "is the run directory",
        "parent-of-run": "contains the run directory",
        "dataset": "is the run's dataset",
    }[target]
    assert expected in message
    assert [snapshot(p) for p in watched] == before


def test_a_killed_train_leaves_a_stage_the_next_run_removes_and_overwrite_replaces_a_run(tmp_path, dataset):
    parent = tmp_path / "runs"
    out = parent / "run"
    first = run_cli("train", "--data", dataset, "--out", out, "--seed", "1", *TINY)
    assert first.returncode == 0, first.stderr[-2000:]

    # A second run into the same place, killed with SIGKILL while it trains (long, so it is still running).
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [
        "train",
        "--data",
        str(dataset),
        "--out",
        str(out),
        "--overwrite",
        "--epochs",
        "200",
        "--image-size",
        "16",
        "--widths",
        "8",
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecls.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        stage = wait_for(
            lambda: [p for p in parent.iterdir() if p.name.endswith(".partial")], 300, "the run to stage its output"
        )
        time.sleep(1.0)  # let it write into the stage
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p.exists() for p in stage] == [True]
    assert json.loads((out / "metadata.json").read_text())["seed"] == 1  # the old run is untouched

    third = run_cli("train", "--data", dataset, "--out", out, "--overwrite", "--seed", "2", *TINY)
    assert third.returncode == 0, third.stderr[-2000:]
    assert sorted(p.name for p in parent.iterdir()) == ["run"]  # the killed run's stage is gone
    assert json.loads((out / "metadata.json").read_text())["seed"] == 2  # and the run was replaced


def test_convert_api_refuses_before_converting_and_overwrite_replaces_a_bundle(tmp_path, tiny_run_dir, home, capsys):
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert

    before = snapshot(home)
    with pytest.raises(EdgeclsError, match="not an edgecls bundle"):
        convert(
            tiny_run_dir, home, ConvertOptions(formats=parse_formats("tflite-fp32"), overwrite=True, max_drop=100.0)
        )
    assert snapshot(home) == before
    assert "converting" not in capsys.readouterr().err  # refused before any work

    bundle = tmp_path / "bundle"
    for attempt in range(2):
        result = run_cli(
            "convert",
            tiny_run_dir,
            "--out",
            bundle,
            "--formats",
            "tflite-fp32",
            "--max-drop",
            "100",
            *(["--overwrite"] if attempt else []),
        )
        assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((bundle / "manifest.json").read_text())["format"].startswith("edgecls-bundle/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "fakehome"]


def our_run(path, **metadata):
    """A folder that looks like a run edgecls wrote (metadata.json and model.keras)."""
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


def test_out_dot_inside_our_run_is_replaced_instead_of_failing_after_training(tmp_path, monkeypatch):
    """`--out .` staged its folder inside `.` and then could not rename `.` (EBUSY) once training was done."""
    run = our_run(tmp_path / "run")
    monkeypatch.chdir(run)
    with staged_dir(".", overwrite=True, marker="metadata.json") as stage:
        (stage / "metadata.json").write_text(json.dumps({"format": "edgecls-run/1", "new": True}))
    assert json.loads((tmp_path / "run" / "metadata.json").read_text())["new"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_restored_previous_run_is_refused_before_the_work_not_after_it(tmp_path):
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


def test_a_stage_whose_pid_was_reused_by_a_newer_process_is_stale(tmp_path):
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
