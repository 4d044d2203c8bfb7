"""edgecls.runtime.monitor (drift, stats): reference statistics in the bundle and the drift windows built on them.

The daemon end to end (real video, real HTTP) is in tests/test_drift_daemon.py; here the parts, on the real tiny
bundle: what convert stores, that old manifests still load, that the daemon's statistics of the test images equal
the reference exactly, and what hostile references, windows and probabilities do.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgecls.runtime.bundle import BundleError, load_bundle  # noqa: E402
from edgecls.runtime.classifier import Classifier  # noqa: E402
from edgecls.runtime.errors import EdgeclsError  # noqa: E402
from edgecls.runtime.monitor.drift import (
    MIN_WINDOW,
    NO_REFERENCE,
    DriftMonitor,
    Reference,
    UnusableReference,  # noqa: E402
    psi,
)
from edgecls.runtime.monitor.stats import (
    BRIGHTNESS_EDGES,
    CONFIDENCE_EDGES,
    bin_index,  # noqa: E402
    brightness,
    brightness_batch,
    input_pixels,
)
from edgecls.runtime.preprocess import PreprocessSpec, load_image, pixels, preprocess  # noqa: E402


def split_test_files(run) -> list:
    """The image files of the run's recorded test split: what convert measured the bundle's reference on."""
    run = Path(run)
    root = Path(json.loads((run / "metadata.json").read_text())["dataset"]["source"])
    return [root / path for path, _, _ in json.loads((run / "split.json").read_text())["splits"]["test"]]


def without_reference(bundle, dest, edit=None):
    """A copy of the bundle as an older convert wrote it (no `reference`), or with `edit(manifest)` applied."""
    shutil.copytree(bundle, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    if edit is None:
        del manifest["reference"]
    else:
        edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dest


# ---------------------------------------------------------------------------------------------- point 1: convert


def test_convert_stores_a_reference_for_every_artifact(tiny_bundle, tiny_run_dir):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    names = [a["name"] for a in manifest["artifacts"]]
    assert sorted(manifest["reference"]) == sorted(names)
    images = manifest["source"]["test_images"]
    for name in names:
        ref = manifest["reference"][name]
        assert ref["images"] == images and sum(ref["classes"]) == images and len(ref["classes"]) == 3
        assert ref["confidence"]["edges"] == list(CONFIDENCE_EDGES) and sum(ref["confidence"]["counts"]) == images
        assert ref["brightness"]["edges"] == list(BRIGHTNESS_EDGES) and sum(ref["brightness"]["counts"]) == images
        assert 0 < ref["brightness"]["mean"] < 255 and ref["brightness"]["std"] > 0
        Reference.parse(ref, manifest["labels"])  # and the daemon can use it
    # The brightness is the test images' own: recomputed here from the files, independently of convert.
    values = [
        float(np.mean(pixels(load_image(f), PreprocessSpec.from_dict(manifest["input"])), dtype=np.float64))
        for f in split_test_files(tiny_run_dir)
    ]
    ref = manifest["reference"][names[0]]["brightness"]
    assert ref["counts"] == [sum(bin_index(v, BRIGHTNESS_EDGES) == i for v in values) for i in range(16)]
    assert ref["mean"] == pytest.approx(np.mean(values), abs=1e-3) and ref["std"] == pytest.approx(
        np.std(values), abs=1e-3
    )


def test_an_old_manifest_without_reference_still_loads_and_classifies(tiny_bundle, tiny_run_dir, tmp_path):
    old = without_reference(tiny_bundle, tmp_path / "old")
    bundle = load_bundle(old)
    assert bundle.manifest.reference == {} and "reference" not in bundle.manifest.to_dict()
    image = cv2.imread(str(split_test_files(tiny_run_dir)[0]))
    assert Classifier(bundle).classify(image, "bgr").label in bundle.labels
    # ...and a reference that is not an object is a malformed manifest, refused with the usual one line
    broken = without_reference(tiny_bundle, tmp_path / "broken", lambda m: m.update(reference=[1, 2]))
    with pytest.raises(BundleError, match="malformed.*reference is a list"):
        load_bundle(broken)


def test_reference_round_trips_through_the_manifest(tiny_bundle):
    manifest = load_bundle(tiny_bundle).manifest
    assert manifest.to_dict()["reference"] == json.loads((tiny_bundle / "manifest.json").read_text())["reference"]


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(8, 8),  # 0..1
        PreprocessSpec.scaled(8, 8, scale=1 / 127.5, offset=-1.0),  # MobileNet's -1..1
        PreprocessSpec(8, 8, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),  # ImageNet per channel
        PreprocessSpec(8, 8, color="gray", mean=(0.5,), std=(0.3,)),  # std below one grey level
        PreprocessSpec(8, 8, dtype="uint8"),
    ],
)
def test_normalized_inputs_invert_to_their_exact_pixels(spec):
    ramp = np.arange(256, dtype=np.uint8)
    image = np.stack([np.roll(ramp, 37 * c) for c in range(3)], axis=-1).reshape(16, 16, 3)
    expected = pixels(image, spec)
    tensor = preprocess(image, spec)
    assert np.array_equal(input_pixels(tensor[None], spec)[0], expected)
    every = np.repeat(ramp.reshape(1, 16, 16, 1), spec.channels, axis=-1)  # every grey level, exactly
    from edgecls.runtime.preprocess import normalize

    back = every if spec.dtype == "uint8" else normalize(every, spec)
    assert np.array_equal(input_pixels(back, spec), every)


def test_convert_and_daemon_measure_the_same_brightness_for_the_same_image(tiny_bundle, tiny_run_dir):
    """Convert: the run's float tensor, inverted. Daemon: the frame's pixels (`SourceLoop.prepare`). Bit for bit."""
    from edgecls.runtime.daemon.loop import SourceLoop

    clf = Classifier(tiny_bundle)
    loop = SourceLoop(_Named("x"), clf, lambda r: None, drift=DriftMonitor(20).source("x"))
    for path in split_test_files(tiny_run_dir):
        rgb = load_image(path)
        convert_side = brightness_batch(input_pixels(preprocess(rgb, clf.spec)[None], clf.spec))[0]
        tensor, daemon_side = loop.prepare(clf, np.ascontiguousarray(rgb[..., ::-1]))
        assert daemon_side == convert_side
        assert np.array_equal(tensor, clf.prepare(rgb[..., ::-1].copy(), "bgr"))  # the model input is unchanged


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(24, 20),
        PreprocessSpec(24, 20, resize="center-crop"),
        PreprocessSpec(24, 20, resize="letterbox"),
        PreprocessSpec(24, 20, color="gray"),
        PreprocessSpec(24, 20, color="bgr", interpolation="area"),
    ],
)
def test_pixels_of_pixels_are_the_same_pixels(spec):
    """Why the loop may prepare from the resized pixels: resizing them again changes nothing, in every mode."""
    image = np.random.default_rng(3).integers(0, 256, (61, 97, 3), dtype=np.uint8)
    once = pixels(image, spec, "bgr")
    again = pixels(once, spec, "rgb" if spec.color == "gray" else spec.color)
    assert np.array_equal(again, once)


class _Named:
    """The one thing SourceLoop reads from a supervisor before it starts: its name."""

    def __init__(self, name):
        self.name = name


# ---------------------------------------------------------------------------------------------- point 2: scores


def test_daemon_statistics_of_the_test_images_equal_the_reference(tiny_bundle, tiny_run_dir, tmp_path):
    """The daemon over the test split's own files (a folder source) counts exactly what convert recorded: PSI 0."""
    from edgecls.runtime.daemon import Daemon

    folder = tmp_path / "test-images"
    folder.mkdir()
    files = split_test_files(tiny_run_dir)
    for i, path in enumerate(files):
        shutil.copy(path, folder / f"{i:03d}{path.suffix}")
    daemon = Daemon(tiny_bundle, [folder], sinks=[], drift_window=MIN_WINDOW, max_frames=len(files))
    daemon.run()
    drift = daemon.drift.source(str(folder))
    reference = daemon.drift.reference_for(daemon.classifier)
    assert drift.frames == len(files) and drift.counts() == {k: list(v) for k, v in reference.counts.items()}
    assert all(psi(reference.counts[k], drift.counts()[k]) == 0.0 for k in reference.counts)


