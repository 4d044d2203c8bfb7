"""edgecls.quickstart: `edgecls quickstart` runs the whole chain, and its --out is guarded like every product.

A refusal must come before any work ("[1/6] train" on stderr); `_starts_work` stops a quickstart as soon as it
begins training, so those tests cost seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import cli_error, make_home_like, run_cli, snapshot

ARTIFACTS = ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8")
PNG = b"\x89PNG\r\n\x1a\n"
STARTED = "[1/6] train:"


def _popen(out: Path, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgecls.cli", "quickstart", "--out", str(out), "--quick", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_started(proc: subprocess.Popen, timeout: float = 180) -> tuple:
    """(True, stderr so far) once `proc` prints the train step's line, (False, all its stderr) if it exits first."""
    timer = threading.Timer(timeout, proc.kill)  # a hung start is a failure, not a hung test
    timer.start()
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(STARTED):
                return True, "".join(seen)
        proc.wait()
        return False, "".join(seen)
    finally:
        timer.cancel()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def _starts_work(out: Path, *args) -> tuple:
    """Run a quickstart into `out`: (whether it began training, its stderr); stopped once it begins."""
    proc = _popen(out, *args)
    try:
        return _wait_started(proc)
    finally:
        _stop(proc)


def _ours(out: Path) -> Path:
    """A folder an earlier quickstart wrote (its marker), as a kill would leave it."""
    out.mkdir(parents=True)
    (out / "quickstart.json").write_text(json.dumps({"format": "edgecls-quickstart/1", "status": "running"}))
    return out


def _table_rows(lines: list, header: re.Pattern) -> dict:
    """name -> cells of the table whose header line matches, up to the first blank line."""
    start = next(i for i, line in enumerate(lines) if header.match(line))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def _written(lines: list, out: Path) -> list:
    """The files the summary says it wrote: every path of the lines under `written to OUT/`."""
    start = lines.index(f"written to {out}/")
    paths = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        paths += [out / name for name in line.split()[1:]]
    return paths


def _decodes(path: Path) -> bool:
    import cv2
    import numpy as np

    return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None


