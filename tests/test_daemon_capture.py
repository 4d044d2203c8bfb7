"""Issue 12 point 3 (part): `--capture DIR` keeps the frames the model is unsure of, as JPEG + JSON sidecar, in a
layout `edgecls train` takes once a person has moved images into class folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.daemon_helpers import ListSink, write_test_video

cv2 = pytest.importorskip("cv2")

from runtime.daemon import Daemon  # noqa: E402
from runtime.daemon.capture import INBOX, Capture  # noqa: E402


def test_i12_p3_low_score_frames_are_captured_with_sidecars_under_a_size_cap(tiny_bundle, tmp_path):
    video = write_test_video(tmp_path / "clip.avi", frames=40)
    capture = Capture(tmp_path / "captures", below=0.0, sample=1, max_bytes=40_000, queue_size=64)  # every frame
    sink = ListSink()
    Daemon(tiny_bundle, [video], sinks=[sink], max_frames=40, capture=capture,
           source_options={"every_frame": True}).run()
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


def test_i12_p3_confident_frames_are_not_captured_and_sampling_adds_some(tiny_bundle, tmp_path):
    video = write_test_video(tmp_path / "clip.avi", frames=30)
    none = Capture(tmp_path / "none", below=0.0)
    Daemon(tiny_bundle, [video], sinks=[], max_frames=30, capture=none, source_options={"every_frame": True}).run()
    assert none.captured == 0 and not list((tmp_path / "none" / INBOX).rglob("*.jpg"))
    sampled = Capture(tmp_path / "sampled", below=0.0, sample=3, seed=1)
    Daemon(tiny_bundle, [video], sinks=[], max_frames=30, capture=sampled, source_options={"every_frame": True}).run()
    assert 3 <= sampled.captured <= 20


def test_i12_p3_labelled_captures_make_a_training_folder(tiny_bundle, tmp_path):
    """Moving captures into class folders is all it takes: the dataset scanner sees those classes, not the inbox."""
    from edgecls.datasets.folder import dataset_classes

    video = write_test_video(tmp_path / "clip.avi", frames=20)
    folder = tmp_path / "captures"
    done = subprocess.run([sys.executable, "-m", "edgecls.cli", "run", str(tiny_bundle), "--source", str(video),
                           "--capture", str(folder), "--capture-every", "1", "--results", str(tmp_path / "r.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    images = sorted((folder / INBOX).rglob("*.jpg"))
    assert len(images) >= 2
    for label, image in zip(("circle", "square"), images):
        (folder / label).mkdir()
        shutil.move(str(image), folder / label / image.name)
    assert dataset_classes(folder) == ["circle", "square"]
