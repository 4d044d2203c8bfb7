"""edgecls.distributed: `--strategy multiworker` with real worker processes on loopback ports.

Keras 3's `model.fit` dies under MultiWorkerMirroredStrategy with two workers (keras-team/keras#20585);
edgecls trains with its own loop there (edgecls/distributed.py). These tests start the real CLI once per
worker with its TF_CONFIG and check that every worker exits 0 and only the chief writes the run.
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

TINY = ["--epochs", "2", "--image-size", "16", "--widths", "8", "--batch-size", "8", "--quiet"]


def free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_workers(n: int, args: list, tmp_path, timeout: int = 240, extra_env: dict | None = None) -> list:
    ports = free_ports(n)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(n):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = {
            **os.environ,
            **(extra_env or {}),
            "PYTHONPATH": str(REPO),
            "TMPDIR": str(scratch),
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "edgecls.cli", "train", "--strategy", "multiworker", *map(str, args)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def saved_val_loss(run, data):
    """The saved model's loss on the run's val split, regularization included (what val_loss measures)."""
    import keras

    from edgecls.core.data import load_split
    from edgecls.core.datasets import scan_folder
    from edgecls.runtime.preprocess import PreprocessSpec

    meta = json.loads((run / "metadata.json").read_text())
    val = scan_folder(data, meta["dataset"]["val_fraction"], meta["dataset"]["test_fraction"], meta["seed"]).splits[
        "val"
    ]
    split = load_split(val, PreprocessSpec.from_dict(meta["preprocess"]))
    model = keras.models.load_model(run / "model.keras", compile=False)
    probs = np.clip(model.predict(split.x, verbose=0), 1e-7, 1 - 1e-7)
    return float(-np.log(probs[np.arange(len(split.y)), split.y]).mean() + sum(float(l) for l in model.losses))


def test_two_workers_train_and_only_the_chief_writes_the_run(tmp_path, shapes_folder):
    out = tmp_path / "runs" / "mw"
    results = run_workers(2, ["--data", shapes_folder, "--out", out, *TINY], tmp_path)
    for code, _stdout, stderr in results:
        assert code == 0, stderr[-3000:]
    (_, chief_out, chief_err), (_, worker_out, _) = results
    assert "test_accuracy" in chief_out and "the chief (task 0) writes the run" in worker_out
    assert "\nepoch 2/2 - " in chief_out  # the chief's epoch lines, on stdout
    assert "\nepoch " not in f"\n{chief_err}" + f"\n{worker_out}", (chief_err, worker_out)

    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png",
        "curves.png",
        "history.json",
        "metadata.json",
        "metrics.json",
        "model.keras",
        "split.json",
    ]
    assert [p.name for p in out.parent.iterdir()] == ["mw"]  # no stage left beside it
    assert not list((tmp_path / "tmp1").iterdir())  # the worker deleted what it wrote
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["train"]["strategy"] == "multiworker" and meta["train"]["replicas"] == 2
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    # The loop's all-reduced val loss is the saved model's own loss on the val split.
    kept = meta["train"]["kept_epoch"]
    assert saved_val_loss(out, shapes_folder) == pytest.approx(history["val_loss"][kept["epoch"] - 1], abs=1e-4)


def test_two_streaming_workers_train_like_one_process(tmp_path, shapes_folder):
    """Issue 10 point 4 on the streaming path: two workers with TF_CONFIG on loopback ports both exit 0, only the
    chief writes the run, and it scores within a few points of a single-process run with the same seed.

    Two truncated PNGs that only decoding finds sit side by side in val/, so each worker's (unshuffled) val
    shard holds one: each worker weighs its bad file 0 (the steps stay in step, nobody crashes), and the chief's
    records skip both, like the single-process run's.
    """
    from tests.conftest import FIXTURE_COLOURS, render_fixture_image, run_cli, write_image

    data = tmp_path / "data"
    rng = np.random.default_rng(7)
    for kind in FIXTURE_COLOURS:  # 48 test images: one image is about 2 points
        for split, count in (("train", 64), ("val", 8), ("test", 16)):
            for i in range(count):
                write_image(data / split / kind / f"{i:03d}.png", render_fixture_image(kind, rng, 40))
    png = data / "train" / "circle" / "000.png"
    for name in ("003a.png", "003b.png"):
        (data / "val" / "square" / name).write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    args = [
        "--data",
        data,
        "--epochs",
        "6",
        "--image-size",
        "24",
        "--widths",
        "8,16",
        "--batch-size",
        "16",
        "--seed",
        "0",
        "--quiet",
    ]
    stream = {"EDGECLS_IN_MEMORY_MB": "0"}
    out, single = tmp_path / "runs" / "mw", tmp_path / "runs" / "single"
    results = run_workers(2, ["--out", out, *args], tmp_path, timeout=480, extra_env=stream)
    for code, _stdout, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "streaming 266 images from disk" in stderr
    (_, chief_out, _), (_, worker_out, _) = results
    assert "test_accuracy" in chief_out and "the chief (task 0) writes the run" in worker_out
    assert (out / "metrics.json").is_file() and (out / "split.json").is_file()
    assert not list((tmp_path / "tmp1").iterdir())  # the worker deleted what it wrote

    alone = run_cli("train", "--out", single, *args, env=stream)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["mw", "single"]  # no worker's run, no stage left
    meta, meta1 = (json.loads((d / "metadata.json").read_text()) for d in (out, single))
    assert meta["train"]["replicas"] == 2 and meta1["train"]["replicas"] == 1
    assert meta["dataset"]["skipped"] == meta1["dataset"]["skipped"] == 2
    assert meta["dataset"]["fingerprint"] == meta1["dataset"]["fingerprint"]
    assert (out / "split.json").read_text() == (single / "split.json").read_text()
    acc, acc1 = (json.loads((d / "metrics.json").read_text())["test_accuracy"] for d in (out, single))
    assert acc1 > 0.6 and abs(acc - acc1) <= 0.05, (acc, acc1)


def test_one_worker_loop_stops_early_halves_the_rate_and_keeps_the_best_epoch(tmp_path, shapes_folder):
    out = tmp_path / "mw1"
    args = [
        "--data",
        shapes_folder,
        "--out",
        out,
        "--epochs",
        "40",
        "--patience",
        "4",
        "--lr",
        "0.05",
        "--image-size",
        "16",
        "--widths",
        "8",
        "--quiet",
    ]
    [(code, stdout, stderr)] = run_workers(1, args, tmp_path)
    assert code == 0, stderr[-3000:]
    assert "test_accuracy" in stdout
    meta = json.loads((out / "metadata.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert meta["train"]["replicas"] == 1
    assert len(history["val_loss"]) < 40  # EarlyStopping (patience 4) ended it
    # one plain line per epoch on stdout, as a single-process run prints them (`train ... > train.log` keeps them)
    lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert lines and not [line for line in stderr.splitlines() if line.startswith("epoch ")]
    assert re.fullmatch(r"epoch 1/40 - \d+\.\ds - (\w+ \S+ - )*loss \S+( - \w+ \S+)*", lines[0]), lines[0]
    rates = [float(re.search(r"\blearning_rate (\S+)", line)[1]) for line in lines]
    assert rates[0] == 0.05 and 0.025 in rates  # ReduceLROnPlateau (patience 2) halved it
    best = int(np.argmin(history["val_loss"]))
    assert meta["train"]["kept_epoch"]["epoch"] == best + 1
    assert saved_val_loss(out, shapes_folder) == pytest.approx(history["val_loss"][best], abs=1e-4)


PADDED_EPOCH = """
import json, sys
import numpy as np, tensorflow as tf, keras
strategy = tf.distribute.MultiWorkerMirroredStrategy()  # no TF_CONFIG: one local worker
from edgecls.distributed import MultiWorkerTrainer

