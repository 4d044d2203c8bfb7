"""edgecls.devices.flash on a device: check images, old bundles, --setup, --install-service, the daemon's health."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgecls.devices.flash import FlashOptions, flash
from edgecls.devices.profiles import DeviceProfile
from edgecls.runtime.bundle import MANIFEST, load_bundle
from edgecls.runtime.classifier import Classifier
from tests.sshd import sshd  # noqa: F401  (fixture)
from tests.test_flash import PROFILE, bundles, current_release  # noqa: F401  (fixture)


def test_convert_stores_check_images_every_artifact_gets_right(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    checks = bundle.manifest.checks
    assert len(checks) == 6 and {c["label"] for c in checks} == set(bundle.labels)  # classes in turn
    for check in checks:
        assert check["file"] in bundle.manifest.files and (tiny_bundle / check["file"]).is_file()
    for artifact in bundle.manifest.artifacts:
        classifier = Classifier(bundle, artifact=artifact.name)
        got = [classifier.classify_file(tiny_bundle / c["file"]).label for c in checks]
        assert got == [c["label"] for c in checks], artifact.name


def test_bundle_without_check_images_still_loads_and_flashes(tiny_bundle, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    manifest = json.loads((old / MANIFEST).read_text())
    for check in manifest.pop("checks"):
        del manifest["files"][check["file"]]
        (old / check["file"]).unlink()
    (old / MANIFEST).write_text(json.dumps(manifest))
    assert load_bundle(old).manifest.checks == []
    [r] = flash(old, [str(tmp_path / "dev")], FlashOptions(profile=PROFILE))
    assert r.result == "installed" and "no check images" in r.smoke["note"] and r.smoke["p95_ms"] > 0


def test_setup_and_install_service_over_ssh(bundles, sshd, tmp_path):  # noqa: F811
    profile = DeviceProfile(name="svc", artifacts=("tflite-int8",), packages=("numpy",), service="edgecls-test")
    units = tmp_path / "units"
    options = FlashOptions(
        profile=profile, ssh_config=str(sshd.ssh_config), setup=True, install_service=True, unit_dir=str(units)
    )
    [r] = flash(bundles["a"], [sshd.target(tmp_path / "dev")], options)
    assert r.result == "installed", r.reason
    unit = (units / "edgecls-test.service").read_text()
    assert "Type=notify" in unit and "ExecStart=" in unit and " run --config " in unit


def test_install_service_points_the_daemon_at_current_with_the_devices_own_edgecls(bundles, tmp_path):
    """The unit names the DEVICE's edgecls (the console script beside its Python), and the config it runs is written
    once, for ROOT/current from the profile's camera: the daemon really starts from it and serves the flashed model."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("cv2")
    from tests.daemon_helpers import write_test_video

    video = write_test_video(tmp_path / "camera.avi")
    profile = DeviceProfile(name="svc", artifacts=("tflite-int8",), camera=str(video), service="edgecls-test")
    root, units, config = tmp_path / "dev", tmp_path / "units", tmp_path / "etc" / "run.toml"
    options = FlashOptions(
        profile=profile, install_service=True, unit_dir=str(units), service_config=str(config), service_port=0
    )
    [r] = flash(bundles["a"], [str(root)], options)
    assert r.result == "installed", r.reason
    unit = (units / "edgecls-test.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    executable = exec_start.split("=", 1)[1].split()[0]
    beside = Path(sys.executable).with_name("edgecls")
    assert executable == (str(beside) if beside.exists() else shutil.which("edgecls")), exec_start
    assert exec_start.endswith(f" run --config {config}")
    text = config.read_text()
    assert f'bundle = "{root / "current"}"' in text and f'source = ["{video}"]' in text
    # The operator's edits survive the next flash.
    config.write_text(text + "# mine\n")
    flash(bundles["b"], [str(root)], options)
    assert config.read_text().endswith("# mine\n")
    done = subprocess.run(
        [executable, "run", "--config", str(config), "--duration", "2", "--results", str(tmp_path / "r.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "r.jsonl").read_text().count("\n") > 0


def test_flash_waits_for_the_daemon_to_serve_the_new_release(bundles, tmp_path):
    pytest.importorskip("cv2")
    from edgecls.runtime.daemon import Daemon
    from tests.daemon_helpers import write_test_video

    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    video = write_test_video(tmp_path / "clip.avi")
    daemon = Daemon(root / "current", [video], port=0, sinks=[], source_options={"loop": True})
    results = {}

    def scenario(d):
        try:
            profile = DeviceProfile(
                name="with-daemon", artifacts=("tflite-int8",), threads=1, health_url=d.url + "/healthz"
            )
            [results["b"]] = flash(bundles["b"], [str(root)], FlashOptions(profile=profile))
            results["serving"] = d.reloader.status()["bundle"]
        finally:
            d.request_stop()

    daemon.run(on_start=scenario)
    b = results["b"]
    assert b.result == "installed", b.reason
    assert results["serving"] == str(current_release(root).resolve()) and current_release(root).name == b.slot
    assert json.loads((root / "device.json").read_text())["health_url"].endswith("/healthz")
