"""runtime/daemon/daemon.py in one process: a video and a real MJPEG stream at once, over real HTTP."""

import json
import logging
import subprocess
import time
import urllib.request

import numpy as np
import pytest

from tests.conftest import require_tool, run_cli, write_image

cv2 = pytest.importorskip("cv2")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from edgecls.runtime.daemon import Daemon  # noqa: E402
from edgecls.runtime.daemon.supervisor import Backoff  # noqa: E402
from tests.daemon_helpers import ListSink, wait_for, write_test_video  # noqa: E402
from tests.daemon_helpers import http_get as get
from tests.mjpeg_server import MjpegServer  # noqa: E402

RESULT_KEYS = {"source", "ts", "frame", "top1", "score", "topk", "latency_ms", "frame_age_ms"}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 20-frame, 20 fps MJPG AVI of shapes on a dark background."""
    return write_test_video(tmp_path_factory.mktemp("daemon-video") / "clip.avi")


def metrics(url):
    status, body = get(url + "/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families, family, name, **labels):
    return next(
        s.value
        for s in families[family].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def promtool_check(body: bytes) -> None:
    """`promtool check metrics` (Debian `prometheus`) lints names, units and types; any complaint fails."""
    promtool = require_tool("promtool", package="prometheus")
    done = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (done.stdout + done.stderr).decode()


def test_two_sources_serve_health_latest_and_metrics_and_survive_a_stream_outage(tiny_bundle, video):
    server = MjpegServer(fps=25).start()
    port = int(server.url.split(":")[2].split("/")[0])
    sink = ListSink()
    # The stall timeout is generous so a starved video is not taken for a stall; the dead stream is noticed by
    # its lost connection, at once.
    daemon = Daemon(
        tiny_bundle,
        [video, server.url],
        port=0,
        stall_timeout=3.0,
        backoff=Backoff(0.2, 1.0),
        sinks=[sink],
        source_options={"loop": True},
    )
    stream, film = server.url, str(video)
    daemon.start()
    try:
        wait_for(lambda: get(daemon.url + "/healthz")[0] == 200, 30, "both sources running")
        wait_for(lambda: all(json.loads(get(daemon.url + "/latest")[1]).values()), 20, "a result from each source")
        latest = json.loads(get(daemon.url + "/latest")[1])
        labels = daemon.classifier.labels
        for name in (film, stream):
            result = latest[name]
            assert RESULT_KEYS <= set(result) and result["source"] == name
            assert result["top1"] in labels and result["score"] == result["topk"][0]["score"]
            assert set(result["latency_ms"]) == {"pre", "infer", "post", "total"}
            assert result["latency_ms"]["infer"] > 0 and result["frame_age_ms"] >= 0

        families = metrics(daemon.url)
        for name in (film, stream):
            assert sample(families, "edgecls_frames_processed", "edgecls_frames_processed_total", source=name) > 0
            assert sample(families, "edgecls_source_up", "edgecls_source_up", source=name) == 1
            assert sample(families, "edgecls_inference_seconds", "edgecls_inference_seconds_count", source=name) > 0
            assert sample(families, "edgecls_fps", "edgecls_fps", source=name) > 0
        buckets = {
            float(s.labels["le"]) for s in families["edgecls_inference_seconds"].samples if s.name.endswith("_bucket")
        }
        assert min(buckets) < 0.001 and 1.0 <= max(b for b in buckets if b != float("inf"))
        promtool_check(get(daemon.url + "/metrics")[1])
        info = next(s for s in families["edgecls_bundle_info"].samples if s.name == "edgecls_bundle_info")
        assert info.labels["sha256"] == daemon.classifier.artifact.sha256
        assert info.labels["artifact"] == daemon.classifier.artifact.name and info.labels["version"]

        # The camera dies for ~4 s: only its source turns unhealthy; the video keeps being classified.
        server.kill()
        killed_at = time.monotonic()
        film_before = len(sink.of(film))
        down = wait_for(
            lambda: (lambda s, b: json.loads(b) if s == 503 else None)(*get(daemon.url + "/healthz")),
            10,
            "/healthz to report the dead stream",
        )
        assert down["unhealthy"] == [stream] and down["sources"][stream]["state"] in ("reconnecting", "starting")
        assert down["sources"][stream]["reason"] and down["sources"][film]["state"] == "running"
        time.sleep(max(0.0, 4.0 - (time.monotonic() - killed_at)))
        assert get(daemon.url + "/healthz")[0] == 503
        film_during = len(sink.of(film)) - film_before
        assert film_during >= 10  # ~4 s at 20 fps (fewer when loaded): the video did not wait for the dead stream
        stream_during = [r for r in sink.of(stream) if r["ts"] > time.time() - 3.0]
        assert stream_during == []  # nothing classified for the dead camera (no substitute frames)

        server = MjpegServer(port=port, fps=25).start()
        restarted = time.time()
        wait_for(lambda: get(daemon.url + "/healthz")[0] == 200, 30, "/healthz back to 200")
        wait_for(lambda: [r for r in sink.of(stream) if r["ts"] > restarted], 20, "stream results after the outage")
        families = metrics(daemon.url)
        assert sample(families, "edgecls_source_reconnects", "edgecls_source_reconnects_total", source=stream) >= 1
        assert sample(families, "edgecls_source_reconnects", "edgecls_source_reconnects_total", source=film) == 0
        assert sample(families, "edgecls_source_up", "edgecls_source_up", source=stream) == 1
        frames = [r["frame"] for r in sink.of(stream)]
        assert frames == sorted(set(frames))  # numbering continues across the reopen, no frame twice
    finally:
        start = time.monotonic()
        daemon.stop()
        stopped_in = time.monotonic() - start
        server.kill()
    assert stopped_in < 2.0 and sink.closed
    # Never more results than captured frames (compared after stop, when the capture count is exact: while
    # running, the supervisor counts frames at its watchdog's 0.1 s polls and can lag the loop by a frame or two).
    assert len(sink.of(stream)) <= daemon.supervisors[1].stats.frames
    assert {s.state for s in daemon.supervisors} == {"stopped"}


def test_bearer_token_guards_every_endpoint_and_is_never_logged(tiny_bundle, video, caplog):
    token = "tok-7f3a9c1e-not-in-logs"
    daemon = Daemon(tiny_bundle, [video], port=0, token=token, sinks=[ListSink()], source_options={"loop": True})
    caplog.set_level(logging.DEBUG, logger="edgecls")
    daemon.start()
    try:
        wait_for(lambda: get(daemon.url + "/healthz", token)[0] == 200, 30, "the source running")
        for path in ("/healthz", "/metrics", "/latest", "/nothing-here"):
            assert get(daemon.url + path)[0] == 401, path
            assert get(daemon.url + path, token="wrong-" + token)[0] == 401, path
            status, body = get(daemon.url + path, token)
            assert status == (404 if path == "/nothing-here" else 200), path
            assert token.encode() not in body
    finally:
        daemon.stop()
    assert any("http" in r.getMessage() for r in caplog.records)  # request lines were logged at debug level...
    assert not [r for r in caplog.records if token in r.getMessage()]  # ...without the token


def test_smoothing_and_threshold_match_the_model_frame_by_frame(tiny_bundle, video):
    """Every frame of the file, in order: each score is the mean of the last 3 frames' probabilities."""
    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.preprocess import preprocess

    classifier = Classifier(tiny_bundle)
    frames = []
    capture = cv2.VideoCapture(str(video))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    probs = [classifier.probabilities(preprocess(f, classifier.spec, order="bgr")[None])[0] for f in frames]
    smoothed = [np.mean(probs[max(0, i - 2) : i + 1], axis=0) for i in range(len(probs))]
    threshold = float(np.median([s.max() for s in smoothed]))

    sink = ListSink()
    daemon = Daemon(
        tiny_bundle,
        [video],
        classifier=classifier,
        smooth=3,
        threshold=threshold,
        sinks=[sink],
        source_options={"every_frame": True},
    )
    summary = daemon.run()
    assert [r["frame"] for r in sink.results] == list(range(20)) and summary[str(video)]["state"] == "ended"
    for result, expected in zip(sink.results, smoothed):
        best = int(np.argmax(expected))
        assert result["score"] == pytest.approx(float(expected[best]), abs=1e-5)
        assert result["top1"] == (classifier.labels[best] if expected[best] >= threshold else "unknown")
    assert 0 < sum(r["top1"] == "unknown" for r in sink.results) < 20


