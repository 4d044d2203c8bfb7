"""edgecls.devices.flash: flash, rollback and status against a local folder and a real OpenSSH server on 127.0.0.1.

Bundles are the session's real tiny bundle (tests/conftest.py) and variants of it whose manifest differs
(another version), whose check labels are wrong (a smoke test that must fail), or whose names are unsafe.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from edgecls.devices.flash import FlashOptions, flash, read_targets_file, status
from edgecls.devices.profiles import DeviceProfile
from edgecls.runtime.bundle import MANIFEST, load_bundle, sha256_file
from tests.conftest import cli_error, make_home_like, run_cli, snapshot
from tests.sshd import sshd  # noqa: F401  (fixture)

PROFILE = DeviceProfile(name="test-cpu", artifacts=("tflite-int8",), threads=1)


def variant(src: Path, dst: Path, **changes) -> Path:
    """A copy of bundle `src` whose manifest has `changes` (another version of the same model)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest.update(changes)
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return dst


@pytest.fixture
def bundles(tiny_bundle, tmp_path) -> dict:
    """a, b: two good versions; wrong: check labels that the model does not give."""
    a = variant(tiny_bundle, tmp_path / "a", created="2026-01-01T00:00:00+00:00")
    b = variant(tiny_bundle, tmp_path / "b", created="2026-02-02T00:00:00+00:00")
    manifest = json.loads((a / MANIFEST).read_text())
    labels = manifest["labels"]
    wrong = [{**c, "label": labels[(labels.index(c["label"]) + 1) % len(labels)]} for c in manifest["checks"]]
    return {"a": a, "b": b, "wrong": variant(tiny_bundle, tmp_path / "wrong", checks=wrong)}


def current_release(root: Path) -> Path:
    return root / os.readlink(root / "current")


def assert_complete(root: Path, expected_manifest: Path) -> None:
    """`current` is a whole release of this manifest: every file it lists that was sent matches its sha256."""
    release = current_release(root)
    assert (release / MANIFEST).read_bytes() == expected_manifest.read_bytes()
    bundle = load_bundle(release)
    for artifact in bundle.manifest.artifacts:
        bundle.verify(artifact)
    for name, digest in bundle.manifest.files.items():
        assert sha256_file(release / name) == digest


def links(root: Path) -> tuple:
    """The release names `current` and `previous` point at (None where a link is missing)."""

    def one(name):
        try:
            return Path(os.readlink(root / name)).name
        except OSError:
            return None

    return one("current"), one("previous")


def test_local_flash_sends_only_what_the_profile_needs(bundles, tmp_path):
    root = tmp_path / "device"
    [result] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    assert result.result == "installed", result.reason
    release = current_release(root)
    manifest = json.loads((bundles["a"] / MANIFEST).read_text())
    checks = [c["file"] for c in manifest["checks"]]
    assert len(checks) >= 3  # convert stored held-out images, at least one per class
    assert sorted(p.name for p in release.iterdir()) == sorted(
        ["manifest.json", "labels.txt", "verification.txt", "model_int8.tflite", "release.json", *checks]
    )
    assert_complete(root, bundles["a"] / MANIFEST)
    assert result.smoke["correct"] == len(checks) and result.smoke["artifact"] == "tflite-int8"
    # Re-flashing the installed version sends nothing and touches nothing.
    before = snapshot(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if not p.is_symlink()}
    [again] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    assert again.result == "unchanged" and again.sent == []
    assert snapshot(root) == before
    assert mtimes == {p: p.stat().st_mtime_ns for p in root.rglob("*") if not p.is_symlink()}


