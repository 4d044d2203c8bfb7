"""Prometheus file-based service discovery from the fleet file (`edgecls fleet prometheus-targets`).

Prometheus's `file_sd_configs` reads a JSON list of target groups and re-reads the file whenever it changes, so
the file is replaced atomically (a half-written file would drop the whole fleet until the next write), and it is
only rewritten when it already is such a list of ours (every group labelled device=): a user's other file at that
path, a list of targets for other jobs included, is refused, never lost. A symlink is written through.
One group per device: `{"targets": ["HOST:PORT"], "labels": {"device": NAME, ...}}`, so every series the device's
daemon exports carries its fleet name, as the dashboard (devices/grafana/edgecls.json) and the rollout read it.
"""

from __future__ import annotations

import ipaddress
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


def _address(device) -> tuple[str, tuple]:
    """(HOST:PORT for Prometheus, the key two spellings of one daemon share) of the device's metrics URL.

    127.0.0.1, localhost and [::1] are one machine's loopback, 8080 and 08080 one port, Cam.Local and cam.local.
    one name: compared as text, two devices could name one daemon and both scrape it.
    """
    url = urllib.parse.urlsplit(device.metrics_url)
    port = url.port if url.port is not None else (443 if url.scheme == "https" else 80)
    if port == 0:
        raise EdgeclsError(
            f"device {device.name!r}: metrics={device.metrics_url} has port 0, where no daemon listens: "
            "write its daemon's port (fix metrics= in the fleet file)"
        )
    host = url.hostname.rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        key = "loopback" if host == "localhost" or host.endswith(".localhost") else host
    else:
        key = "loopback" if ip.is_loopback else ip.compressed
    shown = url.netloc.rsplit("@", 1)[-1]
    if url.port is not None:
        shown = shown[: shown.rindex(":")]
    return f"{shown}:{port}", (key, port)


def target_groups(devices: list) -> Targets:
    """One file_sd group per device that has a metrics URL; the others are listed in `unwatched`."""
    groups, unwatched, owner = [], [], {}
    for device in devices:
        if not device.metrics_url:
            unwatched.append(device.name)
            continue
        address, key = _address(device)
        if key in owner:
            raise EdgeclsError(
                f"devices {owner[key]!r} and {device.name!r} both have metrics at {address}: each device's "
                "daemon has its own HOST:PORT (fix metrics= in the fleet file)"
            )
        owner[key] = device.name
        labels = {"device": device.name}
        if device.profile is not None:
            labels["profile"] = device.profile.name
        if urllib.parse.urlsplit(device.metrics_url).scheme == "https":
            labels["__scheme__"] = "https"  # file_sd's way to say the scheme per target
        groups.append({"targets": [address], "labels": labels})
    return Targets(groups, unwatched)


def _is_ours(path: Path) -> bool:
    """True when `path` holds a file_sd list whose every group has a device label, as this module writes:
    safe to replace. A list someone wrote for other jobs (node exporters...) is theirs."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, list) and all(
        isinstance(g, dict) and "targets" in g and isinstance(g.get("labels"), dict) and "device" in g["labels"]
        for g in data
    )


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
    given = Path(out)
    out = given.resolve()  # a symlink is written through: the link stays, the file it points at is replaced
    if out.is_dir():
        raise EdgeclsError(f"--out {given} is a folder: name the JSON file Prometheus's file_sd_configs reads")
    if out.exists() and not _is_ours(out):
        raise EdgeclsError(
            f"--out {given} exists and is not a Prometheus targets file written by edgecls (a JSON list of target "
            "groups, each labelled device=NAME): it is left alone; choose another path or remove it"
        )
    write_bytes(out, (json.dumps(targets.groups, indent=2) + "\n").encode())
    return targets
