"""Bundle signatures: OpenSSH's `ssh-keygen -Y sign/verify` over manifest.json, with an allowed-signers file.

The manifest lists every file's sha256, so signing it signs the bundle. The signature is the file
`manifest.json.sig` beside it (SSHSIG format); the namespace `edgecls-bundle` keeps a signature made for
something else (git commits, other tools) from being accepted here. We use OpenSSH because it is already
on every device we reach over SSH and its keys are the ones users manage; no crypto of our own.

For the daemon (verify on load): `verify_bundle(bundle_root, allowed_signers)` returns the signer or raises.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from fnmatch import fnmatchcase
from pathlib import Path

from edgecls.runtime.bundle import MANIFEST, BundleError

SIGNATURE = MANIFEST + ".sig"
NAMESPACE = "edgecls-bundle"


class SignatureError(BundleError):
    """A bundle that is unsigned, or whose signature is not from a trusted key."""


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if not found:
        raise SignatureError(
            "ssh-keygen is not installed, so bundle signatures cannot be checked: install openssh-client on this device"
        )
    return found


_FIELD = re.compile(r'\s*("[^"]*"|\S+)')
_OPTIONS = re.compile(r'\s*((?:[^\s"]|"[^"]*")+)')
_NAMESPACES = re.compile(r'(?:^|,)namespaces="([^"]*)"', re.IGNORECASE)
_KEY_TYPES = ("ssh-", "ecdsa-", "sk-", "rsa-")


def _for_bundles(line: str) -> bool:
    """Whether an allowed-signers line may verify bundles: no `namespaces=` option, or one that matches ours.

    `ssh-keygen -Y find-principals` ignores namespaces and stops at the first line listing the key, so a key
    listed for git before it is listed for bundles would name the git principal (and verify would fail).
    """
    field = _FIELD.match(line)
    if not field:
        return False
    rest = line[field.end() :].lstrip()
    if rest.startswith(_KEY_TYPES):
        return True  # no options: every namespace
    options = _OPTIONS.match(rest)
    found = _NAMESPACES.search(options.group(1)) if options else None
    if not found:
        return True
    allowed = False
    for pattern in found.group(1).split(","):  # OpenSSH pattern list: wildcards, `!` negates
        negated = pattern.startswith("!")
        if fnmatchcase(NAMESPACE, pattern[1:] if negated else pattern):
            if negated:
                return False
            allowed = True
    return allowed


def verify_manifest(manifest: Path, signature: Path, allowed_signers: Path) -> str:
    """The principal that signed `manifest` if `signature` verifies against `allowed_signers`, else SignatureError.

    Checked against a temporary copy of `allowed_signers` holding only the lines valid for our namespace
    (see `_for_bundles`), so one file shared with git's allowedSignersFile works.
    """
    if not signature.is_file():
        raise SignatureError(
            f"{manifest.parent} is not signed ({SIGNATURE} is missing) but this device requires "
            f"signed bundles: sign it with `edgecls sign BUNDLE --key KEY`"
        )
    keygen = _ssh_keygen()
    lines = [
        l
        for l in Path(allowed_signers).read_text(errors="replace").splitlines()
        if l.strip() and not l.lstrip().startswith("#") and _for_bundles(l)
    ]
    untrusted = SignatureError(
        f"{manifest.parent} is signed by a key that {allowed_signers} does not trust for "
        f"{NAMESPACE}: sign it with a trusted key, or add the signer's public key to "
        f'{allowed_signers} (namespaces="{NAMESPACE}")'
    )
    if not lines:
        raise untrusted
    with tempfile.NamedTemporaryFile("w", prefix="edgecls-signers-", suffix=".txt") as signers:
        signers.write("\n".join(lines) + "\n")
        signers.flush()
        found = subprocess.run(
            [keygen, "-Y", "find-principals", "-s", str(signature), "-f", signers.name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        principals = found.stdout.split()
        if found.returncode != 0 or not principals:
            raise untrusted
        with open(manifest, "rb") as data:
            checked = subprocess.run(
                [
                    keygen,
                    "-Y",
                    "verify",
                    "-f",
                    signers.name,
                    "-I",
                    principals[0],
                    "-n",
                    NAMESPACE,
                    "-s",
                    str(signature),
                ],
                stdin=data,
                capture_output=True,
                text=True,
                timeout=60,
            )
    if checked.returncode != 0:
        raise SignatureError(
            f"the signature of {manifest.parent} does not verify (the manifest changed after "
            f"signing, or it was signed for another purpose): sign the bundle again"
        )
    return principals[0]


def verify_bundle(bundle_root, allowed_signers) -> str:
    """For loaders (the daemon): refuse a bundle folder whose manifest is not signed by a trusted key.

    Returns the signer's principal. Raises SignatureError (a BundleError) with cause and fix.
    """
    root, signers = Path(bundle_root), Path(allowed_signers)
    if not signers.is_file():
        raise SignatureError(
            f"allowed signers file {signers} does not exist: create it (one `PRINCIPAL "
            f'namespaces="{NAMESPACE}" ssh-ed25519 KEY` line per trusted key)'
        )
    return verify_manifest(root / MANIFEST, root / SIGNATURE, signers)
