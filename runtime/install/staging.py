"""Uploads into ROOT/staging/<slot>/, file by file, and their promotion to ROOT/releases/<slot>/.

A file is written as `.NAME.PID.part`, fsynced, checked against the manifest's sha256 and only then renamed
to NAME: a staged NAME is always complete and correct, so an interrupted upload resumes with the files still
missing, and bytes flipped in transit are caught here, before anything could be switched to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import BinaryIO

from edgecls.runtime.bundle import (
    DEVICE_NAMES_TEXT,
    MANIFEST,
    RELEASE,
    Manifest,
    check_file_name,
    device_reserved,
    sha256_file,
)
from edgecls.runtime.install.layout import SLOT, TRASH, DeviceRoot, InstallError, fsync_dir, is_real_dir, write_durable
from edgecls.runtime.install.signature import SIGNATURE


def slot_name(manifest_bytes: bytes, artifacts) -> str:
    """A release's folder name: the manifest and the artifact set sent (another profile is another slot)."""
    h = hashlib.sha256(manifest_bytes)
    h.update(b"\0" + ",".join(sorted(artifacts)).encode())
    return h.hexdigest()[:16]


def wanted_files(manifest: Manifest, manifest_bytes: bytes, artifacts) -> dict:
    """name -> sha256 of every file the release holds (the signature, unhashed, is handled apart)."""
    by_name = {a.name: a for a in manifest.artifacts}
    missing = [n for n in artifacts if n not in by_name]
    if missing or not artifacts:
        raise InstallError(f"the bundle has no artifact {missing or '(none chosen)'}: it has {sorted(by_name)}")
    files = {MANIFEST: hashlib.sha256(manifest_bytes).hexdigest()}
    files.update({device_name(n, "manifest files"): d for n, d in manifest.files.items()})
    for name in artifacts:
        files[device_name(by_name[name].file, f"artifact {name}")] = by_name[name].sha256
    return files


def device_name(name, where: str) -> str:
    """`name` if it is a plain file name (check_file_name) that the device does not use for itself.

    A release holds release.json (written here), the manifest and its signature; staging writes
    `.NAME.PID.part` and deletes `.*.part` leftovers; temp files are `.NAME.TAG.tmp`. A bundle file of such a
    name would be overwritten, forged or deleted as a leftover after it was checked."""
    check_file_name(name, where)
    if device_reserved(name):
        raise InstallError(
            f"the bundle's {where} name the file {name!r}, which the device uses itself ({DEVICE_NAMES_TEXT}): "
            "rename it and convert the bundle again; nothing was sent or switched"
        )
    return name


def _holds(path: Path, digest: str) -> bool:
    """`path` is a plain file with this sha256. A file gone meanwhile is not held: flash's plan reads without the
    lock, while another flash may rename staging/<slot> into releases/ (a first flash failed on that once)."""
    try:
        return path.is_file() and not path.is_symlink() and sha256_file(path) == digest
    except FileNotFoundError:
        return False


def verified(folder: Path, files: dict) -> list:
    """Names in `files` that are in `folder` with the right sha256."""
    return [n for n, digest in files.items() if _holds(folder / n, digest)]


def release_damage(device: DeviceRoot, slot: str) -> list:
    """Names of releases/<slot> that no longer match what was installed (empty: intact).

    The manifest is checked through the folder's name (a hash of the manifest and the artifacts in
    release.json), every other file through the manifest, so nothing has to be trusted as found.
    """
    release = device.releases / slot
    if not is_real_dir(release):
        return [str(release)]
    try:
        manifest_bytes = (release / MANIFEST).read_bytes()
        artifacts = json.loads((release / RELEASE).read_text())["artifacts"]
    except (OSError, ValueError, KeyError, TypeError):
        return [MANIFEST if not (release / MANIFEST).is_file() else RELEASE]
    if slot_name(manifest_bytes, artifacts) != slot:
        return [MANIFEST]
    try:
        files = wanted_files(Manifest.from_dict(json.loads(manifest_bytes)), manifest_bytes, artifacts)
    except (InstallError, ValueError, KeyError, TypeError):
        return [MANIFEST]
    return sorted(set(files) - set(verified(release, files)))


def _stage_dir(device: DeviceRoot, slot: str) -> Path:
    """staging/<slot>, created; never a link (writes must stay under the root)."""
    stage = device.staging / slot
    if stage.is_symlink() or (os.path.lexists(stage) and not stage.is_dir()):
        raise InstallError(
            f"{stage} is a link or not a folder, which edgecls never creates: remove it and flash "
            f"again (nothing was switched)"
        )
    stage.mkdir(parents=True, exist_ok=True)
    return stage


