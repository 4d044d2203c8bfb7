"""runtime/daemon/loop.py: frames prepared on their own thread, each classified once, by the model that serves it."""

from __future__ import annotations

import json
import statistics
import threading
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgecls.runtime.daemon import Daemon  # noqa: E402
from tests.daemon_helpers import ListSink, wait_for, write_test_video  # noqa: E402


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


def _stills(folder, sizes):
    """A folder of grey images, named so they are read in order, one per (width, height) in `sizes`."""
    folder.mkdir()
    for i, (width, height) in enumerate(sizes):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((height, width, 3), 40 + 10 * i, np.uint8))
    return folder


def test_a_pixel_roi_outside_the_first_frame_ends_edgecls_run_with_one_line_naming_the_source_and_roi(
    tiny_bundle, tmp_path
):
    from tests.conftest import cli_error, run_cli

    stills = _stills(tmp_path / "stills", [(64, 48)] * 3)
    result = run_cli("run", tiny_bundle, "--source", f"door={stills}", "--set", "door.roi=60,0,10,10", timeout=120)
    line = cli_error(result)
    assert line.startswith("error: source door: roi [60, 0, 10, 10] lies outside its 64x48 frame"), line
    assert result.stdout == ""  # not one frame classified through a view that cannot be made


def test_images_that_change_size_leave_the_roi_clipped_to_them_and_say_so_once(tiny_bundle, tmp_path, caplog):
    from edgecls.runtime.daemon.config import SourceConfig

    stills = _stills(tmp_path / "stills", [(64, 48)] * 4 + [(40, 30)] * 4)
    sink = ListSink()
    settings = (SourceConfig(str(stills), name="door", roi=(30, 10, 20, 20)),)
    with caplog.at_level("WARNING", logger="edgecls.daemon"):
        Daemon(tiny_bundle, [str(stills)], sinks=[sink], source_settings=settings).run()
    views = [r["view"]["roi"] for r in sink.results]
    assert views == [[30, 10, 20, 20]] * 4 + [[30, 10, 10, 20]] * 4
    clipped = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert clipped == ["door: the frame is now 40x30; roi [30, 10, 20, 20] clipped to [30, 10, 10, 20]"]


def _scrape(url, name, source):
    from prometheus_client.parser import text_string_to_metric_families

    from tests.daemon_helpers import http_get

    body = http_get(url + "/metrics")[1].decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("source") == source:
                return sample.value
    raise AssertionError(f"{name}{{source={source!r}}} not in /metrics")


def test_max_fps_5_on_a_30_fps_camera_classifies_5_frames_a_second_and_counts_the_rest_as_skipped(tiny_bundle):
    from edgecls.runtime.daemon.config import SourceConfig
    from tests.mjpeg_server import MjpegServer

    camera = MjpegServer(fps=30).start()
    sink = ListSink()
    settings = (SourceConfig(camera.url, name="cam", max_fps=5),)
    daemon = Daemon(tiny_bundle, [camera.url], sinks=[sink], port=0, source_settings=settings).start()
    try:
        wait_for(lambda: sink.results, 30, "a first classified frame")
        time.sleep(4.2)
        counts = {k: _scrape(daemon.url, f"edgecls_{k}_total", "cam") for k in ("frames_skipped", "frames_dropped")}
        health = daemon.health()[1]["sources"]["cam"]
        first = sink.results[0]["ts"]
        steady = [r["ts"] for r in list(sink.results) if first + 0.2 <= r["ts"] < first + 4.2]
    finally:
        daemon.stop()
        camera.kill()
    rate = len(steady) / 4.0
    assert 4.5 <= rate <= 5.5, (rate, steady)
    processed = len(sink.results)
    assert counts["frames_skipped"] >= 3 * processed, (counts, processed)  # about 5 of every 6 frames
    assert counts["frames_dropped"] < counts["frames_skipped"] / 10, counts  # skipped frames are not drops
    assert health["skipped"] >= counts["frames_skipped"] and health["state"] == "running", health


def test_max_fps_on_a_folder_paces_it_and_classifies_every_image(tiny_bundle, tmp_path):
    """A folder waits for its reader: max_fps spaces its images out, none is skipped."""
    from edgecls.runtime.daemon.config import SourceConfig

    stills = _stills(tmp_path / "stills", [(32, 32)] * 6)
    sink = ListSink()
    daemon = Daemon(tiny_bundle, [str(stills)], sinks=[sink], source_settings=(SourceConfig(str(stills), max_fps=5),))
    daemon.run()
    stamps = [r["ts"] for r in sink.results]
    assert [r["frame"] for r in sink.results] == list(range(6)) and daemon.loops[0].pace.skipped == 0
    assert stamps[-1] - stamps[0] >= 0.95  # five gaps of 0.2 s


def test_a_folder_waiting_for_its_max_fps_turn_is_alive_not_stalled(tiny_bundle, tmp_path):
    """A folder hands over every image: while its next image waits for a turn longer than --stall-timeout, the
    capture is blocked on its reader, not stalled; every image is classified and the run ends without a failure."""
    from edgecls.runtime.daemon.config import SourceConfig

    stills = _stills(tmp_path / "stills", [(32, 32)] * 5)
    sink = ListSink()
    settings = (SourceConfig(str(stills), name="cam", max_fps=2),)  # a turn each 0.5 s, stalled after 0.3 s
    daemon = Daemon(tiny_bundle, [str(stills)], sinks=[sink], stall_timeout=0.3, source_settings=settings)
    daemon.run()
    assert [r["frame"] for r in sink.results] == list(range(5)), sink.results
    assert daemon.failures() == [] and daemon.supervisors[0].stats.outages == 0
    assert daemon.supervisors[0].state == "ended"


