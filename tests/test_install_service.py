"""The device writes its daemon's systemd unit and run.toml itself (edgecls.runtime.install.service)."""

from __future__ import annotations

from edgecls.runtime.install.service import install_service


def _install(tmp_path, profile: str) -> str:
    config = tmp_path / "etc" / "run.toml"
    out = install_service(tmp_path / "dev", unit_dir=str(tmp_path / "units"), config=str(config), profile=profile)
    assert out["config_written"] and not out["enabled"]
    return config.read_text()


def test_the_config_names_a_profile_the_devices_edgecls_knows(tmp_path):
    assert 'device = "raspberry-pi-5"' in _install(tmp_path, "raspberry-pi-5")


def test_the_config_leaves_out_a_profile_the_device_does_not_know(tmp_path):
    text = _install(tmp_path, "made-up-on-the-host")
    assert "device" not in text and f'bundle = "{tmp_path / "dev" / "current"}"' in text


def test_the_unit_is_the_hardened_one_running_the_written_config(tmp_path):
    _install(tmp_path, "")
    unit = (tmp_path / "units" / "edgecls.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=30" in unit
    assert f" run --config {tmp_path / 'etc' / 'run.toml'}" in unit
