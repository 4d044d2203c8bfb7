"""`edgecls sign`: sign a bundle's manifest with an OpenSSH key (`ssh-keygen -Y sign`).

The manifest holds every file's sha256, so its signature covers the whole bundle. Devices verify with
an allowed-signers file (runtime/install/signature.py); `trusted_line` writes that file's line for a key.
A .tar bundle is signed by signing its unpacked manifest and adding the signature to the archive.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

from edgecls.runtime.atomic import write_bytes
from edgecls.runtime.bundle import MANIFEST, BundleError, load_bundle
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.install.signature import NAMESPACE, SIGNATURE


def _keygen() -> str:
    found = shutil.which("ssh-keygen")
    if not found:
        raise EdgeclsError("ssh-keygen is not installed: install openssh-client to sign bundles")
    return found


def sign_bundle(bundle_path, key) -> Path:
    """Write BUNDLE/manifest.json.sig signed with the private `key` (into a .tar: added to it); returns where.

    The key's passphrase, if any, is asked by ssh-keygen itself (or taken from ssh-agent with `key` naming the
    public key); nothing here sees or logs it.
    """
    key = Path(key).expanduser()
    if not key.is_file():
        raise EdgeclsError(f"signing key {key} does not exist: create one with `ssh-keygen -t ed25519 -f {key}`")
    bundle = load_bundle(bundle_path)
    manifest = bundle.root / MANIFEST
    done = subprocess.run(
        [_keygen(), "-Y", "sign", "-f", str(key), "-n", NAMESPACE], stdin=open(manifest, "rb"), capture_output=True
    )
    if done.returncode != 0 or not done.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise EdgeclsError(
            f"ssh-keygen could not sign with {key} ({why[-1] if why else 'no signature'}): give a "
            f"private OpenSSH key (or its .pub with the key loaded in ssh-agent)"
        )
    path = Path(bundle_path)
    if path.is_file():  # a .tar: add the signature beside the manifest inside it (its unpacked cache stays as is)
        _add_to_tar(path, done.stdout)
        return path
    write_bytes(bundle.root / SIGNATURE, done.stdout)
    return bundle.root / SIGNATURE


def _add_to_tar(archive: Path, signature: bytes) -> None:
    import io

    tmp = archive.with_name(f".{archive.name}.partial")
    with tarfile.open(archive) as src, tarfile.open(tmp, "w") as out:
        prefix = None
        for member in src.getmembers():
            if Path(member.name).name == MANIFEST:
                prefix = str(Path(member.name).parent)
            if Path(member.name).name == SIGNATURE:
                continue
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        if prefix is None:
            raise BundleError(f"{archive} has no {MANIFEST}: not a bundle archive")
        info = tarfile.TarInfo(SIGNATURE if prefix == "." else f"{prefix}/{SIGNATURE}")
        info.size, info.mode = len(signature), 0o644
        out.addfile(info, io.BytesIO(signature))
    tmp.replace(archive)


def trusted_line(public_key, principal: str) -> str:
    """A line of an allowed-signers file that trusts `public_key` for bundles only."""
    text = Path(public_key).expanduser().read_text().split()
    if len(text) < 2:
        raise EdgeclsError(f"{public_key} is not an OpenSSH public key (expected `ssh-ed25519 AAAA...`)")
    return f'{principal} namespaces="{NAMESPACE}" {text[0]} {text[1]}\n'