class Split:
    x = np.ones((10, 4, 4, 1), np.float32)  # every pixel 1: every batch mean is 1 unless padding is black
    y = np.zeros(10, np.int64)

with strategy.scope():
    inputs = keras.Input((4, 4, 1))
    bn = keras.layers.BatchNormalization(momentum=0.5)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(bn(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
MultiWorkerTrainer(strategy, model, "softmax", Split(), None, batch_size=8, verbose=False).fit(1)
print(json.dumps(float(np.asarray(bn.moving_mean)[0])))
"""


def test_padding_of_the_last_batch_does_not_skew_batchnorm_statistics():
    """10 images in batches of 8: the second step holds 2 images and 6 padding. Padding with black
    images dragged that step's batch mean to 0.25 (moving mean 0.375 instead of 0.75)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", PADDED_EPOCH], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Two steps of momentum 0.5 from 0 towards batch means of 1: 1 - 0.5 ** 2.
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == pytest.approx(0.75, abs=1e-6)


def test_a_worker_that_dies_ends_the_other_with_one_error_line_and_no_stage(tmp_path, shapes_folder):
    """The survivor's collective op fails within seconds (no hang); it printed a TensorFlow traceback."""
    import time

    out = tmp_path / "runs" / "mw"
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, logs = [], []
    for index in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        logs.append(tmp_path / f"worker{index}.log")
        epochs = tmp_path / f"worker{index}.out"  # epoch lines go to stdout
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgecls.cli",
                    "train",
                    "--strategy",
                    "multiworker",
                    "--data",
                    str(shapes_folder),
                    "--out",
                    str(out),
                    "--epochs",
                    "200",
                    "--patience",
                    "0",
                    "--image-size",
                    "16",
                    "--widths",
                    "8",
                    "--quiet",
                ],
                env=env,
                stdout=epochs.open("w"),
                stderr=logs[-1].open("w"),
            )
        )
    try:
        deadline = time.monotonic() + 200
        chief_epochs = tmp_path / "worker0.out"
        while "epoch 2/" not in chief_epochs.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "epoch 2/" in chief_epochs.read_text(), "the chief printed no second epoch line"
        assert procs[0].poll() is None, "the chief ended before the other worker was killed"
        procs[1].kill()
        assert procs[0].wait(timeout=120) == 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    stderr = logs[0].read_text()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "error: multi-worker training lost another worker" in stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # the chief removed its stage
