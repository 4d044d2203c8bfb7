"""edgecls.core.datasets: class-per-folder and pre-split layouts, built-in datasets, bad folders named by cause."""

import numpy as np
import pytest

from edgecls.core.data import load_split
from edgecls.core.datasets import scan_folder
from edgecls.core.datasets.builtin import materialize
from edgecls.runtime.errors import DataError
from edgecls.runtime.preprocess import PreprocessSpec
from tests.conftest import write_image
from tests.test_splits import _png


def _img(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)


def _folder(root, counts):
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(root / name / f"{i}.png", _img(i))
    return root


def test_seeded_split_is_stratified_and_reproducible(tmp_path):
    root = _folder(tmp_path / "d", {"a": 30, "b": 50})
    one, two = scan_folder(root, 0.1, 0.2, seed=3), scan_folder(root, 0.1, 0.2, seed=3)
    assert one.labels == ["a", "b"] and one.split_source == "seeded"
    assert [s.path for s in one.splits["test"]] == [s.path for s in two.splits["test"]]
    per_class = {n: np.bincount([s.label for s in one.splits[n]], minlength=2).tolist() for n in one.splits}
    assert per_class == {"train": [21, 35], "val": [3, 5], "test": [6, 10]}
    other = scan_folder(root, 0.1, 0.2, seed=4)
    assert {s.path for s in other.splits["test"]} != {s.path for s in one.splits["test"]}
    every = [s.path for n in one.splits for s in one.splits[n]]
    assert len(every) == len(set(every)) == 80


def test_train_val_test_subfolders_are_used_as_given(tmp_path):
    _folder(tmp_path / "train", {"cat": 6, "dog": 6})
    _folder(tmp_path / "test", {"cat": 2, "dog": 3})
    ds = scan_folder(tmp_path, 0.25, 0.2, seed=0)
    assert ds.split_source == "folders"
    assert len(ds.splits["test"]) == 5  # from test/
    assert len(ds.splits["val"]) == 4 and len(ds.splits["train"]) == 8  # val carved out of train/


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.mkdir(), "no class folders"),
        (lambda r: _folder(r, {"only": 3}), "single class"),
        (lambda r: (_folder(r, {"a": 3}), (r / "b").mkdir()), "b in .* have no images"),
        (lambda r: (r.parent.mkdir(exist_ok=True), r.write_text("x")), "is not a directory"),
    ],
)
def test_bad_dataset_folders_name_the_cause(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DataError, match=message):
        scan_folder(root)


def test_non_images_are_ignored_and_corrupt_images_skipped_with_a_count(tmp_path, capsys):
    root = _folder(tmp_path / "d", {"a": 4, "b": 4})
    (root / "a" / "README.txt").write_text("notes")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    ds = scan_folder(root, 0.0, 0.0)
    assert any("ignored 1 non-image" in n for n in ds.notes)
    loaded = load_split(ds.splits["train"], PreprocessSpec(8, 8), name="train")
    assert len(loaded.y) == 8 and len(loaded.skipped) == 1
    assert "skipped 1 unreadable image(s) in train" in capsys.readouterr().err


def test_digits_are_written_once_as_a_class_per_folder_directory(tmp_path):
    folder = materialize("digits", tmp_path)
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 1797
    assert sorted(p.name for p in folder.iterdir()) == [str(d) for d in range(10)]
    mtime = files[0].stat().st_mtime_ns
    assert materialize("digits", tmp_path) == folder and files[0].stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".*partial"))


def test_a_class_named_train_is_a_class_not_a_presplit_layout(tmp_path):
    root = _folder(tmp_path / "vehicles", {"bus": 5, "car": 5, "train": 5})
    ds = scan_folder(root, 0.2, 0.2, seed=0)
    assert ds.labels == ["bus", "car", "train"] and ds.split_source == "seeded"
    assert sum(len(s) for s in ds.splits.values()) == 15


def test_classes_named_like_splits_holding_images_are_classes(tmp_path):
    root = _folder(tmp_path / "d", {"train": 4, "test": 4})
    ds = scan_folder(root, 0.0, 0.25)
    assert ds.labels == ["test", "train"] and ds.split_source == "seeded"