def test_psi_is_zero_for_equal_shapes_finite_for_empty_bins_and_grows_with_the_shift():
    assert psi([5, 0, 10], [50, 0, 100]) == pytest.approx(0.0, abs=1e-12)  # sample sizes differ, shape equal
    swapped = psi([0, 0, 15], [15, 0, 0])  # all the mass moved: finite, past any threshold, and symmetric
    assert math.isfinite(swapped) and swapped > 0.25 and swapped == pytest.approx(psi([15, 0, 0], [0, 0, 15]))
    moved = [psi([10, 10, 0, 0], [10 - s, 10, s, 0]) for s in range(0, 11, 2)]
    assert moved == sorted(moved) and moved[0] == 0 and math.isfinite(moved[-1]) and moved[-1] > 0.25
    assert math.isfinite(psi([0] * 999 + [10**12], [500] + [0] * 999))  # zero-count classes, a huge count
    assert psi([1, 2], [0, 0]) == 0.0  # an empty window scores nothing


def _reference(classes=(5, 6, 4), confidence=None, bright=None) -> dict:
    n = sum(classes)
    conf = confidence or [0] * 9 + [n]
    bright = bright or [0] * 6 + [n] + [0] * 9
    return {
        "version": 1,
        "images": n,
        "classes": list(classes),
        "confidence": {"edges": list(CONFIDENCE_EDGES), "counts": conf},
        "brightness": {"edges": list(BRIGHTNESS_EDGES), "counts": bright, "mean": 100.0, "std": 5.0},
    }


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda r: r.update(classes=[5, 6, 4, 0]), "counts 4 classes but the bundle has 3 labels"),
        (lambda r: r.update(classes=[5, -1, 11]), "whole numbers"),
        (lambda r: r.update(classes=[5, True, 9]), "whole numbers"),
        (lambda r: r.update(classes=[0, 0, 0]), "different numbers of images (or none)"),
        (lambda r: r["confidence"].update(edges=[0.0, float("nan"), 1.0]), "strictly increasing"),
        (lambda r: r["brightness"].update(edges=[0, 128, 64, 256]), "strictly increasing"),
        (lambda r: r["brightness"].update(counts=[15]), "1 counts for 16 bins"),
        (lambda r: r["brightness"].update(mean=float("inf")), "finite"),
        (lambda r: r.update(version=2), "version 2"),
        (lambda r: r.pop("confidence"), "confidence is missing"),
        (lambda r: r["confidence"].update(mean=0.5), "confidence mean and std must be finite"),
        (
            lambda r: r["brightness"].update(edges=list(range(1026)), counts=[15] + [0] * 1024),
            "brightness has 1025 bins; at most 1024",
        ),
    ],
)
def test_a_reference_that_does_not_fit_is_refused_with_one_line(edit, why):
    raw = _reference()
    edit(raw)
    with pytest.raises(UnusableReference, match=re.escape(why)):
        Reference.parse(raw, ["a", "b", "c"])
    Reference.parse(_reference(classes=(0, 15, 0)), ["a", "b", "c"])  # zero-count classes are fine


