"""Remote commands and file copies over the system's OpenSSH client.

We run the `ssh` program rather than a Python SSH library so that what users already set up works as they
expect: ~/.ssh/config host aliases, keys, agents, ProxyJump, ControlMaster. The API is small:

    target = parse_target("pi@raspberrypi.local:2222:/opt/edgecls")   # None for a local path
    client = SshClient(target, config="~/.ssh/other_config", options=["ConnectTimeout=5"])
    client.run(["uname", "-m"]).stdout                 # argv is quoted for the remote shell; check=True
    client.run("echo $HOME", timeout=10)                # a str is sent as one shell command line
    client.python("edgecls.runtime.install", ["status", "--root", "/opt/edgecls"])  # `python3 -m ...` on the device
    client.push([Path("bundle/manifest.json"), Path("bundle")], "/tmp/x")   # files and folders, via tar
    client.fetch("/opt/edgecls/status.json", Path("status.json"))

Failures raise `SshError` (an EdgeclsError) whose one-line message names the cause and the fix: unknown host,
host unreachable, authentication refused, host key changed, remote python or edgecls missing, timeout.
Nothing here logs command lines' stdin or the environment; commands are logged at DEBUG without their input.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.devices")

_TARGET = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)"
    r"(?::(?P<port>\d{1,5}))?(?::(?P<root>.+))?$"
)
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")  # POSIX-style login names; ssh refuses shell characters


class SshError(EdgeclsError):
    """A remote command or copy that failed for a reason the user can fix."""


@dataclass(frozen=True)
class SshTarget:
    """`[user@]host[:port][:/root]`: where to connect, and (optionally) the device's install root."""

    host: str
    user: str | None = None
    port: int | None = None
    root: str | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return self.destination + (f":{self.port}" if self.port else "") + (f":{self.root}" if self.root else "")


def is_ssh_target(text: str) -> bool:
    """Whether TARGET names an SSH device rather than a local directory (a mounted SD card, a rootfs).

    SSH needs `user@host` or `host:...`; anything starting with / . or ~, or an existing path, is local. Any
    other text with an @ or a : is read as SSH (and refused if malformed), never silently as a folder.
    """
    if not text or text[0] in "/.~" or os.path.exists(text):
        return False
    return "@" in text or ":" in text


def parse_target(text: str) -> SshTarget | None:
    """`user@host[:port][:/root]` as an SshTarget; None when `text` is a local path; SshError when malformed."""
    if not is_ssh_target(text):
        return None
    m = _TARGET.match(text)
    if not m:
        raise SshError(
            f"cannot read the target {text!r}: write user@host, user@host:PORT, user@host:/ROOT "
            f"or user@host:PORT:/ROOT (or a local folder path starting with / or ./)"
        )
    if m["user"] is not None and not _USER.match(m["user"]):
        raise SshError(
            f"target {text!r}: {m['user']!r} is not a valid SSH user name (letters, digits, '.', '_', '-'): "
            f"fix the user, or write a local folder as ./{text}"
        )
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise SshError(f"target {text!r}: port {port} is out of range 1-65535")
    host = m["host"][1:-1] if m["host"].startswith("[") else m["host"]
    return SshTarget(host=host, user=m["user"], port=port, root=m["root"])


def _cause(stderr: str, target: SshTarget) -> str | None:
    """A one-line cause and fix for ssh's own failures (exit status 255), or None."""
    where = str(target.destination) + (f" port {target.port}" if target.port else "")
    text = stderr.lower()
    if "could not resolve hostname" in text or "name or service not known" in text:
        return f"cannot resolve the host name {target.host!r}: check the spelling, DNS or your ~/.ssh/config Host entry"
    if "host key verification failed" in text or "remote host identification has changed" in text:
        connect = f"ssh -p {target.port} {target.destination}" if target.port else f"ssh {target.destination}"
        return (
            f"the host key of {where} is unknown or changed: connect once with `{connect}` "
            f"to accept it, or fix ~/.ssh/known_hosts if the device was re-imaged"
        )
    user = f"user {target.user!r}" if target.user else "your user (or ~/.ssh/config's User)"
    if "permission denied" in text or "too many authentication failures" in text:
        return (
            f"authentication failed: {where} refused the login of {user}: check the user name, and install your "
            f"public key on the device (`ssh-copy-id {target.destination}`) or load it into ssh-agent "
            f"(passwords are not asked for)"
        )
    if "username contains invalid characters" in text:
        return f"ssh refused {user} (it contains characters a login name cannot have): fix the user in the TARGET"
    for phrase in (
        "connection refused",
        "timed out",
        "no route to host",
        "network is unreachable",
        "connection closed",
        "connection reset",
        "unknown port",
    ):
        if phrase in text:
            return (
                f"cannot reach {where} ({phrase}): check that the device is on, on the network, and runs an "
                f"SSH server on that port"
            )
    return None


