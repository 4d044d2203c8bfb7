"""Drift in the real daemon (runtime/daemon/daemon.py with runtime/monitor/drift.py) over real HTTP."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from edgecls.runtime.daemon import Daemon  # noqa: E402
from edgecls.runtime.monitor.drift import DEFAULT_THRESHOLD  # noqa: E402
from tests.daemon_helpers import ListSink, http_get, wait_for, write_test_video  # noqa: E402
from tests.test_drift import split_test_files, without_reference  # noqa: E402

FPS = 30
CYCLES = 8  # the test images, shown this many times before the video turns dark
DARK = 0.3  # the shifted half: every pixel times this


def write_test_split_video(path, run_dir, cycles=CYCLES, dark_cycles=0, fps=FPS):
    """An MJPG AVI of the run's own test images (what the reference was measured on), `cycles` times over, then
    `dark_cycles` more times at DARK brightness: frames of the kind the model was trained on, then the same scene
    with the lights turned down."""
    images = [cv2.imread(str(p)) for p in split_test_files(run_dir)]
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for cycle in range(cycles + dark_cycles):
        for image in images:
            writer.write(image if cycle < cycles else (image * DARK).astype(np.uint8))
    writer.release()
    return path


def scores(url) -> dict:
    """{(family, source, statistic, against): value} of every edgecls_drift_* sample on /metrics."""
    status, body = http_get(url + "/metrics")
    assert status == 200
    return {
        (s.name, s.labels.get("source"), s.labels.get("statistic"), s.labels.get("against")): s.value
        for family in text_string_to_metric_families(body.decode())
        if family.name.startswith("edgecls_drift")
        for s in family.samples
    }


def worst(found: dict, source: str, against=("reference", "baseline")) -> float:
    """The source's highest deciding score (edgecls_drift_score), in reference standard deviations."""
    return max(
        (
            v
            for (name, src, _, what), v in found.items()
            if name == "edgecls_drift_score" and src == source and what in against
        ),
        default=float("nan"),
    )