def test_a_reference_with_another_class_count_turns_monitoring_off_with_a_warning(tiny_bundle, tmp_path, caplog):
    """Decided: monitoring data never stops a model the manifest vouches for; the daemon serves, says why, once."""

    def wrong(manifest):
        for ref in manifest["reference"].values():
            ref["classes"] = ref["classes"] + [0]

    bundle = without_reference(tiny_bundle, tmp_path / "wrong", wrong)
    caplog.set_level(logging.INFO, logger="edgecls")
    monitor = DriftMonitor(MIN_WINDOW)
    clf = Classifier(bundle)
    assert monitor.reference_for(clf) is None and monitor.reference_for(clf) is None
    lines = [r.getMessage() for r in caplog.records if "drift monitoring off" in r.getMessage()]
    assert len(lines) == 1 and "counts 4 classes but the bundle has 3 labels" in lines[0], lines
    drift = monitor.source("cam")
    drift.adopt(clf)
    drift.update(np.array([0.2, 0.7, 0.1], np.float32), 100.0)
    assert drift.status() == {"state": NO_REFERENCE} and drift.counts() == {}


@pytest.mark.parametrize(
    "window, threshold, why",
    [
        (MIN_WINDOW - 1, 0.25, "--drift-window 19: give 20 to 100000 frames"),
        (0, 0.25, "give 20 to 100000"),
        (True, 0.25, "give 20 to 100000"),
        (10**9, 0.25, "the window is kept in memory"),
        (500, float("nan"), "--drift-threshold nan"),
        (500, float("inf"), "--drift-threshold inf"),
        (500, 0.0, "positive"),
    ],
)
def test_windows_smaller_than_the_bins_and_bad_thresholds_are_refused(window, threshold, why):
    with pytest.raises(EdgeclsError, match=re.escape(why)):
        DriftMonitor(window, threshold)


