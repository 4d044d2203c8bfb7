"""Which tests share a pytest-xdist worker (`-n N --dist loadgroup`), and which start first.

loadgroup hands each worker one unit at a time: a test alone, or every test with the same `xdist_group` mark, run
on one worker in collection order. conftest.py's pytest_collection_modifyitems calls `assign_groups`, so test
files need no marks. Without `-n` the marks change nothing: a plain `pytest` runs every test in one process.

What cannot be split or overlapped:
- the emulated Raspberry Pi: one rootfs (devices/emulate/arm64-pi.sh), started by tests/test_arm64_pi.py and by the
  README's last section; a second start or a stop of it ends the other's sshd, and arm64 code run through
  `qemu-aarch64-static -L ROOTFS` while it is started sees the host's /proc through the rootfs's bind mount (not the
  private mount a test puts over /proc/cpuinfo). All of it is one unit, first in line: it is the longest, and on a
  fresh machine its first test builds the rootfs (15-20 minutes) that the others need.
- tests/test_readme.py: one workspace (a module fixture) whose sections build on the ones above them.
- a module whose module-scoped fixture trains, converts or installs something, or holds state its tests share in
  order: split over workers, each would build it again. `sshd` and `video` are cheap and stateless: split freely.
Everything else (fixed ports: none, every server takes a free one; tmpfs and unshare: private to each test) is a
unit of its own, handed out as workers free up.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

EMULATED_PI = "emulated-pi"
PI_MODULES = ("test_arm64_pi.py", "test_readme.py")  # in this order: the Pi test builds the rootfs on a fresh machine
PI_ROOTFS_HINT = "EDGECLS_PI_ROOTFS_CACHE"  # a test that reads the Pi's rootfs names where it is cached
CHEAP_MODULE_FIXTURES = {"sshd", "video"}
MAX_WORKERS = 6  # each worker holds TensorFlow and starts trainings and conversions: ~2-3 GB at its peak


def workers() -> int:
    """Workers for the whole suite: one more than the CPUs, since most tests wait on subprocesses (servers,
    devices over SSH, the emulated Pi) rather than compute; measured on 2 cores."""
    return min(len(os.sched_getaffinity(0)) + 1, MAX_WORKERS)


def _module(item) -> str:
    return Path(str(item.fspath)).name


def _reads_pi_rootfs(item) -> bool:
    function = getattr(item, "function", None)
    try:
        return function is not None and PI_ROOTFS_HINT in inspect.getsource(function)
    except (OSError, TypeError):
        return False


def _has_costly_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        defs[-1].scope == "module" and name not in CHEAP_MODULE_FIXTURES for name, defs in info.name2fixturedefs.items()
    )


def group_of(item) -> str | None:
    """The xdist group `item` belongs to, or None: a unit of its own."""
    if _module(item) in PI_MODULES or _reads_pi_rootfs(item):
        return EMULATED_PI
    if _has_costly_module_fixture(item):
        return _module(item)
    return None


def _rank(item, group: str | None) -> tuple:
    """Sort key: the Pi's unit first (its modules in PI_MODULES order, then the rest), everything else after."""
    if group != EMULATED_PI:
        return (1, 0)
    module = _module(item)
    return (0, PI_MODULES.index(module) if module in PI_MODULES else len(PI_MODULES))


def assign_groups(items: list) -> None:
    """Mark each item with its xdist group and put the longest unit first (stable otherwise: collection order)."""
    import pytest

    groups = {}
    for item in items:
        group = groups[item] = group_of(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: _rank(item, groups[item]))