def test_ssh_flash_keeps_previous_and_reports_status(bundles, sshd, tmp_path):  # noqa: F811
    root = tmp_path / "pi root"  # a space: every remote path is quoted
    target = sshd.target(root)
    options = FlashOptions(profile=PROFILE, ssh_config=str(sshd.ssh_config))
    [first] = flash(bundles["a"], [target], options)
    assert first.result == "installed", first.reason
    [second] = flash(bundles["b"], [target], options)
    assert second.result == "installed", second.reason
    assert "model_int8.tflite" not in second.sent  # the same artifact bytes were already on the device
    assert_complete(root, bundles["b"] / MANIFEST)
    info = status(target, options)
    assert info["current"] == second.slot and info["previous"] == first.slot
    assert {v["slot"] for v in info["versions"]} == {first.slot, second.slot}
    assert info["last_flash"]["result"] == "installed" and not info["requires_signature"]
    assert os.readlink(root / "previous") == f"releases/{first.slot}"


def test_foreign_root_is_refused_and_left_alone(bundles, tmp_path, sshd):  # noqa: F811
    home = make_home_like(tmp_path / "home")
    before = snapshot(home)
    results = flash(
        bundles["a"], [str(home), sshd.target(home)], FlashOptions(profile=PROFILE, ssh_config=str(sshd.ssh_config))
    )
    for r in results:
        assert r.result == "failed" and "holds files edgecls did not write" in r.reason, r
    assert snapshot(home) == before


def test_path_traversal_names_are_refused(bundles, tmp_path, sshd):  # noqa: F811
    evil = variant(bundles["a"], tmp_path / "evil", files={"../../escaped.txt": "0" * 64})
    root = tmp_path / "dev"
    assert "not a plain file name" in cli_error(run_cli("flash", evil, root))
    assert not (tmp_path / "escaped.txt").exists() and not root.exists()
    # The device refuses such a name too, even from a host that did not check: a manifest that lists it
    # (refused by the device's name check itself) and an upload naming a file the manifest does not list.
    from edgecls.devices.targets import SshDeviceTarget

    device = SshDeviceTarget(sshd.target(root), "/unused", config=sshd.ssh_config)
    outside = tmp_path / "payload"
    outside.write_text("x")
    evil_manifest = (evil / MANIFEST).read_bytes()
    for call in (
        lambda: device.plan(evil_manifest, ["tflite-int8"]),
        lambda: device.apply(evil_manifest, ["tflite-int8"], {"../../escaped.txt": outside}),
    ):
        with pytest.raises(Exception, match="not a plain file name"):
            call()
    manifest = (bundles["a"] / MANIFEST).read_bytes()
    with pytest.raises(Exception, match="not a file of this bundle"):
        device.apply(manifest, ["tflite-int8"], {"../outside.txt": outside})
    assert not (root / "outside.txt").exists() and not (root.parent / "outside.txt").exists()
    assert not (tmp_path / "escaped.txt").exists() and not (root / "current").exists()


@pytest.mark.parametrize("name", ["release.json", ".notes.part", "manifest.json.sig"])
def test_bundle_files_named_like_the_devices_own_files_are_refused(bundles, tmp_path, sshd, name):  # noqa: F811
    """A bundle file named release.json (the device's record of a release, which `status` reads the signer
    from), .NAME.part (an upload leftover, deleted after its check) or the signature's name would be
    overwritten, forged or deleted after it was checked: the host refuses the bundle before any target, and the
    device refuses the manifest itself, from a host that did not check (before: 'installed', then 'repaired'
    with the bundle's own release.json and a forged signer in status)."""
    import hashlib

    from edgecls.devices.targets import SshDeviceTarget
    from edgecls.runtime.bundle import BundleError

    evil = variant(bundles["a"], tmp_path / "evil", created="2026-04-04T00:00:00+00:00")
    fake = json.dumps({"artifacts": ["tflite-int8"], "signature": {"required": True, "signer": "forged"}}).encode()
    (evil / name).write_bytes(fake)
    manifest = json.loads((evil / MANIFEST).read_text())
    manifest["files"][name] = hashlib.sha256(fake).hexdigest()
    (evil / MANIFEST).write_text(json.dumps(manifest, indent=2))
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    with pytest.raises(BundleError, match="which devices keep for themselves"):
        flash(evil, [str(root)], FlashOptions(profile=PROFILE))
    device = SshDeviceTarget(sshd.target(root), "/unused", config=sshd.ssh_config)
    for call in (
        lambda: device.plan((evil / MANIFEST).read_bytes(), ["tflite-int8"]),
        lambda: device.apply((evil / MANIFEST).read_bytes(), ["tflite-int8"], {name: evil / name}),
    ):
        with pytest.raises(Exception, match="which the device uses itself"):
            call()
    assert current_release(root).name == a.slot
    assert "forged" not in json.dumps(status(str(root)))