SECRET = "pw-9c41e7-secret"


def test_a_password_in_a_source_uri_reaches_no_log_healthz_metrics_or_latest(tiny_bundle, caplog):
    """The dead camera's reason ("cannot open source URI") used to carry the raw URI into /healthz and the log."""
    server = MjpegServer(fps=25).start()
    live = server.url.replace("http://", f"http://admin:{SECRET}@")  # the test server ignores credentials
    dead = f"http://admin:{SECRET}@127.0.0.1:9/stream.mjpg"  # port 9: connection refused
    caplog.set_level(logging.DEBUG)
    daemon = Daemon(
        tiny_bundle, [live, dead], port=0, sinks=[ListSink()], stall_timeout=1.0, backoff=Backoff(0.1, 0.3)
    ).start()
    try:
        dead_name = daemon.supervisors[1].name
        wait_for(lambda: "cannot open" in daemon.supervisors[1].stats.reason, 30, "the dead source's reason")
        wait_for(lambda: daemon.loops[0].stats.latest, 30, "a result from the live source")
        bodies = [get(daemon.url + path)[1].decode() for path in ("/healthz", "/metrics", "/latest", "/")]
    finally:
        daemon.stop()
        server.kill()
    assert "cannot open" in json.loads(bodies[0])["sources"][dead_name]["reason"]
    assert [b for b in bodies if SECRET in b] == []
    assert [r.getMessage() for r in caplog.records if SECRET in r.getMessage()] == []
    assert "admin:***@" in bodies[2]  # the sources are still named, only the password is gone


