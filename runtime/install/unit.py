"""The systemd unit that runs `edgecls run` as a hardened service (text only).

Type=notify with a watchdog: the daemon says READY=1 once frames are classified and WATCHDOG=1 only
while they keep flowing (runtime/daemon/notify.py), so systemd restarts a daemon whose cameras all
died. Every option lives in the TOML file named by `--config` and secrets (the HTTP token) in an
environment file, so ExecStart stays one short line and `systemctl cat` shows no secret.

In the runtime because the device writes it itself (install/service.py, `edgecls flash --install-service`);
`edgecls service unit` prints the same text on the host.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.runtime")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class UnitOptions:
    """What varies between installs; the hardening does not."""

    executable: str = ""  # the edgecls entry point (default: the running one, running_executable())
    config: str = "/etc/edgecls/run.toml"
    env_file: str = "/etc/edgecls/edgecls.env"  # EDGECLS_RUN_TOKEN=... and other EDGECLS_RUN_* settings
    results_dir: str = "/var/lib/edgecls"
    user: str | None = None  # None: a dynamic user that exists only while the service runs
    watchdog_sec: int = 30
    description: str = "edgecls camera classification daemon"


def _absolute(path: str, what: str) -> str:
    if not path.startswith("/") or any(c.isspace() or c in "\"'\\%$;" for c in path):
        raise EdgeclsError(f"{what} {path!r}: systemd needs an absolute path without spaces, quotes or % signs")
    return path.rstrip("/") or "/"


def running_executable() -> str:
    """The edgecls of the Python running now (a venv's, activated or not), else the one on PATH: PATH may name
    another install (a pyenv shim, none under sudo's minimal PATH)."""
    beside = Path(sys.executable).with_name("edgecls")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("edgecls") or "/usr/local/bin/edgecls"


def unit_text(options: UnitOptions = UnitOptions()) -> str:
    """The `.service` file for `options`, ready for /etc/systemd/system/edgecls.service."""
    executable = _absolute(options.executable or running_executable(), "the edgecls executable")
    if executable.startswith(("/home/", "/root/", "/run/user/")):
        log.warning(
            "%s: ProtectHome=yes hides it from the service (status 203/EXEC): install edgecls outside home folders "
            "(python3 -m venv /opt/edgecls) and give that one with --exec",
            executable,
        )
    config = _absolute(options.config, "--config")
    env_file = _absolute(options.env_file, "--env-file")
    results = _absolute(options.results_dir, "--results-dir")
    if results in ("/", "/var", "/var/lib", "/etc", "/usr"):
        raise EdgeclsError(f"--results-dir {results}: give the daemon its own folder, such as /var/lib/edgecls")
    if options.watchdog_sec < 2:
        raise EdgeclsError(f"--watchdog-sec {options.watchdog_sec}: give at least 2 seconds (pings go every half)")
    if options.user is None:
        identity = ["DynamicUser=yes"]
    elif _USER.match(options.user) and options.user != "root":
        identity = [f"User={options.user}", f"Group={options.user}"]
    else:
        raise EdgeclsError(
            f"--user {options.user!r}: give an unprivileged system user name (not root), "
            "or leave it out for a dynamic user"
        )
    # A folder under /var/lib is created by systemd and owned by the service's (dynamic) user.
    state = (
        [f"StateDirectory={results[len('/var/lib/') :]}", "StateDirectoryMode=0750"]
        if results.startswith("/var/lib/")
        else []
    )
    lines = [
        "[Unit]",
        f"Description={options.description}",
        "Documentation=https://github.com/edgecls/edgecls#running-as-a-service",
        "Wants=network-online.target",
        "After=network-online.target",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={executable} run --config {config}",
        f"EnvironmentFile=-{env_file}",
        f"WatchdogSec={options.watchdog_sec}",
        "TimeoutStartSec=120",  # loading the model and the first frame on a slow board
        "TimeoutStopSec=10",
        "Restart=on-failure",
        "RestartSec=5",
        *identity,
        "SupplementaryGroups=video",
        "DevicePolicy=closed",
        "DeviceAllow=char-video4linux rw",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures=native",
        "UMask=0027",
        *state,
        f"ReadWritePaths={results}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
