"""edgecls.core.splits: a content-stable seeded split, and the split record a run writes and later steps reuse."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecls.core.datasets import Sample, scan_folder
from edgecls.core.rundir import open_run
from edgecls.core.splits import PERMUTATION, file_digest, read_split_record, seeded_split
from edgecls.runtime.errors import DataError
from tests.conftest import run_cli, train_on_private_copy, write_image


def _png(path, seed):
    return write_image(path, np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def _members(dataset) -> dict:
    """split name of every file, keyed by content (so renames do not matter)."""
    return {file_digest(s.path): name for name, samples in dataset.splits.items() for s in samples}


def test_seeded_split_depends_on_content_and_adding_a_file_moves_few(tmp_path):
    root = tmp_path / "d"
    for c, name in enumerate(("a", "b", "c")):
        for i in range(30):
            _png(root / name / f"{i:02d}.png", 100 * c + i)
    before = _members(scan_folder(root, 0.1, 0.2, seed=5))
    _png(root / "a" / "new.png", 999)
    after = _members(scan_folder(root, 0.1, 0.2, seed=5))
    moved = {d: (before[d], after[d]) for d in before if before[d] != after[d]}
    labels = {file_digest(p): p.parent.name for p in root.rglob("*.png")}
    assert all(labels[d] == "a" for d in moved), moved  # other classes keep their split exactly
    assert len(moved) <= 2 and ("test", "train") not in moved.values()  # one added file: one per boundary at most
    for p in sorted((root / "b").glob("*.png")):  # names do not matter, only bytes
        p.rename(p.with_name("renamed-" + p.name))
    assert _members(scan_folder(root, 0.1, 0.2, seed=5)) == after


@pytest.fixture
def fresh_run(tmp_path, shapes_folder):
    """A 16 px, one-epoch run on a private copy of the shapes folder (tests change the folder)."""
    return train_on_private_copy(shapes_folder, tmp_path)


def _add_images(data, n: int) -> None:
    for k, name in enumerate(("circle", "square", "triangle")):
        for i in range(n):
            _png(data / name / f"added-{i}.png", 1000 + 100 * k + i)


def _recorded(out) -> dict:
    return json.loads((out / "split.json").read_text())["splits"]


def test_run_records_every_file_of_each_split(fresh_run):
    out, data = fresh_run
    splits = _recorded(out)
    counts = json.loads((out / "metadata.json").read_text())["dataset"]["counts"]
    assert {n: len(e) for n, e in splits.items()} == counts == {"train": 51, "val": 6, "test": 15}
    every = [tuple(e) for entries in splits.values() for e in entries]
    assert len({p for p, _, _ in every}) == 72
    labels = open_run(out).labels
    for path, digest, label in every:
        assert file_digest(data / path) == digest and labels[label] == path.split("/")[0]


def test_after_adding_files_the_run_uses_its_recorded_split(fresh_run, capfd):
    from edgecls.core.rundata import load_run_splits

    out, data = fresh_run
    recorded = _recorded(out)
    _add_images(data, 40)
    fresh_test = {s.path.relative_to(data).as_posix() for s in scan_folder(data, 0.1, 0.2, 0).splits["test"]}
    recorded_train = {p for p, _, _ in recorded["train"]}
    assert fresh_test & recorded_train  # precondition: drawing the split again would verify on training images
    capfd.readouterr()
    splits = load_run_splits(open_run(out), ("train", "test"))
    used_test = {Path(p).relative_to(data).as_posix() for p in splits["test"].paths}
    assert used_test == {p for p, _, _ in recorded["test"]}
    assert sorted(splits["test"].digests) == sorted(d for _, d, _ in recorded["test"])
    assert not used_test & recorded_train
    assert len(splits["train"].y) == 51
    assert "note: 120 image(s) added" in capfd.readouterr().err


def test_gone_and_changed_files_are_dropped_in_one_line_then_refused(fresh_run, capfd):
    from edgecls.core.rundata import load_run_splits

    out, data = fresh_run
    test = [p for p, _, _ in _recorded(out)["test"]]
    (data / test[0]).unlink()
    _png(data / test[1], 4242)  # same name, other bytes
    capfd.readouterr()
    used = load_run_splits(open_run(out), ("test",))["test"]
    assert sorted(used.paths) == sorted(str(data / p) for p in test[2:])
    err = [l for l in capfd.readouterr().err.splitlines() if "recorded split" in l]
    assert len(err) == 1 and "1 file(s) of the run's recorded split are gone and 1 changed" in err[0]
    for p in test[2:]:
        (data / p).unlink()
    with pytest.raises(DataError, match="none of the 15 test images the run used"):
        load_run_splits(open_run(out), ("test",))


def test_runs_without_split_json_recompute_the_old_split_with_a_warning(fresh_run, capfd):
    from edgecls.core.rundata import load_run_splits

    out, data = fresh_run
    (out / "split.json").unlink()
    meta = json.loads((out / "metadata.json").read_text())
    del meta["dataset"]["split_method"]  # as written before splits were recorded
    (out / "metadata.json").write_text(json.dumps(meta))
    capfd.readouterr()
    used = load_run_splits(open_run(out), ("test",))["test"]
    legacy = scan_folder(data, 0.1, 0.2, 0, method=PERMUTATION).splits["test"]
    assert used.paths == [str(s.path) for s in legacy]
    assert "has no split.json (trained before splits were recorded): recomputing" in capfd.readouterr().err


def test_evaluate_and_convert_cli_use_the_recorded_test_split(fresh_run, tmp_path):
    out, data = fresh_run
    _add_images(data, 40)
    before = (out / "metrics.json").read_text()
    result = run_cli("evaluate", out, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["n"] == 15 and "added" in result.stderr
    assert json.loads((out / "metrics.json").read_text())["confusion_matrix"] == json.loads(before)["confusion_matrix"]
    bundle = tmp_path / "bundle"
    result = run_cli("convert", out, "--out", bundle, "--formats", "tflite-fp32", "--max-drop", "100")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((bundle / "manifest.json").read_text())["source"]["test_images"] == 15


def test_a_recorded_file_replaced_by_a_fifo_counts_as_gone_instead_of_hanging(tmp_path):
    import os
    import threading

    from edgecls.core.splits import RecordedSplit, recorded_samples

    good, fifo = _png(tmp_path / "a" / "good.png", 1), tmp_path / "a" / "was-an-image.png"
    os.mkfifo(fifo)
    record = RecordedSplit(
        ["a"], {"test": [("a/good.png", file_digest(good), 0), ("a/was-an-image.png", "0" * 64, 0)]}, []
    )
    found = {}
    worker = threading.Thread(target=lambda: found.update(r=recorded_samples(record, tmp_path, ["test"])), daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # blocked opening the FIFO: let it go (a writer that closes at once) before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail("hashing the recorded split blocked on a FIFO")
    splits, problems = found["r"]
    assert [s.path for s in splits["test"]] == [good]
    assert problems.startswith("1 file(s) of the run's recorded split are gone") and "was-an-image.png" in problems
    assert file_digest(fifo) is None and file_digest(tmp_path / "a") is None


def test_copies_of_one_image_never_straddle_a_split_boundary(tmp_path):
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


def test_adding_k_files_moves_at_most_k_per_boundary_from_three_images_up():
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
def test_a_damaged_split_record_is_refused_in_one_line(tmp_path, entries, message):
    run = _record(tmp_path, entries)
    with pytest.raises(DataError, match="the run is damaged") as error:
        read_split_record(run)
    assert message in str(error.value)
    assert read_split_record(_record(tmp_path, [["a/x.png", SHA, 1]])).splits == {"test": [("a/x.png", SHA, 1)]}


@pytest.mark.parametrize("text", ["[1, 2]", '{"format": "edgecls-split/1", "labels": [], "splits": []}'])
def test_a_split_record_of_the_wrong_shape_is_a_data_error_not_a_traceback(tmp_path, text):
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(text)
    with pytest.raises(DataError, match="the run is damaged"):
        read_split_record(run)


def test_an_image_copied_into_another_class_is_noted(tmp_path):
    for c, name in enumerate(("a", "b")):
        for i in range(5):
            _png(tmp_path / name / f"{i}.png", 10 * c + i)
    shutil.copy(tmp_path / "a" / "0.png", tmp_path / "b" / "copy.png")
    notes = scan_folder(tmp_path).notes
    assert any(
        "1 image(s) are copies (same bytes) of an image in another class" in n and "b/copy.png" in n for n in notes
    ), notes


def test_a_class_of_three_gets_one_test_and_one_val_image_even_at_small_fractions(tmp_path):
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