def test_bytes_flipped_in_transit_are_never_switched_to(bundles, tmp_path, sshd):  # noqa: F811
    from edgecls.devices.targets import SshDeviceTarget

    root = tmp_path / "dev"
    options = FlashOptions(profile=PROFILE, ssh_config=str(sshd.ssh_config))
    [a] = flash(bundles["a"], [str(tmp_path / "other")], options)  # a release elsewhere: nothing to reuse on dev
    # What the host sends under the artifact's name differs from the manifest by one bit.
    flipped = tmp_path / "flipped.tflite"
    data = bytearray((bundles["b"] / "model_int8.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    device = SshDeviceTarget(sshd.target(root), "/unused", config=sshd.ssh_config)
    manifest_b = bundles["b"] / MANIFEST
    with pytest.raises(Exception, match="arrived corrupted"):
        device.apply(
            manifest_b.read_bytes(),
            ["tflite-int8"],
            {MANIFEST: manifest_b, "labels.txt": bundles["b"] / "labels.txt", "model_int8.tflite": flipped},
        )
    assert not (root / "current").is_symlink() and not any((root / "releases").iterdir())
    staged = list((root / "staging").rglob("model_int8.tflite"))
    assert not staged  # the bad bytes were dropped, never stored under the real name
    # The next flash sends what is still missing and completes.
    [b] = flash(bundles["b"], [sshd.target(root)], options)
    assert b.result == "installed" and "model_int8.tflite" in b.sent and MANIFEST not in b.sent
    assert_complete(root, manifest_b)


def test_wrong_labels_roll_back_with_the_reason(bundles, tmp_path):
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    good = snapshot(current_release(root))
    [w] = flash(bundles["wrong"], [str(root)], FlashOptions(profile=PROFILE))
    assert w.result == "rolled back" and "got the wrong label" in w.reason and "expected" in w.reason
    assert current_release(root).name == a.slot and snapshot(current_release(root)) == good
    info = status(str(root))
    assert info["last_flash"]["result"] == "rolled back" and "wrong label" in info["last_flash"]["reason"]


def test_latency_over_budget_rolls_back(bundles, tmp_path):
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    strict = DeviceProfile(name="strict", artifacts=("tflite-int8",), threads=1, latency_budget_ms=0.001)
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=strict))
    assert b.result == "rolled back" and "p95 latency" in b.reason and "budget of 0.001 ms" in b.reason
    assert current_release(root).name == a.slot
    # The first flash onto an empty device that fails leaves no `current` at all: nothing half-working runs.
    [c] = flash(bundles["b"], [str(tmp_path / "fresh")], FlashOptions(profile=strict))
    assert c.result == "rolled back" and not (tmp_path / "fresh" / "current").is_symlink()


def test_rollback_cli_restores_previous_byte_for_byte(bundles, tmp_path, sshd):  # noqa: F811
    root = tmp_path / "dev"
    target = sshd.target(root)
    ssh = ["--ssh-config", sshd.ssh_config]
    assert run_cli("flash", bundles["a"], target, *ssh, "--profile", _profile_file(tmp_path, PROFILE)).returncode == 0
    was = snapshot(current_release(root))
    done = run_cli("flash", bundles["b"], target, *ssh, "--profile", _profile_file(tmp_path, PROFILE))
    assert done.returncode == 0, done.stderr
    assert snapshot(current_release(root)) != was
    back = run_cli("rollback", target, *ssh)
    assert back.returncode == 0, back.stderr
    assert snapshot(current_release(root)) == was
    shown = run_cli("status", target, *ssh)
    assert shown.returncode == 0 and "last flash: rolled back" in shown.stdout and "`edgecls rollback`" in shown.stdout
    # Nothing further back to go to after two rollbacks? One more swaps again; a fresh root has nothing.
    err = cli_error(run_cli("rollback", str(tmp_path / "nothing-here")))
    assert "not an edgecls device root" in err


