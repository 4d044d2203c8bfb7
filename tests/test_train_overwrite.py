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
def test_i16_p1_train_overwrite_refuses_what_is_not_a_run_and_every_file_stays(tmp_path, dataset, home, target):
    out = {"dataset": dataset, "inside-dataset": dataset / "run", "parent-of-dataset": tmp_path, "home": home}[target]
    before = snapshot(tmp_path)
    result = run_cli("train", "--data", dataset, "--out", out, "--overwrite", *TINY)
    message = cli_error(result)
    assert ("dataset" in message) if target != "home" else ("not an edgecls run" in message)
    assert "data:" not in result.stderr  # refused before anything was loaded
    assert snapshot(tmp_path) == before


def test_i16_p1_train_api_refuses_the_dataset_as_output(dataset):
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
def test_i16_p1_convert_overwrite_refuses_what_is_not_a_bundle_and_every_file_stays(
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


def test_i15_p12_a_killed_train_leaves_a_stage_the_next_run_removes_and_overwrite_replaces_a_run(tmp_path, dataset):
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


def test_i16_p1_convert_api_refuses_before_converting_and_overwrite_replaces_a_bundle(
    tmp_path, tiny_run_dir, home, capsys
):
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