def test_sources_that_change_frame_size_keep_being_classified(tiny_bundle, tmp_path):
    """A camera reconfigured mid-stream (64x48, then 160x120 on the same connection) and a folder of mixed sizes."""
    for i, (h, w) in enumerate([(32, 32), (240, 320), (17, 91), (480, 64)]):
        write_image(tmp_path / "stills" / f"{i}.png", np.full((h, w, 3), 50 * i, np.uint8))
    server = MjpegServer(fps=25, resize_after=10).start()
    sink = ListSink()
    daemon = Daemon(tiny_bundle, [server.url, tmp_path / "stills"], port=0, sinks=[sink]).start()
    try:
        wait_for(
            lambda: [r for r in sink.results if r["source"] == server.url and r["frame"] >= 30],
            30,
            "stream results well past the size change",
        )
        wait_for(lambda: daemon.supervisors[1].state == "ended", 30, "the folder to end")
        with urllib.request.urlopen(daemon.url + "/stream/0", timeout=10) as stream:  # annotates any size
            assert b"image/jpeg" in stream.read(2000)
    finally:
        daemon.stop()
        server.kill()
    assert [loop.stats.errors for loop in daemon.loops] == [0, 0]
    assert len([r for r in sink.results if r["source"] == str(tmp_path / "stills")]) == 4
    assert daemon.supervisors[0].stats.outages == 0


def test_each_named_source_keeps_its_own_smoothing_and_threshold_and_is_served_under_its_name(tiny_bundle, video):
    """`own` smooths over 3 frames under a threshold, `plain` takes the daemon's (1 frame, no threshold): frame by
    frame each matches the model as its own settings say; /latest and /metrics name them `own` and `plain`."""
    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.daemon.config import SourceConfig
    from edgecls.runtime.preprocess import preprocess

    classifier = Classifier(tiny_bundle)
    capture, frames = cv2.VideoCapture(str(video)), []
    while (read := capture.read())[0]:
        frames.append(read[1])
    probs = [classifier.probabilities(preprocess(f, classifier.spec, order="bgr")[None])[0] for f in frames]
    smoothed = [np.mean(probs[max(0, i - 2) : i + 1], axis=0) for i in range(len(probs))]
    threshold = float(np.median([s.max() for s in smoothed]))
    settings = (
        SourceConfig(str(video), name="own", smooth=3, threshold=threshold),
        SourceConfig(str(video), name="plain"),
    )
    sink = ListSink()
    daemon = Daemon(
        tiny_bundle,
        [str(video)] * 2,
        classifier=classifier,
        port=0,
        sinks=[sink],
        source_settings=settings,
        source_options={"every_frame": True},
    ).start()
    try:
        wait_for(lambda: all(loop.done for loop in daemon.loops), 60, "both sources ended")
        latest = json.loads(get(daemon.url + "/latest")[1])
        families = metrics(daemon.url)
    finally:
        daemon.stop()
    assert set(latest) == {"own", "plain"}
    assert sample(families, "edgecls_frames_processed", "edgecls_frames_processed_total", source="own") == 20
    assert sample(families, "edgecls_frames_processed", "edgecls_frames_processed_total", source="plain") == 20
    for name, expected_probs, cut in (("own", smoothed, threshold), ("plain", probs, 0.0)):
        results = sink.of(name)
        assert [r["frame"] for r in results] == list(range(20))
        for result, expected in zip(results, expected_probs):
            best = int(np.argmax(expected))
            assert result["score"] == pytest.approx(float(expected[best]), abs=1e-5)
            assert result["top1"] == (classifier.labels[best] if expected[best] >= cut else "unknown")
            assert "view" not in result  # the whole, upright frame: results as they always were
    assert 0 < sum(r["top1"] == "unknown" for r in sink.of("own")) < 20
    assert not any(r["top1"] == "unknown" for r in sink.of("plain"))


def test_an_unnamed_source_beside_a_named_one_keeps_its_own_shown_name(tiny_bundle, video, tmp_path):
    """`--source door=clip.avi --source clip.avi`: the second is clip.avi (its metric label and capture folder),
    not clip.avi#2 (a #N counted the named source's URI too, so removing `door` renamed it)."""
    results = tmp_path / "r.jsonl"
    done = run_cli(
        "run",
        tiny_bundle,
        "--source",
        f"door={video}",
        "--source",
        video,
        "--every-frame",
        "--max-frames",
        "1",
        "--results",
        results,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    started = json.loads(next(l for l in done.stderr.splitlines() if l.startswith('{"event": "started"')))
    assert started["sources"] == ["door", str(video)]
    assert {json.loads(line)["source"] for line in results.read_text().splitlines()} == {"door", str(video)}
