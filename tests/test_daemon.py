"""The daemon as a whole (runtime/daemon/daemon.py): how scripts build it, signals as a real `edgecls run` gets them."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

cv2 = pytest.importorskip("cv2")

from edgecls.runtime.daemon import Daemon  # noqa: E402
from tests.daemon_helpers import ListSink, http_get, start_cli_daemon, write_test_video  # noqa: E402
from tests.test_daemon_reload import relabelled, repoint  # noqa: E402


def _storm(pid, signals, seconds):
    """Signals back to back for `seconds`, cycling through `signals` (as a reload loop or an impatient Ctrl-C)."""
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        for _ in range(200):
            os.kill(pid, signals[i % len(signals)])
            i += 1
    return i


def _serving(url):
    status, body = http_get(url + "/healthz", timeout=3)
    return json.loads(body)["model"]["bundle"] if status in (200, 503) else None


def test_a_burst_of_signals_never_freezes_the_daemon_reloads_still_work_and_sigterm_stops_it(tiny_bundle, tmp_path):
    """SIGHUPs back to back, then a switch of `current`: the new release is served within 5 s; then SIGTERM/SIGINT back
    to back: the process exits within 2 s. Before, a handler took Event's lock: a second signal arriving while the main
    thread held it froze the daemon (reloads dead, SIGTERM ignored), in about 1 burst of 5."""
    one, _ = relabelled(tiny_bundle, tmp_path / "release-1", "one_")
    two, _ = relabelled(tiny_bundle, tmp_path / "release-2", "two_")
    clip = write_test_video(tmp_path / "clip.avi", frames=10)
    current = tmp_path / "current"
    os.symlink(one, current)
    failures = []
    for trial in range(4):
        process, url, lines = start_cli_daemon(current, clip)
        try:
            want = str(two if trial % 2 == 0 else one)
            _storm(process.pid, [signal.SIGHUP], 1.5)
            repoint(current, want)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _serving(url) != want:
                time.sleep(0.1)
            if _serving(url) != want:
                failures.append(f"trial {trial}: no reload after a SIGHUP burst")
            started = time.monotonic()
            _storm(process.pid, [signal.SIGTERM, signal.SIGINT], 0.3)
            try:
                process.wait(max(0.1, started + 2.0 - time.monotonic()))
            except subprocess.TimeoutExpired:
                failures.append(f"trial {trial}: still running 2 s after a SIGTERM burst")
        except ProcessLookupError:
            pass  # it exited during the burst: judged below
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
    assert failures == [], failures


def test_sighup_alone_reloads_the_same_path_a_bundle_repaired_in_place_is_then_served(tiny_bundle, tmp_path):
    """No link moves: only the signal can tell the daemon that the release under `current` was relabelled in place."""
    release, _ = relabelled(tiny_bundle, tmp_path / "release", "old_")
    clip = write_test_video(tmp_path / "clip.avi", frames=10)
    current = tmp_path / "current"
    os.symlink(release, current)
    process, url, lines = start_cli_daemon(current, clip)
    try:

        def labels():
            status, body = http_get(url + "/latest", timeout=3)
            result = json.loads(body).get(str(clip)) if status == 200 else None
            return {t["label"] for t in result["topk"]} if result else set()

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not labels():
            time.sleep(0.1)
        assert labels() and all(label.startswith("old_") for label in labels()), labels()
        shutil.rmtree(release)
        relabelled(tiny_bundle, release, "new_")  # the same path, other labels
        time.sleep(1.5)  # the link watcher's polls see nothing move
        got = labels()
        assert got and all(label.startswith("old_") for label in got), got
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(label.startswith("new_") for label in labels()):
            time.sleep(0.1)
        assert labels() and all(label.startswith("new_") for label in labels()), "".join(lines)[-2000:]
        assert process.poll() is None  # reloaded, still running
    finally:
        process.terminate()
        process.wait(10)


def test_a_script_may_name_the_bundle_and_the_sources_by_keyword(tiny_bundle, tmp_path):
    """`Daemon(bundle=B, sources=[V], ...)`, as scripts wrote it before the typed configuration, still runs."""
    clip = write_test_video(tmp_path / "clip.avi", frames=5)
    sink = ListSink()
    daemon = Daemon(bundle=str(tiny_bundle), sources=[str(clip)], sinks=[sink], max_frames=3, drift=False)
    assert daemon.config.bundle == str(tiny_bundle) and daemon.config.sources == (str(clip),)
    daemon.run()
    assert len(sink.of(str(clip))) == 3 and sink.closed
    with pytest.raises(TypeError, match="give the bundle once"):
        Daemon(str(tiny_bundle), bundle=str(tiny_bundle), sources=[str(clip)])


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


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    """An orientation-sensitive model: the built-in digits (6 and 9, 2 and 7 tell apart only upright), trained for a
    few epochs (about 0.99 test accuracy) and converted to tflite-int8. Returns (bundle, run)."""
    from edgecls.converters.formats import FORMATS
    from edgecls.converters.pipeline import ConvertOptions, convert
    from edgecls.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("digits")
    train(TrainConfig(data="digits", out=str(folder / "run"), epochs=6, seed=0, verbose=0))
    options = ConvertOptions(formats=[FORMATS["tflite-int8"]], calibration_size=64, max_drop=100.0)
    convert(folder / "run", folder / "bundle", options)
    return folder / "bundle", folder / "run"


def _digits_video(path, files, upside_down: bool):
    """The run's held-out digits, 8x8 scaled to 96x96 (linear, as training enlarges them), one a frame, written as a
    real MJPG video."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 96))
    for file in files:
        image = cv2.resize(cv2.imread(str(file)), (96, 96), interpolation=cv2.INTER_LINEAR)
        writer.write(cv2.rotate(image, cv2.ROTATE_180) if upside_down else image)
    writer.release()
    return path