def _profile_file(folder: Path, profile: DeviceProfile, name: str = "profile.json") -> Path:
    from dataclasses import asdict

    path = folder / name
    path.write_text(json.dumps({k: v for k, v in asdict(profile).items() if v is not None}))
    return path


def test_fleet_table_shows_one_success_and_one_rollback(bundles, tmp_path, sshd):  # noqa: F811
    roots = [tmp_path / "pi-a", tmp_path / "pi-b"]
    _profile_file(
        tmp_path, DeviceProfile(name="slow", artifacts=("tflite-int8",), latency_budget_ms=0.001), "slow.json"
    )
    (tmp_path / "fleet.txt").write_text(
        f"# two loopback devices\n{sshd.target(roots[0])}\n"
        f"{sshd.target(roots[1])}  slow.json   # this one must roll back\n"
    )
    assert read_targets_file(tmp_path / "fleet.txt")[1][1].name == "slow"
    for root in roots:  # both run version a first, so the failing one has something to roll back to
        assert flash(bundles["a"], [sshd.target(root)], FlashOptions(profile=PROFILE, ssh_config=str(sshd.ssh_config)))[
            0
        ].ok
    done = run_cli(
        "flash",
        bundles["b"],
        "--targets",
        tmp_path / "fleet.txt",
        "--ssh-config",
        sshd.ssh_config,
        "--profile",
        _profile_file(tmp_path, PROFILE),
    )
    assert done.returncode == 1, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert " installed " in rows[sshd.target(roots[0])]
    assert " rolled back " in rows[sshd.target(roots[1])] and "p95 latency" in rows[sshd.target(roots[1])]
    assert "1 of 2 target(s) not updated" in done.stderr
    slot_a = os.readlink(roots[1] / "current")
    assert os.readlink(roots[0] / "previous") == slot_a  # a's slot, kept as previous on the updated device


def test_concurrent_flashes_take_turns(bundles, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from edgecls.runtime.install import DeviceRoot

    root = tmp_path / "dev"
    assert flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))[0].ok
    with DeviceRoot(root).lock():  # another flash is running: a short wait gives up naming the holder
        [busy] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE, lock_timeout=0.2))
    assert busy.result == "failed" and "is busy" in busy.reason and "pid" in busy.reason
    assert current_release(root).name == flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))[0].slot
    # Two flashes at once, of two versions neither installed (so both take the lock, not plan's no-op path):
    # serialized by the lock, both complete, and the device's own record of when each held the lock shows
    # the two intervals one after the other, never overlapping.
    c = variant(bundles["a"], tmp_path / "c", created="2026-03-03T00:00:00+00:00")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda b: flash(b, [str(root)], FlashOptions(profile=PROFILE))[0], [bundles["b"], c]))
    assert [r.result for r in results] == ["installed", "installed"], results
    held = [
        h for h in json.loads((root / "state.json").read_text())["history"] if h["slot"] in {r.slot for r in results}
    ]
    assert len(held) == 2
    (start1, end1), (start2, end2) = sorted((h["locked_at"], h["recorded_at"]) for h in held)
    assert start1 < end1 <= start2 < end2, held
    assert_complete(root, (bundles["b"] if current_release(root).name == results[0].slot else c) / MANIFEST)


