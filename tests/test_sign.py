"""edgecls.devices.sign: `edgecls sign` with OpenSSH keys; devices that trust keys refuse anything else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgecls.devices.flash import FlashOptions, flash, status
from edgecls.devices.profiles import DeviceProfile
from edgecls.devices.sign import sign_bundle, trusted_line
from edgecls.devices.targets import make_target
from edgecls.runtime.bundle import MANIFEST, load_bundle
from edgecls.runtime.install import SIGNATURE, SignatureError, verify_bundle
from tests.conftest import cli_error, require_tool, run_cli
from tests.sshd import sshd  # noqa: F401  (fixture)
from tests.test_flash import PROFILE, bundles, current_release, links, variant  # noqa: F401  (fixture)


@pytest.fixture
def keys(tmp_path) -> dict:
    require_tool("ssh-keygen", package="openssh-client")
    for name in ("trusted", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text(trusted_line(tmp_path / "trusted.pub", "release@example.com"))
    return {"trusted": tmp_path / "trusted", "stranger": tmp_path / "stranger", "signers": signers}


def test_sign_cli_and_verify_for_the_daemon(bundles, keys, tmp_path):
    done = run_cli("sign", bundles["a"], "--key", keys["trusted"], "--principal", "release@example.com")
    assert done.returncode == 0, done.stderr
    assert (bundles["a"] / SIGNATURE).read_text().startswith("-----BEGIN SSH SIGNATURE-----")
    assert 'release@example.com namespaces="edgecls-bundle" ssh-ed25519 ' in done.stdout
    assert verify_bundle(bundles["a"], keys["signers"]) == "release@example.com"
    with pytest.raises(SignatureError, match="is not signed"):
        verify_bundle(bundles["b"], keys["signers"])
    sign_bundle(bundles["b"], keys["stranger"])
    with pytest.raises(SignatureError, match="does not trust"):
        verify_bundle(bundles["b"], keys["signers"])
    # One byte of the signed manifest changed: the signature no longer verifies.
    manifest = bundles["a"] / MANIFEST
    manifest.write_bytes(manifest.read_bytes().replace(b'"head": "softmax"', b'"head": "sigmoid"'))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_bundle(bundles["a"], keys["signers"])
    from edgecls.runtime.errors import EdgeclsError

    with pytest.raises(EdgeclsError, match="signing key .* does not exist: create one with `ssh-keygen"):
        sign_bundle(bundles["a"], tmp_path / "missing")
    assert "could not sign" in cli_error(run_cli("sign", bundles["a"], "--key", keys["signers"]))


def test_a_signed_tar_bundle_loads_with_its_signature(tiny_bundle, keys, tmp_path):
    archive = tmp_path / "tiny.tar"
    archive.write_bytes(Path(str(tiny_bundle) + ".tar").read_bytes())
    sign_bundle(archive, keys["trusted"])
    bundle = load_bundle(archive)  # the changed archive unpacks to a new cache folder, signature inside
    assert verify_bundle(bundle.root, keys["signers"]) == "release@example.com"


def test_device_requiring_signatures_refuses_before_switching(bundles, keys, sshd, tmp_path):  # noqa: F811
    root = tmp_path / "dev"
    target = sshd.target(root)
    options = FlashOptions(profile=PROFILE, ssh_config=str(sshd.ssh_config))
    [a] = flash(bundles["a"], [target], options)  # installed before the device was told to require signatures
    assert a.result == "installed"
    make_target(target, "/unused", config=sshd.ssh_config).trust(keys["signers"].read_bytes())
    [unsigned] = flash(bundles["b"], [target], options)
    assert unsigned.result == "failed" and "is not signed" in unsigned.reason and "edgecls sign" in unsigned.reason
    sign_bundle(bundles["b"], keys["stranger"])
    [stranger] = flash(bundles["b"], [target], options)
    assert stranger.result == "failed" and "does not trust" in stranger.reason
    tampered = variant(bundles["a"], tmp_path / "tampered", created="2030-01-01T00:00:00+00:00")
    (tampered / SIGNATURE).write_bytes(sign_bundle(bundles["a"], keys["trusted"]).read_bytes())  # a's signature
    [bad] = flash(tampered, [target], options)
    assert bad.result == "failed" and "does not verify" in bad.reason
    for refused in (unsigned, stranger, bad):
        assert refused.slot == ""
    assert current_release(root).name == a.slot
    assert sorted(p.name for p in (root / "releases").iterdir()) == [a.slot]  # nothing refused was installed
    info = status(target, options)
    assert info["requires_signature"] and info["last_flash"]["result"] == "refused"
    sign_bundle(bundles["b"], keys["trusted"])
    [good] = flash(bundles["b"], [target], options)
    assert good.result == "installed", good.reason
    signed = {v["slot"]: v["signature"] for v in status(target, options)["versions"]}
    assert signed[good.slot] == {"required": True, "signer": "release@example.com"}


def test_profile_with_trusted_keys_refuses_on_the_host(bundles, keys, tmp_path):
    profile = DeviceProfile(name="signed", artifacts=("tflite-int8",), allowed_signers=str(keys["signers"]))
    [r] = flash(bundles["b"], [str(tmp_path / "dev")], FlashOptions(profile=profile))
    assert r.result == "failed" and "is not signed" in r.reason
    assert not (tmp_path / "dev").exists()  # refused before anything was sent
    sign_bundle(bundles["b"], keys["trusted"])
    [ok] = flash(bundles["b"], [str(tmp_path / "dev")], FlashOptions(profile=profile, setup=True))
    assert ok.result == "installed", ok.reason
    # --setup installed the profile's trusted keys on the device: it now refuses unsigned bundles by itself.
    assert (tmp_path / "dev" / "allowed_signers").read_bytes() == keys["signers"].read_bytes()
    [refused] = flash(bundles["a"], [str(tmp_path / "dev")], FlashOptions(profile=PROFILE))
    assert refused.result == "failed" and "is not signed" in refused.reason


def test_rollback_refuses_an_unsigned_previous_where_signatures_are_required(bundles, keys, tmp_path):
    """`edgecls rollback` is a switch like a flash: on a device that requires signatures it must not make
    current a version installed before the device trusted keys (unsigned), and says why."""
    from edgecls.runtime.install import api

    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    api.trust(str(root), keys["signers"].read_bytes())
    sign_bundle(bundles["b"], keys["trusted"])
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    assert b.result == "installed" and status(str(root))["previous"] == a.slot
    err = cli_error(run_cli("rollback", root))
    assert "cannot roll back" in err and "requires signed bundles" in err and "is not signed" in err
    assert current_release(root).name == b.slot  # nothing switched
    # Signed now (and re-flashed, which records the signature in its release): rollback is allowed again.
    sign_bundle(bundles["a"], keys["trusted"])
    assert flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))[0].result == "installed"
    assert run_cli("rollback", root).returncode == 0
    assert current_release(root).name == b.slot


def _keypair(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def test_a_signed_reflash_of_a_version_installed_before_trust_is_accepted(bundles, tmp_path):
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
    assert links(root)[0] == a.slot


def test_a_key_listed_for_git_first_in_allowed_signers_still_verifies_for_edgecls(bundles, tmp_path):
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