def test_the_darkened_source_drifts_and_the_steady_one_does_not(tiny_bundle, tiny_run_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edgecls")
    steady = str(write_test_split_video(tmp_path / "steady.avi", tiny_run_dir))
    shifted = str(write_test_split_video(tmp_path / "shifted.avi", tiny_run_dir, dark_cycles=3 * CYCLES))
    sink = ListSink()
    # Both loop at their own 30 fps; the shifted one is dark for 12 of every 16 seconds.
    daemon = Daemon(
        tiny_bundle, [steady, shifted], port=0, sinks=[sink], drift_window=60, source_options={"loop": True}
    )
    seen = {}

    def scenario(d):
        found = wait_for(  # against both: the baseline's score may cross a scrape after the reference's
            lambda: (
                (f := scores(d.url))
                and worst(f, shifted, ("reference",)) > DEFAULT_THRESHOLD
                and worst(f, shifted, ("baseline",)) > DEFAULT_THRESHOLD
                and f
            ),
            60,
            "the shifted source's drift score past the threshold against the reference and its baseline",
        )
        status, body = http_get(d.url + "/healthz")
        seen.update(found=found, status=status, health=json.loads(body))
        d.request_stop()

    daemon.run(on_start=scenario)
    found, health = seen["found"], seen["health"]
    print(
        f"\ndrift score (s.d.) steady {worst(found, steady):.2f}, shifted {worst(found, shifted):.2f}: "
        f"{ {k[1:]: round(v, 2) for k, v in found.items() if k[0] == 'edgecls_drift_score'} }"
    )
    assert found[("edgecls_drift_window_frames", steady, None, None)] == 60  # a full window, scored
    # the steady source stays low against both; the shifted one passes the threshold against both: it is darker
    # than the test images and than its own first window
    assert worst(found, steady) < 1 and worst(found, shifted) > DEFAULT_THRESHOLD
    assert min(found[("edgecls_drift_score", shifted, "brightness", a)] for a in ("reference", "baseline")) > 3
    assert found[("edgecls_drift_degraded", shifted, None, None)] == 1
    assert found[("edgecls_drift_degraded", steady, None, None)] == 0
    assert found[("edgecls_drift_reference", steady, None, None)] == 1
    assert found[("edgecls_drift_psi", steady, "brightness", None)] < 0.25  # the test images themselves: same mix
    # /healthz: drift alone is "degraded" with 200; the shifted source says what moved; the steady one is fine
    assert seen["status"] == 200 and health["status"] == "degraded" and health["degraded"] == [shifted]
    assert health["sources"][shifted]["degraded"] == "drift"
    drift = health["sources"][shifted]["drift"]
    assert drift["state"] == "drift" and "brightness" in drift["moved"] and drift["brightness"]["z"] < -1
    assert health["sources"][steady]["drift"]["state"] == "ok" and "degraded" not in health["sources"][steady]
    assert health["model"]["drift_reference"] == "yes"
    # one log line for the transition, naming the statistic; none for the steady source
    lines = [r.getMessage() for r in caplog.records if ": drift" in r.getMessage()]
    assert any(line.startswith(f"{shifted}: drift:") and "brightness" in line for line in lines), lines
    assert sum(line.startswith(f"{shifted}: drift:") for line in lines) == 1, lines
    assert not any(line.startswith(f"{steady}:") for line in lines), lines


def test_a_bundle_without_reference_serves_and_says_no_reference(tiny_bundle, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edgecls")
    old = without_reference(tiny_bundle, tmp_path / "old-bundle")
    video = str(write_test_video(tmp_path / "clip.avi", frames=20))
    sink = ListSink()
    daemon = Daemon(old, [video], port=0, sinks=[sink], drift_window=20, source_options={"loop": True})
    seen = {}

    def scenario(d):
        wait_for(lambda: len(sink.of(video)) > 40, 30, "results past a drift window")
        seen["health"] = http_get(d.url + "/healthz")
        seen["drift"] = scores(d.url)
        d.request_stop()

    daemon.run(on_start=scenario)
    status, body = seen["health"]
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["degraded"] == []
    assert health["sources"][video]["drift"] == {"state": "no reference"}
    assert health["model"]["drift_reference"].startswith("no reference: the bundle has no reference statistics")
    assert seen["drift"] == {("edgecls_drift_reference", video, None, None): 0.0}  # no score series at all
    lines = [r.getMessage() for r in caplog.records if "drift monitoring off" in r.getMessage()]
    assert len(lines) == 1 and "convert the model again" in lines[0], lines


def test_a_hot_reload_starts_the_window_afresh_against_the_new_reference(tiny_bundle, tiny_run_dir, tmp_path):
    shifted = str(write_test_split_video(tmp_path / "dark.avi", tiny_run_dir, cycles=0, dark_cycles=8))
    second = without_reference(tiny_bundle, tmp_path / "second", lambda m: m.update(created="second"))
    current = tmp_path / "current"
    os.symlink(tiny_bundle, current)
    daemon = Daemon(current, [shifted], sinks=[], drift_window=60, source_options={"loop": True})
    drift = daemon.drift.source(shifted)
    seen = {}

    def scenario(d):
        wait_for(lambda: drift.status()["state"] == "drift", 30, "the dark video in drift")
        old_reference = drift.reference
        tmp = tmp_path / "current.new"
        os.symlink(second, tmp)
        os.replace(tmp, current)  # as flash commits a release: the reloader notices within 0.5 s
        wait_for(lambda: d.loops[0].classifier.bundle.root == second, 20, "the second bundle serving")
        new_reference = wait_for(
            lambda: drift.reference is not old_reference and drift.reference,
            10,
            "the window adopting the new reference",
        )
        seen.update(status=drift.status(), frames=drift.frames, new=new_reference)
        d.request_stop()

    daemon.run(on_start=scenario)
    assert seen["frames"] < 60 and seen["status"]["state"] in ("warming up", "ok", "drift")
    assert seen["new"] is daemon.drift.reference_for(daemon.classifier)


def test_a_hot_reload_to_a_bundle_without_reference_ends_the_drift_and_its_series(
    tiny_bundle, tiny_run_dir, tmp_path, caplog
):
    """In drift, then flashed a bundle converted before drift monitoring: the source says "no reference", its score
    series disappear from /metrics (edgecls_drift_reference 0 stays), and one log line says the drift ended with it."""
    caplog.set_level(logging.INFO, logger="edgecls")
    shifted = str(write_test_split_video(tmp_path / "dark.avi", tiny_run_dir, cycles=0, dark_cycles=8))
    old = without_reference(tiny_bundle, tmp_path / "old")
    current = tmp_path / "current"
    os.symlink(tiny_bundle, current)
    daemon = Daemon(current, [shifted], port=0, sinks=[], drift_window=20, source_options={"loop": True})
    drift = daemon.drift.source(shifted)
    seen = {}

    def scenario(d):
        wait_for(lambda: drift.status()["state"] == "drift", 30, "the dark video in drift")
        seen["before"] = scores(d.url)
        tmp = tmp_path / "current.new"
        os.symlink(old, tmp)
        os.replace(tmp, current)
        wait_for(lambda: drift.status() == {"state": "no reference"}, 20, "the window adopting no reference")
        seen["after"] = scores(d.url)
        seen["health"] = json.loads(http_get(d.url + "/healthz")[1])
        d.request_stop()

    daemon.run(on_start=scenario)
    assert seen["before"][("edgecls_drift_degraded", shifted, None, None)] == 1
    assert seen["after"] == {("edgecls_drift_reference", shifted, None, None): 0.0}
    health = seen["health"]
    assert health["sources"][shifted]["drift"] == {"state": "no reference"} and health["degraded"] == []
    assert health["model"]["drift_reference"].startswith("no reference: the bundle has no reference statistics")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{shifted}: drift window restarted")]
    assert len(lines) == 1 and "in drift: brightness" in lines[0] and "no reference" in lines[0], lines


def test_the_drift_window_records_the_view_and_starts_afresh_when_a_size_change_moves_the_roi(
    tiny_bundle, tmp_path, caplog
):
    """Frames of another size make the ROI resolve to other pixels: the window's frames showed another part of the
    scene, so it restarts (said once) and records the new view."""
    from edgecls.runtime.daemon.config import SourceConfig

    stills = tmp_path / "stills"
    stills.mkdir()
    for i in range(40):
        size = (48, 64) if i < 25 else (30, 40)
        cv2.imwrite(str(stills / f"{i:03d}.png"), np.full((*size, 3), 80 + i, np.uint8))
    settings = (SourceConfig(str(stills), name="door", roi=(30, 10, 20, 20), rotate=180),)
    daemon = Daemon(tiny_bundle, [str(stills)], sinks=[], drift_window=100, source_settings=settings)
    with caplog.at_level(logging.INFO, logger="edgecls.daemon"):
        daemon.run()
    status = daemon.loops[0].drift.status()
    assert status["view"] == {"roi": [30, 10, 10, 20], "rotate": 180, "flip": "none"}
    assert status["window_frames"] == 15  # the frames since the size changed
    restarts = [r.getMessage() for r in caplog.records if "drift window restarted" in r.getMessage()]
    assert len(restarts) == 1 and "the view changed" in restarts[0], restarts


def test_a_fractional_roi_on_frames_alternating_between_two_sizes_keeps_one_drift_window(tiny_bundle, tmp_path, caplog):
    """A fractional ROI shows the same part of the scene at any frame size: frames alternating 64x48 / 66x50 fill one
    window (it restarted on every frame, ending at 1 frame), and the status shows the view as configured."""
    from edgecls.runtime.daemon.config import SourceConfig

    stills = tmp_path / "stills"
    stills.mkdir()
    for i in range(60):
        size = (48, 64) if i % 2 == 0 else (50, 66)
        cv2.imwrite(str(stills / f"{i:03d}.png"), np.full((*size, 3), 80 + i, np.uint8))
    settings = (SourceConfig(str(stills), name="door", roi=(0.25, 0.25, 0.5, 0.5)),)
    daemon = Daemon(tiny_bundle, [str(stills)], sinks=[], drift_window=100, source_settings=settings)
    with caplog.at_level(logging.INFO, logger="edgecls.daemon"):
        daemon.run()
    status = daemon.loops[0].drift.status()
    assert status["window_frames"] == 60, status
    assert status["view"] == {"roi": [0.25, 0.25, 0.5, 0.5], "rotate": 0, "flip": "none"}, status
    assert [r.getMessage() for r in caplog.records if "drift window restarted" in r.getMessage()] == []
