"""The smoke test's wait on the daemon (runtime/install/smoke.py): a bundle the daemon refused is never healthy."""

from __future__ import annotations

import json
import os

import pytest

from devices.flash import FlashOptions, flash
from devices.profiles import DeviceProfile
from devices.sign import sign_bundle
from tests.daemon_helpers import http_get, write_test_video
from tests.test_flash import PROFILE, bundles, current_release  # noqa: F401  (fixture)
from tests.test_sign import keys  # noqa: F401  (fixture)


def test_flash_rolls_back_when_the_daemon_refuses_the_new_bundle(bundles, keys, tmp_path):  # noqa: F811
    """A daemon that trusts only signed bundles, a device root without allowed_signers (so flash itself does not
    check), an unsigned new bundle: the daemon refuses it and keeps the old model, so the flash must roll back, and
    /healthz must name the bundle still serving and, apart, the refused one. Signed, the same release (same slot)
    flashed again at once installs: that old refusal neither fails it nor stops the daemon retrying."""
    pytest.importorskip("cv2")
    from runtime.daemon import Daemon

    sign_bundle(bundles["a"], keys["trusted"])
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    assert a.result == "installed" and not (root / "allowed_signers").exists(), a
    serving = os.path.realpath(root / "current")
    video = write_test_video(tmp_path / "clip.avi")
    daemon = Daemon(
        root / "current",
        [video],
        port=0,
        sinks=[],
        source_options={"loop": True},
        allowed_signers=str(keys["signers"]),
    )
    seen = {}

    def scenario(d):
        try:
            profile = DeviceProfile(
                name="with-daemon", artifacts=("tflite-int8",), threads=1, health_url=d.url + "/healthz"
            )
            [seen["b"]] = flash(bundles["b"], [str(root)], FlashOptions(profile=profile))
            seen["health"] = json.loads(http_get(d.url + "/healthz")[1])
            seen["current"] = os.path.realpath(root / "current")
            # Signed since, the same release is flashed again at once: the old refusal must not fail it.
            sign_bundle(bundles["b"], keys["trusted"])
            [seen["signed"]] = flash(bundles["b"], [str(root)], FlashOptions(profile=profile))
            seen["after"] = json.loads(http_get(d.url + "/healthz")[1])
        finally:
            d.request_stop()

    daemon.run(on_start=scenario)
    b = seen["b"]
    assert b.result == "rolled back", (b.result, b.reason)
    assert "the daemon refused the new bundle" in b.reason and "not signed" in b.reason, b.reason
    assert seen["current"] == serving  # the old, verified model is `current` again
    model = seen["health"]["model"]
    assert model["bundle"] == serving, model  # the bundle actually serving, never the refused one
    refused = model["refused"]
    assert refused["bundle"] != serving and "not signed" in refused["error"] and refused["at"] > 0, model
    signed = seen["signed"]
    assert signed.result == "installed", (signed.result, signed.reason)
    assert seen["after"]["model"]["bundle"] == os.path.realpath(root / "current") == refused["bundle"]
    assert seen["after"]["model"]["refused"] is None
