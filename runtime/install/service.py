"""Install the daemon's systemd unit ON the device, pointed at ROOT/current (`edgecls flash --install-service`).

Written by the device's own code because only the device knows where its `edgecls` lives (a venv, /usr/local)
and which Python runs it; the unit text is the daemon issue's hardened one (unit.py). The unit's
`--config` TOML is written only when absent (an operator's edits survive re-flashes): it runs
ROOT/current from the profile's camera with the HTTP server on `port`, checking signatures when the device
trusts keys, so hot reload follows every flash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgecls.runtime.atomic import write_text
from edgecls.runtime.install.layout import DeviceRoot, InstallError
from edgecls.runtime.install.unit import UnitOptions, unit_text


def device_executable() -> str:
    """This Python's `edgecls` entry point (the console script pip put beside it), else the one on PATH."""
    beside = Path(sys.executable).with_name("edgecls")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("edgecls")
    if found:
        return os.path.abspath(found)
    raise InstallError(
        f"edgecls is not installed for {sys.executable} on this device: run `edgecls flash --setup` "
        f"or `{sys.executable} -m pip install 'edgecls[runtime]'` there"
    )


PROFILE_TIMEOUT_S = 30.0  # the device's CLI answers in about a second; the host gives the whole call 180 s
_UNKNOWN_PROFILE = "error: unknown device profile "  # edgecls.devices.profiles.load_profile's answer, through the CLI


def device_knows_profile(executable: str, profile: str) -> bool:
    """Whether the device's own `edgecls` (the one the unit runs, started from / as systemd does) loads `profile` by
    name. Asked of its CLI: device profiles (built-in files and users' folders) belong to edgecls.devices, a layer
    above the runtime, and the answer that matters is the one of the edgecls the daemon will run.

    Only the CLI's own "unknown device profile" answer means no; any other failure is an InstallError, so a
    run.toml is never written without the profile because the question could not be asked.
    """
    command = [executable, "devices", "show", "--json", "--", profile]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, errors="replace", cwd="/", timeout=PROFILE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise InstallError(
            f"`{' '.join(command)}` did not answer in {PROFILE_TIMEOUT_S:.0f} s: the device's edgecls could not "
            f"say whether it knows profile {profile!r}"
        ) from None
    except OSError as exc:
        raise InstallError(f"cannot run {executable}: {exc.strerror or exc}") from exc
    if done.returncode == 0:
        return True
    lines = [l for l in done.stderr.splitlines() if l.strip()]
    if lines and lines[-1].startswith(_UNKNOWN_PROFILE):
        return False
    why = lines[-1] if lines else f"exit status {done.returncode}"
    raise InstallError(f"the device's edgecls could not say whether it knows profile {profile!r}: {why[:300]}")


def _toml(value) -> str:
    return json.dumps(value)  # JSON strings, numbers and arrays of strings are valid TOML


def install_service(
    root,
    *,
    name: str = "edgecls",
    unit_dir: str = "/etc/systemd/system",
    config: str = "/etc/edgecls/run.toml",
    camera: str = "0",
    port: int = 8080,
    profile: str = "",
) -> dict:
    executable = device_executable()  # before anything is written: no unit or config without an edgecls to run
    device = DeviceRoot(root)
    with device.claim():  # made ours under the lock, as a flash does
        pass
    config_path = Path(config)
    wrote_config = False
    if not config_path.exists():
        lines = [f"bundle = {_toml(str(device.current))}", f"source = [{_toml(camera)}]", f"port = {int(port)}"]
        if profile and device_knows_profile(executable, profile):  # its threads, artifact: only one the device has
            lines.append(f"device = {_toml(profile)}")
        if device.signers.is_file():
            lines.append(f"allowed-signers = {_toml(str(device.signers))}")
        config_path.parent.mkdir(parents=True, exist_ok=True)
        write_text(
            config_path,
            "# written by edgecls flash --install-service; edit freely, it is never overwritten\n"
            + "\n".join(lines)
            + "\n",
        )
        wrote_config = True
    unit = Path(unit_dir) / f"{name}.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    write_text(unit, unit_text(UnitOptions(executable=executable, config=str(config_path))))
    enabled = False
    if Path("/run/systemd/system").is_dir() and Path(unit_dir).resolve() == Path("/etc/systemd/system"):
        for command in (
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", f"{name}.service"],
            ["systemctl", "restart", f"{name}.service"],
        ):
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise InstallError(f"`{' '.join(command)}` failed: {done.stderr.strip() or done.stdout.strip()}")
        enabled = True
    return {
        "unit": str(unit),
        "config": str(config_path),
        "config_written": wrote_config,
        "enabled": enabled,
        "health_url": f"http://127.0.0.1:{int(port)}/healthz",
    }
