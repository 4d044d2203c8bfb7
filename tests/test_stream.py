"""Streaming input (issue 10): datasets larger than memory train, evaluate and calibrate batch by batch.

Above the in-memory limit (EDGECLS_IN_MEMORY_MB, 0 here to force it on tiny sets) a split is a
StreamedSplit: file list in memory, pixels decoded per batch by edgecls.runtime.preprocess. These tests check it
gives the same tensors, order, run records and calibration sets as the in-memory path.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecls.core.data import (
    IN_MEMORY_ENV,
    LoadedSplit,
    StreamedSplit,
    check_file,
    fingerprint,
    iter_batches,
    load_split,
    make_tf_dataset,
    open_splits,
)
from edgecls.core.datasets import scan_folder
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec, preprocess_file
from tests.conftest import cli_error, run_cli

SPECS = [
    PreprocessSpec.scaled(24, 24, 1 / 255, 0.0),
    PreprocessSpec.scaled(20, 28, 1 / 127.5, -1.0, color="bgr", resize="letterbox"),
    PreprocessSpec(16, 16, color="gray", resize="center-crop", mean=(120,), std=(60,)),
]


@pytest.mark.parametrize("spec", SPECS)
def test_i10_p1_streamed_batches_are_the_runtime_tensors_bit_for_bit(shapes_folder, spec):
    samples = scan_folder(shapes_folder, 0.0, 0.0).splits["train"]
    split = open_splits({"train": samples}, spec, limit_mb=0)["train"]
    assert isinstance(split, StreamedSplit) and len(split.paths) == 72  # png, jpg, bmp and webp
    expected = np.stack([preprocess_file(p, spec) for p in split.paths])

    # what model.fit gets (no shuffling, no augmentation): tensors, labels, weight 1 for every file
    batches = list(make_tf_dataset(split, 16, shuffle=False, seed=0))
    x = np.concatenate([b[0].numpy() for b in batches])
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), split.y)
    assert np.concatenate([b[2].numpy() for b in batches]).tolist() == [1.0] * 72

    # and what evaluation and convert read, batch by batch
    got = list(iter_batches(split, 10))
    assert [len(b[0]) for b in got] == [10] * 7 + [2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), expected)
    assert sum((b[2] for b in got), []) == split.paths


def test_i10_p1_streamed_shuffle_is_the_in_memory_shuffle(shapes_folder):
    """File indices get the seeded shuffle the in-memory tensors get: the same epochs, image for image."""
    spec = PreprocessSpec.scaled(12, 12)
    samples = scan_folder(shapes_folder, 0.0, 0.0).splits["train"]
    memory, streamed = load_split(samples, spec), open_splits({"train": samples}, spec, limit_mb=0)["train"]
    a, b = make_tf_dataset(memory, 8, True, seed=3), make_tf_dataset(streamed, 8, True, seed=3)
    for _ in range(2):  # two epochs: each reshuffles
        np.testing.assert_array_equal(
            np.concatenate([x.numpy() for x, _ in a]), np.concatenate([x.numpy() for x, _, _ in b])
        )


def test_i10_p1_the_in_memory_limit_decides_and_is_checked(shapes_folder, monkeypatch):
    spec = PreprocessSpec.scaled(16, 16)  # 3 KB per image as float32: 72 images are 221 KB
    samples = {"train": scan_folder(shapes_folder, 0.0, 0.0).splits["train"]}
    assert isinstance(open_splits(samples, spec, limit_mb=0.3)["train"], LoadedSplit)
    assert isinstance(open_splits(samples, spec, limit_mb=0.2)["train"], StreamedSplit)
    monkeypatch.setenv(IN_MEMORY_ENV, "0")
    assert isinstance(open_splits(samples, spec)["train"], StreamedSplit)
    monkeypatch.setenv(IN_MEMORY_ENV, "lots")
    with pytest.raises(EdgeclsError, match="EDGECLS_IN_MEMORY_MB='lots' is not a number"):
        open_splits(samples, spec)
    monkeypatch.delenv(IN_MEMORY_ENV)
    assert isinstance(open_splits(samples, spec)["train"], LoadedSplit)  # the default, 256 MB


def _config_of(run: Path, out: Path):
    """The TrainConfig a run was trained with (from its metadata), writing to `out`."""
    from edgecls.core.augment import AugmentSpec
    from edgecls.train import TrainConfig

    meta = json.loads((run / "metadata.json").read_text())
    train, options = meta["train"], dict(meta["model"]["options"])
    if "widths" in options:
        options["widths"] = tuple(options["widths"])
    return TrainConfig(
        data=meta["dataset"]["source"],
        out=str(out),
        model=meta["model"]["name"],
        model_options=options,
        image_size=meta["input_shape"][0],
        epochs=train["epochs"],
        batch_size=train["batch_size"],
        seed=meta["seed"],
        augment=AugmentSpec(**meta["augment"]),
        verbose=0,
    )


def _fingerprint_from_bytes(root: Path, run: Path) -> str:
    """The dataset fingerprint as edgecls has always computed it, from the files' own bytes."""
    record = json.loads((run / "split.json").read_text())
    h = hashlib.sha256("\n".join(record["labels"]).encode())
    for name in sorted(record["splits"]):
        lines = sorted(
            (hashlib.sha256((root / p).read_bytes()).hexdigest(), label) for p, _, label in record["splits"][name]
        )
        for digest, label in lines:
            h.update(f"{name}:{label}:{digest}\n".encode())
    return h.hexdigest()


