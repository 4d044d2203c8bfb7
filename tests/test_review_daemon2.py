"""Adversarial review of the daemon's overlap, native-log redirection, preview sign-in and --show (issue 7,
issue 8 point 6). Each test shows one defect with real components; they fail until it is fixed."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.daemon_helpers import ListSink, write_test_video

cv2 = pytest.importorskip("cv2")

from tests.test_daemon_show import gui_python  # noqa: E402,F401  (the opencv-python venv fixture)

REPO = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------- loop.py: the preparing thread


def test_review_i7_p1_overlap_keeps_classified_frames_at_most_one_inference_older(tiny_bundle, tmp_path):
    """loop.py promises "a classified frame is at most one inference older than it would be without the
    overlap". The preparing thread holds a second prepared frame while blocked on the full slot, so on a
    live source faster than the model every result is ~3 inference times old (without overlap: ~1)."""
    from edgecls.runtime.classifier import Classifier

    infer_s = 0.15  # a model slower than the camera (MobileNet on a Pi): the real model, then a wait
    classifier = Classifier(tiny_bundle, artifact="tflite-int8")
    real_infer = classifier.infer

    def slow_infer(prepared):
        time.sleep(infer_s)
        return real_infer(prepared)

    classifier.infer = slow_infer
    video = write_test_video(tmp_path / "fast.avi", frames=100, fps=50.0)  # paced at 50 fps: a live camera
    sink = ListSink()
    from edgecls.runtime.daemon import Daemon

    Daemon(None, [video], classifier=classifier, sinks=[sink], max_frames=12, source_options={"loop": True}).run()
    ages = [r["frame_age_ms"] for r in sink.results[4:]]  # steady state
    bound_ms = (2 * infer_s + 0.075) * 1000  # one inference (always) + one more (the overlap) + slack
    assert statistics.median(ages) < bound_ms, f"frame ages {ages} ms with a {infer_s * 1000:.0f} ms model"


# ---------------------------------------------------------------- nativelog.py: fd 2 through a pipe


def test_review_i7_p3_carriage_return_progress_lines_do_not_stall_native_writers():
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


def test_review_i7_p3_native_code_holding_the_gil_cannot_deadlock_on_a_full_pipe():
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


def test_review_i7_p3_a_native_fatal_message_before_an_abort_is_not_lost():
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


# ---------------------------------------------------------------- window.py: --show


@pytest.mark.slow
def test_review_i7_p5_show_with_an_unreachable_display_is_a_one_line_error_not_an_abort(
    tiny_bundle, tmp_path, gui_python
):  # noqa: F811
    """window.py says both a headless OpenCV and an unreachable display are "checked up front"; only the DISPLAY
    variable is. A DISPLAY nobody serves (an ended `ssh -X`, a stale session) makes Qt abort the process at the
    first imshow: exit 134, and its reason swallowed by the native-log pipe."""
    video = write_test_video(tmp_path / "clip.avi")
    number = next(n for n in range(400, 500) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    env = {**os.environ, "DISPLAY": f":{number}", "QT_QPA_PLATFORM": "xcb"}
    done = subprocess.run(
        [
            gui_python,
            "-m",
            "edgecls.cli",
            "run",
            str(tiny_bundle),
            "--source",
            str(video),
            "--show",
            "--max-frames",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 1, f"exit {done.returncode}: {done.stderr[-1500:]}"
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --show") and "display" in last.lower(), done.stderr[-1500:]


# ---------------------------------------------------------------- http.py: sign-in and cookie

TOKEN = "review-7f3c2a9e"


class _Preview:
    """The two calls StatusServer's preview makes; no frame yet (the page itself is what is checked)."""

    def names(self):
        return ["cam"]

    def frame(self, index):
        return None


def _server(token):
    from edgecls.runtime.daemon.http import StatusServer

    return StatusServer(
        health=lambda: (True, {}),
        latest=lambda: {},
        metrics=lambda: (b"", "text/plain"),
        preview=_Preview(),
        token=token,
    ).start()


def _get(url, headers):
    import urllib.request

    request = urllib.request.Request(url, headers=headers)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_review_i7_p4_session_cookie_is_read_beside_another_apps_cookie_on_the_same_host():
    """Cookies ignore ports: a browser sends the daemon every cookie of 127.0.0.1 / the device's address (Grafana,
    Jupyter, a router UI...). http.cookies.SimpleCookie drops every cookie after one it dislikes (a JSON value, a
    space), so the signed-in browser is sent back to the sign-in form for ever."""
    from edgecls.runtime.daemon.http import COOKIE, session_cookie

    server = _server(TOKEN)
    try:
        valid = f"{COOKIE}_{server.url.rsplit(':', 1)[1]}={session_cookie(TOKEN.encode())}"
        assert _get(server.url + "/", {"Cookie": valid})[0] == 200  # alone, the cookie works
        for other in ('prefs={"theme":"dark"}', "lang=en US"):
            status, _ = _get(server.url + "/", {"Cookie": f"{other}; {valid}"})
            assert status == 200, f"with another app's cookie {other!r} first: {status}"
    finally:
        server.stop()


def test_review_i7_p4_the_documented_sign_in_link_works_for_a_base64_token():
    """README: open http://HOST:PORT/?token=... once. Tokens from `openssl rand -base64` hold '+', which parse_qs
    reads as a space: the link a user pastes answers "That token is not the right one"."""
    token = "q7+Vd/2kZ9+Xc1=="
    server = _server(token)
    try:
        status, headers = _get(server.url + "/?token=" + token, {})
        assert status == 303 and "Set-Cookie" in headers, status
    finally:
        server.stop()
