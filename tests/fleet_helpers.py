"""A fleet on this machine: N device roots, each with its own real `edgecls run` daemon on its own port.

Every daemon runs its root's `current` (a flashed bundle; hot reload follows the link) on a folder of real images
played as a live camera (`--fps`), with one inference thread. Each device has its own profile file (its
`health_url`, so a flash waits until the daemon serves the new release, and the fleet file's metrics URL follows
from it). Some devices are reached over SSH (tests/sshd.py) and the rest as local folders; all run here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tests.conftest import REPO
from tests.daemon_helpers import http_get

CAMERA_FPS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Device:
    name: str
    root: Path
    target: str
    port: int
    profile: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def current(self) -> str:
        """The release `current` names (its slot)."""
        return os.readlink(self.root / "current").rsplit("/", 1)[-1]


class Fleet:
    """`size` devices under `folder`, the first `ssh_count` reached through `sshd`; `start(bundle)` flashes
    `bundle` onto every root and starts the daemons; `stop()` ends them (also on a failed start)."""

    def __init__(self, folder: Path, camera: Path, size: int, *, sshd=None, ssh_count: int = 0):
        self.folder, self.camera, self.sshd = Path(folder), Path(camera), sshd
        self.folder.mkdir(parents=True, exist_ok=True)
        self.devices: list = []
        for i in range(size):
            root = self.folder / f"dev{i:02d}"
            port = free_port()
            profile = self.folder / f"cam{i:02d}.json"
            profile.write_text(
                json.dumps(
                    {
                        "name": f"cam{i:02d}",
                        "artifacts": ["tflite-int8"],
                        "threads": 1,
                        "health_url": f"http://127.0.0.1:{port}/healthz",
                    }
                )
            )
            target = sshd.target(root) if i < ssh_count else str(root)
            self.devices.append(Device(f"cam{i:02d}", root, target, port, profile))
        self.fleet_file = self.folder / "fleet.txt"
        self.fleet_file.write_text(
            "# the test fleet: TARGET PROFILE name=NAME\n"
            + "".join(f"{d.target} {d.profile.name} name={d.name}\n" for d in self.devices)
        )

    @property
    def ssh_args(self) -> list:
        return ["--ssh-config", str(self.sshd.ssh_config)] if self.sshd else []

    def start(self, bundle: Path) -> Fleet:
        from edgecls.devices.flash import FlashOptions, flash
        from edgecls.devices.profiles import load_profile

        try:
            for d in self.devices:  # the first version: installed locally, before any daemon runs (none to wait for)
                profile = replace(load_profile(str(d.profile)), health_url="")
                result = flash(bundle, [str(d.root)], FlashOptions(profile=profile))[0]
                assert result.ok, result
            for d in self.devices:
                d.process = self._daemon(d)
            for d in self.devices:
                self.wait_healthy(d)
        except BaseException:
            self.stop()
            raise
        return self

    def _daemon(self, d: Device) -> subprocess.Popen:
        log = open(self.folder / f"{d.name}.log", "wb")
        command = [sys.executable, "-m", "edgecls.cli", "run", str(d.root / "current"), "--source", str(self.camera)]
        command += ["--loop", "--fps", str(CAMERA_FPS), "--threads", "1", "--port", str(d.port)]
        command += ["--device", str(d.profile)]
        return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)

    def wait_healthy(self, d: Device, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert d.process.poll() is None, (self.folder / f"{d.name}.log").read_text()[-2000:]
            try:
                if http_get(f"{d.url}/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{d.name}'s daemon never became healthy")

    def stop(self) -> None:
        for d in self.devices:
            if d.process is not None and d.process.poll() is None:
                d.process.terminate()
        for d in self.devices:
            if d.process is not None:
                try:
                    d.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    d.process.kill()
                    d.process.wait()

    def by_name(self, name: str) -> Device:
        return next(d for d in self.devices if d.name == name)