def _write_member(stage: Path, name: str, source: BinaryIO, digest: str | None) -> None:
    part = stage / f".{name}.{os.getpid()}.part"
    h = hashlib.sha256()
    try:
        with open(part, "wb") as out:
            while block := source.read(1 << 20):
                h.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        part.unlink(missing_ok=True)  # a full disk or a cut stream: resume is per whole file, a part is only waste
        raise
    if digest is not None and h.hexdigest() != digest:
        part.unlink()
        raise InstallError(
            f"{name} arrived corrupted (sha256 {h.hexdigest()[:12]}… is not the manifest's "
            f"{digest[:12]}…); nothing was switched: run the flash again (check the link or disk if "
            f"it repeats)"
        )
    os.replace(part, stage / name)


def open_upload(stream: BinaryIO, manifest_sha256: str) -> tuple:
    """(manifest bytes, the tar for `receive`) from an upload whose first member is the manifest.

    The manifest travels in the stream rather than in argv, where Linux caps one argument at 128 KiB; argv
    carries only its sha256, so a manifest changed on the way is refused before it is read as JSON.
    """
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")
        first = tar.next()
        data = tar.extractfile(first).read() if first is not None and first.isfile() else None
    except tarfile.TarError as exc:
        raise InstallError(f"the upload is not a tar stream ({exc}): run the flash again") from exc
    if first is None or first.name != MANIFEST or data is None:
        raise InstallError(
            f"the upload does not start with {MANIFEST}: use the same edgecls version on the host and the device"
        )
    return check_manifest(data, manifest_sha256), tar


def check_manifest(data: bytes, manifest_sha256: str) -> bytes:
    got = hashlib.sha256(data).hexdigest()
    if got != manifest_sha256.lower():
        raise InstallError(
            f"{MANIFEST} arrived corrupted (sha256 {got[:12]}… is not the {manifest_sha256[:12]}… "
            f"the host sent); nothing was switched: run the flash again"
        )
    return data


def receive(device: DeviceRoot, slot: str, stream, files: dict) -> list:
    """Unpack a tar stream (or a TarFile from `open_upload`) of bundle files into staging/<slot>.

    Returns the names written. Only plain files named in `files` (or the signature) are accepted: a name
    with a folder, `..`, a link or a device is refused before anything of it is written.
    """
    stage = _stage_dir(device, slot)
    written = []
    try:
        with stream if isinstance(stream, tarfile.TarFile) else tarfile.open(fileobj=stream, mode="r|") as tar:
            while (member := tar.next()) is not None:  # not `for`: a TarFile replays members already read
                name = member.name
                if not member.isfile() or (name not in files and name != SIGNATURE):
                    raise InstallError(
                        f"the upload holds {name!r}, which is not a file of this bundle: refused (nothing was switched)"
                    )
                check_file_name(name, "upload")
                _write_member(stage, name, tar.extractfile(member), files.get(name))
                written.append(name)
    except tarfile.TarError as exc:
        raise InstallError(
            f"the upload was cut off after {len(written)} file(s) ({exc}): run the flash again; "
            f"it resumes with the files still missing"
        ) from exc
    fsync_dir(stage)
    return written


def copy_into(device: DeviceRoot, slot: str, sources: dict, files: dict) -> list:
    """The local-target twin of `receive`: copy name -> source path, with the same checks."""
    stage = _stage_dir(device, slot)
    for name, source in sources.items():
        if name not in files and name != SIGNATURE:
            raise InstallError(f"{name!r} is not a file of this bundle: refused")
        check_file_name(name, "upload")
        with open(source, "rb") as f:
            _write_member(stage, name, f, files.get(name))
    fsync_dir(stage)
    return list(sources)


def put_manifest(device: DeviceRoot, slot: str, manifest_bytes: bytes, files: dict) -> None:
    """Stage the manifest from the bytes the command received (the host no longer sends it as a file)."""
    release, stage = device.releases / slot, device.staging / slot
    if verified(release, {MANIFEST: files[MANIFEST]}) or verified(stage, {MANIFEST: files[MANIFEST]}):
        return
    import io

    _write_member(_stage_dir(device, slot), MANIFEST, io.BytesIO(manifest_bytes), files[MANIFEST])


def find_in_releases(device: DeviceRoot, files: dict) -> dict:
    """name -> path of an installed file with that name and sha256 (a new version often keeps the model file)."""
    found = {}
    installed = []
    if is_real_dir(device.releases):  # never through a link
        try:
            installed = [p for p in device.releases.iterdir() if is_real_dir(p) and SLOT.match(p.name)]
        except FileNotFoundError:  # gone meanwhile
            installed = []
    releases = [device.current, *installed]
    for release in releases:
        for name in set(files) - set(found):
            path = release / name
            if _holds(path, files[name]):
                found[name] = path
    return found


