"""Adversarial review of `edgecls bench` (issue 8): each test here shows one defect and fails until it is fixed.

Real bundles, real worker processes, a real sshd; no mocks. Kept small (one repeat, few runs, 1 s budgets).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_error, run_cli
from tests.sshd import sshd  # noqa: F401  (the fixture)

QUICK = ("--repeats", "1", "--runs", "10", "--frame-runs", "10", "--time-budget", "1", "--max-warmup", "1")


def _device_bench(bundle, *args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "edgecls.runtime.bench", str(bundle), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, tiny_bundle, shapes_folder):
    """One device-side bench of two artifacts with --data holding a misspelt class folder; (proc, doc, json path)."""
    tmp = tmp_path_factory.mktemp("review-bench")
    data = tmp / "data"
    shutil.copytree(shapes_folder / "circle", data / "circle")
    shutil.copytree(shapes_folder / "square", data / "sqaure")  # a typo: 24 images silently left out
    out = tmp / "bench.json"
    proc = _device_bench(tiny_bundle, "--artifacts", "tflite-int8,onnx-int8", *QUICK, "--data", data, "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text()), out


def test_review_whole_frame_percentiles_include_decode(quick_run):
    """Issue 8 p1: the whole frame is decode -> preprocess -> invoke -> top-k. `frame_p50_ms` (and p90/p99, the
    table's "frame p50") is measured from t1, after decode, so no whole-frame percentile exists anywhere, and it
    cannot be rebuilt from the stage percentiles (a p99 of a sum is not the sum of p99s)."""
    _, doc, _ = quick_run
    for r in doc["records"]:
        stages = r["frame"]
        assert r["frame_p50_ms"] >= stages["decode"]["p50_ms"] + stages["invoke"]["p50_ms"], (
            r["artifact"],
            r["frame_p50_ms"],
            stages["decode"]["p50_ms"],
        )


def test_review_data_folders_that_are_not_classes_are_reported(quick_run):
    """--data with a misspelt class folder: a third of the images are silently left out of the accuracy; the
    skipped folder is buried in the JSON (`skipped_folders`) and never said on the terminal."""
    proc, doc, _ = quick_run
    assert doc["records"][0]["skipped_folders"] == ["sqaure"]
    assert "sqaure" in proc.stderr + proc.stdout


def test_review_compare_names_baseline_artifacts_missing_from_the_run(quick_run, tmp_path):
    """--compare in CI: an artifact the baseline has but this run lacks (its conversion failed, a bundle lost it)
    passes silently with exit 0; not even a line names it."""
    _, doc, baseline = quick_run
    current = json.loads(json.dumps(doc))
    current["records"] = [r for r in current["records"] if r["artifact"] != "onnx-int8"]
    path = tmp_path / "current.json"
    path.write_text(json.dumps(current))
    result = run_cli("bench", "--from-json", path, "--compare", baseline, timeout=120)
    assert "onnx-int8" in result.stdout + result.stderr, result.stdout


def test_review_repeated_thread_counts_are_not_pooled_twice(tiny_bundle, tmp_path):
    """`--threads 1,1` benchmarks every artifact twice per repeat, pools both into one key and prints two identical
    records each claiming `repeats: 2` for `--repeats 1`."""
    out = tmp_path / "b.json"
    proc = _device_bench(
        tiny_bundle, "--artifacts", "tflite-int8", "--threads", "1,1", *QUICK, "--json", out, "--quiet"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())["records"]
    assert [(r["threads"], r["repeats"]) for r in records] == [(1, 1)]


def test_warm_up_does_not_settle_on_a_ramp(monkeypatch):
    """A latency that falls 4 % per window (caches filling, a CPU governor ramping up) passes the "settled" test
    of two consecutive windows within 5 % at once: timing starts at twice the steady-state latency.

    The calls advance a clock of their own (not the machine's): on a busy shared CPU, preemption made the
    busy-waited ramp noisy enough to look settled early, so the test failed by chance, not by the code.
    """
    import types

    import edgecls.runtime.bench.stats as stats

    clock = [0.0]
    monkeypatch.setattr(stats, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = [0]

    def call():
        window = calls[0] // 10
        calls[0] += 1
        clock[0] += 0.004 * 0.96 ** min(window, 17)  # 4 ms falling to 2 ms, then flat

    result = stats.warm_up(call, max_seconds=5.0)
    assert result["settled"] and 170 <= result["warmup_runs"] <= 220, result  # off the ramp (window 17), soon after


def test_review_an_output_path_under_a_file_is_refused_before_timing(tiny_bundle, tmp_path):
    """`check_file_output` promises "its folder can be made" but checks nothing: `--json FILE/x.json` benchmarks
    every artifact first and only then fails, losing the results."""
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    result = run_cli(
        "bench",
        tiny_bundle,
        "--artifacts",
        "tflite-int8",
        "--no-keras",
        "--repeats",
        "1",
        "--runs",
        "5",
        "--time-budget",
        "1",
        "--json",
        blocker / "bench.json",
        timeout=120,
    )
    cli_error(result)
    assert "[1/1]" not in result.stderr, "benchmarked before refusing the output path"


def test_review_a_mismatched_keras_model_is_a_clear_error(tiny_bundle, tmp_path):
    """--keras with a model that does not fit the bundle (10 classes against 3 labels): the worker dies on an
    IndexError and the error reads "benchmarking None failed: IndexError: list index out of range" (the Keras job
    has no "artifact" key), after TensorFlow loaded, instead of naming the mismatch up front."""
    import keras

    labels = (tiny_bundle / "labels.txt").read_text().split()
    assert len(labels) == 3
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")]
    )
    path = tmp_path / "other.keras"
    model.save(path)
    result = run_cli(
        "bench",
        tiny_bundle,
        "--artifacts",
        "tflite-int8",
        "--keras",
        path,
        "--repeats",
        "1",
        "--runs",
        "5",
        "--frame-runs",
        "5",
        "--time-budget",
        "1",
        timeout=300,
    )
    error = cli_error(result)
    assert "None" not in error and "IndexError" not in error, error
    assert "10" in error and "3" in error, error  # names the two class counts


def _descendants(pid: int) -> list:
    """Every process below `pid` (by /proc's parent links), with its command line."""
    children, cmdline = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append((child, cmdline.get(child, "")))
            todo.append(child)
    return out


def test_review_interrupted_remote_bench_stops_on_the_device(sshd, tiny_bundle):  # noqa: F811
    """Ctrl-C (or the 3600 s timeout) kills only the local ssh client: `python3 -m edgecls.runtime.bench` and its worker
    keep running on the device (no pty, so no SIGHUP), timing on a board the user believes idle and skewing the
    next bench there, while `rm -rf` pulls the bundle from under them."""
    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecls.cli",
            "bench",
            str(tiny_bundle),
            "--device",
            device,
            "--ssh-config",
            str(sshd.ssh_config),
            "--artifacts",
            "tflite-int8",
            "--repeats",
            "2",
            "--runs",
            "1000000",
            "--frame-runs",
            "1000000",
            "--time-budget",
            "20",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    left = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(
            "edgecls.runtime.bench.worker" in c for _, c in _descendants(sshd.process.pid)
        ):
            assert cli.poll() is None, cli.communicate()[1][-2000:]
            time.sleep(0.2)
        assert any("edgecls.runtime.bench.worker" in c for _, c in _descendants(sshd.process.pid)), "no worker started"
        cli.send_signal(signal.SIGINT)
        cli.communicate(timeout=60)
        time.sleep(3)
        left = [(p, c) for p, c in _descendants(sshd.process.pid) if "edgecls.runtime.bench" in c]
        assert not left, f"still running on the device after Ctrl-C: {left}"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        # The orphans this test caused, by id: SIGINT first so the device-side bench removes its own temp folder.
        for sig in (signal.SIGINT, signal.SIGKILL):
            for pid, _ in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if left and sig == signal.SIGINT:
                time.sleep(3)


def test_review_remote_json_survives_a_chatty_device_shell(sshd, tiny_bundle, tmp_path):  # noqa: F811
    """A device whose python3 (a pyenv/conda shim, a login banner from a shell rc file) prints one line on stdout
    before the bench: `json.loads` of the whole stdout fails and the error blames "the device's edgecls too old"."""
    shim = tmp_path / "python3-shim"
    shim.write_text(f"#!/bin/sh\necho 'pyenv: using 3.11'\nexec {sys.executable} \"$@\"\n")
    shim.chmod(0o755)
    result = run_cli(
        "bench",
        tiny_bundle,
        "--device",
        f"{sshd.user}@{sshd.host}:{sshd.port}",
        "--ssh-config",
        sshd.ssh_config,
        "--remote-python",
        shim,
        "--artifacts",
        "tflite-int8",
        *QUICK[:-2],
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tflite-int8" in result.stdout
