"""The device root: which folder is ours, where releases live, the flash lock, and durable small writes.

    ROOT/.edgecls-device        marker (JSON, format edgecls-device/1): only such a folder is ever written into
    ROOT/device.json            settings kept by flashes: service name, health URL, token file path (no secrets)
    ROOT/allowed_signers        optional: when present, every bundle must carry a signature it trusts
    ROOT/staging/<version>/     uploads in progress (resumable file by file)
    ROOT/releases/<version>/    complete, verified bundles; never modified once in place
    ROOT/current, ROOT/previous relative symlinks into releases/, replaced only by `commit.switch`
    ROOT/state.json             last flash result and history, for `edgecls status`
    ROOT/.lock                  flock(2): one flash, rollback or cleanup at a time (taken before the marker)
    ROOT/.rollback-current      made before each switch, pointing where `current` was: the automatic
    ROOT/.rollback-previous     rollback renames them back over current/previous, needing no new inode or space
    ROOT/.reserve               space set aside before each switch for the record of a rollback (commit.py)
    ROOT/venv                   `flash --setup`'s virtualenv (may come before the marker; rootcheck.py)

Files we did not write are never deleted: a folder that is not empty and has no marker is refused, so is a
releases/ or staging/ that is a link or not a folder, and only real folders named like a version
(16 hex digits) or our own `.trash-VERSION-PID` are ever removed under them.

`EDGECLS_TEST_KILL_AT=NAME:N` is a test hook (see `kill_point`), inert unless set.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from edgecls.runtime import lockfile
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.install.rootcheck import LOCK, MARKER, VENV, is_ours, refusal, resolve  # noqa: F401  (VENV: --setup's)

DEVICE_FORMAT = "edgecls-device/1"
SIGNERS = "allowed_signers"
SLOT = re.compile(r"^[0-9a-f]{16}$")  # a release's folder name (staging.slot_name)
TRASH = re.compile(r"^\.trash-[0-9a-f]{16}-\d+$")  # a release being deleted (renamed first)
KILL_ENV = "EDGECLS_TEST_KILL_AT"
_kill_counts: dict = {}


def kill_point(name: str) -> None:
    """Test hook: with $EDGECLS_TEST_KILL_AT=NAME:N, SIGKILL this process at the N-th `name` step.

    The kill tests stop the device side exactly at each rename of a flash, an automatic rollback and
    `edgecls rollback` (locally and over SSH); unset, as on every real device, it does nothing.
    """
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    want, _, count = spec.partition(":")
    if want != name:
        return
    _kill_counts[name] = _kill_counts.get(name, 0) + 1
    if str(_kill_counts[name]) == count:
        os.kill(os.getpid(), signal.SIGKILL)


def is_real_dir(path: Path) -> bool:
    """A folder, not a link to one: the only kind of entry we delete or write into under the root."""
    return path.is_dir() and not path.is_symlink()


class InstallError(EdgeclsError):
    """A flash step on the device that failed; nothing was switched."""


def os_error_text(exc: OSError, then: str = "flash again") -> str:
    """An OSError in words a user acts on: a full disk says so and how to see which kind (never "(None)")."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" (writing {exc.filename})" if exc.filename else ""
        return (
            f"the device's disk is full: no space or no free inodes left{where}; free some (`df -h` and `df -i` "
            f"on the device show which), then {then}"
        )
    return (exc.strerror or str(exc) or type(exc).__name__) + (f" ({exc.filename})" if exc.filename else "")


def fsync_dir(path: Path) -> None:
    """Make renames and new entries in `path` durable (a rename is only safe after its folder is synced)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_tag() -> str:
    """PID-THREAD-RANDOM for temp names: unique per thread too (a fleet flash runs targets in threads, and a
    targets file may name one root twice). remove_stale_temps reads the PID back."""
    return f"{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(3)}"


def write_durable(path: Path, data: bytes) -> None:
    """Temp file beside `path`, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{temp_tag()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: no half file left holding the space
        raise
    kill_point("write_durable")
    os.replace(tmp, path)
    fsync_dir(path.parent)


class DeviceRoot:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(resolve(str(root)))  # a root that is a link: the folder it names, resolved once

    releases = property(lambda self: self.root / "releases")
    staging = property(lambda self: self.root / "staging")
    current = property(lambda self: self.root / "current")
    previous = property(lambda self: self.root / "previous")
    state_file = property(lambda self: self.root / "state.json")
    config_file = property(lambda self: self.root / "device.json")
    signers = property(lambda self: self.root / SIGNERS)

    def is_ours(self) -> bool:
        return is_ours(str(self.root))

    def check(self) -> None:
        """Refuse a root we must not write into: a file, a link, someone's non-empty folder (rootcheck.py)."""
        why = refusal(str(self.root))
        if why:
            raise InstallError(why)

    def ensure(self) -> DeviceRoot:
        """Create the root (checked first) and its marker; idempotent. Call it holding `lock`, which
        `claim` does: two first flashes must not see each other's half-made root as someone's files."""
        self.check()
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.is_ours():  # the marker first: from then on the root's other entries are ours
            write_durable(self.root / MARKER, json.dumps({"format": DEVICE_FORMAT, "created": time.time()}).encode())
        for folder in (self.releases, self.staging):
            folder.mkdir(exist_ok=True)
        return self

    @contextmanager
    def claim(self, timeout: float = 60.0):
        """Check the root, create it, hold its lock, and only then check it again and make it ours."""
        self.check()
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock(timeout):
            self.ensure()
            yield self

    def require(self) -> DeviceRoot:
        """For read-mostly commands (status, rollback): the root must exist and be ours."""
        if not self.is_ours():
            raise InstallError(
                f"{self.root} is not an edgecls device root (no {MARKER}): flash a bundle there "
                f"first, or check the TARGET's root"
            )
        self.check()
        return self

    def read_json(self, path: Path, default):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return default

    def write_json(self, path: Path, obj) -> None:
        write_durable(path, (json.dumps(obj, indent=2) + "\n").encode())

    def link_version(self, link: Path) -> str | None:
        """The release version a link points at, or None (missing, dangling, or not into releases/)."""
        try:
            target = os.readlink(link)
        except OSError:
            return None
        parts = Path(target).parts
        if len(parts) != 2 or parts[0] != "releases" or not (self.releases / parts[1]).is_dir():
            return None
        return parts[1]

    def versions(self) -> list:
        if not self.releases.is_dir():
            return []
        return sorted(p.name for p in self.releases.iterdir() if is_real_dir(p) and SLOT.match(p.name))

    def lock_holder(self) -> str | None:
        """Who holds ROOT/.lock now ("a flash (pid N, since T)"), or None; takes nothing and writes nothing."""
        who = lockfile.holder(self.root / LOCK)
        return None if who is None else who or "another process"

    @contextmanager
    def lock(self, timeout: float = 60.0, what: str = "a flash"):
        """Hold ROOT/.lock; wait up to `timeout` s for another flash, then refuse naming its holder.

        flock is released by the kernel when the holder dies, so a killed flash never leaves a stale lock.
        """
        path = self.root / LOCK
        with ExitStack() as held:
            try:
                held.enter_context(lockfile.file_lock(path, timeout=timeout, what=what))
            except lockfile.LockBusy as busy:
                raise InstallError(
                    f"{self.root} is busy: {busy.holder or 'another process'} holds {path}; wait for it to finish "
                    f"and run again"
                ) from busy
            yield