@pytest.mark.slow
def test_i10_p1_a_streamed_run_is_the_in_memory_run(tiny_run_dir, tmp_path, monkeypatch, capsys):
    """Forced to stream, the tiny run trains to the same history, accuracy (above chance), split and fingerprint."""
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run
    from edgecls.train import train

    monkeypatch.setenv(IN_MEMORY_ENV, "0")
    out = tmp_path / "streamed"
    result = train(_config_of(tiny_run_dir, out))
    assert "streaming 72 images from disk" in capsys.readouterr().err
    old, new = (json.loads((d / "metadata.json").read_text()) for d in (tiny_run_dir, out))
    assert new["dataset"]["fingerprint"] == old["dataset"]["fingerprint"]
    assert new["dataset"]["fingerprint"] == _fingerprint_from_bytes(Path(new["dataset"]["source"]), out)
    assert (out / "split.json").read_text() == (tiny_run_dir / "split.json").read_text()
    assert json.loads((out / "history.json").read_text()) == json.loads((tiny_run_dir / "history.json").read_text())
    metrics = json.loads((tiny_run_dir / "metrics.json").read_text())
    assert result.metrics["test_accuracy"] == metrics["test_accuracy"] > 0.6  # chance is 1/3
    assert result.metrics["confusion_matrix"] == metrics["confusion_matrix"]

    # A run from before split.json: its split recomputed and streamed, its fingerprint still matches (no warning).
    (out / "split.json").unlink()
    splits = load_run_splits(open_run(out), stream=True)
    assert all(isinstance(s, StreamedSplit) for s in splits.values())
    assert "fingerprint differs" not in capsys.readouterr().err
    assert fingerprint(new["labels"], splits) == old["dataset"]["fingerprint"]


