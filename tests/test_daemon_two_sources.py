"""The daemon (issue 7) in one process: a generated video and a real MJPEG stream at once, read over real HTTP."""

import json
import logging
import subprocess
import time

import numpy as np
import pytest

from tests.conftest import require_tool

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
