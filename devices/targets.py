"""Where a flash goes: a local folder (a mounted SD card, a rootfs, this machine) or an SSH device.

Both run the same device code (runtime/install): a local target calls it directly, an SSH target runs
`python3 -m edgecls.runtime.install ...` on the device and reads its JSON. So verification and the commit happen on
the device, with the device's own file system semantics, whichever way the files travelled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import tarfile
import tempfile
from pathlib import Path

from edgecls.devices.ssh import (
    VERSION_PROBE,
    SshClient,
    SshError,
    device_edgecls_version,
    parse_target,
    python_command,
)
from edgecls.runtime.errors import EdgeclsError


class LocalTarget:
    kind = "local"

    def __init__(self, root: str | os.PathLike, python: str = "auto"):
        self.root = str(Path(os.path.expanduser(str(root))).absolute())
        self.name = self.root
        self.python = python

    def edgecls_version(self) -> str | None:
        """The version of the edgecls that serves this root when it is not this one: --python's, else ROOT/venv's
        (what `flash --setup` makes; read from its package metadata, so a card of another architecture answers).
        None: this edgecls serves it."""
        if self.python != "auto":
            return _version_of([self.python, "-c", VERSION_PROBE], self.python)
        from edgecls.runtime.install.layout import VENV

        for metadata in sorted(Path(self.root, VENV).glob("lib/python3*/site-packages/edgecls-*.dist-info/METADATA")):
            for line in metadata.read_text(errors="replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
        return None

    def plan(self, manifest: bytes, artifacts, smoke: bool = True) -> dict:
        from edgecls.runtime.install import api

        return api.plan(self.root, manifest, artifacts, smoke=smoke)

    def apply(self, manifest: bytes, artifacts, files: dict, **options) -> dict:
        from edgecls.runtime.install import api

        return api.apply(self.root, manifest, artifacts, sources=files, **options)

    def rollback(self, service: str = "") -> dict:
        from edgecls.runtime.install import api

        return api.rollback(self.root, service=service)

    def status(self) -> dict:
        from edgecls.runtime.install import api

        return api.status(self.root)

    def trust(self, signers: bytes) -> dict:
        from edgecls.runtime.install import api

        return api.trust(self.root, signers)

    def check_root(self) -> None:
        from edgecls.runtime.install.layout import DeviceRoot

        DeviceRoot(self.root).check()

    def setup(self, packages, say=lambda message: None) -> str:
        return "a local target is a folder: install the runtime packages on the device itself"

    def install_service(self, **options) -> dict:
        from edgecls.runtime.install.service import install_service

        return install_service(self.root, **options)


class SshDeviceTarget:
    kind = "ssh"

    def __init__(self, text: str, default_root: str, *, config=None, options=(), python: str = "auto"):
        target = parse_target(text)
        self.auto_python = python == "auto"
        self.client = SshClient(
            target, config=config, options=options, python="python3" if self.auto_python else python
        )
        self.root = target.root or default_root
        self.name = text

    def _command(self, argv: list) -> list | str:
        return python_command("auto" if self.auto_python else self.client.python_exe, self.root, argv)

    def edgecls_version(self) -> str:
        """The device's edgecls version, from the python a flash runs there (one round trip)."""
        return device_edgecls_version(self.client, "auto" if self.auto_python else self.client.python_exe, self.root)

    def _call(self, command: str, args: list, *, stdin=None, input: bytes | None = None, timeout: float = 600) -> dict:
        result = self.client.run(
            self._command(["-m", "edgecls.runtime.install", command, "--root", self.root, *args]),
            stdin=stdin,
            input=input,
            timeout=timeout,
            check=False,
        )
        return self._reply(result)

    def _reply(self, result) -> dict:
        """The device's JSON answer; {"error"} with exit status 2 is its refusal, in its words."""
        out = result.stdout.decode("utf-8", "replace").strip().splitlines()
        try:
            data = json.loads(out[-1]) if out else None
        except ValueError:
            data = None
        if result.returncode == 2 and isinstance(data, dict) and "error" in data:
            raise EdgeclsError(data["error"])
        if result.returncode == 0 and not isinstance(data, dict):
            raise SshError(
                f"{self.name}: the device's reply is not what this edgecls expects (not one JSON object): it may "
                f"run another edgecls version; update it there (`edgecls flash ... --setup`), then flash again"
            )
        if result.returncode != 0 or not isinstance(data, dict):
            raise SshError(self.client.describe_failure(result, self.client.python_exe))
        return data

    def _manifest_args(self, manifest: bytes, artifacts, smoke: bool) -> list:
        """Only the manifest's sha256 goes in argv (the manifest itself on stdin: argv is capped at 128 KiB)."""
        return ["--manifest-sha256", hashlib.sha256(manifest).hexdigest(), "--artifacts", ",".join(artifacts)] + (
            [] if smoke else ["--no-smoke"]
        )

    def plan(self, manifest: bytes, artifacts, smoke: bool = True) -> dict:
        return self._call("plan", self._manifest_args(manifest, artifacts, smoke), input=manifest, timeout=120)

    def apply(
        self,
        manifest: bytes,
        artifacts,
        files: dict,
        *,
        profile=None,
        budget_ms=None,
        service="",
        health_url="",
        health_token_file="",
        smoke=True,
        lock_timeout=60.0,
    ) -> dict:
        args = self._manifest_args(manifest, artifacts, smoke) + [
            "--stdin-tar",
            "--profile-json",
            json.dumps(profile or {}),
            "--service",
            service,
            "--health-url",
            health_url,
            "--health-token-file",
            health_token_file,
            "--lock-timeout",
            lock_timeout,
        ]
        if budget_ms is not None:
            args += ["--budget-ms", budget_ms]
        with tempfile.TemporaryFile() as stream:
            # dereference: a model file that is a link inside the bundle (a deduplicated store) travels as its
            # bytes, which the host has checked against the manifest; the device accepts only plain files.
            with tarfile.open(fileobj=stream, mode="w", dereference=True) as tar:
                header = tarfile.TarInfo("manifest.json")  # first: the device reads the manifest from here
                header.size, header.mode = len(manifest), 0o644
                tar.addfile(header, io.BytesIO(manifest))
                for name, path in files.items():
                    if name != "manifest.json":  # already sent as the header, the same bytes
                        tar.add(path, arcname=name, recursive=False)
            stream.seek(0)
            return self._call("apply", args, stdin=stream)

    def rollback(self, service: str = "") -> dict:
        return self._call("rollback", ["--service", service])

    def status(self) -> dict:
        return self._call("status", [], timeout=60)

    def trust(self, signers: bytes) -> dict:
        with tempfile.TemporaryFile() as stream:
            stream.write(signers)
            stream.seek(0)
            return self._call("trust", [], stdin=stream, timeout=60)

    def check_root(self) -> None:
        """DeviceRoot.check on the device before anything of edgecls may be there: runtime/install/rootcheck.py
        (standard library only) is sent to the device's python as its program."""
        from edgecls.runtime.install import rootcheck

        source = Path(rootcheck.__file__).read_bytes()
        result = self.client.run([self.client.python_exe, "-", self.root], input=source, timeout=120, check=False)
        self._reply(result)

    def setup(self, packages, say=lambda message: None) -> str:
        """Install `packages` offline: wheels fetched here for the device's platform, pushed, pip --no-index there.

        Into ROOT/venv (made with the OS's python3, seeing its packages) unless --python names an interpreter.
        Call `check_root` first: this writes ROOT/venv.
        """
        from edgecls.devices import wheels

        if not packages:
            return "the profile lists no packages"
        probe = self.client.run([self.client.python_exe, "-c", wheels.PROBE], timeout=120, what="edgecls setup (probe)")
        platform = wheels.DevicePlatform.parse(probe.stdout.decode("utf-8", "replace"), str(self.client.target))
        remote = f"/tmp/edgecls-wheels-{secrets.token_hex(6)}"
        with wheels.wheels_for(platform, list(packages), say=say) as house:  # held: not cleaned while pushed
            say(f"{self.name}: pushing {sum(1 for _ in house.glob('*.whl'))} wheels and installing offline")
            try:
                self.client.push(sorted(house.glob("*.whl")), remote, timeout=1800)
            except SshError:
                self.client.run(["rm", "-rf", remote], timeout=120, check=False)  # half a push: best effort
                raise
        python = "" if self.auto_python else self.client.python_exe
        self.client.run(
            wheels.install_script(self.root, remote, list(packages), python=python), timeout=3600, what="edgecls setup"
        )  # removes the pushed wheels however it ends
        where = f"into {self.root.rstrip('/')}/{wheels.VENV} " if self.auto_python else ""
        return f"installed {' '.join(packages)} {where}(offline)"

    def install_service(self, **options) -> dict:
        """Written by the device's own code: only it knows where its edgecls lives (see runtime/install/service.py)."""
        args = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
        return self._call("service", args, timeout=180)


def make_target(text: str, default_root: str, **ssh) -> LocalTarget | SshDeviceTarget:
    """TARGET as given on the command line: `user@host[:port][:/root]` or a local folder."""
    if parse_target(text) is not None:
        return SshDeviceTarget(text, default_root, **ssh)
    return LocalTarget(text, python=ssh.get("python", "auto"))


def _version_of(argv: list, python: str) -> str:
    import subprocess

    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EdgeclsError(f"cannot run the device's python {python!r} ({exc}): fix --python") from exc
    words = result.stdout.split()
    if result.returncode != 0 or not words:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise EdgeclsError(f"{python!r} cannot import edgecls ({last}): install it there, or fix --python")
    return words[-1]
