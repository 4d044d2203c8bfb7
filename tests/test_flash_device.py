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
from edgecls.runtime.install.rootcheck import VENV_MARKER
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


OLD_RUNTIME = "32572ad"  # edgecls 0.2.0: the runtime before imported models, which ignores a manifest's `requires`


@pytest.fixture(scope="module")
def edgecls_0_2_0(tmp_path_factory) -> str:
    """A device python whose edgecls is the real 0.2.0 (this repository at OLD_RUNTIME, on its PYTHONPATH; the
    packages it needs are this interpreter's, as on a provisioned device)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    tree = tmp_path_factory.mktemp("edgecls-0.2.0")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_RUNTIME], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"this checkout lacks commit {OLD_RUNTIME} (a shallow clone): cannot build an edgecls 0.2.0 device")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    script = tree.parent / f"{tree.name}-python"
    # cd /: `python -c` puts the current folder first on sys.path, and a test run in the checkout would see it
    script.write_text(f'#!/bin/sh\ncd / && PYTHONPATH={tree} exec {sys.executable} "$@"\n')
    script.chmod(0o755)
    said = subprocess.run([str(script), "-c", "import edgecls; print(edgecls.__version__)"], capture_output=True)
    assert said.stdout.decode().split() == ["0.2.0"], said
    return str(script)


def nchw_logits_bundle(folder: Path) -> Path:
    """An imported-style bundle (NCHW input, logits output, a named output) that edgecls 0.2.0 cannot serve."""
    from tests.test_runtime_layouts import _onnx_model, nchw_spec, write_bundle

    model = _onnx_model(folder.parent / f"{folder.name}.onnx")
    bundle = write_bundle(folder, model, nchw_spec())
    assert load_bundle(bundle).manifest.needs() == ["logits-output", "named-tensors", "nchw-input"]
    return bundle


OLD_DEVICE = DeviceProfile(name="old-device", artifacts=("tflite-int8", "onnx-fp32"), threads=1)


@pytest.mark.parametrize("how", ["--python", "venv"])
def test_flash_to_a_local_device_on_edgecls_0_2_0_refuses_a_bundle_it_would_serve_wrongly(
    bundles, edgecls_0_2_0, tmp_path, how
):
    """0.2.0 ignores `requires` (an NCHW bundle failed as 'inconsistent', logits ran as confidences): the host asks
    the device's edgecls (its --python, or ROOT/venv's metadata as `flash --setup` leaves it) and refuses first."""
    root = tmp_path / "dev"
    python = edgecls_0_2_0 if how == "--python" else "auto"
    if how == "venv":
        import venv

        venv.create(root / "venv", with_pip=False)  # as `flash --setup` makes it, with 0.2.0's metadata installed
        (root / "venv" / VENV_MARKER).touch()
        [site] = (root / "venv").glob("lib/python3*/site-packages")
        (site / "edgecls-0.2.0.dist-info").mkdir()
        (site / "edgecls-0.2.0.dist-info" / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: edgecls\nVersion: 0.2.0\n"
        )
    options = FlashOptions(profile=OLD_DEVICE, python=python)
    [r] = flash(nchw_logits_bundle(tmp_path / "nchw"), [str(root)], options)
    assert r.result == "failed" and "\n" not in r.reason, r
    assert "the device runs edgecls 0.2.0, which predates what this bundle needs (" in r.reason
    assert "nchw-input" in r.reason and "edgecls flash ... --setup" in r.reason
    assert not (root / "releases").exists() and not (root / "current").exists()
    [r] = flash(bundles["a"], [str(root)], options)  # an old-style bundle: no `requires`, flashed as before
    assert r.result == "installed", r.reason


def test_flash_over_ssh_to_a_device_on_edgecls_0_2_0_refuses_before_sending_and_sends_an_old_style_bundle(
    bundles,
    sshd,
    edgecls_0_2_0,
    tmp_path,  # noqa: F811
):
    root = tmp_path / "dev"
    options = FlashOptions(profile=OLD_DEVICE, ssh_config=str(sshd.ssh_config), python=edgecls_0_2_0)
    [r] = flash(nchw_logits_bundle(tmp_path / "nchw"), [sshd.target(root)], options)
    assert r.result == "failed" and "\n" not in r.reason, r
    assert "the device runs edgecls 0.2.0, which predates" in r.reason and "--setup" in r.reason
    assert not root.exists()  # nothing was sent, not even asked for a plan
    [r] = flash(bundles["a"], [sshd.target(root)], options)  # the device's own 0.2.0 code installs and smoke-tests it
    assert r.result == "installed" and r.smoke, r.reason


def test_flash_over_ssh_to_a_current_device_sends_a_bundle_that_requires_features(sshd, tmp_path):  # noqa: F811
    root = tmp_path / "dev"
    options = FlashOptions(profile=OLD_DEVICE, ssh_config=str(sshd.ssh_config), smoke=False)
    [r] = flash(nchw_logits_bundle(tmp_path / "nchw"), [sshd.target(root)], options)
    assert r.result == "installed", r.reason