class _Clf:
    """What DriftMonitor reads from a classifier: labels, the artifact's name, the manifest's reference."""

    def __init__(self, raw, labels=("a", "b", "c")):
        from types import SimpleNamespace

        self.labels = list(labels)
        self.artifact = SimpleNamespace(name="art")
        self.bundle = SimpleNamespace(manifest=SimpleNamespace(reference={"art": raw}))


def test_thousands_of_frames_keep_exact_window_counts_and_cost_microseconds(caplog):
    caplog.set_level(logging.INFO, logger="edgecls")
    monitor = DriftMonitor(500, 0.25)
    drift = monitor.source("cam")
    drift.adopt(
        _Clf(
            _reference(classes=(400, 300, 300), confidence=[0] * 8 + [500, 500], bright=[0] * 5 + [500, 500] + [0] * 9)
        )
    )
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.3, 0.3, 0.3], 20_000).astype(np.float32)
    levels = rng.uniform(80, 112, 20_000)
    start = time.perf_counter()
    for p, b in zip(probs, levels):
        drift.update(p, float(b))
    per_frame_us = (time.perf_counter() - start) / len(probs) * 1e6
    counts = drift.counts()
    assert drift.frames == 500 and all(sum(c) == 500 for c in counts.values())
    last = probs[-500:]  # the window is exactly the newest 500 frames
    assert counts["class"] == np.bincount(last.argmax(1), minlength=3).tolist()
    assert counts["brightness"] == [
        sum(bin_index(float(b), BRIGHTNESS_EDGES) == i for b in levels[-500:]) for i in range(16)
    ]
    assert per_frame_us < 200, per_frame_us  # a few us on a quiet machine; generous for a loaded CI runner
    status = drift.status()
    assert status["state"] in ("ok", "drift") and all(math.isfinite(v) for v in _flat(status["scores"]))
    assert all(math.isfinite(v) for v in status["psi"].values())


def _flat(scores: dict) -> list:
    """Every score of a status()["scores"] ({statistic: {against: score}})."""
    return [v for against in scores.values() for v in against.values()]


def test_nan_probabilities_are_skipped_and_scores_stay_finite():
    drift = DriftMonitor(MIN_WINDOW, 0.25).source("cam")
    drift.adopt(_Clf(_reference()))
    for _ in range(30):
        drift.update(np.array([np.nan, np.nan, np.nan], np.float32), 100.0)
        drift.update(np.array([0.0, 1.0, np.inf], np.float32), 100.0)
        drift.update(np.array([0.1, 0.8, 0.1], np.float32), float("nan"))
    assert drift.frames == 0 and drift.status()["skipped_frames"] == 90
    for _ in range(MIN_WINDOW):
        drift.update(np.array([0.01, 0.98, 0.01], np.float32), 100.0)
    status = drift.status()
    assert status["state"] in ("ok", "drift") and all(math.isfinite(v) for v in _flat(status["scores"]))


def test_a_transition_is_logged_once_with_the_statistic_that_moved_and_cleared_once(caplog):
    caplog.set_level(logging.INFO, logger="edgecls")
    drift = DriftMonitor(100, 0.25).source("cam")
    drift.adopt(_Clf(_reference(classes=(30, 30, 40), confidence=[0] * 9 + [100], bright=[0] * 6 + [100] + [0] * 9)))
    like_reference = [np.array(p, np.float32) for p in ([0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])]
    for phase, level in ((0, 100.0), (1, 20.0), (2, 100.0)):  # as trained, much darker, as trained again
        for i in range(300):
            probs = like_reference[0 if i % 10 < 4 else 1 + i % 2]
            drift.update(probs, level)
        assert drift.status()["state"] == ("drift" if phase == 1 else "ok")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cam: drift")]
    assert len(lines) == 2, lines
    assert "drift: brightness moved" in lines[0] and "cleared" in lines[1]
    scores = drift.status()["scores"]
    assert max(_flat(scores)) < 0.1 and set(scores["brightness"]) == {"reference", "baseline"}, scores


