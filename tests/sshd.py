"""A real OpenSSH server on 127.0.0.1 for tests: throwaway keys, its own config, nothing of the host's touched.

Use the `sshd` fixture (import it into a test module: `from tests.sshd import sshd  # noqa: F401`) or
`SshServer(folder).start()` / `.stop()` directly. Clients reach it with the system's `ssh -F server.ssh_config`
(identity, port, known hosts and BatchMode are in that file), or with `server.target(root)` for edgecls's
`user@host:port:/root` syntax. Missing sshd skips here and fails under CI (conftest's `require_tool`).

Sessions get a PATH whose first entry is this interpreter's folder and PYTHONPATH=the checkout, so
`python3 -m edgecls.runtime.install` on the "device" runs this tree's code with this interpreter's packages (as on a
provisioned device), in a venv too: every command goes through a wrapper (ForceCommand) that sets PATH after the
login shell's rc files, which may put another python3 first (pyenv's shims in ~/.bashrc); `start()` checks it.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


# A Python's binary and prefix: /usr/bin/python3.12 and /usr/bin/python3 (3.11) share the prefix /usr, a venv's
# python3 is its base's binary under another prefix.
PYTHON_IDENTITY = "import os, sys; print(os.path.realpath(sys.executable), sys.prefix)"


def python_identity() -> str:
    """PYTHON_IDENTITY's line for this interpreter."""
    return f"{os.path.realpath(sys.executable)} {sys.prefix}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgecls-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


@dataclass
class SshServer:
    """An sshd on 127.0.0.1:`port` whose files all live in `folder`."""

    folder: Path
    user: str = field(default_factory=getpass.getuser)
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def client_key(self) -> Path:
        return self.folder / "client_key"

    @property
    def ssh_config(self) -> Path:
        """A client config for `ssh -F`: `Host` entries for 127.0.0.1 and the alias `edgecls-test`."""
        return self.folder / "ssh_config"

    @property
    def log(self) -> Path:
        return self.folder / "sshd.log"

    def target(self, root: str | os.PathLike) -> str:
        """edgecls's TARGET syntax for a device root on this server."""
        return f"{self.user}@{self.host}:{self.port}:{root}"

    def ssh_args(self) -> list:
        """argv prefix for running a command on the server: [*ssh_args(), "echo", "hi"]."""
        return ["ssh", "-F", str(self.ssh_config), "-p", str(self.port), f"{self.user}@{self.host}"]

    def _write_session_wrapper(self, path: str) -> Path:
        """The script every session runs: the command in bash without rc files, under the test's PATH."""
        wrapper = self.folder / "session.sh"
        wrapper.write_text(
            "#!/bin/sh\n"
            "# The login shell read its rc files before this; they may have put another python3 first on PATH.\n"
            f"PATH={shlex.quote(path)}; export PATH\n"
            'if [ -z "${SSH_ORIGINAL_COMMAND:-}" ]; then exec bash --norc --noprofile -i; fi\n'
            'exec bash --norc --noprofile -c "$SSH_ORIGINAL_COMMAND"\n'
        )
        wrapper.chmod(0o755)
        return wrapper

    def _check_python(self) -> None:
        """The device's `python3` is this interpreter (its venv included), or the tests would try another one's."""
        ran = subprocess.run(
            [*self.ssh_args(), "python3", "-c", shlex.quote(PYTHON_IDENTITY)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ran.returncode != 0 or ran.stdout.strip() != python_identity():
            self.stop()
            raise RuntimeError(
                f"the test sshd's python3 is not {sys.executable} (it is {ran.stdout.strip()!r}, exit "
                f"{ran.returncode}): {ran.stderr.strip()[-500:]}"
            )

    def _write_files(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "host_key").exists():
            _keygen(self.folder / "host_key")
            _keygen(self.client_key)
        shutil.copy(self.folder / "client_key.pub", self.folder / "authorized_keys")
        path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
        (self.folder / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.folder / 'host_key'}",
                    f"PidFile {self.folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PrintMotd no",
                    "MaxStartups 100:30:200",  # fleet tests open many sessions at once
                    "MaxSessions 50",
                    # A provisioned device has edgecls installed; here the checkout stands in for that install.
                    f"SetEnv PATH={path} PYTHONPATH={_REPO}",
                    f"ForceCommand {shlex.quote(str(self._write_session_wrapper(path)))}",
                    "AcceptEnv EDGECLS_TEST_KILL_AT",  # the kill tests' device-side hook (runtime/install/layout.py)
                    # A program, not internal-sftp: under ForceCommand the subsystem runs through the wrapper too.
                    f"Subsystem sftp {_sftp_server()}",
                    "",
                ]
            )
        )
        # A short folder for ControlPath: unix socket paths are limited to ~104 bytes.
        self._control = Path(tempfile.mkdtemp(prefix="ecls-cm-"))
        host_block = [
            f"  HostName {self.host}",
            f"  Port {self.port}",
            f"  User {self.user}",
            f"  IdentityFile {self.client_key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {self.folder / 'known_hosts'}",
            "  StrictHostKeyChecking accept-new",
            "  BatchMode yes",
            "  LogLevel ERROR",
            "  ConnectTimeout 10",
            # One TCP connection for the many short commands a flash runs: tests stay fast.
            "  ControlMaster auto",
            f"  ControlPath {self._control}/%C",
            "  ControlPersist 30",
        ]
        self.ssh_config.write_text("\n".join(["Host 127.0.0.1 edgecls-test", *host_block, ""]))

    def start(self, attempts: int = 3) -> SshServer:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        try:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation folder sshd insists on as root
        except OSError:
            pass  # not root: sshd runs unprivileged and lets only this user in, which is all the tests need
        for _ in range(attempts):
            self.port = _free_port()
            self._write_files()
            log = open(self.log, "wb")
            self.process = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(self.folder / "sshd_config")], stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    socket.create_connection((self.host, self.port), timeout=0.5).close()
                except OSError:
                    time.sleep(0.05)
                    continue
                self._check_python()
                return self
            self.stop()  # the port was taken meanwhile, or sshd refused the config: try another port
        raise RuntimeError(f"sshd did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            subprocess.run(
                ["ssh", "-F", str(self.ssh_config), "-O", "exit", "edgecls-test"], capture_output=True, timeout=10
            )
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        control = getattr(self, "_control", None)
        if control is not None:
            shutil.rmtree(control, ignore_errors=True)

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# OpenSSH's sftp-server: Debian's path, Red Hat's, the BSDs', Arch's and Alpine's.
SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/ssh/sftp-server",
)


def _sftp_server() -> str:
    """The sftp-server program, else on PATH. Never internal-sftp: under ForceCommand the wrapper would run it as
    `bash -c internal-sftp`, and scp and sftp exit 255."""
    found = next((c for c in SFTP_SERVERS if os.access(c, os.X_OK)), None) or shutil.which("sftp-server")
    if not found:
        pytest.fail(f"no OpenSSH sftp-server program (looked in {', '.join(SFTP_SERVERS)} and PATH): install it")
    return found


def require_sshd() -> None:
    from tests.conftest import require_tool

    require_tool("sshd", "/usr/sbin/sshd", package="openssh-server")
    require_tool("ssh", package="openssh-client")
    require_tool("ssh-keygen", package="openssh-client")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A running SshServer for the test module; stopped (with its multiplexing master) afterwards."""
    require_sshd()
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()