def _video_accuracy(bundle, video, truth, **settings) -> float:
    """Top-1 accuracy of a daemon over every frame of `video`, with the source's own `settings`."""
    from edgecls.runtime.daemon.config import SourceConfig

    sink = ListSink()
    Daemon(
        bundle,
        [str(video)],
        sinks=[sink],
        source_options={"every_frame": True, "realtime": False},
        source_settings=(SourceConfig(str(video), **settings),),
        drift=False,
    ).run()
    assert len(sink.results) == len(truth)
    return sum(r["top1"] == truth[r["frame"]] for r in sink.results) / len(truth)


def test_a_camera_mounted_upside_down_classifies_as_well_as_an_upright_one_with_rotate_180(digits_bundle, tmp_path):
    import json

    bundle, run = digits_bundle
    from edgecls.core.datasets.builtin import materialize

    root = materialize("digits")  # where the run's built-in data set lies (its split names files in it)
    test = json.loads((run / "split.json").read_text())["splits"]["test"][::3]  # 120 held-out digits, all ten
    files, truth = [root / path for path, _, _ in test], [path.split("/")[0] for path, _, _ in test]
    upright = _digits_video(tmp_path / "upright.avi", files, upside_down=False)
    flipped = _digits_video(tmp_path / "upside-down.avi", files, upside_down=True)

    straight = _video_accuracy(bundle, upright, truth)
    turned = _video_accuracy(bundle, flipped, truth, rotate=180)
    unturned = _video_accuracy(bundle, flipped, truth)
    print(
        f"top-1 over {len(truth)} frames: upright {straight:.3f}, upside down with rotate=180 {turned:.3f}, "
        f"without {unturned:.3f}"
    )
    assert straight >= 0.9
    assert turned == straight
    assert unturned < straight - 0.3


class _StallSink(ListSink):
    """A sink that also keeps the simple mode's stall lines, as SimpleLines writes them to stderr."""

    def __init__(self):
        super().__init__()
        self.stalls = []

    def stall(self, event):
        self.stalls.append(event)


def test_the_simple_mode_prints_no_stall_line_for_a_source_its_max_fps_leaves_waiting(tiny_bundle, tmp_path):
    """max_fps 0.5 on a looping 20 fps clip, --timeout 0.5: frames keep arriving (skipped between turns), so the
    source is not stalled; a turn each 2 s classifies one."""
    from edgecls.runtime.daemon.config import SourceConfig

    clip = str(write_test_video(tmp_path / "clip.avi", frames=20))
    sink = _StallSink()
    daemon = Daemon(
        tiny_bundle,
        [clip],
        sinks=[sink],
        simple=True,
        duration=3.5,
        source_settings=(SourceConfig(clip, max_fps=0.5),),
        source_options={"loop": True, "timeout_s": 0.5},
    )
    daemon.run()
    assert 1 <= len(sink.results) <= 3, len(sink.results)
    assert sink.stalls == []
    assert daemon.loops[0].pace.skipped > 20
