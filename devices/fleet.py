"""The fleet file: one device per line, `TARGET [PROFILE] [key=value ...]`, `#` comments.

It is the targets file `edgecls flash --targets` always read (`TARGET [PROFILE]`), grown compatibly with
optional words:

- `name=NAME`: what tables, journals and Prometheus call the device (default: the target itself);
- `metrics=http://HOST:PORT`: where this host reaches the device's daemon (its /metrics and /healthz). Default:
  the port of the profile's `health_url` on the target's host (`user@host` targets) or the `health_url`'s own
  host and port (local folders); no `health_url` either: the device is flashed but cannot be watched;
- `canary=true`: the device is one of a staged rollout's canaries (devices/rollout/plan.py).

Example: `pi@10.0.0.5 raspberry-pi-5 name=door metrics=http://10.0.0.5:8080 canary=true`.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from edgecls.devices.profiles import DeviceProfile, load_profile
from edgecls.devices.ssh import SshError, parse_target
from edgecls.runtime.errors import EdgeclsError

KEYS = ("name", "metrics", "canary")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:/-]{0,127}$")


@dataclass(frozen=True)
class FleetDevice:
    """One line of the fleet file; `profile` None: the command's --device/--profile applies."""

    name: str
    target: str
    profile: DeviceProfile | None = None
    metrics_url: str | None = None  # http://HOST:PORT of its daemon; None: not watched
    canary: bool = False
    line: int = 0  # where it was written (0: not from a file)

    @property
    def metrics_address(self) -> str | None:
        """HOST:PORT of `metrics_url` (what a Prometheus target names), or None."""
        if not self.metrics_url:
            return None
        return urllib.parse.urlsplit(self.metrics_url).netloc

    def with_profile(self, default: DeviceProfile) -> FleetDevice:
        """This device with `default` where its line names no profile, and the metrics URL that profile implies."""
        if self.profile is not None:
            return self
        from dataclasses import replace

        url = self.metrics_url or default_metrics_url(self.target, default)
        return replace(self, profile=default, metrics_url=url)


def default_metrics_url(target: str, profile: DeviceProfile | None) -> str | None:
    """http://HOST:PORT of the device's daemon as the fleet file's default says (module docstring), or None."""
    if profile is None or not profile.health_url:
        return None
    health = urllib.parse.urlsplit(profile.health_url)
    try:
        ssh = parse_target(target)
    except SshError:
        ssh = None
    if ssh is None:
        return f"{health.scheme}://{health.netloc.rsplit('@', 1)[-1]}"
    host = f"[{ssh.host}]" if ":" in ssh.host else ssh.host
    port = health.port or (443 if health.scheme == "https" else 80)
    return f"{health.scheme}://{host}:{port}"


def _metrics_url(text: str, where: str) -> str:
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise EdgeclsError(
            f"{where}: metrics={text!r} is not http://HOST:PORT: write e.g. metrics=http://10.0.0.5:8080"
        )
    if parts.username or parts.password or parts.query:
        raise EdgeclsError(f"{where}: metrics={text!r} has a user, password or query: write only http://HOST:PORT")
    return f"{parts.scheme}://{parts.netloc}"


def _canary(text: str, where: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise EdgeclsError(f"{where}: canary={text!r}: write canary=true or canary=false")


def _profile(word: str, path: Path, where: str) -> DeviceProfile:
    if not Path(word).is_absolute() and (path.parent / word).is_file():
        word = str(path.parent / word)  # a profile file beside the fleet file
    try:
        return load_profile(word)
    except EdgeclsError as exc:
        raise EdgeclsError(f"{where}: {exc}") from exc


def _is_profile(word: str, path: Path) -> bool:
    """The word after TARGET names a profile: no `=`, or a profile file whose name has one (`cams/v=2.json`,
    which old targets files could name) rather than one of KEYS."""
    key = word.partition("=")[0]
    if "=" not in word:
        return True
    return key not in KEYS and (Path(word).is_file() or (path.parent / word).is_file())


def _device(words: list, path: Path, number: int) -> FleetDevice:
    where = f"{path} line {number}"
    target, rest = words[0], words[1:]
    try:
        parse_target(target)
    except SshError as exc:
        raise EdgeclsError(f"{where}: {exc}") from exc
    profile = None
    if rest and _is_profile(rest[0], path):
        profile, rest = _profile(rest[0], path, where), rest[1:]
    given: dict = {}
    for word in rest:
        key, equals, value = word.partition("=")
        if not equals:
            raise EdgeclsError(
                f"{where}: {word!r} after the profile is not key=value: write `TARGET [PROFILE] [name=N] "
                f"[metrics=http://HOST:PORT] [canary=true]`"
            )
        if key not in KEYS:
            raise EdgeclsError(f"{where}: unknown key {key!r}: the keys are {', '.join(KEYS)}")
        if key in given:
            raise EdgeclsError(f"{where}: {key}= is given twice")
        given[key] = value
    name = given.get("name", target)
    if "name" in given and not _NAME.match(name):
        raise EdgeclsError(f"{where}: name={name!r}: use letters, digits and . _ - @ : / (at most 128)")
    metrics = _metrics_url(given["metrics"], where) if "metrics" in given else default_metrics_url(target, profile)
    canary = _canary(given["canary"], where) if "canary" in given else False
    return FleetDevice(name, target, profile, metrics, canary, number)


def read_fleet(path) -> list:
    """Every device of the fleet file at `path`, in its order; one-line errors name the file and line."""
    devices = read_devices(path)
    if not devices:
        raise EdgeclsError(f"the fleet file {path} names no device: write one `TARGET [PROFILE] [name=N]` per line")
    return devices


def read_devices(path) -> list:
    """`read_fleet` that lets a file name no device (what `read_targets_file` always allowed)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeclsError(f"cannot read the fleet file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    devices: list = []
    seen: dict = {}
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        device = _device(words, path, number)
        for key, value in (("name", device.name), ("target", device.target)):
            if (key, value) in seen:
                raise EdgeclsError(
                    f"{path} line {number}: {key} {value!r} is already on line {seen[key, value]}: each device once"
                    + (", each with its own name=" if key == "name" else "")
                )
            seen[key, value] = number
        devices.append(device)
    return devices


def fleet_with_profile(devices: list, default: DeviceProfile) -> list:
    """Each device with the command's profile where its line names none (and the metrics URL it implies)."""
    return [d.with_profile(default) for d in devices]