def test_a_video_read_frame_by_frame_waiting_for_its_max_fps_turn_is_alive_not_stalled(tiny_bundle, tmp_path):
    """--every-frame on a video: the same wait for the reader, the same liveness."""
    from edgecls.runtime.daemon.config import SourceConfig

    clip = str(write_test_video(tmp_path / "clip.avi", frames=4))
    sink = ListSink()
    settings = (SourceConfig(clip, max_fps=2),)
    daemon = Daemon(
        tiny_bundle,
        [clip],
        sinks=[sink],
        stall_timeout=0.3,
        source_settings=settings,
        source_options={"every_frame": True},
    )
    daemon.run()
    assert [r["frame"] for r in sink.results] == list(range(4)), sink.results
    assert daemon.failures() == [] and daemon.supervisors[0].stats.outages == 0


def test_a_roi_left_outside_resized_frames_degrades_healthz_with_the_reason_and_counts_unviewable_frames(
    tiny_bundle, tmp_path
):
    """Frames that shrank under a pixel ROI are classified no more: /healthz says the source is degraded and why,
    /metrics counts them (edgecls_frames_unviewable_total), and the drift window no longer shows the old view."""
    from edgecls.runtime.daemon.config import SourceConfig

    stills = _stills(tmp_path / "stills", [(64, 48)] * 2 + [(30, 20)] * 18)
    settings = (SourceConfig(str(stills), name="door", roi=(40, 20, 20, 20)),)
    daemon = Daemon(
        tiny_bundle, [str(stills)], sinks=[], port=0, source_settings=settings, source_options={"loop": True}
    ).start()
    try:
        from tests.daemon_helpers import http_get

        def degraded():
            status, body = http_get(daemon.url + "/healthz")
            health = json.loads(body)
            return (status, health) if health["status"] == "degraded" else None

        status, health = wait_for(degraded, 20, "/healthz saying degraded")
        unviewable = _scrape(daemon.url, "edgecls_frames_unviewable_total", "door")
    finally:
        daemon.stop()
    door = health["sources"]["door"]
    assert status == 200 and health["degraded"] == ["door"] and door["degraded"] == "unviewable", health
    assert door["unviewable_reason"] == "the frame is now 30x20 and roi [40, 20, 20, 20] lies outside it", door
    assert door["unviewable"] >= 1 and unviewable >= 1, (door, unviewable)
    assert door["drift"]["view"]["roi"] is None, door["drift"]


def test_a_result_records_the_view_of_its_own_frame_when_the_next_frame_has_already_resolved_another(
    tiny_bundle, tmp_path
):
    """The last 64x48 frame's inference waits until the preparing thread has looked at the first 40x30 frame (the
    view's box is then the clipped one): its result must still record the box its own pixels were cut with."""
    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.daemon.config import SourceConfig

    class HeldAtFrame(Classifier):
        """The real classifier; its inference of loop frame `hold` first waits for `until()`."""

        def __init__(self, bundle, hold, until):
            super().__init__(bundle)
            self.calls, self._hold, self._until = 0, hold, until

        def infer(self, prepared):
            if threading.current_thread().name.startswith("loop:"):
                if self.calls == self._hold:
                    wait_for(self._until, 20, "the preparing thread resolving the ROI for the next frame's size")
                self.calls += 1
            return super().infer(prepared)

    stills = _stills(tmp_path / "stills", [(64, 48)] * 4 + [(40, 30)] * 4)
    settings = (SourceConfig(str(stills), name="door", roi=(30, 10, 20, 20)),)
    sink, loops = ListSink(), []
    clf = HeldAtFrame(tiny_bundle, 3, lambda: loops and loops[0].view.box == (30, 10, 10, 20))
    daemon = Daemon(tiny_bundle, [str(stills)], classifier=clf, sinks=[sink], source_settings=settings)
    loops.extend(daemon.loops)
    daemon.run()
    assert [r["view"]["roi"] for r in sink.results] == [[30, 10, 20, 20]] * 4 + [[30, 10, 10, 20]] * 4


def test_a_source_capped_below_half_a_frame_a_second_shows_its_rate_between_turns_not_zero(tiny_bundle, tmp_path):
    """max_fps 0.25 classifies a frame every 4 s: 2.5 s after one, /healthz and edgecls_fps still say 0.25 (the
    rate read 0 once 2 s passed without a frame, most of each period)."""
    from edgecls.runtime.daemon.config import SourceConfig

    stills = _stills(tmp_path / "stills", [(32, 32)] * 3)
    sink = ListSink()
    settings = (SourceConfig(str(stills), name="cam", max_fps=0.25),)
    daemon = Daemon(
        tiny_bundle, [str(stills)], sinks=[sink], port=0, source_settings=settings, source_options={"loop": True}
    ).start()
    try:
        wait_for(lambda: len(sink.results) >= 2, 30, "two classified frames")
        time.sleep(2.5)
        health = daemon.health()[1]["sources"]["cam"]
        scraped = _scrape(daemon.url, "edgecls_fps", "cam")
        between = len(sink.results) == 2  # still before the third turn
    finally:
        daemon.stop()
    assert between, [r["ts"] for r in sink.results]
    assert 0.2 <= health["fps"] <= 0.3 and 0.2 <= scraped <= 0.3, (health, scraped)
