"""Direct tests for runtime/ mutants that survived benchmarks/mutation.py (issue 15 point 14).

Each test pins a behaviour the wider suite only passed through: the preview overlay on grayscale
frames and its text margin, the daemon's summary keys, and the systemd notifier's socket and thread.
"""

import socket
import time

import numpy as np
import pytest

from runtime.daemon.notify import SystemdNotifier

cv2 = pytest.importorskip("cv2")


def test_i15_p14_annotate_turns_a_grayscale_frame_into_bgr():
    from runtime.daemon.preview import annotate

    gray = np.full((240, 320), 128, np.uint8)  # 320 wide: no enlargement, only the conversion
    out = annotate(gray, {"top1": "cat", "score": 0.5}, 2.0)
    assert out.shape == (240, 320, 3) and out.dtype == np.uint8
    band = max(18, 240 // 12)
    assert (out[band + 1 :] == 128).all()  # below the band (rows 0..band): the gray value on every channel
    assert (out[:band, :, 0] == 0).all() and out[:band, :, 1].max() > 0  # black band, green text


def test_i15_p14_annotate_draws_the_text_four_pixels_from_the_left_edge():
    from runtime.daemon.preview import TEXT, annotate

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


def test_i15_p14_daemon_summary_and_health_name_every_counter_per_source(tiny_bundle, tmp_path):
    from runtime.daemon import Daemon

    stills = tmp_path / "stills"
    stills.mkdir()
    daemon = Daemon(tiny_bundle, [stills], sinks=[])  # never started: every counter is still zero
    (name,) = daemon.summary()
    assert daemon.summary()[name] == {"classified": 0, "captured": 0, "dropped": 0, "outages": 0,
                                      "reconnects": 0, "state": daemon.supervisors[0].stats.state}
    healthy, detail = daemon.health()
    source = detail["sources"][name]
    assert not healthy and detail["unhealthy"] == [name]
    assert {k: source[k] for k in ("frames", "classified", "dropped", "outages", "reconnects", "fps")} == \
        {"frames": 0, "classified": 0, "dropped": 0, "outages": 0, "reconnects": 0, "fps": 0.0}
    assert set(source) == {"state", "reason", "frames", "classified", "dropped", "outages", "reconnects", "fps",
                           "last_frame_age_s"} and source["last_frame_age_s"] is None

    stats = daemon.loops[0].stats  # real timestamps: fps is (n - 1) / span, almost never 2 decimals
    for _ in range(20):
        stats.record({"top1": "x"})
        time.sleep(0.013)
        stats.record({"top1": "x"})
        if round(stats.fps, 3) != round(stats.fps, 2):
            break
    fps = stats.fps
    assert round(fps, 3) != round(fps, 2) and daemon.health()[1]["sources"][name]["fps"] == round(fps, 2)


def test_i15_p14_notifier_outside_systemd_stays_silent_even_if_the_socket_appears_later(tmp_path, monkeypatch):
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


def test_i15_p14_notifier_thread_never_keeps_the_process_alive():
    notifier = SystemdNotifier(lambda: 0, socket_path="")
    assert notifier._thread.daemon  # a daemon that forgets stop() must still exit
