"""`edgecls train` / `evaluate` end to end on tiny data, through the real CLI."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import cli_error, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--epochs", "2", "--image-size", "32", "--widths", "8,16", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shapes_folder):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_cli("train", "--data", shapes_folder, "--out", out, "--seed", "1", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_train_writes_a_complete_run_directory(tiny_run, shapes_folder):
    out, result = tiny_run
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png",
        "curves.png",
        "history.json",
        "metadata.json",
        "metrics.json",
        "model.keras",
        "split.json",
    ]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["labels"] == ["circle", "square", "triangle"]
    assert meta["input_shape"] == [32, 32, 3]
    assert meta["preprocess"]["color"] == "rgb" and meta["preprocess"]["std"] == [255.0]
    assert meta["seed"] == 1 and len(meta["dataset"]["fingerprint"]) == 64
    assert meta["dataset"]["counts"] == {"train": 51, "val": 6, "test": 15}
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    assert np.asarray(metrics["confusion_matrix"]).sum() == 15
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 2 and len(history["val_accuracy"]) == 2
    for png in ("curves.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert "precision" in result.stdout and "test_accuracy" in result.stdout
    assert "epoch 1/2 - " in result.stdout and "epoch 2/2 - " in result.stdout  # --quiet: one line per epoch
    assert not list(out.parent.glob(".*partial"))


def test_evaluate_recomputes_the_same_test_accuracy(tiny_run):
    out, _ = tiny_run
    before = json.loads((out / "metrics.json").read_text())
    result = run_cli("evaluate", out, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 15
    assert metrics["test_accuracy"] == pytest.approx(before["test_accuracy"])
    assert metrics["confusion_matrix"] == before["confusion_matrix"]


def test_same_seed_gives_the_same_split_and_model_outputs(tiny_run, shapes_folder, tmp_path):
    out, _ = tiny_run
    again = tmp_path / "again"
    result = run_cli("train", "--data", shapes_folder, "--out", again, "--seed", "1", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = (json.loads((d / "metadata.json").read_text())["dataset"] for d in (out, again))
    assert a["fingerprint"] == b["fingerprint"]
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (out, again))
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-3)


def test_two_classes_get_a_sigmoid_head_mirrored_strategy_and_tensorboard_logs(tmp_path, shapes_folder):
    import shutil

    data = tmp_path / "two"
    for name in ("circle", "square"):
        shutil.copytree(shapes_folder / name, data / name)
    out = tmp_path / "binary"
    result = run_cli("train", "--data", data, "--out", out, "--strategy", "mirrored", "--tensorboard", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metadata.json").read_text())["head"] == "sigmoid"
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    import keras

    model = keras.models.load_model(out / "model.keras", compile=False)
    assert model.output_shape == (None, 1)


def test_mobilenetv2_transfer_learning_from_a_local_weights_file(tmp_path, shapes_folder):
    import keras

    weights = tmp_path / "backbone.weights.h5"
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None).save_weights(
        weights
    )
    out = tmp_path / "mnv2"
    result = run_cli(
        "train",
        "--data",
        shapes_folder,
        "--out",
        out,
        "--model",
        "mobilenetv2",
        "--alpha",
        "0.35",
        "--weights",
        weights,
        "--fine-tune-layers",
        "10",
        "--fine-tune-epochs",
        "1",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fine-tuning the top" in result.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["preprocess"]["mean"] == [127.5] and meta["preprocess"]["std"] == [127.5]
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/no/such/folder"], "does not exist"),
        (["--data", "{single}"], "single class"),
        (["--data", "{shapes}", "--image-size", "8", "--widths", "8,16,32,64"], "too small for 4 pooling blocks"),
        (["--data", "{shapes}", "--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["--data", "{shapes}", "--out", "{existing}"], "already exists"),
        (["--data", "{shapes}", "--strategy", "multiworker"], "TF_CONFIG"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, shapes_folder, args, message):
    single = tmp_path / "single" / "only"
    single.mkdir(parents=True)
    (single / "a.png").write_bytes((shapes_folder / "circle" / "000.png").read_bytes())
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    subst = {"{single}": single.parent, "{shapes}": shapes_folder, "{existing}": existing}
    args = [str(subst.get(a, a)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = run_cli("train", *args, "--epochs", "1")
    assert message in cli_error(result)
    assert (existing / "keep.txt").read_text() == "user data"
    assert not (tmp_path / "out").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "train", "--data", tmp_path / "nothing", "--out", tmp_path / "o")
    assert result.returncode != 0 and "Traceback" in result.stderr


# What TensorFlow's C++ side prints at start-up when nothing keeps it quiet (issue 14): absl's
# pre-init warning, oneDNN's and the CPU feature guard's notes, the CUDA probe, and its glog lines.
TF_STARTUP = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|cuda drivers|cpu_feature_guard|This TensorFlow binary is optimized"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered"
    r"|^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.cc:\d+\]"
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] (tensorflow|external|xla)/",
    re.MULTILINE,
)


def test_train_on_digits_prints_no_tensorflow_startup_lines(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith(("TF_CPP", "ABSL"))]:
        monkeypatch.delenv(name)  # TensorFlow's own defaults, as a user's shell has them
    result = run_cli(
        "train",
        "--data",
        "digits",
        "--out",
        tmp_path / "run",
        "--image-size",
        "8",
        "--widths",
        "8",
        "--epochs",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "test_accuracy" in output  # the command's own summary is there
    assert not TF_STARTUP.findall(output), [m.group(0) for m in TF_STARTUP.finditer(output)]


def test_the_startup_pattern_matches_what_tensorflow_prints():
    """The pattern above would catch the lines the issue quotes (else the test before cannot fail)."""
    seen = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1732345678.123456   12345 cpu_feature_guard.cc:210] This TensorFlow binary is optimized\n"
        "2026-11-23 07:00:00.000000: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers"
        " on your machine, GPU will not be used.\n"
        "2026-11-23 07:00:00.000000: I tensorflow/core/util/port.cc:153] oneDNN custom operations are on.\n"
    )
    assert len(TF_STARTUP.findall(seen)) >= 4
    assert not TF_STARTUP.findall(
        "training simple (73,114 parameters) for up to 1 epochs\naccuracy: 0.5292 (359 images)\n"
    )


def test_train_with_stdout_in_a_file_writes_one_plain_line_per_epoch(tmp_path, shapes_folder):
    """`edgecls train … > train.log`: no progress bar, no escape codes, no carriage returns, without --quiet."""
    log = tmp_path / "train.log"
    args = ["train", "--data", shapes_folder, "--out", tmp_path / "run", "--epochs", "3", "--image-size", "32"]
    with log.open("wb") as stdout:  # a real file, as the shell's redirection gives it
        result = subprocess.run(
            [sys.executable, "-m", "edgecls.cli", *map(str, [*args, "--widths", "8,16", "--patience", "0"])],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    text = log.read_bytes().decode()
    assert "\x1b" not in text and "\r" not in text and "\b" not in text, repr(text[:300])
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split(" - ")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], text
    assert all(" val_accuracy " in line and " loss " in line for line in epochs)
    assert "Epoch 1/3" not in text  # Keras' own two-line form is off
    assert re.search(r"restored the best epoch \([123] of 3, lowest validation loss \d\.\d{4}\)", result.stderr)


def test_train_on_a_terminal_keeps_keras_progress_bars(tmp_path, shapes_folder):
    """The plain lines are for files and pipes: a terminal (a real pty here) still gets the live bars."""
    import pty

    primary, secondary = pty.openpty()
    args = ["train", "--data", shapes_folder, "--out", tmp_path / "run", "--epochs", "1", "--image-size", "32"]
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecls.cli", *map(str, [*args, "--widths", "8"])],
        stdout=secondary,
        stderr=subprocess.PIPE,
    )
    os.close(secondary)
    seen = b""
    try:
        while chunk := os.read(primary, 4096):
            seen += chunk
    except OSError:  # EIO: the child closed its side
        pass
    finally:
        os.close(primary)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert b"\r\x1b[1m1/2\x1b[0m" in seen  # Keras' own bar (batch 1 of 2), redrawn in place, in bold
    assert not re.search(rb"^epoch 1/1 - ", seen, re.MULTILINE)
