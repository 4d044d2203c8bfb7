"""Bundle signatures: OpenSSH's `ssh-keygen -Y sign/verify` over manifest.json, with an allowed-signers file.

The manifest lists every file's sha256, so signing it signs the bundle. The signature is the file
`manifest.json.sig` beside it (SSHSIG format); the namespace `edgecls-bundle` keeps a signature made for
something else (git commits, other tools) from being accepted here. We use OpenSSH because it is already
on every device we reach over SSH and its keys are the ones users manage; no crypto of our own.

For the daemon (verify on load): `verify_bundle(bundle_root, allowed_signers)` returns the signer or raises.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from runtime.bundle import MANIFEST, BundleError

SIGNATURE = MANIFEST + ".sig"
NAMESPACE = "edgecls-bundle"


class SignatureError(BundleError):
    """A bundle that is unsigned, or whose signature is not from a trusted key."""


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if not found:
        raise SignatureError("ssh-keygen is not installed, so bundle signatures cannot be checked: install "
                             "openssh-client on this device")
    return found


def verify_manifest(manifest: Path, signature: Path, allowed_signers: Path) -> str:
    """The principal that signed `manifest` if `signature` verifies against `allowed_signers`, else SignatureError."""
    if not signature.is_file():
        raise SignatureError(f"{manifest.parent} is not signed ({SIGNATURE} is missing) but this device requires "
                             f"signed bundles: sign it with `edgecls sign BUNDLE --key KEY`")
    keygen = _ssh_keygen()
    found = subprocess.run([keygen, "-Y", "find-principals", "-s", str(signature), "-f", str(allowed_signers)],
                           capture_output=True, text=True, timeout=60)
    principals = found.stdout.split()
    if found.returncode != 0 or not principals:
        raise SignatureError(f"{manifest.parent} is signed by a key that {allowed_signers} does not trust: sign it "
                             f"with a trusted key, or add the signer's public key to {allowed_signers}")
    with open(manifest, "rb") as data:
        checked = subprocess.run([keygen, "-Y", "verify", "-f", str(allowed_signers), "-I", principals[0],
                                  "-n", NAMESPACE, "-s", str(signature)], stdin=data, capture_output=True, text=True,
                                 timeout=60)
    if checked.returncode != 0:
        raise SignatureError(f"the signature of {manifest.parent} does not verify (the manifest changed after "
                             f"signing, or it was signed for another purpose): sign the bundle again")
    return principals[0]


def verify_bundle(bundle_root, allowed_signers) -> str:
    """For loaders (the daemon): refuse a bundle folder whose manifest is not signed by a trusted key.

    Returns the signer's principal. Raises SignatureError (a BundleError) with cause and fix.
    """
    root, signers = Path(bundle_root), Path(allowed_signers)
    if not signers.is_file():
        raise SignatureError(f"allowed signers file {signers} does not exist: create it (one `PRINCIPAL "
                             f"namespaces=\"{NAMESPACE}\" ssh-ed25519 KEY` line per trusted key)")
    return verify_manifest(root / MANIFEST, root / SIGNATURE, signers)
