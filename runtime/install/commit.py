"""The one commit of a flash: point `current` (or `previous`) at a release with a single rename(2).

`ln -sfn` unlinks and then links, so for a moment there is no `current` (capistrano#1097); a temporary
symlink renamed over the old one replaces it in one step, and the rename is durable only once the folder
holding it is fsynced. Everything a flash does before this call is safe to kill; this call is the switch.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.install.layout import DeviceRoot, fsync_dir, kill_point


def switch(device: DeviceRoot, link: str, version: str | None) -> None:
    """Make ROOT/`link` point at releases/`version` atomically (None: remove the link)."""
    path = device.root / link
    if version is None:
        if path.is_symlink():
            kill_point("switch")
            os.unlink(path)
            fsync_dir(device.root)
        return
    if not (device.releases / version).is_dir():
        raise FileNotFoundError(device.releases / version)
    tmp = device.root / f".{link}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        os.unlink(tmp)
    os.symlink(str(Path("releases") / version), tmp)  # relative: the root can be mounted elsewhere (an SD card)
    kill_point("switch")
    os.replace(tmp, path)  # rename(2): readers see the old link or the new one, never none
    fsync_dir(device.root)


def remove_stale_temps(device: DeviceRoot) -> None:
    """Temporary links and files (`.NAME.PID.tmp`) left by a flash killed before its rename."""
    for tmp in device.root.glob(".*.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue  # not ours, or another live process's write in progress
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