def test_edgecls_run_takes_the_drift_options_and_refuses_a_nan_threshold(tiny_bundle, tmp_path):
    from tests.conftest import cli_error, run_cli
    from tests.daemon_helpers import write_test_video

    video = write_test_video(tmp_path / "clip.avi", frames=40)  # white circles on black: not the training data
    done = run_cli(
        "run",
        tiny_bundle,
        "--source",
        video,
        "--every-frame",
        "--drift-window",
        20,
        "--drift-threshold",
        0.01,
        "--results",
        tmp_path / "r.jsonl",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if f"{video}: drift:" in line]
    assert len(lines) == 1 and "threshold 0.01) over the last 20 frames" in lines[0], done.stderr[-2000:]
    refused = run_cli(
        "run",
        tiny_bundle,
        "--source",
        video,
        "--drift-threshold",
        "nan",
        "--results",
        tmp_path / "r.jsonl",
        timeout=120,
    )
    error = cli_error(refused)
    assert refused.returncode != 0 and "'--drift-threshold'" in error and "'nan' is not a finite number" in error, error


# ------------------------------------------------------------------ review of issue 12: what decides drift


def _feed(drift, frames, confidence, level, classes=(0, 1, 2)):
    """`frames` frames at one brightness `level`, top-1 `confidence`, the predicted class cycling over `classes`."""
    for i in range(frames):
        probs = np.full(3, (1 - confidence) / 2, np.float32)
        probs[classes[i % len(classes)]] = confidence
        drift.update(probs, float(level))


def _moving(mean, std, confidence=None) -> dict:
    raw = _reference(classes=(30, 30, 40), confidence=[0, 0] + [20] * 5 + [0] * 3, bright=[0] * 4 + [20] * 5 + [0] * 7)
    raw["brightness"].update(mean=mean, std=std)
    if confidence is not None:
        raw["confidence"].update(mean=confidence[0], std=confidence[1])
    return raw


def test_one_scene_in_one_class_and_one_bin_is_not_drift_though_its_psi_is_huge(caplog):
    """A fixed camera: every frame in one class, one confidence bin and one brightness bin, at the reference's
    means. The PSI gauges say how unlike the test split's mix that is (far past 0.25); the decision does not."""
    caplog.set_level(logging.INFO, logger="edgecls")
    drift = DriftMonitor(100, 3.0).source("cam")
    drift.adopt(_Clf(_moving(100.0, 20.0, confidence=(0.65, 0.1))))
    _feed(drift, 300, 0.65, 101.0, classes=(1,))
    status = drift.status()
    assert status["state"] == "ok" and max(_flat(status["scores"])) < 0.1, status
    assert min(status["psi"].values()) > 0.25, status["psi"]
    assert not [r for r in caplog.records if r.getMessage().startswith("cam: drift")]


def test_a_scene_jittering_across_a_bin_edge_is_not_drift():
    """Why the baseline is compared by its mean, not by PSI: one scene's baseline is a point mass, and two grey levels
    of auto-exposure across a bin edge (112) move all of it into the next bin: PSI > 1 for nothing."""
    drift = DriftMonitor(100, 3.0).source("cam")
    drift.adopt(_Clf(_moving(112.0, 20.0)))
    _feed(drift, 100, 0.55, 111.0)  # the baseline, just below the edge
    _feed(drift, 100, 0.55, 113.0)  # the whole window just above it
    baseline_bins, window_bins = [0] * 16, drift.counts()["brightness"]
    baseline_bins[bin_index(111.0, BRIGHTNESS_EDGES)] = 100
    assert psi(baseline_bins, window_bins) > 1  # what a PSI against the baseline would have said
    status = drift.status()
    assert status["state"] == "ok" and status["scores"]["brightness"]["baseline"] == pytest.approx(0.1), status