def test_unreachable_target_is_one_failed_row_with_cause_and_fix(bundles, tmp_path, sshd):  # noqa: F811
    closed = f"{sshd.user}@127.0.0.1:1:{tmp_path / 'x'}"  # nothing listens on port 1
    done = run_cli(
        "flash",
        bundles["a"],
        closed,
        tmp_path / "local",
        "--ssh-config",
        sshd.ssh_config,
        "--profile",
        _profile_file(tmp_path, PROFILE),
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert " failed " in rows[closed] and "cannot reach" in rows[closed] and "SSH server" in rows[closed]
    assert " installed " in rows[str(tmp_path / "local")]


def test_damaged_previous_release_is_replaced_not_trusted(bundles, tmp_path):
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    with open(root / "releases" / a.slot / "labels.txt", "a") as f:  # bit rot in the previous release
        f.write("x")
    [again] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    assert again.result == "installed", again.reason  # the damaged release was replaced, not switched to as is
    assert_complete(root, bundles["a"] / MANIFEST)
    assert os.readlink(root / "previous") == f"releases/{b.slot}"


def test_smoke_test_stops_once_over_budget_and_has_a_deadline(bundles, tmp_path):
    """A model far over its budget must not hold the flash lock for all its timing runs, and nothing may
    make the smoke test run unbounded (a hung backend, a huge model on a slow device)."""
    from edgecls.runtime.install.smoke import smoke_deadline, smoke_test

    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    profile = {"artifacts": ["tflite-int8"], "threads": 1}
    over = smoke_test(current_release(root), profile, budget_ms=0.001)
    assert not over["ok"] and "p95 latency" in over["reason"] and over["runs"] == 3  # not 30: p95 was certain
    late = smoke_test(current_release(root), profile, budget_ms=None, deadline_s=0)
    assert not late["ok"] and "did not finish within 0 s" in late["reason"]
    assert smoke_deadline(0.001) == 10 and smoke_deadline(1000) == 90  # max(10 s, 3 x 30 runs at budget)
    assert smoke_test(current_release(root), profile, budget_ms=None)["runs"] == 30


def test_status_and_table_escape_control_characters(bundles, tmp_path):
    """Manifest fields are text anyone could write: a terminal must see escapes, not execute them."""
    from edgecls.devices.flash import FlashResult, format_table

    evil = variant(bundles["a"], tmp_path / "evil", created="2026\x1b]0;owned\x07\x1b[2J\nforged line")
    root = tmp_path / "dev"
    assert flash(evil, [str(root)], FlashOptions(profile=PROFILE))[0].ok
    shown = run_cli("status", root)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout and "\nforged line" not in shown.stdout
    assert "2026\\x1b]0;owned\\x07\\x1b[2J\\nforged line" in shown.stdout
    table = format_table([FlashResult("t\x1b[1m", "failed", reason="bad\x1b[2J\rlabel")])
    assert "\x1b" not in table and "\r" not in table and "bad\\x1b[2J\\rlabel" in table


@pytest.mark.parametrize(
    "answer",
    [
        '{"slot": "0123456789abcdef", "need": []}',  # a plan without `installed`
        'case "$*" in *" plan "*) echo \'{"slot": "s", "installed": false, "need": []}\';; '
        "*) echo '{\"ok\": 1}';; esac",
        "echo '[1, 2]'",  # not an object
    ],
    ids=["plan-missing-key", "apply-missing-result", "not-an-object"],
)
def test_a_device_reply_of_unexpected_shape_is_one_failed_row_and_the_others_report(
    bundles,
    tmp_path,
    sshd,
    answer,  # noqa: F811
):
    """The device's interpreter (another edgecls version, or a device that lies) answers JSON of another shape:
    that target fails with a reason, the local target beside it in the same run is installed and reported."""
    fake = tmp_path / "device-python"
    line = answer if answer.startswith(("case", "echo")) else f"echo '{answer}'"
    fake.write_text(f"#!/bin/sh\ncat > /dev/null\n{line}\n")
    fake.chmod(0o755)
    local, remote = str(tmp_path / "local-dev"), sshd.target(tmp_path / "ssh-dev")
    options = FlashOptions(profile=PROFILE, ssh_config=str(sshd.ssh_config), python=str(fake))
    results = flash(bundles["a"], [local, remote], options)
    assert [r.target for r in results] == [local, remote]
    assert results[0].result == "installed", results[0]
    assert results[1].result == "failed" and "not what this edgecls expects" in results[1].reason, results[1]
    assert "Traceback" not in results[1].reason and "\n" not in results[1].reason


def test_an_ssh_flash_whose_device_side_dies_after_the_switch_names_what_is_current_and_what_to_run(
    bundles,
    tmp_path,
    sshd,  # noqa: F811
):
    """The device's process is killed right after `current` switched to the unchecked release: the row names
    that version as current, never verified, and says to flash again or `edgecls rollback` (before: only
    "...ended abruptly", the unverified model current and nothing said)."""
    target = sshd.target(tmp_path / "dev")
    config = str(sshd.ssh_config)
    [a] = flash(bundles["a"], [target], FlashOptions(profile=PROFILE, ssh_config=config))
    assert a.ok, a
    kill = ("SetEnv=EDGECLS_TEST_KILL_AT=write_durable:2", "ControlPath=none")
    [b] = flash(bundles["b"], [target], FlashOptions(profile=PROFILE, ssh_config=config, ssh_options=kill))
    assert b.result == "failed", b
    now = current_release(tmp_path / "dev").name
    assert now != a.slot, "the kill came before the switch: this test needs it after"
    assert f"`current` is {now}, never verified" in b.reason and f"`edgecls rollback {target}`" in b.reason, b.reason


def test_an_ssh_flash_interrupted_on_the_host_after_the_switch_rolls_the_device_back(bundles, tmp_path, sshd):  # noqa: F811
    """Ctrl-C on the host (SIGINT to the flash and its ssh) while the device waits for its daemon, `current`
    already switched: the device sees its host gone and rolls back to the last verified release, recorded
    (before: the device finished on its own, or left the unchecked model current with no one told)."""
    import signal
    import subprocess
    import sys
    import time

    from tests.test_install_api import DaemonHealth, _health_profile

    root = tmp_path / "dev"
    target = sshd.target(root)
    config = str(sshd.ssh_config)
    [a] = flash(bundles["a"], [target], FlashOptions(profile=PROFILE, ssh_config=config))
    assert a.ok, a
    daemon = DaemonHealth(str((root / "releases" / a.slot).resolve()))  # never serves the new release
    try:
        profile = _health_profile(tmp_path, daemon.url)
        cli = [sys.executable, "-m", "edgecls.cli", "flash", str(bundles["b"]), target, "--profile", str(profile)]
        proc = subprocess.Popen(
            [*cli, "--ssh-config", config], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while os.readlink(root / "current").endswith(a.slot) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.readlink(root / "current").endswith(a.slot), "the flash never switched"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the flash and its ssh client
        proc.communicate(timeout=30)
        while time.monotonic() < deadline + 30:
            state = json.loads((root / "state.json").read_text())
            if "pending" not in state:
                break
            time.sleep(0.1)
    finally:
        daemon.close()
    assert current_release(root).name == a.slot
    assert state["last_flash"]["result"] == "rolled back", state
    assert state["last_flash"]["reason"].startswith("interrupted by SIGHUP"), state


def test_a_symlinked_staging_folder_never_leads_to_deleting_outside_the_root(bundles, tmp_path):
    """`staging -> /var/tmp` (same file system, to spare the SD card) is a plausible layout; layout.py promises
    "files we did not write are never deleted". _cleanup rmtree's every folder under staging/ older than a day,
    following the link: the user's folders outside the root are deleted."""
    root = tmp_path / "dev"
    assert flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))[0].ok
    outside = tmp_path / "var-tmp"
    (outside / "someone-elses-job").mkdir(parents=True)
    (outside / "someone-elses-job" / "data.bin").write_bytes(b"precious")
    two_days_ago = time.time() - 2 * 86400
    os.utime(outside / "someone-elses-job", (two_days_ago, two_days_ago))
    import shutil

    shutil.rmtree(root / "staging")
    os.symlink(outside, root / "staging")
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    # Either refuse the symlinked staging/ or leave what it points at alone; never delete it.
    assert (outside / "someone-elses-job" / "data.bin").is_file(), f"deleted outside the root; flash said {b}"


