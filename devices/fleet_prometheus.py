"""Prometheus file-based service discovery from the fleet file (`edgecls fleet prometheus-targets`).

Prometheus's `file_sd_configs` reads a JSON list of target groups and re-reads the file whenever it changes, so
the file is replaced atomically (a half-written file would drop the whole fleet until the next write), and it is
only rewritten in place when it already is such a list: a user's other file at that path is refused, never lost.
One group per device: `{"targets": ["HOST:PORT"], "labels": {"device": NAME, ...}}`, so every series the device's
daemon exports carries its fleet name, as the dashboard (devices/grafana/edgecls.json) and the rollout read it.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from edgecls.devices.fleet import fleet_with_profile, read_fleet
from edgecls.devices.profiles import load_profile
from edgecls.runtime.atomic import write_bytes
from edgecls.runtime.errors import EdgeclsError


@dataclass(frozen=True)
class Targets:
    """The target groups for Prometheus and the devices left out of them (no metrics URL known), by name."""

    groups: list
    unwatched: list


def target_groups(devices: list) -> Targets:
    """One file_sd group per device that has a metrics URL; the others are listed in `unwatched`."""
    groups, unwatched, owner = [], [], {}
    for device in devices:
        if not device.metrics_url:
            unwatched.append(device.name)
            continue
        url = urllib.parse.urlsplit(device.metrics_url)
        address = url.netloc
        if address in owner:
            raise EdgeclsError(
                f"devices {owner[address]!r} and {device.name!r} both have metrics at {address}: each device's "
                "daemon has its own HOST:PORT (fix metrics= in the fleet file)"
            )
        owner[address] = device.name
        labels = {"device": device.name}
        if device.profile is not None:
            labels["profile"] = device.profile.name
        if url.scheme == "https":
            labels["__scheme__"] = "https"  # file_sd's way to say the scheme per target
        groups.append({"targets": [address], "labels": labels})
    return Targets(groups, unwatched)


def _is_targets_file(path: Path) -> bool:
    """True when `path` holds a file_sd JSON list of target groups (ours or one like it): safe to replace."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, list) and all(isinstance(g, dict) and "targets" in g for g in data)


def write_targets(fleet_file, out, device: str | None = None) -> Targets:
    """Write the file_sd JSON of the devices in `fleet_file` to `out` atomically; what was written.

    `device`: the profile (name or JSON file) of lines that name none, as `edgecls flash --device` takes it: its
    health_url gives such a device its metrics URL.
    """
    devices = read_fleet(fleet_file)
    if device is not None:
        devices = fleet_with_profile(devices, load_profile(device))
    targets = target_groups(devices)
    if not targets.groups:
        raise EdgeclsError(
            f"no device in {fleet_file} has a metrics URL: add metrics=http://HOST:PORT to its line "
            "(or give it a profile with a health_url)"
        )
    out = Path(out)
    if out.is_dir():
        raise EdgeclsError(f"--out {out} is a folder: name the JSON file Prometheus's file_sd_configs reads")
    if out.exists() and not _is_targets_file(out):
        raise EdgeclsError(
            f"--out {out} exists and is not a Prometheus targets file (a JSON list of target groups): "
            "it is left alone; choose another path or remove it"
        )
    write_bytes(out, (json.dumps(targets.groups, indent=2) + "\n").encode())
    return targets
