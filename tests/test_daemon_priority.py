"""runtime/daemon/priority.py: the thread that runs the model gets 5 nice levels more where the system allows it,
and says once, in one line, where it does not."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading

import pytest

from edgecls.runtime.daemon.priority import RAISE, raise_this_thread
from tests.conftest import REPO

_PROBE = """
import logging, os, threading
logging.basicConfig(level=logging.INFO, format="%(message)s")
from edgecls.runtime.daemon.priority import raise_this_thread
before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
print(raise_this_thread(), raise_this_thread(), before, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
"""


def _without_cap_sys_nice(nice_limit: int) -> subprocess.CompletedProcess:
    """The probe without CAP_SYS_NICE (setpriv drops it from the bounding set, so not even root has it) and with
    RLIMIT_NICE `nice_limit` (systemd's LimitNICE=-5 is 25: the nice value may go down to 20 - 25)."""
    from tests.conftest import require_tool

    require_tool("setpriv", package="util-linux")
    if resource.getrlimit(resource.RLIMIT_NICE)[1] < nice_limit:
        try:  # raising the hard limit needs CAP_SYS_RESOURCE, which some containers drop even for root
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import resource; resource.setrlimit(resource.RLIMIT_NICE, ({nice_limit},) * 2)",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
        except subprocess.CalledProcessError:
            pytest.skip(f"RLIMIT_NICE cannot be raised to {nice_limit} here (no CAP_SYS_RESOURCE): systemd can")
    return subprocess.run(
        ["setpriv", "--bounding-set=-sys_nice", sys.executable, "-c", _PROBE],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NICE, (nice_limit, nice_limit)),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_without_cap_sys_nice_or_a_nice_limit_the_thread_keeps_its_priority_and_says_so_once():
    done = _without_cap_sys_nice(0)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second, before, after = done.stdout.split()
    assert (first, second) == ("False", "False") and before == after
    lines = [line for line in done.stderr.splitlines() if "CPU priority" in line]
    assert len(lines) == 1 and "LimitNICE=-5" in lines[0] and "CAP_SYS_NICE" in lines[0], done.stderr


def test_the_service_units_nice_limit_lets_a_daemon_without_the_capability_raise_its_inference_thread():
    """What `LimitNICE=-5` in the unit gives a DynamicUser service: no capability, the raise still works."""
    done = _without_cap_sys_nice(20 + RAISE)
    assert done.returncode == 0, done.stderr[-2000:]
    first, _, before, after = done.stdout.split()
    assert first == "True" and int(after) == int(before) - RAISE, done.stdout
    assert "CPU priority" not in done.stderr


def test_only_the_calling_thread_is_raised():
    """Linux keeps a nice value per thread: the caller's siblings, and the process, keep theirs."""
    seen = {}

    def raised():
        tid = threading.get_native_id()
        seen["before"] = os.getpriority(os.PRIO_PROCESS, tid)
        seen["ok"] = raise_this_thread()
        seen["after"] = os.getpriority(os.PRIO_PROCESS, tid)

    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker = threading.Thread(target=raised)
    worker.start()
    worker.join()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
    if seen["ok"]:
        assert seen["after"] == max(-20, seen["before"] - RAISE)
    else:  # not root here, and no nice limit: nothing changed
        assert seen["after"] == seen["before"]
