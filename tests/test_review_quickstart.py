"""Adversarial review of `edgecls quickstart` (issue 14 point 1): each test is a defect found by attacking it.

They run the real CLI in a subprocess. A refusal must come before any work ("[1/6] train" on stderr);
`_starts_work` stops a quickstart as soon as it begins training, so a test costs seconds, not minutes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import snapshot

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


def test_review_qs_explain_folder_with_a_user_file_is_refused_before_any_work(tmp_path):
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


def test_review_qs_second_quickstart_into_a_running_out_is_refused(tmp_path):
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


def test_review_qs_record_does_not_stay_running_after_an_interrupt(tmp_path):
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


def test_review_qs_bench_temp_file_left_by_a_kill_does_not_block_overwrite(tmp_path):
    """A kill -9 while bench writes bench.json leaves bench/.bench.json.XXXX.tmp (write_bytes' temp file).
    The quickstart folder itself tolerates such leftovers (runtime.atomic._foreign), but bench_report.check_out_dir
    counts it as someone's file, so `--overwrite` refuses the folder for good."""
    out = _ours(tmp_path / "qs")
    (out / "bench").mkdir()
    (out / "bench" / "bench.json").write_text(json.dumps({"format": "edgecls-bench/1", "records": []}))
    (out / "bench" / ".bench.json.k1lled_x.tmp").write_text("{")
    started, stderr = _starts_work(out, "--overwrite")
    assert started, "an interrupted quickstart's folder cannot be replaced: " + stderr[-500:]


def test_review_qs_marker_temp_file_left_by_a_kill_does_not_block_overwrite(tmp_path):
    """A kill -9 during the first write of quickstart.json leaves OUT holding only .quickstart.json.XXXX.tmp: not
    ours (no marker), so every rerun, with --overwrite too, refuses a folder holding nothing but our own temp file."""
    out = tmp_path / "qs"
    out.mkdir()
    (out / ".quickstart.json.k1lled_x.tmp").write_text('{"format": "edgecls-quick')
    started, stderr = _starts_work(out, "--overwrite")
    assert started, "an interrupted quickstart's folder cannot be replaced: " + stderr[-500:]


def test_review_qs_user_folder_named_like_a_product_file_is_refused_before_any_work(tmp_path):
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