def test_half_presplit_layout_is_refused_with_the_cause(tmp_path):
    _folder(tmp_path / "train", {"cat": 3, "dog": 3})
    _folder(tmp_path, {"test": 2})  # test/ holds images directly
    with pytest.raises(DataError, match="test/ holds images of its own"):
        scan_folder(tmp_path)


def test_a_bare_builtin_name_is_the_builtin_even_beside_a_folder_of_that_name(tmp_path, monkeypatch, capsys):
    from edgecls.core.datasets import resolve_dataset
    from edgecls.core.datasets.builtin import BUILTIN_DATASETS

    monkeypatch.chdir(tmp_path)
    _folder(tmp_path / "digits", {"x": 3, "y": 3})  # e.g. a run written with --out digits
    folder, builtin = resolve_dataset("digits")
    assert builtin is BUILTIN_DATASETS["digits"] and folder.name == "digits-v1" and folder.is_absolute()
    assert "write ./digits for the folder" in capsys.readouterr().err
    folder, builtin = resolve_dataset("./digits")  # written as a path: the folder
    assert builtin is None and scan_folder(folder).labels == ["x", "y"]


def test_a_class_folder_with_a_line_break_in_its_name_is_refused_when_scanned_for_training(tmp_path):
    _folder(tmp_path / "d", {"circ\nle": 3, "square": 3})
    with pytest.raises(DataError, match=r"class folder 'circ\\nle' in .* has a line break in its name"):
        scan_folder(tmp_path / "d")


def test_an_empty_split_folder_in_a_presplit_layout_is_an_empty_split(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png", hash((split, c, i)) % 1000)
    (tmp_path / "val").mkdir()  # made ahead of time; old code: "val/ holds images of its own"
    ds = scan_folder(tmp_path)
    assert ds.split_source == "folders" and ds.counts() == {"train": 8, "val": 0, "test": 4}


def test_a_train_folder_of_subfolders_beside_a_class_is_noted(tmp_path):
    for top, sub in (("train", "cat"), ("train", "dog"), ("zoo", "x")):
        for i in range(3):
            _png(tmp_path / top / sub / f"{i}.png", hash((top, sub, i)) % 1000)
    ds = scan_folder(tmp_path)
    assert ds.labels == ["train", "zoo"]
    assert any("train/ holds only subfolders (cat, dog) and is taken as one class beside zoo" in n for n in ds.notes)


def test_a_class_named_train_with_images_and_subfolders_stays_a_class(tmp_path):
    for top, names in (("bus", ["0.png", "1.png", "2.png"]), ("train", ["0.png", "1.png", "old/2.png"])):
        for i, name in enumerate(names):
            _png(tmp_path / top / name, hash((top, i)) % 1000)
    (tmp_path / "bus").rename(tmp_path / "test")  # test/ and train/ both hold images of their own: classes
    ds = scan_folder(tmp_path, 0.0, 0.0)
    assert ds.labels == ["test", "train"] and ds.split_source == "seeded" and len(ds.splits["train"]) == 6


def test_a_captured_frames_json_sidecar_is_not_counted_as_an_ignored_file(tmp_path):
    root = _folder(tmp_path / "d", {"a": 4, "b": 4})
    first = sorted((root / "a").iterdir())[0]
    first.with_suffix(".json").write_text('{"top1": "a"}')  # what edgecls run --capture and edgecls label leave
    (root / "b" / "orphan.json").write_text("{}")  # no image of that name: still a stray file
    ds = scan_folder(root, 0.0, 0.0)
    assert [n for n in ds.notes if "ignored" in n] == [
        "ignored 1 non-image file(s) (images are .jpg, .jpeg, .png, .bmp, .webp)"
    ]


@pytest.mark.parametrize(
    ("names", "first"),
    [({"caf\u00e9", "cafe\u0301"}, None), ({"Cat", "cat"}, None), ({"dog", "Cat"}, ["cat", "dog"])],
)
def test_merged_classes_differing_only_in_case_or_unicode_form_are_refused_naming_both(names, first):
    from edgecls.core.datasets.merged import merged_labels

    with pytest.raises(DataError, match=r"differ only in case or Unicode normalisation .*: rename") as excinfo:
        merged_labels(names, first)
    assert len(str(excinfo.value).splitlines()) == 1
    assert merged_labels({"cat", "dog", "bird"}, ["dog"]) == ["dog", "bird", "cat"]
