"""edgecls.core.data streaming: datasets larger than memory train, evaluate and calibrate batch by batch like in memory.

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
    in_memory_limit,
    iter_batches,
    load_split,
    make_tf_dataset,
    open_splits,
)
from edgecls.core.datasets import scan_folder
from edgecls.runtime.errors import DataError, EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec, preprocess_file
from tests.conftest import cli_error, render_fixture_image, run_cli, write_image

KINDS = ("circle", "square", "triangle")
SPECS = [
    PreprocessSpec.scaled(24, 24, 1 / 255, 0.0),
    PreprocessSpec.scaled(20, 28, 1 / 127.5, -1.0, color="bgr", resize="letterbox"),
    PreprocessSpec(16, 16, color="gray", resize="center-crop", mean=(120,), std=(60,)),
]


@pytest.mark.parametrize("spec", SPECS)
def test_streamed_batches_are_the_runtime_tensors_bit_for_bit(shapes_folder, spec):
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


def test_streamed_shuffle_is_the_in_memory_shuffle(shapes_folder):
    """File indices get the seeded shuffle the in-memory tensors get: the same epochs, image for image."""
    spec = PreprocessSpec.scaled(12, 12)
    samples = scan_folder(shapes_folder, 0.0, 0.0).splits["train"]
    memory, streamed = load_split(samples, spec), open_splits({"train": samples}, spec, limit_mb=0)["train"]
    a, b = make_tf_dataset(memory, 8, True, seed=3), make_tf_dataset(streamed, 8, True, seed=3)
    for _ in range(2):  # two epochs: each reshuffles
        np.testing.assert_array_equal(
            np.concatenate([x.numpy() for x, _ in a]), np.concatenate([x.numpy() for x, _, _ in b])
        )


def test_the_in_memory_limit_decides_and_is_checked(shapes_folder, monkeypatch):
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
def test_a_streamed_run_is_the_in_memory_run(tiny_run_dir, tmp_path, monkeypatch, capsys):
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


def test_the_header_check_finds_bad_files_without_decoding(tmp_path):
    from tests.conftest import write_image

    good = write_image(tmp_path / "ok.jpg", np.full((20, 20, 3), 128, np.uint8))
    cut, text = tmp_path / "cut.jpg", tmp_path / "text.png"
    cut.write_bytes(good.read_bytes()[:-50])
    text.write_bytes(b"not an image")
    assert check_file(good) == (hashlib.sha256(good.read_bytes()).hexdigest(), None)
    assert check_file(cut)[1] == "the JPEG is truncated (no end-of-image marker)"
    assert check_file(text)[1] == "the file is corrupt, truncated or not an image"
    assert check_file(tmp_path / "gone.png")[1].startswith("unreadable")


def test_bad_files_in_a_streamed_dataset_are_counted_never_fatal(shapes_folder, tmp_path, capsys):
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


def test_files_only_another_worker_decoded_are_checked_before_the_run_is_recorded(shapes_folder, tmp_path, capsys):
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


def test_calibration_sets_and_test_batches_read_only_what_they_use(tiny_run_dir, monkeypatch):
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
def test_convert_streams_and_gives_the_in_memory_bundle(tiny_run_dir, tiny_bundle, tmp_path, monkeypatch, capsys):
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


def test_long_passes_over_files_say_how_far_they_are(capsys):
    from edgecls.core.progress import counted

    assert list(counted(range(3), 3, "hashing", every=0)) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["hashing: 1/3 files", "hashing: 2/3 files"] and lines[2].startswith("hashing: 3/3 files in ")
    assert list(counted(range(3), 3, "hashing")) == [0, 1, 2] and capsys.readouterr().err == ""  # quick: silent


def test_a_bad_in_memory_limit_is_one_error_line(shapes_folder, tmp_path):
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


def _dataset(root: Path, splits: dict, kinds=KINDS, seed: int = 0) -> Path:
    """root/<split>/<class>/NNN.png: explicit split folders, so a test decides what lands in val or test."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for kind in kinds:
            for i in range(n):
                write_image(root / split / kind / f"{i:03d}.png", render_fixture_image(kind, rng, 32))
    return root


