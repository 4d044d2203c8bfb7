"""Adversarial review of recorded splits (issue 15 points 7, 8): copies of one image, damaged split.json,
a moved dataset, other data holding training images, empty or ambiguous split folders."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecls.core.datasets import Sample, scan_folder
from edgecls.core.splits import file_digest, read_split_record, seeded_split
from edgecls.runtime.errors import DataError
from tests.conftest import cli_error, run_cli, train_on_private_copy, write_image


def _png(path, seed):
    return write_image(path, np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_i15_p7_copies_of_one_image_never_straddle_a_split_boundary(tmp_path):
    for c, name in enumerate(("a", "b")):
        for i in range(10):
            _png(tmp_path / name / f"{i:02d}.png", 100 * c + i)
    for i in range(10):  # ten copies of a/00.png: on old code seed 1 put them in train, val and test
        shutil.copy(tmp_path / "a" / "00.png", tmp_path / "a" / f"copy{i}.png")
    for seed in range(8):
        where: dict = {}
        for name, samples in scan_folder(tmp_path, 0.1, 0.2, seed).splits.items():
            for s in samples:
                where.setdefault(file_digest(s.path), set()).add(name)
        assert all(len(names) == 1 for names in where.values()), (seed, where)


def test_i15_p7_adding_k_files_moves_at_most_k_per_boundary_from_three_images_up():
    """The claim in edgecls.core.splits' docstring, checked exhaustively on small classes."""

    def samples(names):
        return [Sample(Path("/r/a") / n, 0, hashlib.sha256(n.encode()).hexdigest()) for n in names]

    rank = {"test": 0, "val": 1, "train": 2}
    for n in range(3, 40):
        for k in (1, 2, 5):
            old, new = [f"o{n}-{i}" for i in range(n)], [f"n{n}-{i}" for i in range(k)]
            before, after = (
                {
                    s.path.name: name
                    for name, ss in seeded_split(samples(names), {"val": 0.1, "test": 0.2}, 0, Path("/r")).items()
                    for s in ss
                }
                for names in (old, old + new)
            )
            for edge in (0, 1):
                crossed = sum((rank[before[x]] <= edge) != (rank[after[x]] <= edge) for x in old)
                assert crossed <= k, (n, k, edge, crossed)


def _record(tmp_path, entries, labels=("a", "b")) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    record = {
        "format": "edgecls-split/1",
        "method": "content-rank/1",
        "labels": list(labels),
        "splits": {"test": entries},
        "skipped": [],
    }
    (run / "split.json").write_text(json.dumps(record))
    return run


SHA = "0" * 64


@pytest.mark.parametrize(
    "entries, message",
    [
        ([["../../etc/hostname", SHA, 0]], "not a path inside the dataset folder"),
        ([["/etc/hostname", SHA, 0]], "not a path inside the dataset folder"),
        ([["a/./x.png", SHA, 0]], "not a path inside the dataset folder"),
        ([["a/x.png", SHA, 2]], "label 2, not one of the 2 classes"),
        ([["a/x.png", SHA, -1]], "label -1, not one of the 2 classes"),
        ([["a/x.png", SHA, True]], "label True"),
        ([["a/x.png", "abc", 0]], "has no sha256"),
        ({"not": "a list"}, "not [path, sha256, label]"),
    ],
)
def test_i15_p7_a_damaged_split_record_is_refused_in_one_line(tmp_path, entries, message):
    run = _record(tmp_path, entries)
    with pytest.raises(DataError, match="the run is damaged") as error:
        read_split_record(run)
    assert message in str(error.value)
    assert read_split_record(_record(tmp_path, [["a/x.png", SHA, 1]])).splits == {"test": [("a/x.png", SHA, 1)]}


@pytest.mark.parametrize("text", ["[1, 2]", '{"format": "edgecls-split/1", "labels": [], "splits": []}'])
def test_i15_p7_a_split_record_of_the_wrong_shape_is_a_data_error_not_a_traceback(tmp_path, text):
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(text)
    with pytest.raises(DataError, match="the run is damaged"):
        read_split_record(run)


@pytest.fixture(scope="module")
def review_run(tmp_path_factory, shapes_folder):
    """A 16 px, one-epoch run on a private copy of the shapes folder."""
    return train_on_private_copy(shapes_folder, tmp_path_factory.mktemp("review"))


def test_i15_p7_evaluate_refuses_a_split_record_pointing_outside_the_dataset(review_run, tmp_path):
    out, _ = review_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    record = json.loads((run / "split.json").read_text())
    secret = tmp_path / "secret.png"
    shutil.copy(next(iter(Path(review_run[1]).rglob("*.png"))), secret)
    record["splits"]["test"].append([str(Path("..") / ".." / secret.name), file_digest(secret), 0])
    (run / "split.json").write_text(json.dumps(record))
    error = cli_error(run_cli("evaluate", run, "--no-save"))
    assert "is not a path inside the dataset folder" in error and "train again" in error


