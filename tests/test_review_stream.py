"""Adversarial review of streaming (issue 10) and distillation wiring (issue 11).

Each test forces streaming (EDGECLS_IN_MEMORY_MB=0 / limit_mb=0) on a tiny set and holds it to what the
in-memory path does with the same hostile-but-valid input. Tests named `..._holds` checked something that
turned out right; the others failed on the reviewed code (commit 16e3619).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecls.core.data import (
    IN_MEMORY_ENV,
    StreamedSplit,
    check_file,
    in_memory_limit,
    iter_batches,
    load_split,
    make_tf_dataset,
    open_splits,
)
from edgecls.core.datasets import scan_folder
from edgecls.runtime.errors import DataError, EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec
from tests.conftest import render_fixture_image, write_image

KINDS = ("circle", "square", "triangle")


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


# --- defects ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["test", "val"])
def test_review_i10_p2_a_split_that_never_decodes_is_not_found_only_after_training(tmp_path, capsys, bad):
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


def test_review_i10_p2_a_tall_bmp_does_not_crash_a_streamed_epoch(tmp_path):
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


def test_review_i10_p2_a_tall_bmp_is_skipped_in_memory_too(tmp_path):
    """The in-memory twin of the test above: load_split skips undecodable files and counts them; this one
    escapes as cv2.error (a traceback from `edgecls train`, and from the device's decode_image)."""
    data = _dataset(tmp_path / "data", {"train": 2})
    _tall_bmp(data / "train" / "circle" / "tall.bmp")
    split = load_split(scan_folder(data / "train", 0.0, 0.0).splits["train"], PreprocessSpec.scaled(8, 8), name="train")
    assert len(split.y) == 6 and [Path(p).name for p, _ in split.skipped] == ["tall.bmp"]


def test_review_i10_p2_misnamed_formats_opencv_reads_are_used_the_same_streamed_and_in_memory(tmp_path):
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


def test_review_i10_p2_streamed_evaluate_reports_the_files_it_skipped(tiny_run_dir, tmp_path, monkeypatch, capsys):
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


def test_review_i10_p3_calibration_set_is_the_in_memory_one_once_the_split_was_decoded(tmp_path):
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


def test_review_i10_p1_a_nan_in_memory_limit_is_not_called_negative(monkeypatch):
    monkeypatch.setenv(IN_MEMORY_ENV, "nan")
    with pytest.raises(EdgeclsError) as excinfo:
        in_memory_limit()
    assert "negative" not in str(excinfo.value), str(excinfo.value)


# --- checked and held ---------------------------------------------------------------------------------


def test_review_i10_p2_header_check_accepts_odd_but_valid_files_holds(tmp_path):
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


def test_review_i10_p2_a_file_gone_between_scan_and_epoch_weighs_zero_holds(tmp_path):
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
def test_review_i10_p1_streamed_class_weights_and_sigmoid_heads_train_like_in_memory_holds(tmp_path):
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
def test_review_i11_p2_sigmoid_teacher_distils_a_softmax_student_streamed_like_in_memory_holds(tmp_path):
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
