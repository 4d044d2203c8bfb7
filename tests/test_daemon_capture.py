"""runtime/daemon/capture.py: --capture keeps the frames the model is unsure of, laid out for `edgecls train`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.daemon_helpers import ListSink, write_test_video

cv2 = pytest.importorskip("cv2")

from edgecls.runtime.daemon import Daemon  # noqa: E402
from edgecls.runtime.daemon.capture import INBOX, Capture  # noqa: E402


def test_low_score_frames_are_captured_with_sidecars_under_a_size_cap(tiny_bundle, tmp_path):
    video = write_test_video(tmp_path / "clip.avi", frames=40)
    capture = Capture(tmp_path / "captures", below=0.0, sample=1, max_bytes=40_000, queue_size=64)  # every frame
    sink = ListSink()
    Daemon(
        tiny_bundle, [video], sinks=[sink], max_frames=40, capture=capture, source_options={"every_frame": True}
    ).run()
    images = sorted((tmp_path / "captures" / INBOX).rglob("*.jpg"))
    sidecars = sorted((tmp_path / "captures" / INBOX).rglob("*.json"))
    assert capture.captured + capture.dropped == 40 and capture.captured > 0
    total = sum(p.stat().st_size for p in images + sidecars)
    assert total <= 40_000 and len(images) < capture.captured  # the cap deleted the oldest
    assert [p.stem for p in images] == [p.stem for p in sidecars]  # pairs: an image never loses its sidecar
    by_frame = {r["frame"]: r for r in sink.results}
    for image, sidecar in zip(images, sidecars):
        meta = json.loads(sidecar.read_text())
        assert meta["source"] == str(video) and meta["artifact"] and len(meta["sha256"]) == 64
        assert meta["top1"] == by_frame[meta["frame"]]["top1"] and meta["topk"] == by_frame[meta["frame"]]["topk"]
        decoded = cv2.imread(str(image))
        assert decoded is not None and decoded.shape == (48, 64, 3)
    kept = sorted(json.loads(p.read_text())["frame"] for p in sidecars)
    assert kept[-1] == max(by_frame) and kept[0] > 0  # newest kept, oldest gone


def test_confident_frames_are_not_captured_and_sampling_adds_some(tiny_bundle, tmp_path):
    video = write_test_video(tmp_path / "clip.avi", frames=30)
    none = Capture(tmp_path / "none", below=0.0)
    Daemon(tiny_bundle, [video], sinks=[], max_frames=30, capture=none, source_options={"every_frame": True}).run()
    assert none.captured == 0 and not list((tmp_path / "none" / INBOX).rglob("*.jpg"))
    sampled = Capture(tmp_path / "sampled", below=0.0, sample=3, seed=1)
    Daemon(tiny_bundle, [video], sinks=[], max_frames=30, capture=sampled, source_options={"every_frame": True}).run()
    assert 3 <= sampled.captured <= 20


def test_labelled_captures_make_a_training_folder(tiny_bundle, tmp_path):
    """Moving captures into class folders is all it takes: the dataset scanner sees those classes, not the inbox."""
    from edgecls.core.datasets.folder import dataset_classes

    video = write_test_video(tmp_path / "clip.avi", frames=20)
    folder = tmp_path / "captures"
    done = run_cli(
        "run",
        str(tiny_bundle),
        "--source",
        str(video),
        "--capture",
        str(folder),
        "--capture-every",
        "1",
        "--results",
        str(tmp_path / "r.jsonl"),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    images = sorted((folder / INBOX).rglob("*.jpg"))
    assert len(images) >= 2
    for label, image in zip(("circle", "square"), images):
        (folder / label).mkdir()
        shutil.move(str(image), folder / label / image.name)
    assert dataset_classes(folder) == ["circle", "square"]


# ------------------------------------------------------------------ the darkening video of test_drift_daemon.py


def _captured(folder):
    """(image, sidecar dict) of every capture in the inbox, oldest frame first."""
    pairs = [(p, json.loads(p.with_suffix(".json").read_text())) for p in (folder / INBOX).rglob("*.jpg")]
    return sorted(pairs, key=lambda pair: pair[1]["frame"])


def test_the_unsure_frames_of_the_darkening_video_land_with_valid_sidecars(tiny_bundle, tiny_run_dir, tmp_path):
    """Exactly the frames scoring below --capture-below are kept, each with a sidecar that matches its result."""
    from tests.test_drift_daemon import write_test_split_video

    video = str(write_test_split_video(tmp_path / "shifted.avi", tiny_run_dir, cycles=2, dark_cycles=2))
    sink = ListSink()
    Daemon(tiny_bundle, [video], sinks=[sink], drift_window=20, source_options={"every_frame": True}).run()
    scores = sorted(r["score"] for r in sink.results)
    below = scores[len(scores) // 2]  # the median: about half the frames are "unsure"
    capture = Capture(tmp_path / "captures", below=below, queue_size=len(scores))
    sink = ListSink()
    daemon = Daemon(
        tiny_bundle, [video], sinks=[sink], capture=capture, drift_window=20, source_options={"every_frame": True}
    )
    daemon.run()
    unsure = {r["frame"]: r for r in sink.results if r["score"] < below}
    assert capture.dropped == 0 and 0 < len(unsure) < len(sink.results)
    captured = _captured(tmp_path / "captures")
    assert [meta["frame"] for _, meta in captured] == sorted(unsure)  # those frames, and only those
    art = daemon.classifier.artifact
    for image, meta in captured:
        result = unsure[meta["frame"]]
        assert meta["score"] < below and meta["score"] == result["score"] and meta["topk"] == result["topk"]
        assert meta["top1"] == result["top1"] and meta["source"] == video and meta["ts"] == result["ts"]
        assert meta["artifact"] == art.name and meta["sha256"] == art.sha256 and meta["bundle"]
        assert image.parent == tmp_path / "captures" / INBOX / image.parent.name
        decoded = cv2.imread(str(image))
        assert decoded is not None and decoded.shape == (40, 40, 3)


def _capture_two(tiny_bundle, tiny_run_dir, tmp_path):
    from tests.test_drift_daemon import write_test_split_video

    video = write_test_split_video(tmp_path / "clip.avi", tiny_run_dir, cycles=1)
    capture = Capture(tmp_path / "captures", below=1.0, queue_size=64)  # every frame is "unsure"
    Daemon(
        tiny_bundle,
        [video],
        sinks=[],
        capture=capture,
        drift_window=20,
        max_frames=4,
        source_options={"every_frame": True},
    ).run()
    return [image for image, _ in _captured(tmp_path / "captures")][:2]


def _moved(images, folder):
    """A person labelling: each image (without its sidecar) into a class folder of `folder`."""
    moved = []
    for label, image in zip(("circle", "square"), images):
        (folder / label).mkdir(exist_ok=True)
        moved.append(shutil.move(str(image), folder / label / f"captured-{image.name}"))
    return [Path(p) for p in moved]


def test_edgecls_train_takes_a_training_folder_with_two_labelled_captures(
    tiny_bundle, tiny_run_dir, shapes_folder, tmp_path
):
    from tests.conftest import run_cli

    data = tmp_path / "data"
    shutil.copytree(shapes_folder, data)
    moved = _moved(_capture_two(tiny_bundle, tiny_run_dir, tmp_path), data)
    done = run_cli(
        "train",
        "--data",
        data,
        "--out",
        tmp_path / "run",
        "--image-size",
        16,
        "--epochs",
        1,
        "--widths",
        8,
        "--no-augment",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "metadata.json").is_file() and (run / "model.keras").is_file()
    recorded = {p for entries in json.loads((run / "split.json").read_text())["splits"].values() for p, _, _ in entries}
    assert {f"{p.parent.name}/{p.name}" for p in moved} <= recorded  # the captures are training data now
    assert len(recorded) == sum(1 for p in data.rglob("*") if p.is_file())  # and nothing of the inbox


@pytest.mark.slow  # a real `edgecls train` in a subprocess: TensorFlow's start alone takes ~8 s
def test_edgecls_train_takes_the_capture_folder_itself_once_images_are_in_class_folders(
    tiny_bundle, tiny_run_dir, tmp_path
):
    """`edgecls train --data CAPTUREDIR`: the .unlabelled inbox (images and sidecars) is ignored by the scan."""
    from tests.conftest import run_cli

    folder = tmp_path / "captures"
    moved = _moved(_capture_two(tiny_bundle, tiny_run_dir, tmp_path), folder)
    assert list((folder / INBOX).rglob("*.jpg"))  # the rest still waits in the inbox
    done = run_cli(
        "train",
        "--data",
        folder,
        "--out",
        tmp_path / "run",
        "--image-size",
        16,
        "--epochs",
        1,
        "--widths",
        8,
        "--no-augment",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert meta["labels"] == ["circle", "square"] and sum(meta["dataset"]["counts"].values()) == len(moved)


def test_frames_left_unwritten_at_stop_are_counted_as_dropped(tmp_path):
    """Stopping within the SIGTERM budget may leave queued frames unwritten: they count as dropped, not vanish.
    (Before, `close` gave up silently and captured + dropped fell short of what was offered.)"""
    capture = Capture(tmp_path / "captures", below=1.0, queue_size=64)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)  # slow to encode
    for frame in range(40):
        capture.offer(image, {"source": "cam", "ts": 1.0, "frame": frame, "score": 0.1, "top1": "a", "topk": []})
    capture.close(timeout=0.0)
    capture._thread.join(10)  # the frame being written when close gave up still lands
    assert capture.dropped > 0 and capture.captured + capture.dropped == 40
    assert len(list((tmp_path / "captures" / INBOX).rglob("*.jpg"))) == capture.captured


# ------------------------------------------------------------------ loose ends: stop, leftovers, names, nan


def _result(source, frame, score=0.1):
    return {
        "source": source,
        "ts": 1_700_000_000.0,
        "frame": frame,
        "score": score,
        "top1": "a",
        "topk": [{"label": "a", "score": score}],
    }


def test_temp_files_a_killed_daemon_left_are_removed_at_start_and_the_cap_then_holds(tmp_path):
    """kill -9 between write and rename leaves `.NAME.x.tmp` files: never renamed, never counted against
    --capture-max-mb, never deleted, they filled the disk unseen. A new Capture removes them."""
    folder = tmp_path / "captures" / INBOX / "cam"
    folder.mkdir(parents=True)
    left = [folder / ".20261123-101010-00000007.jpg.k3x9_q.tmp", folder / ".20261123-101010-00000007.json.a1b2c3.tmp"]
    for path in left:
        path.write_bytes(b"\0" * 50_000)
    kept = folder / ".keep"  # a dot file that is not ours: left alone
    kept.write_text("")
    capture = Capture(tmp_path / "captures", below=1.0, max_bytes=30_000)
    assert not any(p.exists() for p in left) and kept.exists()
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for frame in range(6):
        capture.offer(image, _result("cam", frame))
    capture.close(timeout=10)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "captures").rglob("*") if p.is_file())
    assert capture.captured == 6 and on_disk <= 30_000


def test_sources_whose_names_sanitise_alike_keep_separate_folders(tmp_path):
    """`cam/1` and `cam:1` both became `cam_1`: same folder, same TIME-FRAME names, one overwrote the other."""
    capture = Capture(tmp_path / "captures", below=1.0)
    image = np.zeros((8, 8, 3), np.uint8)
    for source in ("cam/1", "cam:1", "cam_1"):
        capture.offer(image, _result(source, 3))
    capture.close(timeout=10)
    sidecars = sorted((tmp_path / "captures" / INBOX).rglob("*.json"))
    assert len(sidecars) == 3 and len({p.parent for p in sidecars}) == 3
    assert sorted(json.loads(p.read_text())["source"] for p in sidecars) == ["cam/1", "cam:1", "cam_1"]
    assert (tmp_path / "captures" / INBOX / "cam_1").is_dir()  # a name that is already safe stays as it is


def test_a_nan_score_gives_a_strict_json_sidecar(tmp_path):
    """A model that answered NaN: the frame is worth a look (captured), and its sidecar is JSON every parser takes
    (null, not the NaN token Python's json writes by default)."""
    capture = Capture(tmp_path / "captures", below=0.5)
    capture.offer(np.zeros((8, 8, 3), np.uint8), _result("cam", 1, score=float("nan")))
    capture.close(timeout=10)
    (sidecar,) = (tmp_path / "captures" / INBOX).rglob("*.json")
    text = sidecar.read_text()
    assert "NaN" not in text
    meta = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))
    assert meta["score"] is None and meta["topk"] == [{"label": "a", "score": None}]


