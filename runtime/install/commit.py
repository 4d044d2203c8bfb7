"""The one commit of a flash: point `current` (or `previous`) at a release with a single rename(2).

`ln -sfn` unlinks and then links, so for a moment there is no `current` (capistrano#1097); a temporary
symlink renamed over the old one replaces it in one step, and the rename is durable only once the folder
holding it is fsynced. Everything a flash does before this call is safe to kill; this call is the switch.

The way back is made before the switch: `prepare_rollback` leaves links pointing where `current` and
`previous` pointed, and a reserved file for the rollback's record. A rollback then only renames existing
entries over others, so it works on a file system that something filled (blocks or inodes) after the switch.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from edgecls.runtime.atomic import pid_alive
from edgecls.runtime.install.layout import DeviceRoot, fsync_dir, kill_point, temp_tag

SPARE = {"current": ".rollback-current", "previous": ".rollback-previous"}
RESERVE = ".reserve"
RESERVE_MIN = 64 * 1024  # state.json with its 20 results is a few KiB; twice what it holds now at least
FULL = (errno.ENOSPC, errno.EDQUOT)


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
    tmp = device.root / f".{link}.{temp_tag()}.tmp"
    os.symlink(str(Path("releases") / version), tmp)  # relative: the root can be mounted elsewhere (an SD card)
    kill_point("switch")
    os.replace(tmp, path)  # rename(2): readers see the old link or the new one, never none
    fsync_dir(device.root)


def prepare_rollback(device: DeviceRoot, current: str | None, previous: str | None) -> None:
    """Before a switch: the links a rollback will rename back into place, and the space for its record.

    Raises OSError (a full disk) before anything is switched, which is the time to fail."""
    for link, version in (("current", current), ("previous", previous)):
        spare = device.root / SPARE[link]
        if os.path.lexists(spare):
            os.unlink(spare)
        if version:
            os.symlink(str(Path("releases") / version), spare)
    reserve = device.root / RESERVE
    size = max(RESERVE_MIN, 2 * _size(device.state_file))
    if _size(reserve) < size:
        with open(reserve, "wb") as f:
            f.write(b"\0" * size)  # written, not ftruncate'd: a sparse file would reserve nothing
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(device.root)


def restore(device: DeviceRoot, link: str, version: str | None) -> None:
    """Point `link` back at `version` by renaming the link `prepare_rollback` made (no new inode or block);
    without one (an older flash's leftovers), with `switch`."""
    spare = device.root / SPARE[link]
    if version and device.link_version(spare) == version:
        kill_point("switch")
        os.replace(spare, device.root / link)
        fsync_dir(device.root)
    elif version is None or device.link_version(device.root / link) != version:
        switch(device, link, version)


def write_reserved(device: DeviceRoot, path: Path, data: bytes) -> bool:
    """Write `data` to `path` through the reserved file (its blocks overwritten in place, then renamed over
    `path`): the record of a rollback on a full disk. False when there is no reserve or it is too small."""
    reserve = device.root / RESERVE
    if _size(reserve) < len(data):
        return False
    with open(reserve, "r+b") as f:
        f.write(data)
        f.truncate(len(data))
        f.flush()
        os.fsync(f.fileno())
    os.replace(reserve, path)
    fsync_dir(path.parent)
    return True


def drop_rollback(device: DeviceRoot) -> None:
    """After a flash ends: the spare links and the reserve are not needed (the space goes back to the daemon)."""
    for name in (*SPARE.values(), RESERVE):
        try:
            os.unlink(device.root / name)
        except FileNotFoundError:
            pass


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if not path.is_symlink() else 0
    except OSError:
        return 0


def remove_stale_temps(device: DeviceRoot) -> None:
    """Temporary links and files (`.NAME.PID[-THREAD-RANDOM].tmp`) left by a flash killed before its rename."""
    for tmp in device.root.glob(".*.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2].split("-", 1)[0]
        if not pid.isdigit() or (int(pid) != os.getpid() and pid_alive(int(pid))):
            continue  # not ours, or another live process's write in progress
        tmp.unlink(missing_ok=True)  # under the lock: this process's other threads are waiting for it
