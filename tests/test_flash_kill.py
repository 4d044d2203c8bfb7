"""edgecls.devices.flash under SIGKILL: a killed flash leaves a whole release and a re-run completes it.

Each round starts a worker process that has already imported everything and waits for "go" (so the kill
lands inside the flash, not in Python's start-up), kills it (and its ssh child) at a uniformly random
moment within the flash's measured duration, checks the device, then re-runs the flash to completion.
44 rounds go to a local folder, 6 over SSH to the loopback sshd.

Random kills over SSH stop the host side; the device side is killed exactly, at every rename and durable
write of a flash, of its automatic rollback and of `edgecls rollback`, with the test hook
EDGECLS_TEST_KILL_AT=NAME:N (runtime/install/layout.py `kill_point`; inert unless set): all three locally, the
flash also over SSH (the device's process killed under sshd).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecls.devices.flash import FlashOptions, flash
from edgecls.devices.flash import rollback as flash_rollback
from edgecls.runtime.bundle import MANIFEST
from edgecls.runtime.install.layout import KILL_ENV
from tests.conftest import REPO
from tests.sshd import sshd  # noqa: F401  (fixture)
from tests.test_flash import PROFILE, assert_complete, bundles, current_release  # noqa: F401  (fixture)

WORKER = r"""
import sys, json
from edgecls.devices.flash import FlashOptions, flash
from edgecls.devices.profiles import DeviceProfile
bundle, target, config = sys.argv[1], sys.argv[2], sys.argv[3] or None
options = FlashOptions(profile=DeviceProfile(name="test-cpu", artifacts=("tflite-int8",), threads=1), ssh_config=config)
print("ready", flush=True)
sys.stdin.readline()
[r] = flash(bundle, [target], options)
print(json.dumps(r.to_dict()), flush=True)
"""


def _worker(bundle: Path, target: str, config: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(bundle), target, config],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _timed_run(bundle: Path, target: str, config: str) -> float:
    proc = _worker(bundle, target, config)
    start = time.monotonic()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    result = json.loads(proc.stdout.readline())
    elapsed = time.monotonic() - start
    proc.wait(30)
    assert result["result"] == "installed", result
    return elapsed


@pytest.mark.slow
def test_a_flash_killed_at_50_random_moments_leaves_a_whole_release(bundles, tmp_path, sshd, capsys):  # noqa: F811
    rng = random.Random(int(os.environ.get("EDGECLS_FLASH_KILL_SEED", "9")))  # other seeds: a longer stress run
    manifests = {name: (bundles[name] / MANIFEST).read_bytes() for name in ("a", "b")}
    kinds = [
        ("local", str(tmp_path / "local-dev"), ""),
        ("ssh", sshd.target(tmp_path / "ssh-dev"), str(sshd.ssh_config)),
    ]
    outcome = {"old": 0, "new": 0, "none": 0}
    started = time.monotonic()
    rounds = 0
    for kind, target, config in kinds:
        root = Path(target.rsplit(":", 1)[-1]) if kind == "ssh" else Path(target)
        options = FlashOptions(profile=PROFILE, ssh_config=config or None)
        assert flash(bundles["a"], [target], options)[0].ok
        duration = max(_timed_run(bundles["b"], target, config), _timed_run(bundles["a"], target, config))
        for _ in range(44 if kind == "local" else 6):
            old = "a" if (current_release(root) / MANIFEST).read_bytes() == manifests["a"] else "b"
            new = "b" if old == "a" else "a"
            proc = _worker(bundles[new], target, config)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            time.sleep(duration * 1.05 * rng.random() ** 2)  # denser early on, where upload, verify and switch are
            os.killpg(proc.pid, signal.SIGKILL)  # the flash and its ssh client, mid-step
            proc.wait()
            rounds += 1
            # At any moment after the kill: `current` is the whole old bundle or the whole new one.
            now = (current_release(root) / MANIFEST).read_bytes()
            assert now in (manifests[old], manifests[new])
            assert_complete(root, bundles[old if now == manifests[old] else new] / MANIFEST)
            outcome["old" if now == manifests[old] else "new"] += 1
            pending = json.loads((root / "state.json").read_text()).get("pending")
            outcome["none"] += bool(pending)  # killed between the switch and the end of the smoke test
            # Running the flash again completes it (waiting for a device-side step still running, if any).
            [again] = flash(bundles[new], [target], options)
            assert again.ok, again
            assert_complete(root, bundles[new] / MANIFEST)
            state = json.loads((root / "state.json").read_text())
            assert "pending" not in state and state["last_flash"]["result"] in ("installed", "unchanged")
            assert not list(root.glob(".*.tmp")) and not list((root / "releases").glob(".trash-*"))
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\nkill test: {rounds}/50 rounds consistent and completed on re-run; after the kill current was the "
            f"old bundle {outcome['old']}x, the new one {outcome['new']}x ({outcome['none']}x with its smoke test "
            f"unfinished, finished by the re-run); {elapsed:.1f} s"
        )
    assert rounds == 50


DEVICE_WORKER = r"""
import json, sys
from edgecls.devices.flash import FlashOptions, flash, rollback
from edgecls.devices.profiles import DeviceProfile
action, bundle, target = sys.argv[1:4]
options = FlashOptions(profile=DeviceProfile(name="test-cpu", artifacts=("tflite-int8",), threads=1))
print(json.dumps(flash(bundle, [target], options)[0].to_dict() if action == "flash" else rollback(target, options)))
"""


def _killed_run(action: str, bundle: Path, target: str, point: str, ssh_config: str | None) -> bool:
    """Run `action` with the device side SIGKILLed at `point`; whether the kill happened (else it completed)."""
    if ssh_config is None:  # local: the device code runs in the worker, which the hook kills
        done = subprocess.run(
            [sys.executable, "-c", DEVICE_WORKER, action, str(bundle), target],
            cwd=REPO,
            env={**os.environ, KILL_ENV: point},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode in (0, -signal.SIGKILL), done.stderr[-2000:]
        return done.returncode == -signal.SIGKILL
    # SSH: the hook's variable reaches only the device's process (sshd AcceptEnv; no multiplexing, which drops it)
    options = FlashOptions(
        profile=PROFILE, ssh_config=ssh_config, ssh_options=(f"SetEnv={KILL_ENV}={point}", "ControlPath=none")
    )
    [r] = flash(bundle, [target], options)
    assert r.result in ("failed", "installed", "rolled back"), r
    return r.result == "failed" and "exit status 255" in r.reason  # ssh's report of a remote killed by a signal


def _release_of(root: Path, manifests: dict) -> str:
    """Which bundle `current` is, checked whole (every file against the manifest)."""
    now = (current_release(root) / MANIFEST).read_bytes()
    [name] = [n for n, m in manifests.items() if m == now]
    return name


@pytest.mark.slow
def test_a_device_killed_at_every_switch_and_durable_write_ends_like_an_unkilled_run(bundles, tmp_path, sshd, capsys):  # noqa: F811
    """Each scenario is run once per kill point (the N-th switch or write_durable) until it completes unkilled:
    after each kill `current` is a whole allowed bundle, and the re-run (flash, or `edgecls rollback`) ends
    where an uninterrupted run would have, with no journal entry, temp file or trash left."""
    manifests = {n: (bundles[n] / MANIFEST).read_bytes() for n in ("a", "b", "wrong")}
    started, kills = time.monotonic(), {}

    def clean(root: Path) -> None:
        state = json.loads((root / "state.json").read_text())
        assert "pending" not in state and "pending_rollback" not in state, state
        assert not list(root.glob(".*.tmp")) and not list((root / "releases").glob(".trash-*"))

    def each_point(label, root, target, config, round_) -> None:
        """round_() -> (action, bundle, allowed after a kill, rerun(), expected after the rerun)."""
        kills[label] = 0
        for name in ("write_durable", "switch"):
            for n in range(1, 20):
                action, bundle, allowed, rerun, expected = round_()
                killed = _killed_run(action, bundle, target, f"{name}:{n}", config)
                now = _release_of(root, manifests)
                assert now in (allowed if killed else {expected}), (label, name, n, killed, now)
                assert_complete(root, bundles[now] / MANIFEST)
                if not killed:
                    clean(root)
                    break
                kills[label] += 1
                rerun()
                assert _release_of(root, manifests) == expected, (label, name, n)
                clean(root)
            else:
                raise AssertionError(f"{label}: never completed")

    for kind, target, config in (
        ("local", str(tmp_path / "local-dev"), None),
        ("ssh", sshd.target(tmp_path / "ssh-dev"), str(sshd.ssh_config)),
    ):
        root = Path(target.rsplit(":", 1)[-1]) if kind == "ssh" else Path(target)
        options = FlashOptions(profile=PROFILE, ssh_config=config)
        assert flash(bundles["a"], [target], options)[0].ok and flash(bundles["b"], [target], options)[0].ok

        def forward():  # a good flash to the other version
            old = _release_of(root, manifests)
            new = "a" if old == "b" else "b"
            return ("flash", bundles[new], {old, new}, lambda: flash(bundles[new], [target], options)[0], new)

        def automatic_rollback():  # a flash whose smoke test fails: switched to, then back
            old = _release_of(root, manifests)

            def rerun():
                assert flash(bundles["wrong"], [target], options)[0].result == "rolled back"

            return ("flash", bundles["wrong"], {old, "wrong"}, rerun, old)

        each_point(f"{kind} flash", root, target, config, forward)
        if kind == "local":  # the same device code as over SSH; SSH's own part (a killed remote) is shown above
            each_point(f"{kind} automatic rollback", root, target, config, automatic_rollback)

            def manual_rollback():  # `edgecls rollback`: its re-run finishes the interrupted one
                old = _release_of(root, manifests)
                back = os.readlink(root / "previous").split("/")[-1]
                back = next(n for n in ("a", "b") if (root / "releases" / back / MANIFEST).read_bytes() == manifests[n])
                return ("rollback", bundles[back], {old, back}, lambda: flash_rollback(target, options), back)

            each_point("local edgecls rollback", root, target, config, manual_rollback)
            previous = os.readlink(root / "previous").split("/")[-1]
            assert previous != current_release(root).name  # never a version swapped with itself
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\ndevice-side kills: {kills}; every one left a whole current and its re-run completed; {elapsed:.1f} s")
    assert all(kills.values()), kills
