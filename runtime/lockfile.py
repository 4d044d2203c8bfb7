"""A lock held on a file with flock(2), stamped with who holds it.

The kernel releases a flock when its holder dies, so a killed process never leaves a stale lock: there is
nothing to clean up and no pid to check. The file stays when released (unlinking it would let a waiting
process lock a file nobody else sees). An exclusive holder writes one line into it, e.g. "a flash (pid 12,
since 10:04:05)", which busy messages and `edgecls status` show; `holder` looks without writing anything.
The file is never opened through a link, so a planted `.lock -> /etc/passwd` is refused, not truncated.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError

_HELD = (errno.EAGAIN, errno.EACCES)  # what flock(LOCK_NB) answers while another process holds the lock
_POLL_S = 0.05


class LockBusy(EdgeclsError):
    """Another process held the lock for longer than we waited; `holder` is the line it wrote ('' if none)."""

    def __init__(self, path: str | os.PathLike, holder: str):
        self.path, self.holder = Path(path), holder
        super().__init__(f"{path} is held by {holder or 'another process'}")


def stamp(what: str = "") -> str:
    """The line a holder writes: 'pid N, since HH:MM:SS', after `what` when given: 'WHAT (pid N, since ...)'."""
    line = f"pid {os.getpid()}, since {time.strftime('%H:%M:%S')}"
    return f"{what} ({line})" if what else line


@contextmanager
def file_lock(
    path: str | os.PathLike, *, timeout: float | None = None, shared: bool = False, what: str | None = None
) -> Iterator[None]:
    """Hold a flock on `path` (created when missing, never through a link) for the block.

    `timeout`: seconds to wait for another holder, then LockBusy; 0 tries once; None waits as long as it takes.
    `shared`: a lock many may hold at once, which keeps exclusive ones out (a wheelhouse while it is pushed).
    `what`: stamp the file with `stamp(what)` once held; None leaves its content alone. A stamp that cannot be
    written (a full disk) is skipped: it only informs, and must not stop a rollback.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        _acquire(fd, path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, timeout)
        if what is not None:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, stamp(what).encode(), 0)
            except OSError:
                pass
        yield
    finally:
        os.close(fd)  # releases the flock


def holder(path: str | os.PathLike) -> str | None:
    """Who holds `path` exclusively now (the line it wrote, stripped; '' if none), or None; writes nothing.

    It takes a shared lock for a moment to look, so a holder waiting to start sees it briefly busy.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # none, a link, unreadable: nobody of ours holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return _read(fd) if exc.errno in _HELD else None
    finally:
        os.close(fd)  # releases the shared lock taken to look
    return None


def _acquire(fd: int, path, operation: int, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(fd, operation)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in _HELD:
                raise
            if time.monotonic() >= deadline:
                raise LockBusy(path, _read(fd)) from exc
        time.sleep(_POLL_S)


def _read(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip()
