"""runtime/daemon/nativelog.py in the daemon: what C code writes to fd 2 goes through our log, never stalling it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

cv2 = pytest.importorskip("cv2")

from tests.daemon_helpers import write_test_video  # noqa: E402


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("daemon-finish") / "clip.avi")


def _run_cli(args, timeout=120):
    """`edgecls ARGS` without OpenCV's log-level variables (conftest's run_cli can add variables, not remove them)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OPENCV_LOG_LEVEL", None)
    env.pop("OPENCV_FFMPEG_LOGLEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "edgecls.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_native_chatter_goes_through_our_logging_at_debug_level(tiny_bundle, video):
    """LiteRT's XNNPACK line and OpenCV/FFmpeg's refusals of a dead stream are written by C code to fd 2."""
    args = [
        "run",
        str(tiny_bundle),
        "--artifact",
        "tflite-int8",
        "--source",
        str(video),
        "--source",
        "http://127.0.0.1:9/dead.mjpg",
        "--duration",
        "2",
        "--stall-timeout",
        "1",
        "--wait-for-sources",  # the dead stream is retried (its refusals are the chatter), not a setup error
    ]
    quiet = _run_cli(args)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "XNNPACK" not in quiet.stderr and "[ WARN" not in quiet.stderr, quiet.stderr
    assert '"event": "stopped"' in quiet.stderr  # our own lines still reach stderr
    loud = _run_cli(["--debug", *args])
    assert loud.returncode == 0, loud.stderr[-2000:]
    native = [line for line in loud.stderr.splitlines() if line.startswith("DEBUG: native: ")]
    assert any("XNNPACK" in line for line in native), loud.stderr[-3000:]
    assert not [
        line for line in loud.stderr.splitlines() if "XNNPACK" in line and not line.startswith("DEBUG: native:")
    ]


def test_native_output_to_log_captures_fd2_and_keeps_python_stderr(caplog, capfd):
    from edgecls.runtime.daemon.nativelog import native_output_to_log

    caplog.set_level(logging.DEBUG, logger="edgecls.native")
    with native_output_to_log():
        os.write(2, b"from C: first line\nsecond line without newline")
        sys.stderr.write("from python\n")
        sys.stderr.flush()
    messages = [r.getMessage() for r in caplog.records if r.name == "edgecls.native"]
    assert messages == ["native: from C: first line", "native: second line without newline"]
    err = capfd.readouterr().err
    assert "from python" in err and "from C" not in err
    os.write(2, b"after\n")  # fd 2 is the real stderr again
    assert "after" in capfd.readouterr().err


def _python(code: str, timeout: float, env=None):
    """Run `code` in a fresh interpreter at the repo root (fd 2 games stay out of pytest's process)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_carriage_return_progress_lines_do_not_stall_native_writers():
    """FFmpeg/GStreamer-style progress ends lines with \\r only. The pump re-concatenates and re-splits its whole
    unterminated buffer on every read: quadratic time and unbounded memory, and while it churns, native threads
    writing to fd 2 (capture threads) block on the full pipe. 40 MB took ~26 s here; split on \\r as well and it
    takes 0.9 s."""
    done = _python(
        """
        import os, select, sys, time
        from edgecls.runtime.daemon.nativelog import native_output_to_log
        line = b"frame= 1234 fps= 25 q=-0.0 size=N/A time=00:00:49.36 bitrate=N/A speed=1x  \\r"
        data = memoryview(line * (40 * 1024 * 1024 // len(line)))
        start = time.monotonic()
        with native_output_to_log():
            while data:
                try:
                    data = data[os.write(2, data[: 1 << 16]):]
                except BlockingIOError:  # a non-blocking pipe is a fair fix: wait until the pump drained it
                    select.select([], [2], [], 1.0)
            wrote = time.monotonic() - start
        print(f"{wrote:.2f}", file=sys.__stdout__)
    """,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 5.0, f"writing 40 MB of progress lines to fd 2 took {done.stdout}s"


def test_native_code_holding_the_gil_cannot_deadlock_on_a_full_pipe():
    """A C extension that writes > 64 KiB to stderr without releasing the GIL (ctypes.PyDLL keeps it, as pybind11
    code does by default) blocks on the full pipe, and the pump, which needs the GIL to drain it, never runs:
    the whole daemon hangs, SIGTERM included. Without the redirection the same write returns at once."""
    code = """
        import ctypes, sys
        from edgecls.runtime.daemon.nativelog import native_output_to_log
        data = (b"W" * 79 + b"\\n") * 2000  # 160 KB
        with native_output_to_log():
            ctypes.PyDLL(None).write(2, data, len(data))
        print("returned", file=sys.__stdout__)
    """
    try:
        done = _python(code, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("deadlock: a GIL-holding native write of 160 KB to fd 2 never returned")
    assert "returned" in done.stdout, done.stderr[-2000:]


def test_a_native_fatal_message_before_an_abort_is_not_lost():
    """Native code explains a crash on fd 2 and aborts (Qt without a display, a C++ assertion, glibc's
    "double free"). Redirected, the explanation is a DEBUG record (dropped without --debug) or still in the pipe
    when the process dies: the journal shows "Aborted" and a Python traceback, never the cause."""
    done = _python(
        """
        import os, time
        from edgecls.runtime.daemon.nativelog import native_output_to_log
        with native_output_to_log():
            os.write(2, b"qt.qpa.xcb: could not connect to display :77\\n")
            time.sleep(0.3)  # ample time for the pump to read it
            os.abort()
    """,
        timeout=60,
    )
    assert done.returncode != 0
    assert "could not connect to display" in done.stderr, done.stderr[-1500:]
