"""Adversarial review of issue 9 (flash): each test demonstrates a defect and fails on commit acd4f76.

Real bundles (conftest's tiny bundle), a real sshd on 127.0.0.1, real kills. A kill "at an exact moment" is a
SIGKILL the process sends itself from a profiler hook on entry to a named function: a moment a kill -9 from
outside can hit, made reproducible; the code under test runs unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecls.devices.flash import FlashOptions, flash, status
from edgecls.devices.profiles import DeviceProfile
from edgecls.runtime.bundle import MANIFEST
from tests.conftest import REPO
from tests.sshd import sshd  # noqa: F401  (fixture)
from tests.test_flash import PROFILE, assert_complete, bundles, current_release, variant  # noqa: F401  (fixture)


def _links(root: Path) -> tuple:
    def one(name):
        try:
            return Path(os.readlink(root / name)).name
        except OSError:
            return None

    return one("current"), one("previous")


# --- 1. Symlinked staging/ deletes folders outside the device root ---------------------------------------


def test_review_symlinked_staging_never_deletes_outside_folders(bundles, tmp_path):
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


# --- 2. Re-flash of a damaged current release is reported "unchanged, healthy" ---------------------------


def test_review_reflash_over_damaged_current_is_not_a_silent_noop(bundles, tmp_path):
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


# --- 3. --no-smoke records the version as healthy: a later flash with the smoke test skips it ------------


def test_review_no_smoke_install_is_not_recorded_as_smoke_tested(bundles, tmp_path):
    root = tmp_path / "dev"
    assert flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))[0].ok
    [untested] = flash(bundles["wrong"], [str(root)], FlashOptions(profile=PROFILE, smoke=False))
    assert untested.result == "installed"
    # Now flash the same bundle with the smoke test on: its check labels are wrong, so it must roll back.
    [checked] = flash(bundles["wrong"], [str(root)], FlashOptions(profile=PROFILE))
    assert checked.result == "rolled back", checked  # got "unchanged": never tested, yet called healthy


# --- 4. kill -9 inside `edgecls rollback`, between its two renames ---------------------------------------

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


def test_review_rollback_killed_between_renames_loses_nothing(bundles, tmp_path):
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


# --- 5. A signed bundle is refused where its release folder already exists unsigned -----------------------


def _keypair(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def test_review_signed_reflash_of_a_version_installed_before_trust_is_accepted(bundles, tmp_path):
    """apply() checks the signature in releases/<slot> when that folder is complete, not the signature just
    sent (which lands in staging/<slot>). A version installed before the device trusted keys can never be
    installed again, even properly signed: "not signed ... sign it" although it is."""
    from edgecls.devices.sign import sign_bundle, trusted_line
    from edgecls.runtime.install import api

    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    assert flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))[0].ok
    key = _keypair(tmp_path, "release-key")
    api.trust(str(root), trusted_line(key.with_suffix(".pub"), "release").encode())
    sign_bundle(bundles["a"], key)
    [again] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    assert again.result == "installed", again
    assert _links(root)[0] == a.slot


# --- 6. SSH: the manifest travels on the command line -----------------------------------------------------


def test_review_large_manifest_flashes_over_ssh_like_locally(bundles, tmp_path, sshd):  # noqa: F811
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


# --- 7. SSH: a bundle whose model file is a link inside the bundle -----------------------------------------


def test_review_bundle_with_in_bundle_symlink_flashes_over_ssh(bundles, tmp_path, sshd):  # noqa: F811
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


# --- 8. A shared allowed_signers file (git + edgecls) refuses a correctly signed bundle --------------------


def test_review_key_listed_for_git_first_still_verifies_for_edgecls(bundles, tmp_path):
    """Teams keep one allowed_signers file (git's gpg.ssh.allowedSignersFile) listing a key once per purpose.
    `ssh-keygen -Y find-principals` returns only the first principal that lists the key, whatever its
    namespaces; verify_manifest() then verifies as that principal with -n edgecls-bundle and refuses."""
    from edgecls.devices.sign import sign_bundle
    from edgecls.runtime.install import api

    key = _keypair(tmp_path, "dev-key")
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    root = tmp_path / "dev"
    api.trust(
        str(root),
        (
            f'alice-commits namespaces="git" {kind} {blob}\nalice-releases namespaces="edgecls-bundle" {kind} {blob}\n'
        ).encode(),
    )
    sign_bundle(bundles["a"], key)
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    assert a.result == "installed", a
    assert status(str(root))["versions"][0]["signature"]["signer"] == "alice-releases"


# --- 9. Disk full on the device: the partial file stays and keeps the disk full ---------------------------


def test_review_disk_full_leaves_no_partial_files_and_current_intact(bundles, tmp_path):
    """_write_member() writes `.NAME.PID.part` and only removes it on a sha256 mismatch: on ENOSPC the partial
    file stays (resume is per whole file, so it is useless) and holds the space the daemon's logs need. Over
    SSH every retry is a new PID, so each failed retry leaves another one."""
    sd = tmp_path / "sd"
    sd.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(sd)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        root = sd / "edgecls"
        [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
        assert a.ok, a
        with open(sd / "filler", "wb", buffering=0) as f:  # another program fills the card
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        os.truncate(sd / "filler", max(0, os.path.getsize(sd / "filler") - 12 * 1024))  # 12 KiB left
        fp32 = DeviceProfile(name="fp32", artifacts=("tflite-fp32",), threads=1)  # a 21 KiB file to send
        [full] = flash(bundles["a"], [str(root)], FlashOptions(profile=fp32))
        assert full.result == "failed" and "space" in full.reason.lower(), full
        assert _links(root)[0] == a.slot
        assert_complete(root, bundles["a"] / MANIFEST)
        leftovers = [str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith((".part", ".tmp"))]
        assert not leftovers, leftovers
    finally:
        subprocess.run(["umount", "-l", str(sd)], capture_output=True)


# --- 10. `edgecls rollback` switches to a damaged previous release without checking it ---------------------


def test_review_rollback_refuses_a_damaged_previous(bundles, tmp_path):
    """flash re-verifies a release before reusing it (test_i9_p2_damaged_previous_release_is_replaced_not_trusted),
    rollback does not: bit rot in `previous` is switched to and reported as a successful rollback."""
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


# --- 11. A daemon started with a token: the health wait can never pass ------------------------------------


def test_review_health_wait_works_with_a_token_protected_daemon(bundles, tmp_path):
    """The daemon's /healthz wants `Authorization: Bearer TOKEN` when it has a token (runtime/daemon/http.py);
    smoke.wait_healthy() sends none and the profile has no way to give one, so every flash of a device whose
    daemon uses a token waits 60 s on 401s and rolls back a good model. (Slow on the old code: ~60 s.)"""
    pytest.importorskip("cv2")
    from edgecls.runtime.daemon import Daemon
    from tests.daemon_helpers import write_test_video

    root = tmp_path / "dev"
    assert flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))[0].ok
    daemon = Daemon(
        root / "current",
        [write_test_video(tmp_path / "clip.avi")],
        port=0,
        sinks=[],
        source_options={"loop": True},
        token="s3cret-token",
    )
    token_file = tmp_path / "token"  # on the device, as `edgecls run --token-file` reads it
    token_file.write_text("s3cret-token\n")
    results = {}

    def scenario(d):
        try:
            # Corrected by the fixer: the device has to be told where the token is (the profile's
            # health_token_file); the review's version gave no token at all, which no fix could pass.
            profile = DeviceProfile(
                name="with-daemon",
                artifacts=("tflite-int8",),
                threads=1,
                health_url=d.url + "/healthz",
                health_token_file=str(token_file),
            )
            [results["b"]] = flash(bundles["b"], [str(root)], FlashOptions(profile=profile))
            results["status"] = status(str(root))  # status asks /healthz with the token too (device.json's path)
        finally:
            d.request_stop()

    daemon.run(on_start=scenario)
    assert results["b"].result == "installed", results["b"]
    assert results["status"]["health"]["status"] == 200, results["status"]["health"]
    assert "s3cret-token" not in "".join(p.read_text(errors="replace") for p in root.glob("*.json"))
