"""Which tests share a pytest-xdist worker (`-n N --dist loadgroup`), and which start first.

loadgroup hands each worker one unit at a time: a test alone, or every test with the same `xdist_group` mark, run
on one worker in collection order. conftest.py's pytest_collection_modifyitems calls `assign_groups`, so test
files need no marks. A run in one process (one that names its files: conftest's -n auto hook) ignores the marks.

What cannot be split or overlapped:
- tests/test_readme.py: one workspace (a module fixture) whose sections build on the ones above them; the longest
  unit, so it starts first.
- the emulated Raspberry Pi: one rootfs per machine (tests/emulated_pi.py), which test_arm64_pi.py and the README's
  last section start, and a few tests read with qemu-user; they take turns on its lock (`pi_rootfs_turn` in
  conftest.py for readers in other files). test_arm64_pi.py's unit starts second: on a fresh machine it builds the
  rootfs (15-20 minutes) that the readers, in the same unit after it (collection order), need.
- a module whose module-scoped fixture (or session-scoped one of its own) trains, converts or installs something,
  or holds state its tests share in order: split over workers, each would build it again. `sshd` and `video` are
  cheap and stateless: split freely.
Everything else (no fixed ports: every server takes a free one; tmpfs and unshare: private to each test) is a unit
of its own, handed out as workers free up.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

README, EMULATED_PI = "readme", "emulated-pi"
FIRST = (README, EMULATED_PI)  # the long units, started first in this order
PI_ROOTFS_HINT = "EDGECLS_PI_ROOTFS_CACHE"  # a test elsewhere that reads the Pi's rootfs names where it is cached
READS_PI_ROOTFS = pytest.StashKey[bool]()  # set on such tests: they wait for the rootfs (conftest.pi_rootfs_turn)
CHEAP_MODULE_FIXTURES = {"sshd", "video"}
MAX_WORKERS = 6  # each worker holds TensorFlow and starts trainings and conversions: ~2-3 GB at its peak
# pytest-timeout's limit (pyproject's `timeout`, a hung test fails instead of holding CI until it is killed) for the
# long units: on a fresh machine the emulated Pi's rootfs build may take up to BUILD_TIMEOUT_S (45 min), then its
# test allows `flash --setup` an hour and the bench 30 min; the README's last section waits for it.
LONG_UNIT_TIMEOUT_S = (45 + 60 + 30 + 15) * 60


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
    """A module-scoped fixture, or a session-scoped one that its own module defines (conftest.py's share one build
    through _fixture_cache; a module's own, like test_daemon_show's GUI venv, would be built on every worker)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name, defs in info.name2fixturedefs.items():
        scope, where = defs[-1].scope, defs[-1].baseid
        if name not in CHEAP_MODULE_FIXTURES and (scope == "module" or (scope == "session" and where.endswith(".py"))):
            return True
    return False


def group_of(item) -> str | None:
    """The xdist group `item` belongs to, or None: a unit of its own."""
    if _module(item) == "test_readme.py":
        return README
    if _module(item) == "test_arm64_pi.py" or item.stash.get(READS_PI_ROOTFS, False):
        return EMULATED_PI
    if _has_costly_module_fixture(item):
        return _module(item)
    return None


def _rank(item, group: str | None) -> tuple:
    """Sort key: the long units first, then tests marked slow, then the rest: short tests fill the workers' last
    minutes instead of a long one starting late."""
    if group in FIRST:
        return (FIRST.index(group), False)
    return (len(FIRST), item.get_closest_marker("slow") is None)


def assign_groups(items: list) -> None:
    """Mark each item with its xdist group (the long units also with a longer timeout); in a pytest-xdist worker,
    also order the units by _rank (a group keeps its collection order inside; a plain run keeps collection order
    throughout)."""
    groups = {}
    for item in items:
        if _module(item) != "test_arm64_pi.py" and _reads_pi_rootfs(item):
            item.stash[READS_PI_ROOTFS] = True
        group = groups[item] = group_of(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
        if group in FIRST and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LONG_UNIT_TIMEOUT_S))
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    unit_rank: dict = {}  # a group's rank is its best item's, so the group stays in one piece and in order
    for item in items:
        key = groups[item] or item.nodeid
        unit_rank[key] = min(unit_rank.get(key, _rank(item, groups[item])), _rank(item, groups[item]))
    items.sort(key=lambda item: unit_rank[groups[item] or item.nodeid])


def ungrouped(items: list) -> list:
    """The node ids of grouped tests that pytest-xdist did not rename `nodeid@group`: loadgroup would split them."""
    return [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
