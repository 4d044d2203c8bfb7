"""edgecls.evaluate: classes checked against the model, the recorded test split, other data evaluated whole."""

import json
import shutil
from pathlib import Path

import pytest

from edgecls.core.splits import file_digest
from tests.conftest import cli_error, run_cli, train_on_private_copy

TINY = ["--image-size", "16", "--widths", "8", "--epochs", "1", "--quiet"]


def _train(tmp_path, shapes_folder, name="run"):
    from edgecls.train import TrainConfig, train

    data = tmp_path / f"{name}-data"
    shutil.copytree(shapes_folder, data)
    out = tmp_path / name
    train(
        TrainConfig(
            data=str(data), out=str(out), image_size=16, epochs=1, seed=0, model_options={"widths": (8,)}, verbose=0
        )
    )
    return out, data


@pytest.fixture(scope="module")
def run_and_other(tmp_path_factory, shapes_folder):
    """A tiny run, and another folder with two of its three classes (48 images)."""
    tmp = tmp_path_factory.mktemp("evaluate")
    out, _ = _train(tmp, shapes_folder)
    other = tmp / "other"
    for name in ("circle", "triangle"):
        shutil.copytree(shapes_folder / name, other / name)
    return out, other


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: (d / "circle").rename(d / "zero"), "(zero unknown to the model; circle missing)"),
        (lambda d: shutil.copytree(d / "circle", d / "star"), "(star unknown to the model)"),
    ],
)
def test_own_folder_whose_classes_changed_is_refused_in_one_line(tmp_path, shapes_folder, change, message):
    out, data = _train(tmp_path, shapes_folder)
    before = (out / "metrics.json").read_text()
    change(data)
    error = cli_error(run_cli("evaluate", out))
    assert "differ from the model's labels" in error and message in error, error
    assert (out / "metrics.json").read_text() == before


def test_other_data_with_an_unknown_class_is_refused(run_and_other, tmp_path, shapes_folder):
    out, _ = run_and_other
    renamed = tmp_path / "renamed"
    shutil.copytree(shapes_folder / "circle", renamed / "zero")
    shutil.copytree(shapes_folder / "square", renamed / "square")
    error = cli_error(run_cli("evaluate", out, "--data", renamed))
    assert "(zero unknown to the model; circle, triangle missing)" in error, error


def test_other_data_is_evaluated_whole_and_saved_only_with_save(run_and_other):
    out, other = run_and_other
    before = (out / "metrics.json").read_text()
    whole = run_cli("evaluate", out, "--data", other, "--json")
    assert whole.returncode == 0, whole.stderr[-2000:]
    metrics = json.loads(whole.stdout)
    assert metrics["n"] == 48 and metrics["evaluated_on"] == "all"
    assert metrics["per_class"]["square"]["support"] == 0 and len(metrics["confusion_matrix"]) == 3
    assert (out / "metrics.json").read_text() == before  # other data never replaces the run's metrics unasked

    from edgecls.evaluate import evaluate_run

    narrowed = evaluate_run(out, data=str(other), split="test")
    assert narrowed["n"] == 10  # 20 % of each 24-image class
    assert (out / "metrics.json").read_text() == before
    saved = evaluate_run(out, data=str(other), save=True)
    written = json.loads((out / "metrics.json").read_text())
    assert written["n"] == 48 == saved["n"] and written["data"] == str(other)
    # the run's own test accuracy is kept: other data (or another split) is not its test accuracy
    assert "test_accuracy" not in narrowed and "test_accuracy" not in evaluate_run(out, split="train", save=False)
    assert written["test_accuracy"] == json.loads(before)["test_accuracy"]
    evaluate_run(out, split="train", save=True)
    written = json.loads((out / "metrics.json").read_text())
    assert written["evaluated_on"] == "train" and written["test_accuracy"] == json.loads(before)["test_accuracy"]


def test_own_data_keeps_its_test_split_by_default(run_and_other):
    from edgecls.evaluate import evaluate_run

    out, _ = run_and_other
    metrics = evaluate_run(out, save=False)
    assert metrics["n"] == 15 and metrics["evaluated_on"] == "test"
    data = json.loads((out / "metadata.json").read_text())["dataset"]["source"]
    assert evaluate_run(out, data=data, save=False)["n"] == 15  # naming the run's own folder is its own data


def test_builtin_run_named_like_the_builtin_is_evaluated_on_the_builtin(tmp_path, monkeypatch):
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run

    result = run_cli(
        "train",
        "--data",
        "digits",
        "--out",
        "digits",
        "--image-size",
        "8",
        "--widths",
        "8",
        "--epochs",
        "1",
        "--quiet",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    test_count = json.loads((tmp_path / "digits" / "metadata.json").read_text())["dataset"]["counts"]["test"]
    result = run_cli("evaluate", "digits", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["n"] == test_count
    monkeypatch.chdir(tmp_path)  # what `convert digits` loads, from the folder where ./digits is the run
    assert len(load_run_splits(open_run("digits"), ("test",))["test"].y) == test_count


@pytest.fixture(scope="module")
def private_run(tmp_path_factory, shapes_folder):
    """A 16 px, one-epoch run on a private copy of the shapes folder."""
    return train_on_private_copy(shapes_folder, tmp_path_factory.mktemp("private-run"))


def test_evaluate_refuses_a_split_record_pointing_outside_the_dataset(private_run, tmp_path):
    out, _ = private_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    record = json.loads((run / "split.json").read_text())
    secret = tmp_path / "secret.png"
    shutil.copy(next(iter(Path(private_run[1]).rglob("*.png"))), secret)
    record["splits"]["test"].append([str(Path("..") / ".." / secret.name), file_digest(secret), 0])
    (run / "split.json").write_text(json.dumps(record))
    error = cli_error(run_cli("evaluate", run, "--no-save"))
    assert "is not a path inside the dataset folder" in error and "train again" in error


def test_a_moved_dataset_given_as_data_is_evaluated_on_the_run_split(private_run, tmp_path, capfd):
    from edgecls.evaluate import evaluate_run

    out, data = private_run
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # the folder moved (or copied to another machine)
    capfd.readouterr()
    metrics = evaluate_run(out, data=str(moved), save=False)
    assert metrics["n"] == 15 and metrics["evaluated_on"] == "test"  # old code: all 72, training images included
    assert "holds the files the run recorded" in capfd.readouterr().err


def test_other_data_holding_training_images_says_how_many(private_run, tmp_path, capfd):
    from edgecls.evaluate import evaluate_run

    out, data = private_run
    record = json.loads((out / "split.json").read_text())["splits"]
    other = tmp_path / "other"
    for path, _, _ in record["train"][:5] + record["test"][:3]:  # a few, renamed: the bytes count, not the names
        target = other / path.split("/")[0] / ("x-" + Path(path).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / path, target)
    capfd.readouterr()
    assert evaluate_run(out, data=str(other), save=False)["n"] == 8
    assert "5 of the 8 images of" in capfd.readouterr().err


def test_other_data_of_a_single_class_is_evaluated(private_run, tmp_path):
    out, data = private_run
    one = tmp_path / "one"
    shutil.copytree(data / "square", one / "square")  # old code: "a classifier needs at least two class folders"
    result = run_cli("evaluate", out, "--data", one, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 24 and metrics["per_class"]["square"]["support"] == 24
    assert sum(map(sum, metrics["confusion_matrix"])) == 24
