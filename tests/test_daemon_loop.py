"""runtime/daemon/loop.py: frames prepared on their own thread, each classified once, by the model that serves it."""

from __future__ import annotations

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