def test_a_reflash_over_a_damaged_current_release_is_not_reported_unchanged(bundles, tmp_path):
    """Bit rot in the *current* release: plan() hashes the release (`have`) and then ignores the result, so
    re-flashing the same bundle answers "already installed and healthy" while current serves damaged bytes."""
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    assert a.ok
    model = root / "releases" / a.slot / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    [again] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    assert again.result != "unchanged", again  # the device must not vouch for bytes it just found wrong
    if again.ok:
        assert_complete(root, bundles["a"] / MANIFEST)


def test_a_no_smoke_install_is_not_recorded_as_smoke_tested(bundles, tmp_path):
    root = tmp_path / "dev"
    assert flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))[0].ok
    [untested] = flash(bundles["wrong"], [str(root)], FlashOptions(profile=PROFILE, smoke=False))
    assert untested.result == "installed"
    # Now flash the same bundle with the smoke test on: its check labels are wrong, so it must roll back.
    [checked] = flash(bundles["wrong"], [str(root)], FlashOptions(profile=PROFILE))
    assert checked.result == "rolled back", checked  # got "unchanged": never tested, yet called healthy


def test_a_large_manifest_flashes_over_ssh_like_locally(bundles, tmp_path, sshd):  # noqa: F811
    """plan/apply pass the whole manifest base64 in argv (`--manifest-b64`), inside the single `sh -c` argument
    sshd execs: past Linux's MAX_ARG_STRLEN (128 KiB) the exec fails. A 10k-class label list or a long
    `source` record is enough. The same bundle installs on a local target. (It is also sent twice.)"""
    big = variant(
        bundles["a"],
        tmp_path / "big",
        source={"dataset_card": "\n".join(f"class {i}: a longish description of the class" for i in range(3000))},
    )
    assert len((big / MANIFEST).read_bytes()) > 100_000
    [local] = flash(big, [str(tmp_path / "local")], FlashOptions(profile=PROFILE))
    assert local.result == "installed", local
    [remote] = flash(
        big, [sshd.target(tmp_path / "remote")], FlashOptions(profile=PROFILE, ssh_config=str(sshd.ssh_config))
    )
    assert remote.result == "installed", remote