def test_results_and_capture_sidecars_name_the_model_that_produced_them_across_a_reload(tiny_bundle, tmp_path):
    """Before and after a hot reload, each result and each sidecar names the bundle whose labels it carries."""
    import os

    from tests.daemon_helpers import wait_for
    from tests.test_daemon_reload import relabelled, repoint

    first, one = relabelled(tiny_bundle, tmp_path / "release-1", "one_")
    second, two = relabelled(tiny_bundle, tmp_path / "release-2", "two_")
    current = tmp_path / "current"
    os.symlink(first, current)
    video = write_test_video(tmp_path / "clip.avi", frames=20)
    capture = Capture(tmp_path / "captures", below=0.0, sample=1, queue_size=256)  # every frame
    sink = ListSink()
    daemon = Daemon(current, [video], sinks=[sink], capture=capture, source_options={"loop": True})

    def labels(topk):
        return {t["label"] for t in topk}

    def scenario(d):
        try:
            wait_for(lambda: len(sink.results) > 5, 20, "results from the first bundle")
            repoint(current, second)
            wait_for(lambda: sum(labels(r["topk"]) <= two for r in list(sink.results)) > 5, 20, "the second model")
        finally:
            d.request_stop()

    daemon.run(on_start=scenario)
    expected = {}
    for result in sink.results:
        bundle = first if labels(result["topk"]) <= one else second
        assert result["model"]["bundle"] == str(bundle), result
        assert result["model"]["artifact"] and len(result["model"]["sha256"]) == 64
        expected[result["frame"]] = str(bundle)
    assert set(expected.values()) == {str(first), str(second)}
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "captures" / INBOX).rglob("*.json")]
    models = {meta["bundle"] for meta in sidecars}
    assert models == {str(first), str(second)}, models  # captures after the reload name the new model
    for meta in sidecars:
        assert meta["bundle"] == (str(first) if labels(meta["topk"]) <= one else str(second)), meta