def test_a_change_against_the_sources_own_baseline_is_drift_within_the_reference_range(caplog):
    """Lights dimmed on a bright scene: still inside the test images' brightness (|z| < 3 against the reference),
    but 3.3 test-image standard deviations darker than this source's first window: the input changed."""
    caplog.set_level(logging.INFO, logger="edgecls")
    drift = DriftMonitor(100, 3.0).source("cam")
    drift.adopt(_Clf(_moving(100.0, 30.0)))
    _feed(drift, 100, 0.55, 160.0)  # z +2 against the reference: fine, and the baseline
    assert drift.status()["state"] == "ok" and drift.baseline["brightness"] == pytest.approx(160.0)
    _feed(drift, 100, 0.55, 60.0)  # z -1.3 against the reference, -3.3 against the baseline
    status = drift.status()
    assert status["state"] == "drift" and status["moved"] == ["brightness"], status
    assert status["scores"]["brightness"] == {
        "reference": pytest.approx(1.3333, abs=1e-3),
        "baseline": pytest.approx(3.3333, abs=1e-3),
    }
    assert status["brightness"] == {"window_mean": 60.0, "reference_mean": 100.0, "baseline_mean": 160.0, "z": -1.33}
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("cam: drift:"))
    assert "brightness moved" in line and "3.33 against the baseline" in line, line


def test_confidence_decides_downward_only_against_the_reference_and_the_baseline():
    """A model more sure than on its test images is no problem; one much less sure is (new kinds of objects)."""
    monitor = DriftMonitor(100, 3.0)
    sure = monitor.source("sure")
    sure.adopt(_Clf(_moving(100.0, 20.0, confidence=(0.6, 0.1))))
    _feed(sure, 200, 0.99, 100.0)
    assert sure.status()["state"] == "ok" and sure.status()["scores"]["confidence"]["reference"] == 0.0
    unsure = monitor.source("unsure")
    unsure.adopt(_Clf(_moving(100.0, 20.0, confidence=(0.6, 0.1))))
    _feed(unsure, 100, 0.8, 100.0)  # baseline: sure of this scene
    _feed(unsure, 100, 0.45, 100.0)  # 1.5 s.d. below the test images, 3.5 below the baseline
    status = unsure.status()
    assert status["state"] == "drift" and status["moved"] == ["confidence"], status
    assert status["scores"]["confidence"] == {
        "reference": pytest.approx(1.5, abs=1e-3),
        "baseline": pytest.approx(3.5, abs=1e-3),
    }


def test_confidence_moments_are_recorded_by_convert_and_estimated_for_older_references():
    from edgecls.converters.reference import ReferenceStats

    rng = np.random.default_rng(1)
    probs = rng.dirichlet([0.5, 0.5, 0.5], 200)
    raw = (
        ReferenceStats(["a", "b", "c"], PreprocessSpec(4, 4, dtype="uint8"))
        .update(rng.integers(0, 256, (200, 4, 4, 3), dtype=np.uint8), probs)
        .result()
    )
    top1 = probs.max(axis=1)
    assert raw["confidence"]["mean"] == pytest.approx(top1.mean(), abs=1e-6)
    assert raw["confidence"]["std"] == pytest.approx(top1.std(), abs=1e-6)
    exact = Reference.parse(raw, ["a", "b", "c"])
    assert (exact.confidence_mean, exact.confidence_std) == (raw["confidence"]["mean"], raw["confidence"]["std"])
    for key in ("mean", "std"):  # a reference convert wrote before: estimated from the histogram, close enough
        del raw["confidence"][key]
    estimated = Reference.parse(raw, ["a", "b", "c"])
    assert estimated.confidence_mean == pytest.approx(top1.mean(), abs=0.01)
    assert estimated.confidence_std == pytest.approx(top1.std(), abs=0.01)