def _remote_cause(stderr: str, argv0: str) -> str | None:
    """Causes that come from the device's shell or Python rather than from ssh."""
    if "command not found" in stderr or re.search(r": (\d+: )?[^ ]+: not found", stderr):  # bash; dash
        return f"{argv0!r} is not installed on the device: install it there (for python3: your OS's python3 package)"
    m = re.search(r"No module named '?([A-Za-z0-9_.]+)", stderr)
    if m and m.group(1).startswith("edgecls."):  # edgecls is there, from before edgecls.runtime (or another part)
        return (
            f"the device's edgecls is older than this one (it has no {m.group(1)}): flash once with --setup to "
            "update it, or install this edgecls's wheel there with `pip install --force-reinstall WHEEL`"
        )
    if m and m.group(1).split(".")[0] in ("runtime", "devices", "edgecls"):
        return (
            "edgecls is not installed for the device's python3: run `edgecls flash ... --setup` or "
            "`python3 -m pip install 'edgecls[runtime]'` on the device"
        )
    return None


def sh_path(path: str) -> str:
    """`path` for the device's shell: quoted, with a leading ~/ left to the shell (profiles allow ~/edgecls)."""
    return f'"$HOME"/{shlex.quote(path[2:])}' if path.startswith("~/") else shlex.quote(path)


def python_command(python: str, root: str, argv: Sequence[str]) -> list | str:
    """`PYTHON argv...` for the device; python "auto": ROOT/venv/bin/python (what `flash --setup` makes) if it
    exists there, else python3 (decided on the device, in the same round trip)."""
    if python != "auto":
        return [python, *map(str, argv)]
    from edgecls.runtime.install.layout import VENV

    venv_python = sh_path(
        f"{root.rstrip('/')}/{VENV}/bin/python"
    )  # ~/edgecls: the device's HOME, as DeviceRoot reads it
    return f'p={venv_python}; [ -x "$p" ] || p=python3; exec "$p" ' + " ".join(shlex.quote(str(a)) for a in argv)