def test_capture_errors_are_counted_logged_once_a_minute_and_shown_in_healthz(tiny_bundle, tmp_path, caplog):
    """A read-only capture folder fails every frame: a few log lines (not one per frame), every failure counted in
    /metrics (edgecls_capture_errors_total) and shown in /healthz with the last error."""
    import logging
    import os

    from prometheus_client.parser import text_string_to_metric_families

    from tests.daemon_helpers import http_get, wait_for

    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    folder = tmp_path / "captures"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], check=True)
    try:
        capture = Capture(folder, below=0.0, sample=1)  # every frame
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        video = write_test_video(tmp_path / "clip.avi", frames=20)
        daemon = Daemon(tiny_bundle, [video], port=0, sinks=[], capture=capture, source_options={"loop": True})
        seen = {}

        def scenario(d):
            try:
                wait_for(lambda: capture.errors >= 30, 30, "30 failed captures")
                seen["health"] = json.loads(http_get(d.url + "/healthz")[1])
                body = http_get(d.url + "/metrics")[1].decode()
                family = next(f for f in text_string_to_metric_families(body) if f.name == "edgecls_capture_errors")
                seen["metric"] = family.samples[0].value
            finally:
                d.request_stop()

        with caplog.at_level(logging.INFO, logger="edgecls.daemon"):
            daemon.run(on_start=scenario)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR and "capture" in r.getMessage()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    assert "Read-only file system" in lines[0].getMessage()
    assert seen["metric"] >= 30
    status = seen["health"]["capture"]
    assert status["errors"] >= 30 and "Read-only file system" in status["last_error"], status


