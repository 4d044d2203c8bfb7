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

from runtime.bundle import MANIFEST, RELEASE, Manifest, check_file_name, sha256_file
from runtime.install.layout import DeviceRoot, InstallError, fsync_dir
from runtime.install.signature import SIGNATURE


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
    files.update({check_file_name(n, "manifest files"): d for n, d in manifest.files.items()})
    for name in artifacts:
        files[check_file_name(by_name[name].file, f"artifact {name}")] = by_name[name].sha256
    return files


def verified(folder: Path, files: dict) -> list:
    """Names in `files` that are in `folder` with the right sha256."""
    return [n for n, digest in files.items() if (folder / n).is_file() and not (folder / n).is_symlink()
            and sha256_file(folder / n) == digest]


def _write_member(stage: Path, name: str, source: BinaryIO, digest: str | None) -> None:
    part = stage / f".{name}.{os.getpid()}.part"
    h = hashlib.sha256()
    with open(part, "wb") as out:
        while block := source.read(1 << 20):
            h.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if digest is not None and h.hexdigest() != digest:
        part.unlink()
        raise InstallError(f"{name} arrived corrupted (sha256 {h.hexdigest()[:12]}… is not the manifest's "
                           f"{digest[:12]}…); nothing was switched: run the flash again (check the link or disk if "
                           f"it repeats)")
    os.replace(part, stage / name)


def receive(device: DeviceRoot, slot: str, stream: BinaryIO, files: dict) -> list:
    """Unpack a tar stream of bundle files into staging/<slot>; returns the names written.

    Only plain files named in `files` (or the signature) are accepted: a name with a folder, `..`, a link or
    a device is refused before anything of it is written.
    """
    stage = device.staging / slot
    stage.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or (name not in files and name != SIGNATURE):
                    raise InstallError(f"the upload holds {name!r}, which is not a file of this bundle: refused "
                                       f"(nothing was switched)")
                check_file_name(name, "upload")
                _write_member(stage, name, tar.extractfile(member), files.get(name))
                written.append(name)
    except tarfile.TarError as exc:
        raise InstallError(f"the upload was cut off after {len(written)} file(s) ({exc}): run the flash again; "
                           f"it resumes with the files still missing") from exc
    fsync_dir(stage)
    return written


def copy_into(device: DeviceRoot, slot: str, sources: dict, files: dict) -> list:
    """The local-target twin of `receive`: copy name -> source path, with the same checks."""
    stage = device.staging / slot
    stage.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        if name not in files and name != SIGNATURE:
            raise InstallError(f"{name!r} is not a file of this bundle: refused")
        check_file_name(name, "upload")
        with open(source, "rb") as f:
            _write_member(stage, name, f, files.get(name))
    fsync_dir(stage)
    return list(sources)


def find_in_releases(device: DeviceRoot, files: dict) -> dict:
    """name -> path of an installed file with that name and sha256 (a new version often keeps the model file)."""
    found = {}
    releases = [device.current] + ([p for p in device.releases.iterdir() if not p.name.startswith(".")]
                                   if device.releases.is_dir() else [])
    for release in releases:
        for name in set(files) - set(found):
            path = release / name
            if path.is_file() and not path.is_symlink() and sha256_file(path) == files[name]:
                found[name] = path
    return found


def reuse_from_releases(device: DeviceRoot, slot: str, files: dict) -> None:
    """Copy into staging/<slot> what is missing there but installed already (checked again on the way)."""
    stage = device.staging / slot
    if (device.releases / slot).is_dir() and len(verified(device.releases / slot, files)) == len(files):
        return
    stage.mkdir(parents=True, exist_ok=True)
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


def promote(device: DeviceRoot, slot: str, files: dict, release_info: dict) -> Path:
    """Move a fully verified staging/<slot> to releases/<slot> (or re-check the release already there)."""
    final = device.releases / slot
    if final.is_dir():
        bad = sorted(set(files) - set(verified(final, files)))
        if not bad:
            return final
        if device.link_version(device.current) == slot:
            raise InstallError(f"the installed release {slot} (current) no longer matches its manifest ({', '.join(bad[:3])}"
                               f"; disk damage?): roll back or flash another version, then flash this one again")
        if device.link_version(device.previous) == slot:
            from runtime.install.commit import switch

            switch(device, "previous", None)  # `previous` must never point at a damaged release
        trash = device.releases / f".trash-{slot}-{os.getpid()}"
        os.replace(final, trash)  # renamed first: a kill mid-delete leaves a .trash-* name, never half a release
        shutil.rmtree(trash, ignore_errors=True)
    stage = device.staging / slot
    missing = sorted(set(files) - set(verified(stage, files))) if stage.is_dir() else sorted(files)
    if missing:
        raise InstallError(f"the upload is incomplete or corrupted ({', '.join(missing[:3])} missing or wrong); "
                           f"nothing was switched: run the flash again")
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
    return final


def remove_trash(device: DeviceRoot) -> None:
    """Leftovers of a cleanup that was killed midway (only our own `.trash-*` names)."""
    for trash in device.releases.glob(".trash-*"):
        shutil.rmtree(trash, ignore_errors=True)