def test_a_bundle_with_an_in_bundle_symlink_flashes_over_ssh(bundles, tmp_path, sshd):  # noqa: F811
    """Bundle.verify() accepts a link that stays inside the bundle (deduplicated stores do this), the host's
    sha256 check passes and a local flash installs it; the SSH upload tar.add()s the link itself (tarfile does
    not dereference), and the device refuses "the upload holds 'model_int8.tflite', which is not a file"."""
    linked = variant(bundles["a"], tmp_path / "linked")
    (linked / "store").mkdir()
    os.replace(linked / "model_int8.tflite", linked / "store" / "blob")
    os.symlink("store/blob", linked / "model_int8.tflite")
    [local] = flash(linked, [str(tmp_path / "local")], FlashOptions(profile=PROFILE))
    assert local.result == "installed", local
    [remote] = flash(
        linked, [sshd.target(tmp_path / "remote")], FlashOptions(profile=PROFILE, ssh_config=str(sshd.ssh_config))
    )
    assert remote.result == "installed", remote


def test_the_smoke_test_runs_on_the_openvino_device_the_profile_names(bundles, tmp_path):
    """A profile asking OpenVINO's NPU on a machine without one: the smoke test runs as the daemon will (and fails,
    naming the devices OpenVINO sees), so the flash rolls back instead of installing a bundle `run` cannot load."""
    ov = pytest.importorskip("openvino", reason="openvino is not installed: pip install 'edgecls[openvino]'")
    if "NPU" in ov.Core().available_devices:
        pytest.skip("this machine has an NPU")
    npu = DeviceProfile(name="npu", artifacts=("onnx-fp32",), backends=("openvino",), openvino_device="NPU")
    root = tmp_path / "device"
    assert flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))[0].ok
    before = current_release(root).name
    [result] = flash(bundles["a"], [str(root)], FlashOptions(profile=npu))
    assert result.result == "rolled back", (result.result, result.reason)
    assert "OpenVINO sees no device NPU" in result.reason and current_release(root).name == before