def test_a_capture_is_the_view_the_model_saw_and_each_source_keeps_its_own_capture_settings(tiny_bundle, tmp_path):
    """`turned` crops and rotates, capturing every frame (capture.below = 1); `plain` has the daemon's
    --capture-below 0, so none of its frames is kept. The JPEG is the crop turned as the model saw it."""
    from edgecls.runtime.daemon.config import CaptureConfig, DaemonConfig, SourceConfig

    stills = tmp_path / "stills"
    stills.mkdir()
    ramp = np.tile(np.linspace(0, 250, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))  # dark left, bright right
    frames = [np.clip(ramp.astype(int) + 25 * i - 40, 0, 255).astype(np.uint8) for i in range(4)]  # told apart
    for i, frame in enumerate(frames):
        cv2.imwrite(str(stills / f"{i}.png"), frame)
    settings = (
        SourceConfig(str(stills), name="turned", roi=(8, 4, 40, 30), rotate=90, capture_below=1.0),
        SourceConfig(str(stills), name="plain"),
    )
    config = DaemonConfig.of(
        tiny_bundle, settings, capture=CaptureConfig(str(tmp_path / "captures"), below=0.0), drift=False
    )
    Daemon(config, sinks=[]).run()

    inbox = tmp_path / "captures" / INBOX
    assert sorted(p.name for p in inbox.iterdir()) == ["turned"]
    images = sorted((inbox / "turned").glob("*.jpg"))
    assert len(images) == 4
    for image in images:
        sidecar = json.loads(image.with_suffix(".json").read_text())
        assert sidecar["view"] == {"roi": [8, 4, 40, 30], "rotate": 90, "flip": "none"}
        crop = frames[sidecar["frame"]][4:34, 8:48]
        saved = cv2.imread(str(image)).astype(int)
        assert saved.shape == (40, 30, 3)
        assert np.abs(saved - cv2.rotate(crop, cv2.ROTATE_90_CLOCKWISE)).mean() < 3
        assert np.abs(saved - cv2.rotate(crop, cv2.ROTATE_90_COUNTERCLOCKWISE)).mean() > 30