class SshClient:
    """Runs commands on one SSH target with the system `ssh` (see the module docstring)."""

    def __init__(
        self,
        target: SshTarget,
        *,
        config: str | os.PathLike | None = None,
        options: Sequence[str] = (),
        python: str = "python3",
        connect_timeout: int = 15,
    ):
        self.target = target
        self.config = str(Path(config).expanduser()) if config else None
        self.options = list(options)
        self.python_exe = python
        self.connect_timeout = connect_timeout

    def ssh_argv(self) -> list:
        """`ssh` and its options up to and including the destination (no remote command)."""
        argv = ["ssh"]
        if self.config:
            argv += ["-F", self.config]
        # BatchMode: a fleet flash runs in parallel threads and must never stop at a password prompt.
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        for opt in self.options:
            argv += ["-o", opt]
        if self.target.port:
            argv += ["-p", str(self.target.port)]
        return argv + ["--", self.target.destination]

    def run(
        self,
        command: Sequence[str] | str,
        *,
        input: bytes | None = None,
        timeout: float | None = 300,
        check: bool = True,
        stdin=None,
        what: str = "",
    ) -> subprocess.CompletedProcess:
        """Run `command` on the device; stdout/stderr are captured as bytes.

        `command` as a list is quoted word by word (paths with spaces are safe); as a str it is one shell line.
        `check`: a non-zero exit raises SshError with the cause. `stdin` may be an open file instead of `input`.
        `what` names the step in errors (a script's first word, `set`, would say nothing).
        """
        line = command if isinstance(command, str) else " ".join(shlex.quote(str(a)) for a in command)
        argv0 = what or line.split(" ", 1)[0]
        log.debug("ssh %s: %s", self.target, line)
        try:
            result = subprocess.run(
                [*self.ssh_argv(), line], input=input, stdin=stdin, capture_output=True, timeout=timeout
            )
        except FileNotFoundError as exc:
            raise SshError("the OpenSSH client `ssh` is not installed here: install openssh-client") from exc
        except subprocess.TimeoutExpired as exc:
            raise SshError(
                f"{self.target}: `{argv0}` did not finish within {timeout:.0f} s: check the device "
                f"(load, disk) or the network, then run again"
            ) from exc
        if check and result.returncode != 0:
            raise SshError(self.describe_failure(result, argv0))
        return result

    def describe_failure(self, result: subprocess.CompletedProcess, argv0: str = "") -> str:
        stderr = result.stderr.decode("utf-8", "replace") if isinstance(result.stderr, bytes) else result.stderr or ""
        if result.returncode == 255:
            cause = _cause(stderr, self.target)
            if cause:
                return cause
        cause = _remote_cause(stderr, argv0) if result.returncode in (1, 127) else None
        if cause:
            return f"{self.target}: {cause}"
        last = next((l.strip() for l in reversed(stderr.splitlines()) if l.strip()), "")
        if result.returncode == 255 and "Traceback" not in stderr:
            last = "the connection or the remote process ended abruptly (killed, or the device rebooted)"
        return f"{self.target}: `{argv0}` failed (exit status {result.returncode})" + (
            f": {last[:300]}" if last else ""
        )

    def python(self, module: str, args: Sequence[str] = (), **kw) -> subprocess.CompletedProcess:
        """`python3 -m module args...` on the device (the interpreter is the `python` given at construction)."""
        return self.run([self.python_exe, "-m", module, *map(str, args)], **kw)

    def push(self, paths: Sequence[os.PathLike], remote_dir: str, *, timeout: float | None = 600) -> None:
        """Copy files and folders (recursively) into `remote_dir` on the device, created if missing.

        One tar stream over one connection (many small files cost one round trip); needs `tar` on the device,
        which every Linux image has.
        """
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path in map(Path, paths):
                tar.add(path, arcname=path.name)
        quoted = shlex.quote(remote_dir)
        self.run(f"mkdir -p {quoted} && tar -x -f - -C {quoted}", input=buf.getvalue(), timeout=timeout)

    def fetch(self, remote_file: str, local: os.PathLike, *, timeout: float | None = 300) -> Path:
        """Copy one file from the device; written beside `local` and renamed, so `local` is never half a file."""
        from edgecls.runtime.atomic import write_bytes

        result = self.run(["cat", "--", remote_file], timeout=timeout)
        write_bytes(local, result.stdout)
        return Path(local)


# Asked of a device's python: the version of the edgecls it imports (0.2.0 and older say it no other way).
VERSION_PROBE = "import edgecls; print(edgecls.__version__)"


def device_edgecls_version(client: SshClient, python: str, root: str) -> str:
    """The version of the edgecls that `python` ("auto": ROOT/venv's, else python3) imports on the device; flash and
    bench --device ask it before they send a bundle that `requires` something (0.2.0 ignores `requires`)."""
    result = client.run(
        python_command(python, root, ["-c", VERSION_PROBE]),
        timeout=60,
        what=f"{client.python_exe} (edgecls version)",
    )
    words = result.stdout.decode("utf-8", "replace").split()
    if not words:
        raise SshError(f"{client.target}: the device's python printed no edgecls version: update it with --setup")
    return words[-1]


def check_serves(needs, version: str | None, where: str) -> None:
    """An EdgeclsError, before anything is sent, when the device's edgecls `version` predates what a bundle `needs`
    (its manifest's `requires`); None is this host's own edgecls, which serves what it knows."""
    from edgecls.runtime.bundle import unserved

    missing = unserved(needs, version) if version is not None else []
    if missing:
        raise EdgeclsError(
            f"{where}: the device runs edgecls {version}, which predates what this bundle needs "
            f"({', '.join(missing)}) and would serve it wrongly: update it with `edgecls flash ... --setup` "
            f"(or pip install a newer edgecls there), then try again"
        )
