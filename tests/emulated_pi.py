"""The emulated Raspberry Pi's rootfs (devices/emulate/arm64-pi.sh) for tests: one per machine, built once, used by
one test at a time.

tests/test_arm64_pi.py and the README's Pi section (tests/test_readme.py) start it; a few tests run arm64 code in it
with `qemu-aarch64-static -L ROOTFS` under a private mount over /proc. These cannot overlap: a second start or a
stop ends the other's sshd, both flash into the same /opt/edgecls, and while it is started ROOTFS/proc is a bind
mount of the host's /proc, which the private mount does not cover. `in_use()` holds an flock beside the rootfs for
as long as a test needs it, so pytest-xdist workers (and two pytest runs on one machine) take turns; the first to
get it on a fresh machine builds the rootfs (15-20 minutes) and the others find it built.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, require_tool

SCRIPT = REPO / "devices" / "emulate" / "arm64-pi.sh"
BUILD_TIMEOUT_S = 45 * 60
_held: dict = {}  # lock path -> [open file, depth]: nested holders in one process share the flock


def rootfs() -> Path:
    """Where the rootfs is cached, keyed by the script's hash (a changed script builds a new one)."""
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]
    base = Path(os.environ.get("EDGECLS_PI_ROOTFS_CACHE", "~/.cache/edgecls/arm64-pi")).expanduser()
    return base / f"bookworm-{digest}"


def script(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def require_emulation() -> None:
    """Fail with the reason where this machine cannot run the emulated Pi (never pass silently)."""
    if os.geteuid() != 0:
        pytest.fail("the emulated Pi needs root (debootstrap, chroot, binfmt_misc): run the arm64 tests as root")
    require_tool("qemu-aarch64-static", package="qemu-user-static")
    require_tool("debootstrap", package="debootstrap")
    require_tool("sshd", "/usr/sbin/sshd", package="openssh-server")
    check = script("check")
    assert check.returncode == 0, f"this machine cannot run arm64 binaries: {check.stderr.strip()}"


def ensure_built(root: Path) -> None:
    """Build the rootfs unless a finished build is there; call it holding in_use()."""
    if not (root / ".edgecls-built").exists():
        built = script("build", root, timeout=BUILD_TIMEOUT_S)
        assert built.returncode == 0, f"building the arm64 rootfs failed: {built.stderr[-3000:]}"


@contextlib.contextmanager
def in_use():
    """Hold the rootfs for this test alone (waiting for whoever holds it); yields its path, built or not."""
    root = rootfs()
    lock = root.parent / f"{root.name}.lock"
    held = _held.get(lock)
    if held is None:
        lock.parent.mkdir(parents=True, exist_ok=True)
        held = _held[lock] = [open(lock, "a"), 0]
        fcntl.flock(held[0], fcntl.LOCK_EX)
    held[1] += 1
    try:
        yield root
    finally:
        held[1] -= 1
        if not held[1]:
            del _held[lock]
            held[0].close()  # releases the flock


@pytest.fixture
def pi_rootfs_alone():
    """The rootfs's path while no one else uses it (not started by anyone; maybe not built: callers check)."""
    with in_use() as root:
        yield root