def test_frames_labelled_away_from_the_inbox_no_longer_count_toward_the_cap(tmp_path):
    """A person moving captures into class folders frees their room: the frames still waiting are not deleted to
    make room for ones that already left (the cap counted them and deleted inbox frames far too early)."""
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    capture = Capture(tmp_path / "captures", below=1.0, max_bytes=10**9)
    for frame in range(4):
        capture.offer(image, _result("cam", frame))
    capture.drain(10)
    inbox = tmp_path / "captures" / INBOX / "cam"
    first = sorted(inbox.glob("*.jpg"))
    per_capture = sum(p.stat().st_size for p in inbox.iterdir()) / 4
    labelled = tmp_path / "captures" / "cat"
    labelled.mkdir()
    for image_path in first[1:]:  # the newest three labelled (the page goes by score, not age), moved as it does
        image_path.rename(labelled / image_path.name)
        image_path.with_suffix(".json").rename(labelled / image_path.with_suffix(".json").name)
    capture.max_bytes = int(per_capture * 3.5)  # room for three captures: the one waiting and two new ones fit
    for frame in range(4, 6):
        capture.offer(image, _result("cam", frame))
    capture.close(timeout=10)
    assert first[0].exists(), "a frame waiting to be labelled was deleted to make room for frames already labelled"
    assert len(list(inbox.glob("*.jpg"))) == 3 and len(list(labelled.glob("*.jpg"))) == 3