@pytest.mark.parametrize("artifact", ["tflite-int8", "tflite-fp32", "onnx-int8", "onnx-fp32", "tflite-fp16"])
def test_prepare_pixels_is_prepare_without_the_second_resize(tiny_bundle, tiny_run_dir, artifact):
    """The daemon resizes a frame once for the model input and the brightness: bit for bit what prepare() gives."""
    clf = Classifier(tiny_bundle, artifact)
    frames = [cv2.imread(str(p)) for p in split_test_files(tiny_run_dir)[:4]]
    frames.append(np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    for frame in frames:
        want = clf.prepare(frame, "bgr")
        got = clf.prepare_pixels(pixels(frame, clf.spec, "bgr"))
        assert got.dtype == want.dtype and np.array_equal(got, want)
    with pytest.raises(EdgeclsError, match="as edgecls.runtime.preprocess.pixels makes them"):
        clf.prepare_pixels(frames[-1])  # a frame that was not resized


class _Frame:
    """What SourceLoop.classify reads from a frame."""

    def __init__(self, image, index):
        self.image, self.index, self.source, self.name, self.age_ms = image, index, "cam", None, 0.0


def test_a_static_camera_showing_a_test_image_unchanged_is_not_in_drift(tiny_bundle, tiny_run_dir):
    """A fixed camera sees one scene: its window is concentrated in one class, one confidence bin and one brightness
    bin, so PSI against the whole test split's spread is > 0.25 on every statistic even when the scene IS a test
    image, classified right, at the reference brightness (|z| < 0.5). Every real camera would be 'degraded' for
    good and EdgeclsDrift would never stop firing."""
    from edgecls.runtime.daemon.loop import SourceLoop

    clf = Classifier(tiny_bundle)
    reference = DriftMonitor(100).reference_for(clf)
    checked = 0
    for path in split_test_files(tiny_run_dir):
        image = cv2.imread(str(path))
        z = (brightness(pixels(image, clf.spec, "bgr")) - reference.brightness_mean) / max(reference.brightness_std, 1)
        if clf.classify(image, "bgr").label != path.parent.name or abs(z) >= 0.5:
            continue
        loop = SourceLoop(_Named("cam"), clf, lambda r: None, drift=DriftMonitor(100).source("cam"))
        for i in range(100):
            loop.classify(_Frame(image, i))
        status = loop.drift.status()
        assert status["state"] != "drift", (path.name, status)
        checked += 1
    assert checked, "no test image is classified right at the reference brightness"


def test_a_scrape_during_a_reload_that_brings_a_reference_does_not_fail(monkeypatch):
    """metrics._DriftCollector.collect reads drift.status() and then drift.reference again: a hot reload adopted by the
    loop thread in between (status without reference, reference now set) makes status["window_frames"] a KeyError,
    and /metrics fails."""
    from prometheus_client import generate_latest

    from edgecls.runtime.daemon.metrics import Metrics

    monitor = DriftMonitor(20)
    drift = monitor.source("cam")
    drift.adopt(_Clf(None))  # a bundle converted before issue 12: no reference
    metrics = Metrics()
    metrics.track_drift(monitor)
    real_status, new = drift.status, _Clf(_reference())

    def status_then_reload():  # the interleaving: the loop thread adopts the new bundle right after status()
        out = real_status()
        drift.adopt(new)
        return out

    monkeypatch.setattr(drift, "status", status_then_reload)
    body = generate_latest(metrics.registry).decode()
    assert 'edgecls_drift_reference{source="cam"}' in body


def test_a_reference_with_a_huge_number_of_bins_is_refused():
    """Reference.parse bounds the class count by the labels but not the confidence/brightness bins: a manifest with a
    million confidence bins was accepted, adopting it took 1.2 s on the loop thread and each frame then cost ~10 ms
    (a list copy and a PSI over all bins every check, up to 190 ms per frame). Monitoring data must not slow serving."""
    bins = 100_000
    raw = _reference(confidence=[15] + [0] * (bins - 1))
    raw["confidence"]["edges"] = [i / bins for i in range(bins + 1)]
    with pytest.raises(UnusableReference):
        Reference.parse(raw, ["a", "b", "c"])


def test_a_reload_that_ends_a_drift_is_logged(caplog):
    """The docstring promises one log line per transition; adopt() after a hot reload silently drops a source from
    drift to warming up: the log's last word on the source stays 'drift' forever."""
    caplog.set_level(logging.INFO, logger="edgecls")
    drift = DriftMonitor(100, 0.25).source("cam")
    drift.adopt(_Clf(_reference(classes=(30, 30, 40), confidence=[0] * 9 + [100], bright=[0] * 6 + [100] + [0] * 9)))
    for i in range(200):
        drift.update(np.array([0.0, 1.0, 0.0] if i % 2 else [1.0, 0.0, 0.0], np.float32), 20.0)  # much darker
    assert drift.status()["state"] == "drift"
    caplog.clear()
    drift.adopt(_Clf(_reference()))
    assert drift.status()["state"] != "drift"
    assert any(r.getMessage().startswith("cam:") and "drift" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
