"""edgecls.runtime.daemon parts (preview, notify, http, metrics, loop, supervisor): behaviours pinned by direct tests.

Each test pins a behaviour the wider suite only passed through: the preview overlay on grayscale
frames and its text margin, the daemon's summary keys, and the systemd notifier's socket and thread.
"""

import socket
import time

import numpy as np
import pytest

from edgecls.runtime.daemon.notify import SystemdNotifier

cv2 = pytest.importorskip("cv2")


def test_annotate_turns_a_grayscale_frame_into_bgr():
    from edgecls.runtime.daemon.preview import annotate

    gray = np.full((240, 320), 128, np.uint8)  # 320 wide: no enlargement, only the conversion
    out = annotate(gray, {"top1": "cat", "score": 0.5}, 2.0)
    assert out.shape == (240, 320, 3) and out.dtype == np.uint8
    band = max(18, 240 // 12)
    assert (out[band + 1 :] == 128).all()  # below the band (rows 0..band): the gray value on every channel
    assert (out[:band, :, 0] == 0).all() and out[:band, :, 1].max() > 0  # black band, green text


def test_annotate_draws_the_text_four_pixels_from_the_left_edge():
    from edgecls.runtime.daemon.preview import TEXT, annotate

    frame = np.full((240, 320, 3), 200, np.uint8)
    result, fps = {"top1": "dog", "score": 0.75}, 12.5
    band = max(18, 240 // 12)
    out = annotate(frame, result, fps)[:band]
    # The same text drawn at x = 0 on a black band: annotate's copy must be that image shifted right by 4.
    ref = np.zeros((band, 320 + 8, 3), np.uint8)
    cv2.putText(ref, "dog 0.75  12.5 fps", (0, band - 5), cv2.FONT_HERSHEY_SIMPLEX, band / 30, TEXT, 1, cv2.LINE_AA)
    assert ref[:, :4].any()  # the glyphs' own bearing starts inside the first 4 columns, so a shift shows
    np.testing.assert_array_equal(out[:, :4], 0)
    np.testing.assert_array_equal(out[:, 4:], ref[:, : 320 - 4])


def test_daemon_summary_and_health_name_every_counter_per_source(tiny_bundle, tmp_path):
    from edgecls.runtime.daemon import Daemon

    stills = tmp_path / "stills"
    stills.mkdir()
    daemon = Daemon(tiny_bundle, [stills], sinks=[])  # never started: every counter is still zero
    (name,) = daemon.summary()
    assert daemon.summary()[name] == {
        "classified": 0,
        "captured": 0,
        "dropped": 0,
        "outages": 0,
        "reconnects": 0,
        "state": daemon.supervisors[0].stats.state,
    }
    healthy, detail = daemon.health()
    source = detail["sources"][name]
    assert not healthy and detail["unhealthy"] == [name]
    assert {k: source[k] for k in ("frames", "classified", "dropped", "outages", "reconnects", "fps")} == {
        "frames": 0,
        "classified": 0,
        "dropped": 0,
        "outages": 0,
        "reconnects": 0,
        "fps": 0.0,
    }
    assert (
        set(source)
        == {
            "state",
            "reason",
            "frames",
            "classified",
            "dropped",
            "outages",
            "reconnects",
            "fps",
            "last_frame_age_s",
            "drift",
        }
        and source["last_frame_age_s"] is None
    )

    stats = daemon.loops[0].stats  # real timestamps: fps is (n - 1) / span, almost never 2 decimals
    for _ in range(20):
        stats.record({"top1": "x"})
        time.sleep(0.013)
        stats.record({"top1": "x"})
        if round(stats.fps, 3) != round(stats.fps, 2):
            break
    fps = stats.fps
    assert round(fps, 3) != round(fps, 2) and daemon.health()[1]["sources"][name]["fps"] == round(fps, 2)


def test_notifier_outside_systemd_stays_silent_even_if_the_socket_appears_later(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier(lambda: 0)
    assert notifier.socket_path == ""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", path)  # decided at construction: not ours to pick up now
        assert notifier.send("READY=1") is False
        with pytest.raises(BlockingIOError):
            listener.recv(64)
        assert SystemdNotifier(lambda: 0).send("READY=1") is True  # the same socket does work
        assert listener.recv(64) == b"READY=1"


def test_notifier_thread_never_keeps_the_process_alive():
    notifier = SystemdNotifier(lambda: 0, socket_path="")
    assert notifier._thread.daemon  # a daemon that forgets stop() must still exit


def test_a_request_without_the_token_gets_a_json_error_and_a_bearer_challenge():
    import json
    import urllib.error
    import urllib.request

    from edgecls.runtime.daemon.http import StatusServer

    server = StatusServer(
        health=lambda: (True, {"status": "ok"}), latest=lambda: {}, metrics=lambda: (b"", "text/plain"), token="s3cret"
    ).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.url + "/healthz", timeout=10)
        assert caught.value.code == 401
        assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="edgecls"'
        assert caught.value.headers["Content-Type"] == "application/json"
        assert json.loads(caught.value.read()) == {"error": "missing or wrong bearer token"}
    finally:
        server.stop()


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


def test_an_unclassifiable_frame_is_logged_with_its_cause_and_the_loop_goes_on(tiny_bundle, tmp_path, caplog):
    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.daemon.loop import SourceLoop
    from edgecls.runtime.daemon.supervisor import Supervisor

    stills = tmp_path / "stills"
    stills.mkdir()
    for i in range(2):
        cv2.imwrite(str(stills / f"{i}.png"), np.full((32, 32, 3), 60 * i, np.uint8))
    broken = Classifier(tiny_bundle)
    broken.labels = []  # a model whose labels went missing: classify() cannot name any class
    supervisor = Supervisor(str(stills), name="stills").start()
    loop = SourceLoop(supervisor, Classifier(tiny_bundle), lambda result: None)
    loop.use(broken)
    with caplog.at_level("ERROR", logger="edgecls.daemon"):
        loop.start().join(30)
    supervisor.stop()
    assert loop.done and loop.stats.errors == 2 and loop.stats.processed == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "edgecls.daemon"]
    assert len(messages) == 2 and all(m.startswith("stills: frame ") for m in messages)
    assert all(
        m.endswith("not classified: IndexError: index 0 is out of bounds for axis 0 with size 0") for m in messages
    ), messages


def test_a_result_from_a_folder_names_the_image_it_came_from(tiny_bundle, tmp_path):
    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.daemon.loop import SourceLoop
    from edgecls.runtime.daemon.supervisor import Supervisor

    stills = tmp_path / "stills"
    stills.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(stills / name), np.full((32, 32, 3), 90, np.uint8))
    results = []
    supervisor = Supervisor(str(stills), name="stills").start()
    loop = SourceLoop(supervisor, Classifier(tiny_bundle), results.append).start()
    loop.join(30)
    supervisor.stop()
    assert [r.get("name") for r in results] == [str(stills / "a.png"), str(stills / "b.png")]


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