def _cut_in_half(path: Path) -> None:
    """A PNG whose signature and IHDR are fine (the header check passes) but whose pixels are cut off."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("bad", ["test", "val"])
def test_a_streamed_split_that_never_decodes_is_not_found_only_after_training(tmp_path, capsys, bad):
    """Every file of the test (or val) split passes the header check but fails to decode.

    In memory: refused before training, naming the cause. Streamed (reviewed code): the whole training runs
    (for val: the kept epoch is chosen on a val_loss over zero-weight images), then evaluation raises
    "no readable images in the test split" with no cause and no `skipped` line, and the run is discarded.
    Either refuse before training with the cause, or keep the run (evaluate on what is readable)."""
    from edgecls.train import TrainConfig, train

    data = _dataset(tmp_path / "data", {"train": 6, "val": 2, "test": 2})
    for path in (data / bad).rglob("*.png"):
        _cut_in_half(path)
    out = tmp_path / "run"
    try:
        train(
            TrainConfig(
                data=str(data),
                out=str(out),
                image_size=16,
                epochs=1,
                seed=0,
                model_options={"widths": (4,)},
                in_memory_mb=0,
                verbose=0,
            )
        )
    except DataError as exc:
        err = capsys.readouterr().err
        assert "training simple" not in err, "refused only after a whole training"
        assert "corrupt, truncated or not an image" in str(exc), str(exc)  # the cause, as the in-memory path says
    else:
        meta = json.loads((out / "metadata.json").read_text())
        assert meta["dataset"]["skipped"] == 6 and bad not in meta["dataset"]["counts"]


def _tall_bmp(path: Path, height: int = 1_100_000) -> Path:
    """A valid 24-bit BMP one pixel wide and `height` tall (4.4 MB): 1.1 Mpx, far under the pixel limit, but
    taller than OpenCV's CV_IO_MAX_IMAGE_HEIGHT (2**20), where cv2.imdecode raises cv2.error instead of
    returning None."""
    import struct

    row = 4  # 3 bytes of BGR padded to 4
    header = struct.pack("<2sIHHI", b"BM", 54 + row * height, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, 1, height, 1, 24, 0, row * height, 2835, 2835, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + info + b"\x40\x80\xc0\x00" * height)
    return path


def test_a_tall_bmp_does_not_crash_a_streamed_epoch(tmp_path):
    """Issue 10 point 2: never a crash mid-epoch. A BMP taller than OpenCV's CV_IO_MAX_IMAGE_HEIGHT (2**20, 1.1 Mpx
    so under the pixel limit) made cv2.imdecode raise cv2.error, which escaped decode_image and failed the tf.data
    map with UnknownError in the middle of the epoch. The header check now refuses the declared side; and a file
    that turns into such a BMP after the check (the cv2.error path itself) weighs 0 and is reported."""
    data = _dataset(tmp_path / "data", {"train": 2})
    tall = _tall_bmp(data / "train" / "circle" / "tall.bmp")
    split = open_splits(
        {"train": scan_folder(data / "train", 0.0, 0.0).splits["train"]}, PreprocessSpec.scaled(8, 8), limit_mb=0
    )["train"]
    assert len(split) == 6 and [Path(p).name for p, _ in split.skipped] == ["tall.bmp"]
    assert "pixels per side" in split.skipped[0][1]

    tall.unlink()
    good = sorted((data / "train" / "circle").glob("*.png"))[0]
    split = open_splits(
        {"train": scan_folder(data / "train", 0.0, 0.0).splits["train"]}, PreprocessSpec.scaled(8, 8), limit_mb=0
    )["train"]
    assert len(split) == 6
    good.unlink()
    _tall_bmp(good)  # replaced after the header check: only decoding meets it (cv2.imdecode raises)
    weights = np.concatenate([b[2].numpy() for b in make_tf_dataset(split, 4, False, 0)])
    assert weights.tolist().count(0.0) == 1
    assert [Path(p).name for p, _ in split.skipped] == [good.name]


def test_a_tall_bmp_is_skipped_in_memory_too(tmp_path):
    """The in-memory twin of the test above: load_split skips undecodable files and counts them; this one
    escapes as cv2.error (a traceback from `edgecls train`, and from the device's decode_image)."""
    data = _dataset(tmp_path / "data", {"train": 2})
    _tall_bmp(data / "train" / "circle" / "tall.bmp")
    split = load_split(scan_folder(data / "train", 0.0, 0.0).splits["train"], PreprocessSpec.scaled(8, 8), name="train")
    assert len(split.y) == 6 and [Path(p).name for p, _ in split.skipped] == ["tall.bmp"]


def test_misnamed_formats_opencv_reads_are_used_the_same_streamed_and_in_memory(tmp_path):
    """A GIF saved as .jpg and a TIFF saved as .png (common in scraped photo sets). edgecls.runtime.preprocess decodes
    both (OpenCV sniffs the content), so the in-memory path trains on them and the device classifies them;
    the streaming header check only knows PNG/JPEG/BMP/WebP signatures and skips them. Which images a run
    trains on must not depend on the dataset's size (EDGECLS_IN_MEMORY_MB)."""
    import cv2

    data = _dataset(tmp_path / "data", {"train": 2})
    image = render_fixture_image("circle", np.random.default_rng(5), 32)
    (data / "train" / "circle" / "gif.jpg").write_bytes(cv2.imencode(".gif", image)[1].tobytes())
    (data / "train" / "circle" / "tiff.png").write_bytes(cv2.imencode(".tiff", image)[1].tobytes())
    samples = scan_folder(data / "train", 0.0, 0.0).splits["train"]
    spec = PreprocessSpec.scaled(8, 8)
    memory = load_split(samples, spec, name="train")
    assert len(memory.y) == 8  # both decode in memory
    streamed = open_splits({"train": samples}, spec, limit_mb=0)["train"]
    assert streamed.paths == memory.paths, [p for p, _ in streamed.skipped]


def test_streamed_evaluate_reports_the_files_it_skipped(tiny_run_dir, tmp_path, monkeypatch, capsys):
    """`evaluate RUN --data OTHER` on a folder with one undecodable file (header fine) and two of the run's own
    training images. In memory: one `skipped 1 unreadable image(s)` line and "2 of the 10 images". Streamed
    (reviewed code): the file is dropped silently and the overlap line says "2 of the 11 images" (it counts
    the file that was never evaluated)."""
    from edgecls.evaluate import evaluate_run

    other = _dataset(tmp_path / "other", {"x": 3}) / "x"
    _cut_in_half(other / "circle" / "000.png")
    record = json.loads((tiny_run_dir / "split.json").read_text())
    source = Path(json.loads((tiny_run_dir / "metadata.json").read_text())["dataset"]["source"])
    for rel, _, _ in record["splits"]["train"][:2]:
        shutil.copy(source / rel, other / Path(rel).parent.name / f"copy_{Path(rel).name}")

    results = {}
    for mb in ("256", "0"):
        monkeypatch.setenv(IN_MEMORY_ENV, mb)
        capsys.readouterr()
        metrics = evaluate_run(tiny_run_dir, str(other))
        err = capsys.readouterr().err
        results[mb] = metrics["confusion_matrix"]
        assert "skipped 1 unreadable image(s)" in err and "000.png" in err, (mb, err)
        assert "2 of the 10 images" in err, (mb, err)
    assert results["0"] == results["256"]


def test_calibration_set_is_the_in_memory_one_once_the_split_was_decoded(tmp_path):
    """CalibrationSampler draws the images `representative_set(split.x)` takes on the split loaded in memory
    once the files that do not decode are known: in a run's recorded split (training decoded every file and
    left those out) and after any full pass. Before that, a cut-off file the draw does not meet still counts
    (documented in its docstring: knowing would take the whole pass it avoids)."""
    from edgecls.converters.calibration import CalibrationSampler, fingerprint, representative_set

    data = _dataset(tmp_path / "data", {"train": 6})
    samples = scan_folder(data / "train", 0.0, 0.0).splits["train"]
    _cut_in_half(samples[-1].path)
    spec = PreprocessSpec.scaled(16, 16)
    memory = load_split(samples, spec, name="train")
    streamed = open_splits({"train": samples}, spec, limit_mb=0)["train"]
    streamed.check_unseen()  # what training does before it records the run
    drawn = CalibrationSampler(streamed, seed=0).draw(5)
    assert len(streamed) == len(memory.y) == len(samples) - 1
    assert fingerprint(drawn) == fingerprint(representative_set(memory.x, 5, 0))


def test_a_nan_in_memory_limit_is_not_called_negative(monkeypatch):
    monkeypatch.setenv(IN_MEMORY_ENV, "nan")
    with pytest.raises(EdgeclsError) as excinfo:
        in_memory_limit()
    assert "negative" not in str(excinfo.value), str(excinfo.value)


def test_header_check_accepts_odd_but_valid_files(tmp_path):
    """Trailing bytes after a JPEG's end marker and a 1x20000 strip are images (accepted, and decoded the same
    streamed as in memory); an empty file and a decompression-bomb header are refused before decoding."""
    c = tmp_path / "d" / "c"
    good = write_image(c / "a.jpg", np.full((20, 20, 3), 100, np.uint8))
    (c / "trailing.jpg").write_bytes(good.read_bytes() + b"\x00motion-photo" * 50)
    write_image(c / "strip.png", np.full((1, 20000, 3), 50, np.uint8))
    (c / "empty.png").write_bytes(b"")
    png = bytearray(write_image(tmp_path / "tmp.png", np.zeros((4, 4, 3), np.uint8)).read_bytes())
    png[16:24] = (100000).to_bytes(4, "big") * 2
    (c / "bomb.png").write_bytes(bytes(png))

    assert check_file(c / "trailing.jpg")[1] is None
    assert check_file(c / "strip.png")[1] is None
    assert check_file(c / "empty.png")[1] == "the file is corrupt, truncated or not an image"
    assert "declares 100000x100000 pixels" in check_file(c / "bomb.png")[1]

    samples = scan_folder(tmp_path / "d", 0.0, 0.0, min_classes=1).splits["train"]
    spec = PreprocessSpec.scaled(16, 16)
    memory = load_split(samples, spec, name="train")
    streamed = open_splits({"train": samples}, spec, limit_mb=0)["train"]
    x = np.concatenate([b[0] for b in iter_batches(streamed, 2)])
    assert sorted(Path(p).name for p in streamed.paths) == ["a.jpg", "strip.png", "trailing.jpg"]
    assert streamed.paths == memory.paths
    np.testing.assert_array_equal(x, memory.x)


def test_a_file_gone_between_scan_and_epoch_weighs_zero(tmp_path):
    """A file deleted and replaced by a folder after the header check: the epoch goes on, the file weighs 0
    and is recorded as skipped; evaluation batches leave it out."""
    data = _dataset(tmp_path / "data", {"train": 3})
    split = open_splits(
        {"train": scan_folder(data / "train", 0.0, 0.0).splits["train"]}, PreprocessSpec.scaled(8, 8), limit_mb=0
    )["train"]
    assert isinstance(split, StreamedSplit)
    victim = split.samples[4].path
    victim.unlink()
    victim.mkdir()
    weights = np.concatenate([b[2].numpy() for b in make_tf_dataset(split, 4, False, 0)])
    assert weights.tolist() == [1.0] * 4 + [0.0] + [1.0] * 4
    assert [p for p, _ in split.skipped] == [str(victim)]
    assert sum(len(b[0]) for b in iter_batches(split, 4)) == 8 == len(split.y)


@pytest.mark.slow
def test_streamed_class_weights_and_sigmoid_heads_train_like_in_memory(tmp_path):
    """Class weights fold into the streamed dataset's sample weights, and a two-class (sigmoid) head's float
    targets come through the index pipeline: the same history as in memory, epoch for epoch."""
    from edgecls.train import TrainConfig, train

    for kinds in (KINDS, KINDS[:2]):
        data = _dataset(tmp_path / f"data{len(kinds)}", {"train": 10, "val": 3, "test": 3}, kinds)
        for path in sorted((data / "train" / "square").glob("*.png"))[3:]:
            path.unlink()  # imbalanced: balanced class weights are not 1
        runs = [
            train(
                TrainConfig(
                    data=str(data),
                    out=str(tmp_path / f"r{len(kinds)}-{mb}"),
                    image_size=16,
                    epochs=2,
                    batch_size=8,
                    seed=0,
                    class_weight="balanced",
                    model_options={"widths": (4,)},
                    in_memory_mb=mb,
                    verbose=0,
                )
            )
            for mb in (None, 0)
        ]
        assert runs[0].history == runs[1].history
        assert runs[0].metrics["confusion_matrix"] == runs[1].metrics["confusion_matrix"]


@pytest.mark.slow
def test_sigmoid_teacher_distils_a_softmax_student_streamed_like_in_memory(tmp_path):
    """A two-class teacher with a sigmoid head teaches a softmax student: accepted, and streamed (weighted
    batches through the Distiller's loss) gives the in-memory history."""
    from edgecls.train import TrainConfig, train

    data = _dataset(tmp_path / "data", {"train": 8, "val": 2, "test": 3}, KINDS[:2])
    common = dict(data=str(data), image_size=16, epochs=2, seed=0, verbose=0)
    train(TrainConfig(out=str(tmp_path / "teacher"), model_options={"widths": (8,)}, **common))
    assert json.loads((tmp_path / "teacher" / "metadata.json").read_text())["head"] == "sigmoid"
    runs = [
        train(
            TrainConfig(
                out=str(tmp_path / f"s{mb}"),
                head="softmax",
                model_options={"widths": (4,)},
                teacher=str(tmp_path / "teacher"),
                in_memory_mb=mb,
                **common,
            )
        )
        for mb in (None, 0)
    ]
    assert runs[0].history == runs[1].history
    meta = json.loads((tmp_path / "s0" / "metadata.json").read_text())
    assert meta["head"] == "softmax" and meta["teacher"]["head"] == "sigmoid"
