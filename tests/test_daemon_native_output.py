"""The daemon end to end: loop.py's overlap, nativelog.py, http.py's sign-in, window.py's checks, signed reloads."""

from __future__ import annotations

import http.client
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO, require_tool

cv2 = pytest.importorskip("cv2")

from edgecls.runtime.daemon import Daemon  # noqa: E402
from edgecls.runtime.daemon.http import COOKIE  # noqa: E402
from tests.daemon_helpers import ListSink, wait_for, write_test_video  # noqa: E402

TOKEN = "tok-51c0ffee-preview-not-in-logs"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("daemon-finish") / "clip.avi")


def request(url, path, headers=None, read_bytes=None):
    """(status, headers, body) from a real HTTP request; read_bytes limits reading an endless stream."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read(read_bytes) if read_bytes else response.read()
        return response.status, dict(response.getheaders()), body
    finally:
        conn.close()


@pytest.fixture
def guarded(tiny_bundle, video, caplog):
    caplog.set_level(logging.DEBUG, logger="edgecls")
    d = Daemon(tiny_bundle, [video], port=0, token=TOKEN, sinks=[], source_options={"loop": True}).start()
    wait_for(lambda: all(loop.shown for loop in d.loops), 30, "a classified frame")
    yield d
    d.stop()
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.get_records("teardown")
    assert any("GET /?token=*** " in r.getMessage() for r in records)  # request lines were logged...
    assert not [r.getMessage() for r in records if TOKEN in r.getMessage()]  # ...never with the token


def test_browser_signs_in_with_the_token_once_and_gets_a_cookie_not_the_token(guarded):
    status, headers, body = request(guarded.url, "/")
    assert status == 401 and b'name="token"' in body  # a browser gets a sign-in form, not JSON
    status, headers, body = request(guarded.url, "/?token=wrong-" + TOKEN)
    assert status == 401 and b"not the right one" in body and "Set-Cookie" not in headers
    status, headers, _ = request(guarded.url, "/?token=" + TOKEN)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";", 1)[0]}
    assert request(guarded.url, "/", jar)[0] == 200
    assert request(guarded.url, "/latest", jar)[0] == 200
    status, headers, chunk = request(guarded.url, "/stream/0", jar, read_bytes=2000)
    assert status == 200 and headers["Content-Type"].startswith("multipart/x-mixed-replace")
    assert b"\xff\xd8" in chunk  # a JPEG is flowing
    assert cookie.startswith(f"{COOKIE}_{urlsplit(guarded.url).port}=")  # per port: daemons side by side
    forged = {"Cookie": f"{COOKIE}_{urlsplit(guarded.url).port}={'0' * 64}"}
    for path in ("/", "/latest", "/stream/0", "/metrics", "/healthz"):
        assert request(guarded.url, path, forged, read_bytes=200)[0] == 401, path
    # the token in the query string of anything but the sign-in page is no way in
    assert request(guarded.url, "/latest?token=" + TOKEN)[0] == 401


def test_preview_behind_a_token_renders_in_headless_chromium(guarded):
    chromium = require_tool("chromium", "chromium-browser", package="chromium")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "preview.png"
        done = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={tmp}/profile",
                "--window-size=900,600",
                "--timeout=8000",
                f"--screenshot={shot}",
                f"{guarded.url}/?token={TOKEN}",
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert shot.exists(), done.stderr[-2000:]
        image = cv2.imread(str(shot))
    green = (image[..., 1] > 150) & (image[..., 0] < 100) & (image[..., 2] < 100)
    bright = image.max(axis=2) > 200
    assert green.sum() > 200, "no annotated frame: the redirect's cookie did not reach the <img> stream"
    assert bright.sum() > 2000


def _run_cli(args, timeout=120):
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


def _decoded_frames(video):
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_preparation_runs_on_its_own_thread_and_every_frame_is_classified_once(tiny_bundle, tmp_path):
    from edgecls.runtime.classifier import Classifier

    video = write_test_video(tmp_path / "circles.avi", frames=30)
    decoded = _decoded_frames(video)
    classifier = Classifier(tiny_bundle, artifact="tflite-int8")
    threads = set()
    original, original_pixels = classifier.prepare, classifier.prepare_pixels

    def recording_prepare(image, order="rgb"):  # the real method, with a note of the calling thread
        threads.add(threading.current_thread().name)
        return original(image, order)

    def recording_prepare_pixels(px):  # the daemon's path when drift monitoring measures the same pixels
        threads.add(threading.current_thread().name)
        return original_pixels(px)

    classifier.prepare, classifier.prepare_pixels = recording_prepare, recording_prepare_pixels
    sink = ListSink()
    d = Daemon(
        None, [video], classifier=classifier, sinks=[sink], max_frames=30, top_k=3, source_options={"every_frame": True}
    )
    d.run()
    frames = [r["frame"] for r in sink.results]
    assert frames == list(range(30))  # every frame, in order, none twice
    assert threads == {f"prepare:{d.supervisors[0].name}"}
    reference = Classifier(tiny_bundle, artifact="tflite-int8", top_k=3)
    for r in sink.results:  # each result is the model's answer on that very frame (not its neighbour's tensor)
        expected = reference.classify(decoded[r["frame"]], "bgr").to_dict()
        assert r["topk"] == expected["topk"], r["frame"]
        assert set(r["latency_ms"]) == {"pre", "infer", "post", "total"} and r["latency_ms"]["pre"] > 0


def test_reload_to_other_preprocessing_never_feeds_a_tensor_prepared_for_the_old_model(tiny_bundle, tmp_path):
    """A frame prepared ahead for the old model is prepared again for the new one: after the swap, every result is
    the new classifier's answer on its frame (labels renamed so a stale tensor would show as a mismatch)."""
    import json as _json
    import shutil

    from edgecls.runtime.bundle import sha256_file
    from edgecls.runtime.classifier import Classifier

    second = tmp_path / "second"
    shutil.copytree(tiny_bundle, second)
    manifest = _json.loads((second / "manifest.json").read_text())
    manifest["labels"] = ["new_" + label for label in manifest["labels"]]
    manifest["input"]["mean"] = [40.0]  # another normalization: the same frame gives another tensor
    for check in manifest.get("checks", []):
        check["label"] = "new_" + check["label"]
    (second / "labels.txt").write_text("\n".join(manifest["labels"]) + "\n")
    manifest["files"]["labels.txt"] = sha256_file(second / "labels.txt")
    (second / "manifest.json").write_text(_json.dumps(manifest, indent=2))
    video = write_test_video(tmp_path / "circles.avi", frames=20)
    decoded = _decoded_frames(video)
    old = Classifier(tiny_bundle, artifact="tflite-int8", top_k=3)
    new = Classifier(second, artifact="tflite-int8", top_k=3)
    sink = ListSink()
    d = Daemon(
        None,
        [video],
        classifier=old,
        sinks=[sink],
        max_frames=400,
        top_k=3,
        source_options={"every_frame": True, "loop": True},
    )

    def swap_midway(daemon):
        wait_for(lambda: len(sink.results) >= 50, 30, "50 results from the first model")
        daemon.swap_classifier(new)

    d.run(on_start=lambda daemon: threading.Thread(target=swap_midway, args=(daemon,), daemon=True).start())
    switched = [i for i, r in enumerate(sink.results) if r["top1"].startswith("new_")]
    assert switched and switched[0] >= 50
    for r in sink.results[switched[0] :]:
        frame = decoded[r["frame"] % len(decoded)]
        assert r["topk"] == new.classify(frame, "bgr").to_dict()["topk"], r["frame"]
    for r in sink.results[: switched[0]]:
        assert r["topk"] == old.classify(decoded[r["frame"] % len(decoded)], "bgr").to_dict()["topk"], r["frame"]