def test_i15_p7_a_moved_dataset_given_as_data_is_evaluated_on_the_run_split(review_run, tmp_path, capfd):
    from edgecls.evaluate import evaluate_run

    out, data = review_run
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # the folder moved (or copied to another machine)
    capfd.readouterr()
    metrics = evaluate_run(out, data=str(moved), save=False)
    assert metrics["n"] == 15 and metrics["evaluated_on"] == "test"  # old code: all 72, training images included
    assert "holds the files the run recorded" in capfd.readouterr().err


def test_i15_p7_other_data_holding_training_images_says_how_many(review_run, tmp_path, capfd):
    from edgecls.evaluate import evaluate_run

    out, data = review_run
    record = json.loads((out / "split.json").read_text())["splits"]
    other = tmp_path / "other"
    for path, _, _ in record["train"][:5] + record["test"][:3]:  # a few, renamed: the bytes count, not the names
        target = other / path.split("/")[0] / ("x-" + Path(path).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / path, target)
    capfd.readouterr()
    assert evaluate_run(out, data=str(other), save=False)["n"] == 8
    assert "5 of the 8 images of" in capfd.readouterr().err


def test_i15_p8_an_empty_split_folder_in_a_presplit_layout_is_an_empty_split(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png", hash((split, c, i)) % 1000)
    (tmp_path / "val").mkdir()  # made ahead of time; old code: "val/ holds images of its own"
    ds = scan_folder(tmp_path)
    assert ds.split_source == "folders" and ds.counts() == {"train": 8, "val": 0, "test": 4}


def test_i15_p8_a_train_folder_of_subfolders_beside_a_class_is_noted(tmp_path):
    for top, sub in (("train", "cat"), ("train", "dog"), ("zoo", "x")):
        for i in range(3):
            _png(tmp_path / top / sub / f"{i}.png", hash((top, sub, i)) % 1000)
    ds = scan_folder(tmp_path)
    assert ds.labels == ["train", "zoo"]
    assert any("train/ holds only subfolders (cat, dog) and is taken as one class beside zoo" in n for n in ds.notes)


def test_i15_p7_an_image_copied_into_another_class_is_noted(tmp_path):
    for c, name in enumerate(("a", "b")):
        for i in range(5):
            _png(tmp_path / name / f"{i}.png", 10 * c + i)
    shutil.copy(tmp_path / "a" / "0.png", tmp_path / "b" / "copy.png")
    notes = scan_folder(tmp_path).notes
    assert any(
        "1 image(s) are copies (same bytes) of an image in another class" in n and "b/copy.png" in n for n in notes
    ), notes


def test_i16_p10_other_data_of_a_single_class_is_evaluated(review_run, tmp_path):
    out, data = review_run
    one = tmp_path / "one"
    shutil.copytree(data / "square", one / "square")  # old code: "a classifier needs at least two class folders"
    result = run_cli("evaluate", out, "--data", one, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 24 and metrics["per_class"]["square"]["support"] == 24
    assert sum(map(sum, metrics["confusion_matrix"])) == 24


def test_i15_p8_a_class_named_train_with_images_and_subfolders_stays_a_class(tmp_path):
    for top, names in (("bus", ["0.png", "1.png", "2.png"]), ("train", ["0.png", "1.png", "old/2.png"])):
        for i, name in enumerate(names):
            _png(tmp_path / top / name, hash((top, i)) % 1000)
    (tmp_path / "bus").rename(tmp_path / "test")  # test/ and train/ both hold images of their own: classes
    ds = scan_folder(tmp_path, 0.0, 0.0)
    assert ds.labels == ["test", "train"] and ds.split_source == "seeded" and len(ds.splits["train"]) == 6


def test_i15_p7_a_class_of_three_gets_one_test_and_one_val_image_even_at_small_fractions(tmp_path):
    for c in ("a", "b"):
        for i in range(3):
            _png(tmp_path / c / f"{i}.png", hash((c, i)) % 1000)
    assert scan_folder(tmp_path, 0.1, 0.1).counts() == {"train": 2, "val": 2, "test": 2}
    small = [Sample(tmp_path / "a" / f"{i}.png", 0) for i in range(2)]
    assert {n: len(s) for n, s in seeded_split(small, {"val": 0.1, "test": 0.1}, 0, tmp_path).items()} == {
        "train": 2,
        "val": 0,
        "test": 0,
    }