@pytest.mark.slow
def test_quickstart_runs_the_whole_chain(tmp_path):
    out = tmp_path / "qs"
    result = run_cli("quickstart", "--out", out, "--quick", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert "epoch 1/" not in result.stdout and "epoch 1/" in result.stderr  # epoch lines are progress: stderr
    for n, step in enumerate(("train", "convert", "bench", "flash", "daemon", "pictures"), 1):
        assert f"[{n}/6] {step}:" in result.stderr

    # The accuracy table: Keras and each artifact, measured on the held-out test split.
    accuracy = _table_rows(lines, re.compile(r"^artifact\s+size\s+accuracy"))
    assert set(accuracy) == {"keras", *ARTIFACTS}
    keras = float(accuracy["keras"][0])
    assert keras > 0.8  # digits are easy: far above the 0.1 of chance
    for name in ARTIFACTS:
        size, acc, delta = accuracy[name][:3]
        assert int(size.replace(",", "")) > 0
        assert abs(float(acc) - keras) <= 0.02 and float(delta) >= -2.0  # within the gate the quickstart sets

    # The latency table: a p50 for every artifact of the bundle.
    latency = _table_rows(lines, re.compile(r"^artifact\s+p50 ms"))
    assert set(ARTIFACTS) <= set(latency)
    assert all(float(latency[name][0]) > 0 for name in ARTIFACTS)

    # Every file the summary names exists; pictures are real images.
    written = _written(lines, out)
    assert len(written) >= 14
    for path in written:
        assert path.is_file(), path
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG and _decodes(path), path
    names = {str(p.relative_to(out)) for p in written}
    assert {
        "run/curves.png",
        "run/confusion_matrix.png",
        "bench/bench.png",
        "accuracy.png",
        "explain/contact_sheet.png",
        "preview.jpg",
    } <= names
    preview = out / "preview.jpg"
    assert preview.read_bytes()[:2] == b"\xff\xd8" and _decodes(preview)
    assert (out / "summary.txt").read_text().strip() == result.stdout.strip()

    # The flashed folder holds the bundle as `current`: the same manifest, committed by the flash.
    current = out / "device" / "current"
    assert current.is_symlink() and os.readlink(current).startswith("releases/")
    assert (current / "manifest.json").read_bytes() == (out / "bundle" / "manifest.json").read_bytes()

    # The daemon classified frames of the video, as its own /metrics counted them.
    record = json.loads((out / "quickstart.json").read_text())
    assert record["format"] == "edgecls-quickstart/1" and record["status"] == "complete"
    daemon = record["daemon"]
    assert daemon["frames_processed_total"] > 0 and daemon["classified"] > 0 and daemon["healthz"] == 200
    assert daemon["preview_page"] is True
    assert daemon["agree"] > daemon["classified"] / 2  # the model read the held-out digits the video showed
    counted = re.search(r"/metrics edgecls_frames_processed_total (\d+)", result.stdout)
    assert counted and int(counted.group(1)) > 0


@pytest.mark.parametrize("overwrite", [False, True])
def test_quickstart_refuses_a_folder_that_is_not_ours(tmp_path, overwrite):
    home = make_home_like(tmp_path / "home")
    before = snapshot(home)
    result = run_cli("quickstart", "--out", home, "--quick", *(["--overwrite"] if overwrite else []), timeout=120)
    assert "not an edgecls quickstart folder" in cli_error(result)
    assert snapshot(home) == before


def test_quickstart_keeps_files_it_did_not_write(tmp_path):
    """A quickstart folder of ours with someone's file in it is not replaced, even with --overwrite."""
    out = tmp_path / "qs"
    out.mkdir()
    (out / "quickstart.json").write_text(json.dumps({"format": "edgecls-quickstart/1", "status": "complete"}))
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert "notes.txt" in cli_error(run_cli("quickstart", "--out", out, "--overwrite", timeout=120))
    assert "--overwrite" in cli_error(run_cli("quickstart", "--out", out, timeout=120))  # ours: say how to replace
    assert snapshot(out) == before


def test_a_running_quickstart_holds_out_and_a_killed_one_does_not(tmp_path):
    """The second quickstart into a running one's OUT refuses naming its pid; once that one is killed (-9, no
    clean-up), its lock is gone with it and the next quickstart runs."""
    out = tmp_path / "qs"
    first = _popen(out)
    try:
        started, stderr = _wait_started(first)
        assert started, stderr[-2000:]
        for args in ((), ("--overwrite",)):
            error = cli_error(run_cli("quickstart", "--out", out, "--quick", *args, timeout=120))
            assert f"in use by another quickstart (pid {first.pid}," in error and "choose another --out" in error
        first.kill()
        first.wait()
    finally:
        _stop(first)
    assert json.loads((out / "quickstart.json").read_text())["status"] == "running"  # kill -9: nobody to say
    started, stderr = _starts_work(out, "--overwrite")
    assert started, stderr[-2000:]


def test_a_failed_quickstart_records_the_error(tmp_path):
    """A failure after the first record is written leaves status "failed" and the error line, not "running"."""
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "qs"
    env = {"EDGECLS_DATA": str(tmp_path / "file" / "cache")}  # the dataset cannot be made: train fails at once
    error = cli_error(run_cli("quickstart", "--out", out, "--quick", env=env, timeout=120))
    record = json.loads((out / "quickstart.json").read_text())
    assert record["status"] == "failed" and record["error"] == error.removeprefix("error: ")
    assert "train" in record["steps"]


def test_an_out_that_cannot_be_made_is_named_with_the_fix(tmp_path):
    """Was "error: Read-only file system (quickstart)": the path that could not be written and what to do."""
    (tmp_path / "file").write_text("not a folder")
    error = cli_error(run_cli("quickstart", "--out", tmp_path / "file" / "qs", "--quick", timeout=120))
    assert f"cannot write {tmp_path / 'file' / 'qs'} (Not a directory)" in error and "--out" in error


def test_a_folder_of_only_a_killed_quickstarts_leftovers_is_reused(tmp_path):
    """Killed before its first record: OUT holds its lock and the record's temp file, nothing of value, so it is
    reused like an empty folder (no --overwrite needed) and the temp file goes; anything else there still refuses."""
    out = tmp_path / "qs"
    out.mkdir()
    (out / ".quickstart.lock").write_text("pid 1, since 00:00:00\n")
    (out / ".quickstart.json.k1lled_x.tmp").write_text('{"format": "edgecls-quick')
    (out / ".notes.txt.k1lled_x.tmp").write_text("mine")  # a temp file, but of no name quickstart writes
    before = snapshot(out)
    for args in ((), ("--overwrite",)):
        assert "not an edgecls quickstart folder" in cli_error(run_cli("quickstart", "--out", out, *args))
    assert snapshot(out) == before
    (out / ".notes.txt.k1lled_x.tmp").unlink()
    started, stderr = _starts_work(out)
    assert started, stderr[-2000:]
    assert not (out / ".quickstart.json.k1lled_x.tmp").exists()


def test_quickstarts_convert_puts_the_libraries_temp_files_in_its_stage(tiny_run_dir, tmp_path):
    """Like `edgecls convert`: TF's temp files go into the bundle's stage (which a rerun removes), so a killed
    quickstart leaves none in the system temp folder; tempfile.tempdir is restored afterwards."""
    import tempfile
    import threading
    import time

    from edgecls.quickstart import Plan, QuickstartOptions, _convert

    plan = Plan(image_size=32, epochs=1, prune=None, calibration_size=16, max_drop=100.0, max_prune_drop=100.0)
    before, seen, errors = tempfile.tempdir, set(), []

    def work():
        try:
            _convert(tiny_run_dir, tmp_path / "b", QuickstartOptions(out=str(tmp_path)), plan)
        except Exception as exc:  # noqa: BLE001  (reported by the test's thread)
            errors.append(repr(exc))

    worker = threading.Thread(target=work)
    worker.start()
    while worker.is_alive():
        seen.add(tempfile.tempdir)
        time.sleep(0.005)
    worker.join()
    assert not errors, errors
    assert (tmp_path / "b" / "manifest.json").is_file() and tempfile.tempdir == before
    stages = [Path(t) for t in seen if t is not None]  # /tmp too: a library caches the default before
    assert any(re.fullmatch(r"\.b\..*\.partial", p.parent.name) and p.name == ".work" for p in stages), seen


def test_an_explain_folder_holding_a_user_file_is_refused_before_any_work(tmp_path):
    """_check_outputs checks explain/ without explain's `contents`: with a user's file in it, quickstart --overwrite
    trains, converts, benches, flashes and runs the daemon for minutes, then explain_run refuses at step 6."""
    out = _ours(tmp_path / "qs")
    (out / "explain").mkdir()
    (out / "explain" / "explanations.json").write_text(json.dumps({"format": "edgecls-explain/1", "images": []}))
    (out / "explain" / "notes.txt").write_text("mine")
    before = snapshot(out)
    started, stderr = _starts_work(out, "--overwrite")
    assert not started, "quickstart began the chain although step 6 will refuse explain/ (it holds notes.txt)"
    assert "notes.txt" in stderr and "Traceback" not in stderr
    assert snapshot(out) == before


def test_a_second_quickstart_into_a_running_out_is_refused(tmp_path):
    """Nothing marks OUT as in use: a second `quickstart --overwrite` into the folder a running one is writing passes
    every check and trains too; the two then replace each other's run/bundle/device under each other's feet."""
    out = tmp_path / "qs"
    first = _popen(out)
    try:
        started, stderr = _wait_started(first)
        assert started, stderr[-2000:]
        second, stderr = _starts_work(out, "--overwrite")
        assert not second, "a second quickstart ran into the folder the first one is still writing"
        assert "Traceback" not in stderr
    finally:
        _stop(first)


def test_the_record_does_not_stay_running_after_an_interrupt(tmp_path):
    """quickstart.json is written with status "running" first and rewritten only on success: after Ctrl-C (or any
    failure) the record of a dead quickstart still says "running"."""
    out = tmp_path / "qs"
    proc = _popen(out)
    try:
        started, stderr = _wait_started(proc)
        assert started, stderr[-2000:]
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 130
    status = json.loads((out / "quickstart.json").read_text())["status"]
    assert status != "running", "the record of an interrupted quickstart says it is still running"


def test_a_bench_temp_file_left_by_a_kill_does_not_block_overwrite(tmp_path):
    """A kill -9 while bench writes bench.json leaves bench/.bench.json.XXXX.tmp (write_bytes' temp file).
    The quickstart folder itself tolerates such leftovers (runtime.atomic._foreign), but bench_report.check_out_dir
    counts it as someone's file, so `--overwrite` refuses the folder for good."""
    out = _ours(tmp_path / "qs")
    (out / "bench").mkdir()
    (out / "bench" / "bench.json").write_text(json.dumps({"format": "edgecls-bench/1", "records": []}))
    (out / "bench" / ".bench.json.k1lled_x.tmp").write_text("{")
    started, stderr = _starts_work(out, "--overwrite")
    assert started, "an interrupted quickstart's folder cannot be replaced: " + stderr[-500:]


def test_a_marker_temp_file_left_by_a_kill_does_not_block_overwrite(tmp_path):
    """A kill -9 during the first write of quickstart.json leaves OUT holding only .quickstart.json.XXXX.tmp: not
    ours (no marker), so every rerun, with --overwrite too, refuses a folder holding nothing but our own temp file."""
    out = tmp_path / "qs"
    out.mkdir()
    (out / ".quickstart.json.k1lled_x.tmp").write_text('{"format": "edgecls-quick')
    started, stderr = _starts_work(out, "--overwrite")
    assert started, "an interrupted quickstart's folder cannot be replaced: " + stderr[-500:]


def test_a_user_folder_named_like_a_product_file_is_refused_before_any_work(tmp_path):
    """CONTENTS lets camera.avi (also preview.jpg, accuracy.png, summary.txt) be any entry, a folder included: a folder
    of the user's files under that name passes the checks, and the chain fails minutes later when write_bytes cannot
    rename the video over a folder (IsADirectoryError at step 5)."""
    out = _ours(tmp_path / "qs")
    (out / "camera.avi").mkdir()
    (out / "camera.avi" / "holiday.mp4").write_bytes(b"mine")
    before = snapshot(out)
    started, stderr = _starts_work(out, "--overwrite")
    assert not started, "quickstart began the chain although it cannot write camera.avi over a folder of files"
    assert "camera.avi" in stderr and "Traceback" not in stderr
    assert snapshot(out) == before


def test_the_accuracy_chart_starts_at_zero_and_has_a_legend_for_its_colours():
    """A zoomed axis made 0.3 points look large; the colours are the latency chart's, with their legend."""
    import matplotlib.colors

    from edgecls.bench_report import BAR_COLOURS, KERAS_BAR
    from edgecls.quickstart import accuracy_figure
    from edgecls.runtime.formats import FP32, INT8, ONNX_INT8, TFLITE_FP32

    manifest = {
        "source": {"accuracy": 0.9805, "test_images": 359},
        "artifacts": [
            {"name": TFLITE_FP32.name, "accuracy": 0.9861, "size_bytes": 90_000},
            {"name": ONNX_INT8.name, "accuracy": 0.9833, "size_bytes": 30_000},
        ],
    }
    fig = accuracy_figure(manifest)
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, 1.0)
    legend = ax.get_legend()
    shown = {
        t.get_text(): matplotlib.colors.to_hex(h.get_facecolor())
        for t, h in zip(legend.get_texts(), legend.legend_handles)
    }
    assert shown == {k: matplotlib.colors.to_hex(BAR_COLOURS[k]) for k in (KERAS_BAR, FP32, INT8)}
    bars = [matplotlib.colors.to_hex(b.get_facecolor()) for b in ax.patches]
    assert bars == [shown[KERAS_BAR], shown[FP32], shown[INT8]]