def test_show_refuses_with_one_line_when_opencv_has_no_gui(tiny_bundle, video):
    from edgecls.runtime.daemon.window import gui_backend

    if gui_backend() is not None:
        pytest.skip("this OpenCV has a GUI; the refusal is for headless builds")
    done = _run_cli(["run", str(tiny_bundle), "--source", str(video), "--show", "--max-frames", "2"])
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --show needs OpenCV with GUI support") and "opencv-python" in lines[-1]
    assert "Traceback" not in done.stderr


def test_device_profile_gives_daemon_mode_its_artifact_and_camera(tiny_bundle, video, tmp_path):
    """No --source and no --artifact: both come from the profile (a user's JSON file)."""
    import json

    profile = tmp_path / "bench-rig.json"
    profile.write_text(
        json.dumps({"name": "bench-rig", "artifacts": ["onnx-int8", "tflite-int8"], "threads": 1, "camera": str(video)})
    )
    results = tmp_path / "results.jsonl"
    done = _run_cli(
        ["-v", "run", str(tiny_bundle), "--device", str(profile), "--duration", "2", "--results", str(results)]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded onnx-int8" in done.stderr, done.stderr[-2000:]
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert lines and {r["source"] for r in lines} == {str(video)}


def test_daemon_told_to_verify_loads_only_signed_bundles(tiny_bundle, video, tmp_path):
    """`edgecls run --allowed-signers FILE`: an unsigned bundle is refused at start (one line, exit 1); a signed one
    runs; a hot reload to an unsigned bundle is refused and the signed model keeps serving."""
    import shutil

    from edgecls.devices.sign import sign_bundle, trusted_line

    require_tool("ssh-keygen", package="openssh-client")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text(trusted_line(tmp_path / "key.pub", "release@example.com"))
    signed, unsigned = tmp_path / "signed", tmp_path / "unsigned"
    shutil.copytree(tiny_bundle, signed)
    shutil.copytree(tiny_bundle, unsigned)
    sign_bundle(signed, tmp_path / "key")
    args = [
        "--source",
        str(video),
        "--duration",
        "1",
        "--allowed-signers",
        str(signers),
        "--results",
        str(tmp_path / "r.jsonl"),
    ]
    refused = _run_cli(["run", str(unsigned), *args])
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is not signed" in refused.stderr and "Traceback" not in refused.stderr
    accepted = _run_cli(["run", str(signed), *args])
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert (tmp_path / "r.jsonl").read_text().strip()

    link = tmp_path / "current"
    link.symlink_to(signed)
    d = Daemon(link, [video], sinks=[], allowed_signers=str(signers), source_options={"loop": True}).start()
    try:
        wait_for(lambda: all(loop.stats.processed for loop in d.loops), 30, "results from the signed bundle")
        first = d.classifier
        tmp_link = tmp_path / "current.tmp"
        tmp_link.symlink_to(unsigned)
        os.replace(tmp_link, link)
        wait_for(lambda: "not signed" in json_dumps(d.health()[1]["model"]), 10, "the reload refused")
        before = sum(loop.stats.processed for loop in d.loops)
        wait_for(lambda: sum(loop.stats.processed for loop in d.loops) > before + 5, 10, "the old model serving")
        assert d.classifier is first
    finally:
        d.stop()


def json_dumps(data) -> str:
    import json

    return json.dumps(data)


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


def test_overlap_keeps_classified_frames_at_most_one_inference_older(tiny_bundle, tmp_path):
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
