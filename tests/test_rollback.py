"""edgecls rollback (runtime/install/api.rollback): only ever back to a release this device verified."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgecls.devices.flash import FlashOptions, flash, status
from edgecls.devices.profiles import DeviceProfile
from edgecls.runtime.bundle import MANIFEST
from tests.conftest import REPO, cli_error, run_cli
from tests.sshd import sshd  # noqa: F401  (fixture)
from tests.test_flash import PROFILE, assert_complete, bundles, current_release  # noqa: F401  (fixture)
from tests.test_install_api import _flash_killed_after_the_switch, small_fs


def _links(root) -> tuple:
    return tuple(
        os.path.basename(os.readlink(root / n)) if os.path.islink(root / n) else None for n in ("current", "previous")
    )


def _fill(sd, kind: str) -> None:
    """Take every free block (or inode) of the file system `sd`, as the daemon's captures would."""
    (sd / "fill").mkdir()
    try:
        if kind == "inodes":
            for i in range(10**6):
                (sd / "fill" / str(i)).touch()
        else:
            with open(sd / "fill" / "blob", "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 4096)
    except OSError:
        pass


def test_rollback_after_an_interrupted_flash_returns_to_the_last_verified_release(bundles, tmp_path):  # noqa: F811
    """a, b, then `wrong` killed right after its switch (never verified, and its smoke test would fail): the
    first rollback returns to b and never keeps `wrong` as previous, so the second returns to a, and no
    rollback ever ends on `wrong` (before: the second rollback switched to it)."""
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    _flash_killed_after_the_switch(bundles["wrong"], root)
    unchecked = json.loads((root / "state.json").read_text())["pending"]["slot"]
    assert current_release(root).name == unchecked
    first = run_cli("rollback", root, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"current is now {b.slot} (was {unchecked})" in first.stdout, first.stdout
    assert _links(root) == (b.slot, a.slot)
    second = run_cli("rollback", root, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert _links(root) == (a.slot, b.slot)
    assert_complete(root, bundles["a"] / MANIFEST)
    status = run_cli("status", root, timeout=120)
    assert "interrupted flash of" not in status.stdout, status.stdout


@pytest.mark.parametrize("kind, options", [("blocks", "size=3m"), ("inodes", "nr_inodes=120")])
def test_rollback_on_a_full_disk_uses_what_the_interrupted_flash_prepared(bundles, tmp_path, kind, options):  # noqa: F811
    """A flash killed after its switch left the rollback links and the reserve; the disk then fills up.
    `edgecls rollback`, as status advises, renames them back: the verified release is current again and
    recorded (before: a bare "No space left on device", the unverified model kept serving)."""
    with small_fs(tmp_path / "sd", options) as sd:
        root = sd / "edgecls"
        [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
        [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
        _flash_killed_after_the_switch(bundles["wrong"], root)
        assert os.path.islink(root / ".rollback-current") and (root / ".reserve").is_file()
        _fill(sd, kind)
        ran = run_cli("rollback", root, timeout=120)
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert _links(root) == (b.slot, a.slot)
        state = json.loads((root / "state.json").read_text())
        assert "pending" not in state and state["last_flash"]["result"] == "rolled back", state


def test_rollback_on_a_full_disk_without_prepared_links_says_which_version_is_current(bundles, tmp_path):  # noqa: F811
    """No flash in progress, so nothing prepared: on a full disk the rollback fails before switching anything,
    in one line saying the disk is full and which version is current (before: a bare "No space left on
    device")."""
    with small_fs(tmp_path / "sd", "size=3m") as sd:
        root = sd / "edgecls"
        flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
        [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
        _fill(sd, "blocks")
        error = cli_error(run_cli("rollback", root, timeout=120))
        assert "disk is full" in error and f"`current` is {b.slot}" in error, error
        assert current_release(root).name == b.slot


def test_rollback_after_a_flash_killed_between_its_two_renames_works_as_status_advises(bundles, tmp_path):  # noqa: F811
    """Killed after `previous` moved to the old current and before `current` switched (previous == current):
    status advises `edgecls rollback`, which must work: the interrupted flash is abandoned and both links are
    what they were before it (before: "has no previous version to roll back to")."""
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    killed = run_cli("flash", bundles["wrong"], root, env={"EDGECLS_TEST_KILL_AT": "switch:2"}, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _links(root) == (b.slot, b.slot)
    status = run_cli("status", root, timeout=120)
    assert "`edgecls rollback`" in status.stdout, status.stdout
    ran = run_cli("rollback", root, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert _links(root) == (b.slot, a.slot)
    assert "interrupted flash of" not in run_cli("status", root, timeout=120).stdout
    again = run_cli("rollback", root, timeout=120)  # and the next one goes where `previous` says
    assert again.returncode == 0 and _links(root) == (a.slot, b.slot), again.stderr[-2000:]


def test_rollback_refuses_a_device_reply_of_another_shape_and_escapes_what_it_prints(tmp_path, sshd):  # noqa: F811
    """A device answering `{}` is one error line, no traceback (before: KeyError: 'slot'); a slot holding
    terminal escapes is printed escaped."""
    target = sshd.target(tmp_path / "dev")
    for reply, ok in (("{}", False), ('{"slot": "\\u001b[2Jx", "replaced": null}', True)):
        fake = tmp_path / "fake-python"
        fake.write_text(f"#!/bin/sh\ncat >/dev/null </dev/null\necho '{reply}'\n")
        fake.chmod(0o755)
        ran = run_cli("rollback", target, "--ssh-config", sshd.ssh_config, "--python", fake, timeout=120)
        if ok:
            assert ran.returncode == 0 and "\x1b" not in ran.stdout and "\\x1b[2Jx" in ran.stdout, ran
        else:
            assert "is not what this edgecls expects" in cli_error(ran), ran.stderr


def test_rollback_whose_daemon_restart_fails_exits_non_zero_saying_so(bundles, tmp_path):  # noqa: F811
    """`systemctl restart` fails after the links moved back: the rollback says which version is current and
    that the daemon's restart failed, and exits 1 (before: "current is now ...", exit 0, the service down)."""
    from tests.test_flash import _profile_file
    from tests.test_install_api import _fake_systemctl

    root = tmp_path / "dev"
    profile = _profile_file(
        tmp_path, DeviceProfile(name="svc", artifacts=("tflite-int8",), threads=1, service="edgecls-t")
    )
    env = _fake_systemctl(tmp_path, restart_fails_after=2)  # the two flashes' restarts, then the rollback's fails
    [a, b] = [run_cli("flash", bundles[n], root, "--profile", profile, env=env, timeout=120) for n in "ab"]
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    slots = _links(root)
    error = cli_error(run_cli("rollback", root, "--profile", profile, env=env, timeout=120))
    assert f"current is now {slots[1]}" in error and "systemctl restart edgecls-t failed" in error, error


def test_rollback_waits_for_the_daemon_and_fails_when_it_does_not_serve_the_restored_release(bundles, tmp_path):  # noqa: F811
    """With a health_url recorded by the flashes, the rollback asks the daemon as a flash does: a daemon that keeps
    serving b and reports a refused makes the rollback fail naming the refusal (before: "current is now a", exit 0)."""
    from tests.test_install_api import DaemonHealth, _health_profile

    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    release = {n: str((root / "releases" / r.slot).resolve()) for n, r in (("a", a), ("b", b))}
    daemon = DaemonHealth(release["b"])
    try:
        (root / "device.json").write_text(
            json.dumps({"service": "", "health_url": daemon.url, "health_token_file": ""})
        )
        daemon.refused = {"bundle": release["a"], "error": "the bundle is not signed", "at": 1.0e10}
        error = cli_error(run_cli("rollback", root, "--profile", _health_profile(tmp_path, daemon.url), timeout=120))
        assert f"current is now {a.slot}" in error and "not signed" in error, error
        daemon.refused = None  # it serves b, which the next rollback restores: that one passes
        ran = run_cli("rollback", root, timeout=120)
        assert ran.returncode == 0 and f"current is now {b.slot}" in ran.stdout, ran.stderr[-2000:]
    finally:
        daemon.close()


@pytest.mark.parametrize("damage", ["", '{"history": [', "[]"])
def test_rollback_refuses_when_state_json_is_damaged_instead_of_trusting_every_release(bundles, tmp_path, damage):  # noqa: F811
    """An empty, cut-short or non-object state.json is not the old format: which releases were verified is
    unknown, so the rollback refuses in one line naming the file and the fix, nothing switched, and status says
    so (before: every release trusted: the unchecked one was kept as previous, the next rollback returned to it)."""
    root = tmp_path / "dev"
    flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    _flash_killed_after_the_switch(bundles["wrong"], root)  # current: the unchecked `wrong`, previous b
    before = _links(root)
    assert before[1] == b.slot and before[0] != b.slot
    (root / "state.json").write_text(damage)
    error = cli_error(run_cli("rollback", root, timeout=120))
    assert "state.json is damaged" in error and "flash the version you want" in error, error
    assert _links(root) == before
    assert "state.json is damaged" in run_cli("status", root, timeout=60).stdout


def test_a_release_verified_before_stays_a_rollback_target_after_a_failed_re_flash_of_it(bundles, tmp_path):  # noqa: F811
    """a, b, then a again with a latency budget it cannot meet: the flash rolls back to b and a stays `previous`;
    `edgecls rollback` then returns to a, verified by its first flash (before: "never verified", refused)."""
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    slow = DeviceProfile(name="slow", artifacts=("tflite-int8",), threads=1, latency_budget_ms=0.0001)
    [again] = flash(bundles["a"], [str(root)], FlashOptions(profile=slow))
    assert again.result == "rolled back" and _links(root) == (b.slot, a.slot), (again, _links(root))
    ran = run_cli("rollback", root, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert _links(root) == (a.slot, b.slot)


KILL_AT_SECOND_SWITCH = r"""
import os, signal, sys
from edgecls.runtime.install import api, commit
calls = [0]
def hook(frame, event, arg):
    if event == "call" and frame.f_code is commit.switch.__code__:
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
sys.setprofile(hook)
api.rollback(sys.argv[1])
"""


def test_a_rollback_killed_between_its_two_renames_loses_nothing(bundles, tmp_path):
    """rollback() renames `current` then `previous` with no journal: killed in between, both point at the
    old version, the newer one is reachable by nothing, state.json says nothing, and a second rollback
    swaps a version with itself. (flash's own switch pair is covered by its `pending` record; rollback's is not.)"""
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    assert _links(root) == (b.slot, a.slot)
    done = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_SWITCH, str(root)], cwd=REPO, capture_output=True)
    assert done.returncode == -9, done.stderr[-2000:]
    info = status(str(root))
    # Consistent (a pair of different versions) or visibly interrupted so the next command completes it.
    assert info["current"] != info["previous"] or info.get("pending"), info
    # And one more `edgecls rollback` must end on {a, b}, not on a version swapped with itself.
    from edgecls.runtime.install import api

    api.rollback(str(root))
    assert set(_links(root)) == {a.slot, b.slot}, _links(root)


def test_rollback_refuses_a_damaged_previous(bundles, tmp_path):
    """flash re-verifies a release before reusing it (test_damaged_previous_release_is_replaced_not_trusted in
    test_flash.py); rollback did not: bit rot in `previous` was switched to and reported as a successful rollback."""
    from edgecls.runtime.errors import EdgeclsError
    from edgecls.runtime.install import api

    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    model = root / "releases" / a.slot / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    try:
        api.rollback(str(root))
    except EdgeclsError as exc:
        assert "model_int8.tflite" in str(exc)
    assert _links(root)[0] == b.slot, "rolled back onto a release that no longer matches its manifest"
