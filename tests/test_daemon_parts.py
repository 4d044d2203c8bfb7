"""The daemon's parts on their own (runtime/daemon/supervisor.py, loop.py, sinks.py, metrics.py, display names)."""

import json
import time

import pytest

pytest.importorskip("cv2")

from edgecls.runtime.daemon.loop import Smoother  # noqa: E402
from edgecls.runtime.daemon.sinks import JsonlFileSink  # noqa: E402
from edgecls.runtime.daemon.supervisor import Backoff, Supervisor, display_name  # noqa: E402
from edgecls.runtime.sources import SourceError, SourceTimeout, parse_source, redact_uri  # noqa: E402
from tests.mjpeg_server import MjpegServer  # noqa: E402


def _read_until(supervisor, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame = supervisor.read(timeout=0.2)
        except SourceTimeout:
            frame = None
        if predicate(frame):
            return frame
    raise AssertionError(f"timed out; supervisor stats {supervisor.stats}")


def test_watchdog_reopens_a_stream_that_stays_connected_but_sends_nothing():
    """A hung camera: the connection stays open, no frame comes, and OpenCV's own read timeout (5 s) is longer."""
    server = MjpegServer(fps=25, stall_after=10).start()
    # OpenCV's read timeout (10 s) is far from the stall timeout, so the bound below tells who noticed the stall.
    supervisor = Supervisor(server.url, stall_timeout=0.8, backoff=Backoff(0.1, 0.4), timeout_s=10.0).start()
    try:
        first = _read_until(supervisor, lambda f: f is not None, 20)
        _read_until(supervisor, lambda f: supervisor.state == "running", 5)  # the watchdog looks every 0.1 s
        start = time.monotonic()
        _read_until(supervisor, lambda f: supervisor.state == "reconnecting", 8)
        assert time.monotonic() - start < 6.0  # the watchdog, not the 10 s read timeout, noticed the stall
        assert supervisor.stats.outages == 1 and "no new frame for 0.8s" in supervisor.stats.reason
        server.unstall()
        resumed = _read_until(supervisor, lambda f: f is not None and f.index > first.index + 9, 20)
        _read_until(supervisor, lambda f: supervisor.state == "running", 5)
        assert supervisor.stats.reconnects == 1 and supervisor.stats.opens >= 2
        assert resumed.age_ms < 2000 and resumed.source == server.url
    finally:
        supervisor.stop()
        server.kill()
    assert supervisor.state == "stopped"


def test_backoff_doubles_up_to_its_cap():
    assert [Backoff(0.5, 3.0).delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_missing_file_fails_for_good_without_retrying(tmp_path):
    path = tmp_path / "clip.avi"
    path.write_bytes(b"not a video")
    supervisor = Supervisor(str(path), stall_timeout=1.0).start()
    try:
        deadline = time.monotonic() + 10
        while supervisor.state != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert supervisor.state == "failed" and supervisor.stats.opens == 1 and supervisor.done
    finally:
        supervisor.stop()
    assert supervisor.state == "failed"


def test_results_file_appends_and_rotates_by_size(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    sink = JsonlFileSink(path, max_bytes=400, backups=2)
    for i in range(40):
        sink.write({"frame": i, "top1": "circle", "pad": "x" * 20})
    sink.close()
    files = [path.with_name("results.jsonl.2"), path.with_name("results.jsonl.1"), path]
    assert all(f.stat().st_size <= 400 for f in files) and not path.with_name("results.jsonl.3").exists()
    frames = [json.loads(line)["frame"] for f in files for line in f.read_text().splitlines()]
    assert frames == list(range(frames[0], 40))  # the newest results, in order, none lost between files
    again = JsonlFileSink(path, max_bytes=0)  # a restart appends to what is there
    again.write({"frame": 40})
    again.close()
    assert json.loads(path.read_text().splitlines()[-1]) == {"frame": 40}


def test_threshold_turns_low_scores_unknown_and_window_averages():
    smoother = Smoother(window=2, threshold=0.6)
    assert list(smoother([0.9, 0.1])) == pytest.approx([0.9, 0.1])
    assert list(smoother([0.1, 0.9])) == pytest.approx([0.5, 0.5])
    assert smoother.label("cat", 0.5) == "unknown" and smoother.label("cat", 0.6) == "cat"


def test_display_names_hide_passwords():
    assert display_name("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert display_name("http://127.0.0.1:8080/stream.mjpg") == "http://127.0.0.1:8080/stream.mjpg"
    assert display_name("/dev/video0") == "/dev/video0"


SECRET = "pw-9c41e7-secret"


def test_redact_uri_hides_passwords_with_odd_characters_tokens_and_secret_parameters():
    assert redact_uri("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert redact_uri("rtsp://admin:p@ss/w:rd@cam/live") == "rtsp://admin:***@cam/live"  # "@" and "/" in it
    assert redact_uri("https://TOKEN123@cam/x") == "https://***@cam/x"
    assert redact_uri("http://cam/snap.cgi?user=a&password=xyz&ch=1") == "http://cam/snap.cgi?user=a&password=***&ch=1"
    for plain in ("http://127.0.0.1:8080/stream.mjpg", "/dev/video0", "0", "videotestsrc ! appsink"):
        assert redact_uri(plain) == plain
    with pytest.raises(SourceError) as error:  # a typo'd scheme is taken for a path: its error hides the password
        parse_source(f"rtps://admin:{SECRET}@cam/live")
    assert SECRET not in str(error.value)


def test_metric_names_and_help_texts_are_the_documented_ones(tmp_path):
    from edgecls.runtime.daemon.loop import LoopStats
    from edgecls.runtime.daemon.metrics import Metrics
    from edgecls.runtime.daemon.supervisor import Supervisor

    (tmp_path / "stills").mkdir()
    metrics = Metrics()
    metrics.track("cam", Supervisor(str(tmp_path / "stills"), name="cam"), LoopStats())
    before = metrics.exposition()[0].decode()  # tracked, no frame yet: every series exists at 0
    assert 'edgecls_frame_processing_seconds_count{source="cam"} 0.0' in before and 'source="None"' not in before
    metrics.observe_frame("cam", infer_s=0.004, total_s=0.02, age_s=0.03)
    text = metrics.exposition()[0].decode()
    assert 'edgecls_frame_processing_seconds_bucket{le="0.025",source="cam"} 1.0' in text
    assert 'edgecls_frame_processing_seconds_count{source="cam"} 1.0' in text
    assert "# HELP edgecls_source_outages_total Times a source stopped delivering frames.\n" in text
    assert 'edgecls_source_outages_total{source="cam"} 0.0' in text


def test_read_returns_by_its_timeout_while_a_connected_stream_sends_nothing():
    from edgecls.runtime.daemon.supervisor import Supervisor
    from edgecls.runtime.sources import SourceTimeout
    from tests.mjpeg_server import MjpegServer

    server = MjpegServer(fps=25, stall_after=5).start()  # 5 frames, then the connection stays open, silent
    supervisor = Supervisor(server.url, stall_timeout=10.0, timeout_s=10.0).start()  # neither fires in this test
    try:
        frames, stalled, deadline = 0, False, time.monotonic() + 20
        while time.monotonic() < deadline:
            start = time.monotonic()
            try:
                supervisor.read(timeout=0.3)
                frames += 1
            except SourceTimeout:
                took = time.monotonic() - start
                if frames:  # the stream stalled after frames flowed: the wait must still end on time
                    assert took < 1.5, took
                    stalled = True
                    break
        assert frames >= 1 and stalled and supervisor.state == "running"
    finally:
        supervisor.stop()
        server.kill()
