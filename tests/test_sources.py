"""edgecls.runtime.sources: URIs pick the kind; video files, folders and a real MJPEG stream read through OpenCV."""

import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgecls.runtime.sources import RetryPolicy, Source, SourceEnded, SourceError, SourceTimeout, parse_source
from tests.conftest import write_image
from tests.daemon_helpers import write_test_video
from tests.mjpeg_server import MjpegServer


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 20-frame, 20 fps MJPG AVI whose frame i has brightness 10*i."""
    return write_test_video(tmp_path_factory.mktemp("video") / "clip.avi", pattern="ramp")


def test_uris_pick_the_source_kind(tmp_path, video):
    assert parse_source("0").kind == "camera" and parse_source("0").target == 0
    assert parse_source("/dev/video2").kind == "v4l2" and parse_source("v4l2:///dev/video1").target == "/dev/video1"
    assert parse_source("rtsp://127.0.0.1:8554/cam").kind == "network"
    assert parse_source("http://127.0.0.1:8080/stream.mjpg").kind == "network"
    gst = parse_source("videotestsrc ! videoconvert ! appsink")
    assert gst.kind == "gstreamer"
    csi = parse_source("csi://1", csi_pipeline="nvarguscamerasrc sensor-id={sensor} ! appsink", width=640, height=480)
    assert csi.kind == "gstreamer" and csi.target == "nvarguscamerasrc sensor-id=1 ! appsink"
    assert parse_source(str(video)).kind == "video" and parse_source(str(tmp_path)).kind == "folder"
    with pytest.raises(SourceError, match="needs a device profile"):
        parse_source("csi://0")
    with pytest.raises(SourceError, match="does not exist"):
        parse_source(str(tmp_path / "nope.mp4"))


def test_every_frame_mode_reads_the_whole_video_in_order(video):
    with Source(video, every_frame=True) as source:
        frames = list(source)
    assert [f.index for f in frames] == list(range(20))
    brightness = [int(f.image.mean()) for f in frames]
    assert all(abs(b - 10 * i) <= 3 for i, b in enumerate(brightness))
    assert source.stats.dropped == 0 and source.stats.state == "ended"


def test_video_is_paced_at_its_own_frame_rate_and_loops(video):
    start = time.monotonic()
    with Source(video, loop=True) as source:
        frames, ages = [], []
        for _ in range(30):
            frames.append(source.read(timeout=2))
            ages.append(frames[-1].age_ms)  # how old the frame was when we got it
        elapsed = time.monotonic() - start
    assert elapsed >= 1.3  # 30 frames at 20 fps cannot arrive faster than ~1.5 s
    assert frames[-1].index >= 29  # kept going past the 20 frames in the file
    assert max(ages) < 500  # fresh frames (a queue would age them without bound); slack for a loaded CI


def test_slow_consumer_gets_the_newest_frame_and_drops_are_counted(video):
    with Source(video) as source:
        first = source.read(timeout=2)
        time.sleep(0.5)  # ~10 frames arrive meanwhile
        newest = source.read(timeout=2)
    assert newest.index - first.index >= 5
    assert source.stats.dropped >= 4
    assert newest.age_ms < 300  # not a stale buffered frame (that one would be ~500 ms old)


def test_folder_source_yields_each_image_once_and_skips_broken_files(tmp_path):
    for i in range(3):
        write_image(tmp_path / "sub" / f"{i}.png", np.full((8, 8, 3), 40 * i, np.uint8))
    (tmp_path / "sub" / "bad.jpg").write_bytes(b"nope")
    with Source(tmp_path, every_frame=True) as source:
        frames = list(source)
    assert [f.name.rsplit("/", 1)[-1] for f in frames] == ["0.png", "1.png", "2.png"]
    with pytest.raises(SourceEnded):
        source.read(timeout=0.1)


def test_unreachable_stream_fails_clearly_without_hanging():
    start = time.monotonic()
    with pytest.raises(SourceError, match="cannot open source http://127.0.0.1:9/"):
        Source("http://127.0.0.1:9/stream.mjpg", retry=RetryPolicy(max_attempts=0), timeout_s=2)
    assert time.monotonic() - start < 10


def test_mjpeg_stream_outage_is_reported_and_reading_resumes():
    server = MjpegServer(fps=25).start()
    port_url = server.url
    source = Source(port_url, timeout_s=2, retry=RetryPolicy(first_delay=0.2, max_delay=0.5))
    try:
        before = [source.read(timeout=5) for _ in range(5)]
        assert source.stats.state == "running" and before[-1].image.shape == (48, 64, 3)

        server.kill()
        start = time.monotonic()
        with pytest.raises(SourceTimeout, match="no frame"):
            while True:  # frames already buffered may still arrive; then reads must time out, not hang
                source.read(timeout=1.0)
        assert time.monotonic() - start < 15
        assert source.stats.outages >= 1 and source.stats.state == "reconnecting"
        assert "outage" in [e for _, e in source.stats.events]

        server = MjpegServer(port=int(port_url.split(":")[2].split("/")[0]), fps=25).start()
        resumed = source.read(timeout=10)
        assert resumed.index > before[-1].index
        assert source.stats.reconnects >= 1 and source.stats.state == "running"
        assert source.read(timeout=5).age_ms < 1000
    finally:
        source.close()
        server.kill()
    assert source.stats.state == "closed"


def test_run_cli_classifies_every_frame_of_a_video(tiny_bundle, video):
    import json

    from tests.conftest import run_cli

    result = run_cli("run", tiny_bundle, "--source", video, "--every-frame", "--top-k", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(l) for l in result.stdout.splitlines()]
    assert [r["frame"] for r in rows] == list(range(20))
    assert all(
        r["top1"] in ("circle", "square", "triangle") and len(r["topk"]) == 2 and r["dropped"] == 0 for r in rows
    )
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert summary == {
        "event": "stopped",
        "frames": 20,
        "captured": 20,
        "dropped": 0,
        "outages": 0,
        "reconnects": 0,
        "state": "ended",
    }


def test_run_cli_reports_a_source_that_cannot_open(tiny_bundle, tmp_path):
    from tests.conftest import cli_error, run_cli

    assert "does not exist" in cli_error(run_cli("run", tiny_bundle, "--source", tmp_path / "missing.mp4"))


def test_run_cli_classifies_every_image_of_a_folder_once_in_order(tiny_bundle, tmp_path):
    import json

    from tests.conftest import run_cli

    rng = np.random.default_rng(0)
    names = [f"{i:03d}.png" for i in range(120)]
    for name in names:
        write_image(tmp_path / "digits" / name, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    result = run_cli("run", tiny_bundle, "--source", tmp_path / "digits", "--top-k", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(l) for l in result.stdout.splitlines()]
    assert [r["name"].rsplit("/", 1)[-1] for r in rows] == names  # each file once, in order, none dropped
    assert [r["frame"] for r in rows] == list(range(120)) and all(r["dropped"] == 0 for r in rows)
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert summary["frames"] == 120 and summary["dropped"] == 0 and summary["state"] == "ended"


def test_run_cli_refuses_fps_where_it_cannot_pace(tiny_bundle, video):
    from tests.conftest import cli_error, run_cli

    assert "pick one" in cli_error(run_cli("run", tiny_bundle, "--source", video, "--fps", "5", "--every-frame"))
    assert "is live" in cli_error(run_cli("run", tiny_bundle, "--source", "rtsp://127.0.0.1:9/cam", "--fps", "5"))


def test_folder_source_delivers_every_image_to_a_slow_reader_by_default(tmp_path):
    for i in range(30):
        write_image(tmp_path / f"{i:02d}.png", np.full((8, 8, 3), i, np.uint8))
    names = []
    with Source(tmp_path) as source:  # no every_frame: folders are offline inputs
        for frame in source:
            names.append(frame.name.rsplit("/", 1)[-1])
            time.sleep(0.01)  # slower than the capture thread decodes
    assert names == [f"{i:02d}.png" for i in range(30)] and source.stats.dropped == 0


def test_csi_without_a_number_is_sensor_zero():
    from edgecls.runtime.sources import parse_source

    pipeline = "libcamerasrc camera-name={sensor} ! video/x-raw,width={width},height={height},framerate={fps}/1"
    for uri in ("csi://", "csi://0"):
        spec = parse_source(uri, csi_pipeline=pipeline, width=640, height=480, fps=15)
        assert spec.kind == "gstreamer" and spec.uri == uri
        assert spec.target == "libcamerasrc camera-name=0 ! video/x-raw,width=640,height=480,framerate=15/1"
    assert parse_source("csi://1", csi_pipeline=pipeline).target.startswith("libcamerasrc camera-name=1 !")
