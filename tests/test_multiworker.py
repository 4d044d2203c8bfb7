"""`--strategy multiworker`: real worker processes on loopback ports (issue 16 point 6).

Keras 3's `model.fit` dies under MultiWorkerMirroredStrategy with two workers (keras-team/keras#20585);
edgecls trains with its own loop there (edgecls/distributed.py). These tests start the real CLI once per
worker with its TF_CONFIG and check that every worker exits 0 and only the chief writes the run.
"""

import json
import os
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


def run_workers(n: int, args: list, tmp_path, timeout: int = 240) -> list:
    ports = free_ports(n)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(n):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-m", "edgecls.cli", "train", "--strategy", "multiworker", *map(str, args)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
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

    from edgecls.data import load_split
    from edgecls.datasets import scan_folder
    from runtime.preprocess import PreprocessSpec

    meta = json.loads((run / "metadata.json").read_text())
    val = scan_folder(data, meta["dataset"]["val_fraction"], meta["dataset"]["test_fraction"], meta["seed"]).splits["val"]
    split = load_split(val, PreprocessSpec.from_dict(meta["preprocess"]))
    model = keras.models.load_model(run / "model.keras", compile=False)
    probs = np.clip(model.predict(split.x, verbose=0), 1e-7, 1 - 1e-7)
    return float(-np.log(probs[np.arange(len(split.y)), split.y]).mean() + sum(float(l) for l in model.losses))


def test_i16_p6_two_workers_train_and_only_the_chief_writes_the_run(tmp_path, shapes_folder):
    out = tmp_path / "runs" / "mw"
    results = run_workers(2, ["--data", shapes_folder, "--out", out, *TINY], tmp_path)
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]
    (_, chief_out, chief_err), (_, worker_out, _) = results
    assert "test_accuracy" in chief_out and "the chief (task 0) writes the run" in worker_out
    assert "epoch 2/2:" in chief_err

    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png", "curves.png", "history.json", "metadata.json", "metrics.json", "model.keras"]
    assert [p.name for p in out.parent.iterdir()] == ["mw"]  # no stage left beside it
    assert not list((tmp_path / "tmp1").iterdir())  # the worker deleted what it wrote
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["train"]["strategy"] == "multiworker" and meta["train"]["replicas"] == 2
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    # The loop's all-reduced val loss is the saved model's own loss on the val split.
    kept = meta["train"]["kept_epoch"]
    assert saved_val_loss(out, shapes_folder) == pytest.approx(history["val_loss"][kept["epoch"] - 1], abs=1e-4)


def test_i16_p6_one_worker_loop_stops_early_halves_the_rate_and_keeps_the_best_epoch(tmp_path, shapes_folder):
    out = tmp_path / "mw1"
    args = ["--data", shapes_folder, "--out", out, "--epochs", "40", "--patience", "4", "--lr", "0.05",
            "--image-size", "16", "--widths", "8", "--quiet"]
    [(code, stdout, stderr)] = run_workers(1, args, tmp_path)
    assert code == 0, stderr[-3000:]
    assert "test_accuracy" in stdout
    meta = json.loads((out / "metadata.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert meta["train"]["replicas"] == 1
    assert len(history["val_loss"]) < 40  # EarlyStopping (patience 4) ended it
    rates = [float(line.rsplit("learning_rate ", 1)[1]) for line in stderr.splitlines() if line.startswith("epoch ")]
    assert rates[0] == 0.05 and 0.025 in rates  # ReduceLROnPlateau (patience 2) halved it
    best = int(np.argmin(history["val_loss"]))
    assert meta["train"]["kept_epoch"]["epoch"] == best + 1
    assert saved_val_loss(out, shapes_folder) == pytest.approx(history["val_loss"][best], abs=1e-4)
