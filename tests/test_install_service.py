"""The device writes its daemon's systemd unit and run.toml itself (edgecls.runtime.install.service)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from edgecls.runtime.install import service
from edgecls.runtime.install.layout import InstallError
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


def _device_edgecls(tmp_path, monkeypatch, script: str | None) -> Path:
    """This Python seen as the device's, with `script` as the `edgecls` pip put beside it (None: no edgecls
    beside it nor on PATH)."""
    bin_dir = tmp_path / "device-bin"
    bin_dir.mkdir()
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python3"))
    monkeypatch.setenv("PATH", str(bin_dir))
    if script is not None:
        (bin_dir / "edgecls").write_text(script)
        (bin_dir / "edgecls").chmod(0o755)
    return bin_dir


def _nothing_written(tmp_path) -> bool:
    return not (tmp_path / "etc").exists() and not (tmp_path / "units").exists() and not (tmp_path / "dev").exists()


def test_a_device_without_an_edgecls_cli_is_an_error_before_anything_is_written(tmp_path, monkeypatch):
    _device_edgecls(tmp_path, monkeypatch, None)
    with pytest.raises(InstallError, match="edgecls is not installed for"):
        _install(tmp_path, "raspberry-pi-5")
    assert _nothing_written(tmp_path)


def test_a_device_cli_that_hangs_is_an_error_not_an_unknown_profile(tmp_path, monkeypatch):
    _device_edgecls(tmp_path, monkeypatch, f"#!/bin/sh\nexec {shutil.which('sleep')} 60\n")
    monkeypatch.setattr(service, "PROFILE_TIMEOUT_S", 1.0)
    started = time.monotonic()
    with pytest.raises(InstallError, match="did not answer in 1 s"):
        _install(tmp_path, "raspberry-pi-5")
    assert time.monotonic() - started < 10
    assert not (tmp_path / "etc" / "run.toml").exists()


def test_a_device_cli_that_fails_otherwise_is_an_error_naming_its_cause(tmp_path, monkeypatch):
    # a console script left by an edgecls since removed: its python cannot import edgecls.cli
    _device_edgecls(tmp_path, monkeypatch, f"#!/bin/sh\nexec {sys.executable} -S -c 'import edgecls.cli'\n")
    with pytest.raises(InstallError, match="could not say whether it knows profile 'raspberry-pi-5'.*No module"):
        _install(tmp_path, "raspberry-pi-5")
    assert not (tmp_path / "etc" / "run.toml").exists()


def test_the_profile_timeout_leaves_the_hosts_call_time_for_the_rest():
    assert service.PROFILE_TIMEOUT_S <= 30