def reuse_from_releases(device: DeviceRoot, slot: str, files: dict) -> None:
    """Copy into staging/<slot> what is missing there but installed already (checked again on the way)."""
    if (device.releases / slot).is_dir() and len(verified(device.releases / slot, files)) == len(files):
        return
    stage = _stage_dir(device, slot)
    missing = {n: d for n, d in files.items() if n not in verified(stage, {n: d})}
    for name, path in find_in_releases(device, missing).items():
        with open(path, "rb") as f:
            _write_member(stage, name, f, files[name])
    fsync_dir(stage)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(folder)


def promote(device: DeviceRoot, slot: str, files: dict, release_info: dict) -> tuple:
    """Move a fully verified staging/<slot> to releases/<slot>; returns (the release, what was repaired).

    A release already in place is checked again: intact, it is kept (with a signature sent since it was
    installed added); damaged and current, its bad files are replaced one rename each by verified copies
    (no reader ever sees a missing file, and what it saw was wrong already); damaged otherwise, replaced.
    """
    final, stage = device.releases / slot, device.staging / slot
    for path in (final, stage):
        if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
            raise InstallError(
                f"{path} is a link or not a folder, which edgecls never creates: remove it and flash "
                f"again (nothing was switched)"
            )
    if final.is_dir():
        bad = sorted(set(files) - set(verified(final, files)))
        if not bad:
            _add_signature(final, stage, release_info)
            return final, []
        if device.link_version(device.current) == slot:
            return final, _repair(device, final, stage, files, bad)
        if device.link_version(device.previous) == slot:
            from edgecls.runtime.install.commit import switch

            switch(device, "previous", None)  # `previous` must never point at a damaged release
        trash = device.releases / f".trash-{slot}-{os.getpid()}"
        os.replace(final, trash)  # renamed first: a kill mid-delete leaves a .trash-* name, never half a release
        shutil.rmtree(trash, ignore_errors=True)
    missing = sorted(set(files) - set(verified(stage, files))) if stage.is_dir() else sorted(files)
    if missing:
        raise InstallError(
            f"the upload is incomplete or corrupted ({', '.join(missing[:3])} missing or wrong); "
            f"nothing was switched: run the flash again"
        )
    for leftover in stage.glob(".*.part"):
        leftover.unlink()
    for extra in stage.iterdir():  # a signature from an earlier upload that this one did not send, etc.
        if extra.name not in files and extra.name != SIGNATURE:
            extra.unlink()
    (stage / RELEASE).write_text(json.dumps(release_info, indent=2) + "\n")
    _fsync_tree(stage)
    os.replace(stage, final)
    fsync_dir(device.releases)
    fsync_dir(device.staging)
    return final, []


def _repair(device: DeviceRoot, final: Path, stage: Path, files: dict, bad: list) -> list:
    """Replace the damaged files of the current release with the verified copies staged for them."""
    missing = [n for n in bad if not verified(stage, {n: files[n]})]
    if missing:
        raise InstallError(
            f"the installed release {final.name} (current) no longer matches its manifest "
            f"({', '.join(bad[:3])}; disk damage?) and the upload has no good copy of "
            f"{', '.join(missing[:3])}: run the flash again"
        )
    for name in bad:
        with open(stage / name, "rb") as f:
            os.fsync(f.fileno())
        os.replace(stage / name, final / name)
    fsync_dir(final)
    shutil.rmtree(stage, ignore_errors=True)
    return bad


def _add_signature(final: Path, stage: Path, release_info: dict) -> None:
    """A signature sent for an installed release (signed after it was installed) becomes part of it."""
    sent = stage / SIGNATURE
    if not sent.is_file() or sent.is_symlink():
        return
    data = sent.read_bytes()
    if not (final / SIGNATURE).is_file() or (final / SIGNATURE).read_bytes() != data:
        write_durable(final / SIGNATURE, data)
        info = json.loads((final / RELEASE).read_text()) if (final / RELEASE).is_file() else dict(release_info)
        info["signature"] = release_info.get("signature", info.get("signature"))
        write_durable(final / RELEASE, (json.dumps(info, indent=2) + "\n").encode())
    shutil.rmtree(stage, ignore_errors=True)


def remove_trash(device: DeviceRoot) -> None:
    """Leftovers of a cleanup that was killed midway (only our own `.trash-VERSION-PID` folders, never links)."""
    for trash in device.releases.glob(".trash-*"):
        if TRASH.match(trash.name) and is_real_dir(trash):
            shutil.rmtree(trash, ignore_errors=True)