def _bad_files(root: Path) -> dict:
    """A truncated JPEG, a text file named .png (both caught by the header check), and a truncated PNG
    whose header is fine (only decoding finds it)."""
    jpeg = next(root.rglob("*.jpg"))
    png = next(root.rglob("*.png"))
    bad = {
        "circle/cut.jpg": jpeg.read_bytes()[:-200],
        "square/notes.png": b"shopping list\n",
        "triangle/half.png": png.read_bytes()[: png.stat().st_size // 2],
    }
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    return bad


def test_i10_p2_the_header_check_finds_bad_files_without_decoding(tmp_path):
    from tests.conftest import write_image

    good = write_image(tmp_path / "ok.jpg", np.full((20, 20, 3), 128, np.uint8))
    cut, text = tmp_path / "cut.jpg", tmp_path / "text.png"
    cut.write_bytes(good.read_bytes()[:-50])
    text.write_bytes(b"not an image")
    assert check_file(good) == (hashlib.sha256(good.read_bytes()).hexdigest(), None)
    assert check_file(cut)[1] == "the JPEG is truncated (no end-of-image marker)"
    assert check_file(text)[1] == "the file is corrupt, truncated or not an image"
    assert check_file(tmp_path / "gone.png")[1].startswith("unreadable")


def test_i10_p2_bad_files_in_a_streamed_dataset_are_counted_never_fatal(shapes_folder, tmp_path, capsys):
    from edgecls.train import TrainConfig, train

    data = tmp_path / "data"
    shutil.copytree(shapes_folder, data)
    _bad_files(data)
    out = tmp_path / "run"
    train(
        TrainConfig(
            data=str(data),
            out=str(out),
            image_size=16,
            epochs=1,
            seed=0,
            model_options={"widths": (8,)},
            val_fraction=0.0,
            test_fraction=0.0,
            in_memory_mb=0,
            verbose=0,
        )
    )
    err = capsys.readouterr().err
    before, during = err.split("training simple")
    assert "warning: skipped 2 unreadable image(s) in train (first: " in before  # the header check, before training
    assert "circle/cut.jpg: the JPEG is truncated" in before
    assert "warning: skipped 1 unreadable image(s) in train during epoch 1 (first: " in during
    assert "half.png: the file is corrupt, truncated or not an image" in during

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["dataset"]["skipped"] == 3 and meta["dataset"]["counts"] == {"train": 72}
    record = json.loads((out / "split.json").read_text())
    assert record["skipped"] == ["circle/cut.jpg", "square/notes.png", "triangle/half.png"]
    # the fingerprint of what an in-memory load would have used (it skips the same three files)
    memory = load_split(scan_folder(data, 0.0, 0.0).splits["train"], PreprocessSpec.scaled(16, 16), name="train")
    assert meta["dataset"]["fingerprint"] == fingerprint(meta["labels"], {"train": memory})


def test_i10_p4_files_only_another_worker_decoded_are_checked_before_the_run_is_recorded(
    shapes_folder, tmp_path, capsys
):
    """A multi-worker chief decodes only its shard of the training files; before it writes split.json and the
    fingerprint, the files it never decoded are decoded once, so a bad one in the other shard is skipped too."""
    data = tmp_path / "data"
    shutil.copytree(shapes_folder, data)
    bad = _bad_files(data)
    split = open_splits(
        {"train": scan_folder(data, 0.0, 0.0).splits["train"]}, PreprocessSpec.scaled(8, 8), limit_mb=0
    )["train"]
    assert len(split.skipped) == 2  # the header check's
    capsys.readouterr()
    elsewhere = next(int(i) for i in split.readable() if split.samples[i].path.name == "half.png")
    for i in split.readable():  # this worker's epochs: every file but the one only the other worker read
        if i != elsewhere:
            split.tensor(int(i))
    assert len(split.skipped) == 2 and len(split.y) == 73
    split.check_unseen()
    split.report_new()
    assert [Path(p).relative_to(data).as_posix() for p, _ in split.skipped] == sorted(bad)
    assert len(split.y) == len(split.digests) == len(split.paths) == 72
    assert "skipped 1 unreadable image(s) in train (first: " in capsys.readouterr().err


def test_i10_p3_calibration_sets_and_test_batches_read_only_what_they_use(tiny_run_dir, monkeypatch):
    from edgecls.converters.calibration import CalibrationSampler, representative_set
    from edgecls.converters.calibration import fingerprint as calibration_fingerprint
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run

    run = open_run(tiny_run_dir)
    memory = load_run_splits(run, ("train", "test"))
    monkeypatch.setenv(IN_MEMORY_ENV, "0")
    streamed = load_run_splits(run, ("train", "test"), stream=True)
    train = streamed["train"]
    assert isinstance(train, StreamedSplit) and not train._decoded.any()

    sampler = CalibrationSampler(train, seed=0)
    assert len(sampler) == len(memory["train"].y)
    drawn = sampler.draw(8)
    assert int(train._decoded.sum()) == 8  # only the drawn files were decoded
    assert calibration_fingerprint(drawn) == calibration_fingerprint(representative_set(memory["train"].x, 8, 0))
    assert calibration_fingerprint(sampler.draw(1000)) == calibration_fingerprint(memory["train"].x)  # all, if fewer

    x, y, paths = (
        np.concatenate(part) if i < 2 else sum(part, [])
        for i, part in enumerate(zip(*iter_batches(streamed["test"], 4)))
    )
    np.testing.assert_array_equal(x, memory["test"].x)
    assert y.tolist() == memory["test"].y.tolist() and paths == memory["test"].paths


@pytest.mark.slow
def test_i10_p3_convert_streams_and_gives_the_in_memory_bundle(
    tiny_run_dir, tiny_bundle, tmp_path, monkeypatch, capsys
):
    """Needs converters/pipeline.py to read the run's data with load_run_splits(stream=True) (issue 10 point 3)."""
    from edgecls.converters.formats import FORMATS
    from edgecls.converters.pipeline import ConvertOptions, convert

    monkeypatch.setenv(IN_MEMORY_ENV, "0")
    result = convert(
        tiny_run_dir,
        tmp_path / "b",
        ConvertOptions(formats=[FORMATS["tflite-int8"]], calibration_size=32, max_drop=100.0),
    )
    assert "streaming" in capsys.readouterr().err
    before = json.loads((tiny_bundle / "manifest.json").read_text())
    assert result.manifest["calibration"]["fingerprint"] == before["calibration"]["fingerprint"]
    [art] = result.manifest["artifacts"]
    old = next(a for a in before["artifacts"] if a["name"] == "tflite-int8")
    assert (art["accuracy"], art["agreement"], art["sha256"]) == (old["accuracy"], old["agreement"], old["sha256"])
    assert result.manifest["checks"] == before["checks"]


def test_i10_p5_long_passes_over_files_say_how_far_they_are(capsys):
    from edgecls.core.progress import counted

    assert list(counted(range(3), 3, "hashing", every=0)) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["hashing: 1/3 files", "hashing: 2/3 files"] and lines[2].startswith("hashing: 3/3 files in ")
    assert list(counted(range(3), 3, "hashing")) == [0, 1, 2] and capsys.readouterr().err == ""  # quick: silent


def test_i10_p1_a_bad_in_memory_limit_is_one_error_line(shapes_folder, tmp_path):
    result = run_cli("train", "--data", shapes_folder, "--out", tmp_path / "r", env={IN_MEMORY_ENV: "-1"})
    assert "in-memory limit" in cli_error(result)


def test_a_streamed_file_replaced_by_another_valid_image_between_passes_is_dropped_not_decoded(shapes_folder, tmp_path):
    """Convert's Keras pass and each artifact's pass must judge the same pictures: each pass checks the bytes."""
    data = tmp_path / "data"
    shutil.copytree(shapes_folder, data)
    samples = scan_folder(data, 0.0, 0.0).splits["train"][:12]
    split = open_splits({"test": samples}, SPECS[0], limit_mb=0)["test"]
    first = sum((paths for _, _, paths in iter_batches(split, 5)), [])
    assert first == [str(s.path) for s in samples]
    victim, other = Path(first[3]), Path(first[-1])
    victim.write_bytes(other.read_bytes())  # still a valid image, of another class maybe: not the one hashed
    second = sum((paths for _, _, paths in iter_batches(split, 5)), [])
    assert second == first[:3] + first[4:]
    assert split.skipped == [(str(victim), "changed since it was hashed (its sha256 differs)")]
    assert str(victim) not in split.paths and len(split.y) == 11
