"""`train --init-from RUN` and several `--data` folders: the parent's weights, classes and fixed test split."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_error, render_fixture_image, run_cli, train_on_private_copy, write_image

from edgecls.runtime.errors import DataError, EdgeclsError


def _captures(folder: Path, classes: dict, seed: int = 7) -> Path:
    """A capture folder as `edgecls run --capture` and `edgecls label` leave it: labelled frames in class
    folders, unlabelled and discarded ones in dot folders that training must ignore."""
    rng = np.random.default_rng(seed)
    for name, (kind, count) in classes.items():
        for i in range(count):
            write_image(folder / name / f"cap-{i:03d}.jpg", render_fixture_image(kind, rng, 40))
    for dot in (".unlabelled/cam", ".discarded"):
        for i in range(3):
            write_image(folder / dot / f"frame-{i}.jpg", render_fixture_image("circle", rng, 40))
    return folder


def _train(out: Path, data, parent: Path | None, **kw):
    from edgecls.train import TrainConfig, train

    options = {"epochs": 1, "seed": 0, "verbose": 0, "batch_size": 8} | kw
    return train(TrainConfig(data=data, out=str(out), init_from=None if parent is None else str(parent), **options))


def _test_digests(run: Path) -> set:
    return {d for _, d, _ in json.loads((run / "split.json").read_text())["splits"]["test"]}


def _head(run: Path) -> np.ndarray:
    from edgecls.core.rundir import open_run

    return open_run(run).load_model().get_layer("predictions").get_weights()[0]


def test_v2_starts_from_v1s_weights_and_keeps_its_test_split(tmp_path, shapes_folder, tiny_run_dir):
    from edgecls.compare import compare
    from edgecls.core.splits import file_digest
    from edgecls.evaluate import evaluate_run

    captures = _captures(tmp_path / "captures", {"circle": ("circle", 6), "square": ("square", 6)})
    v2 = tmp_path / "v2"
    # A learning rate of 1e-12 leaves the weights where they started: v1's, if they really come from v1.
    _train(v2, (str(shapes_folder), str(captures)), tiny_run_dir, learning_rate=1e-12)
    meta = json.loads((v2 / "metadata.json").read_text())
    assert meta["parent"]["path"] == str(tiny_run_dir.resolve())
    assert meta["parent"]["model_sha256"] == file_digest(tiny_run_dir / "model.keras")
    assert meta["labels"] == ["circle", "square", "triangle"]
    assert meta["preprocess"] == json.loads((tiny_run_dir / "metadata.json").read_text())["preprocess"]
    assert _test_digests(v2) == _test_digests(tiny_run_dir)  # the fixed benchmark, file for file
    record = json.loads((v2 / "split.json").read_text())["splits"]
    used = [p for entries in record.values() for p, _, _ in entries]
    assert sum("cap-" in p for p in used) == 12  # every labelled capture, in train or val
    assert not any("frame-" in p for p in used)  # .unlabelled and .discarded are not data
    assert np.allclose(_head(v2), _head(tiny_run_dir), atol=1e-6)
    same = compare(tiny_run_dir, v2)  # no --data: the test split both runs share
    assert same.data == f"the test split of {tiny_run_dir}" and same.test.fixed + same.test.broken == 0
    again = evaluate_run(v2)  # convert and evaluate find the merged images through RUN/data
    assert again["test_accuracy"] == pytest.approx(same.accuracy_b)


def test_an_added_class_grows_the_head_keeping_the_old_rows(tmp_path, shapes_folder, tiny_run_dir, capfd):
    captures = _captures(tmp_path / "captures", {"circle": ("circle", 4), "blob": ("triangle", 9)})
    v2 = tmp_path / "v2"
    _train(v2, (str(shapes_folder), str(captures)), tiny_run_dir, learning_rate=1e-12)
    err = capfd.readouterr().err
    assert "growing the head from 3 to 4 classes: blob added" in err
    assert json.loads((v2 / "metadata.json").read_text())["labels"] == ["circle", "square", "triangle", "blob"]
    old, new = _head(tiny_run_dir), _head(v2)
    assert new.shape == (old.shape[0], 4)
    assert np.allclose(new[:, :3], old, atol=1e-6) and not np.allclose(new[:, 3], 0)
    assert _test_digests(v2) == _test_digests(tiny_run_dir)
    from edgecls.core.parent import start_model
    from edgecls.core.rundir import open_run

    parent = open_run(tiny_run_dir)
    before, grown = parent.load_model(), start_model(parent, [*parent.labels, "blob"], "softmax")
    body = [layer for layer in grown.layers if layer.name != "predictions" and layer.get_weights()]
    assert body  # every layer below the head starts as the parent's, bit for bit (BatchNorm statistics too)
    for layer in body:
        for w_new, w_old in zip(layer.get_weights(), before.get_layer(layer.name).get_weights(), strict=True):
            assert np.array_equal(w_new, w_old), layer.name
    from edgecls.compare import compare

    on_captures = compare(tiny_run_dir, v2, data=str(captures))  # v1 never knew blob: said, and counted wrong
    assert "warning: A has no class blob" in capfd.readouterr().err
    blob = next(row for row in on_captures.per_class if row["class"] == "blob")
    assert blob["images"] == 9 and blob["accuracy_a"] == 0.0


def test_a_two_class_sigmoid_head_grows_into_softmax_with_the_same_two_probabilities():
    import keras

    from edgecls.core.parent import _grown_head

    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    old = keras.layers.Dense(1, activation="sigmoid")
    old(x)
    new = keras.layers.Dense(3, activation="softmax")
    new(x)
    new.set_weights(_grown_head(old, new))
    p_old, p_new = np.asarray(old(x))[:, 0], np.asarray(new(x))
    two = p_new[:, :2] / p_new[:, :2].sum(axis=1, keepdims=True)
    assert np.allclose(two[:, 1], p_old, atol=1e-5)


def test_a_class_missing_from_the_new_data_is_refused_in_one_line(tmp_path, tiny_run_dir):
    captures = _captures(tmp_path / "captures", {"circle": ("circle", 4), "square": ("square", 4)})
    error = cli_error(run_cli("train", "--init-from", tiny_run_dir, "--data", captures, "--out", tmp_path / "v2"))
    assert "class(es) triangle of" in error and "keeps its classes" in error
    assert not (tmp_path / "v2").exists()


def test_one_image_labelled_two_ways_is_refused_naming_both(tmp_path, shapes_folder, tiny_run_dir):
    captures = _captures(tmp_path / "captures", {"circle": ("circle", 2)})
    shutil.copy(next((shapes_folder / "square").iterdir()), captures / "circle" / "copy.png")
    with pytest.raises(DataError, match=r"labelled 'square' in .*square.* and 'circle' in .*copy\.png"):
        _train(tmp_path / "v2", (str(shapes_folder), str(captures)), tiny_run_dir)


def test_a_test_image_of_the_parent_that_vanished_is_an_error(tmp_path, shapes_folder):
    run, data = train_on_private_copy(shapes_folder, tmp_path)
    first = json.loads((run / "split.json").read_text())["splits"]["test"][0][0]
    (data / first).unlink()
    with pytest.raises(DataError, match=r"1 of the \d+ test images of .* are gone or changed"):
        _train(tmp_path / "v2", str(data), run)


def test_a_bundle_given_to_init_from_is_refused_naming_the_run_it_needs(tmp_path, shapes_folder, tiny_bundle):
    with pytest.raises(EdgeclsError, match=r"is a bundle: give the run directory it was converted from"):
        _train(tmp_path / "v2", str(shapes_folder), tiny_bundle)


def test_an_option_changing_the_parents_input_is_refused(tmp_path, shapes_folder, tiny_run_dir):
    with pytest.raises(EdgeclsError, match=r"--image-size 48 differs from .*'s 32"):
        _train(tmp_path / "v2", str(shapes_folder), tiny_run_dir, image_size=48)


def test_several_data_folders_without_a_parent_merge_by_class_name(tmp_path, shapes_folder):
    from edgecls.evaluate import evaluate_run

    captures = _captures(tmp_path / "captures", {"circle": ("circle", 5), "star": ("triangle", 5)})
    run = tmp_path / "merged"
    _train(run, (str(shapes_folder), str(captures)), None, image_size=16, model_options={"widths": (4,)})
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["labels"] == ["circle", "square", "star", "triangle"]
    assert meta["dataset"]["source"] == str((run / "data").resolve())
    assert meta["dataset"]["sources"] == [str(shapes_folder.resolve()), str(captures.resolve())]
    assert sum(meta["dataset"]["counts"].values()) == 72 + 10
    assert evaluate_run(run)["evaluated_on"] == "test"
    target = next((run / "data" / "star").rglob("*.jpg")).resolve()
    assert target.parent == captures.resolve() / "star"
    _train(
        run, (str(shapes_folder), str(captures)), None, image_size=16, model_options={"widths": (4,)}, overwrite=True
    )
    assert target.is_file()  # replacing the run removed its symlinks, never the images they point at
    with pytest.raises(EdgeclsError, match="dataset"):  # a run inside the second folder would become a class
        _train(captures / "run", (str(shapes_folder), str(captures)), None, image_size=16)
    assert not (captures / "run").exists()
    accuracy = evaluate_run(run)["test_accuracy"]
    moved = run.rename(tmp_path / "moved")  # a merged run finds its images through its own data/, wherever it is
    assert evaluate_run(moved)["test_accuracy"] == accuracy


def test_the_parents_dataset_given_through_a_symlink_is_the_same_folder(tmp_path, shapes_folder, tiny_run_dir):
    link = tmp_path / "shapes-link"
    link.symlink_to(shapes_folder)
    captures = _captures(tmp_path / "captures", {"circle": ("circle", 3)})
    v2 = tmp_path / "v2"
    _train(v2, (str(link), str(captures)), tiny_run_dir, learning_rate=1e-12)
    assert _test_digests(v2) == _test_digests(tiny_run_dir)
    sources = json.loads((v2 / "metadata.json").read_text())["dataset"]["sources"]
    assert sources == [str(shapes_folder.resolve()), str(captures.resolve())]


def test_a_teacher_with_several_data_folders_is_checked_and_recorded(tmp_path, shapes_folder, tiny_run_dir):
    star = _captures(tmp_path / "star", {"star": ("triangle", 4)})
    error = cli_error(
        run_cli("train", "--data", shapes_folder, "--data", star, "--teacher", tiny_run_dir, "--out", tmp_path / "x")
    )
    assert (
        "the teacher" in error and "classes circle, square, triangle (student circle, square, star, triangle)" in error
    )
    captures = _captures(tmp_path / "captures", {"circle": ("circle", 3), "square": ("square", 3)})
    student = tmp_path / "student"  # no test split: nothing for the teacher to have seen
    _train(student, (str(shapes_folder), str(captures)), None, teacher=str(tiny_run_dir), test_fraction=0.0)
    meta = json.loads((student / "metadata.json").read_text())
    assert meta["teacher"]["run"] == str(tiny_run_dir.resolve()) and meta["input_shape"] == [32, 32, 3]


def _replaced_model(tmp_path: Path, tiny_run_dir: Path, classes: int, size: int) -> Path:
    """A copy of the tiny run whose model.keras was replaced by another model (metadata.json left as it was)."""
    from edgecls.models import create_model

    run = tmp_path / "v1"
    shutil.copytree(tiny_run_dir, run)
    create_model("simple", classes, (size, size, 3), widths=(4,)).save(run / "model.keras")
    return run


@pytest.mark.parametrize(("classes", "size", "said"), [(3, 24, r"input \(24, 24, 3\)"), (4, 32, "4 outputs")])
def test_a_parent_whose_model_file_was_replaced_is_refused_in_one_line(
    tmp_path, shapes_folder, tiny_run_dir, classes, size, said
):
    run = _replaced_model(tmp_path, tiny_run_dir, classes, size)
    error = cli_error(run_cli("train", "--init-from", run, "--data", shapes_folder, "--out", tmp_path / "v2"))
    assert re.search(said, error) and "metadata.json" in error and "model.keras" in error, error
    assert not (tmp_path / "v2").exists()


def test_a_run_is_never_replaced_by_its_own_child(tmp_path, shapes_folder, tiny_run_dir):
    parent = tmp_path / "v1"
    shutil.copytree(tiny_run_dir, parent)
    before = (parent / "model.keras").read_bytes()
    for out in (parent, parent / "child"):
        args = ("train", "--init-from", parent, "--data", shapes_folder, "--out", out, "--overwrite", "--epochs", "1")
        assert "its parent" in cli_error(run_cli(*args))
    assert (parent / "model.keras").read_bytes() == before and not (parent / "child").exists()


@pytest.mark.parametrize(
    "flags",
    [("--model", "mobilenetv2"), ("--head", "sigmoid", "--widths", "64"), ("--dropout", "0.2"), ("--l2", "0.001")],
)
def test_model_options_given_with_init_from_are_refused_naming_them(tmp_path, shapes_folder, tiny_run_dir, flags):
    args = (
        "train",
        "--init-from",
        tiny_run_dir,
        "--data",
        shapes_folder,
        "--out",
        tmp_path / "v2",
        "--epochs",
        "1",
        *flags,
    )
    error = cli_error(run_cli(*args))
    named = [f for f in flags if f.startswith("--")]
    assert all(f in error for f in named) and "--init-from" in error, error
    assert not (tmp_path / "v2").exists()


def test_a_dangling_symlink_in_one_data_folder_is_skipped_as_a_single_folder_skips_it(tmp_path, shapes_folder, capfd):
    captures = _captures(tmp_path / "captures", {"circle": ("circle", 4)})
    (captures / "circle" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (captures / "circle" / "loop.jpg").symlink_to(captures / "circle" / "loop.jpg")
    run = tmp_path / "merged"
    _train(run, (str(shapes_folder), str(captures)), None, image_size=16, model_options={"widths": (4,)})
    assert "2 unreadable file(s) left out" in capfd.readouterr().err
    assert sum(json.loads((run / "metadata.json").read_text())["dataset"]["counts"].values()) == 72 + 4


def test_a_builtin_among_several_data_gives_the_same_defaults_in_any_order(tmp_path, capfd):
    from edgecls.train import TrainConfig, _plan

    captures = _captures(tmp_path / "captures", {"0": ("circle", 3)})
    shapes = []
    for data in (("digits", str(captures)), (str(captures), "digits")):
        cfg, plan = _plan(TrainConfig(data=data, out=str(tmp_path / "run"), verbose=0), tmp_path / "run")
        shapes.append((plan.spec.shape, plan.model_options.get("widths"), plan.epochs))
        shutil.rmtree(plan.view)
    assert shapes[0] == shapes[1] == ((24, 24, 1), (16, 32, 64), shapes[0][2])
    assert "defaults of the built-in digits" in capfd.readouterr().err
