"""Where convert writes: BUNDLE.tar under the same rules as the bundle folder, and one convert per --out.

Both are checked before any work, so a refusal costs nothing and nothing of the user's is replaced.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

from edgecls.runtime.atomic import host_tag, pid_alive, staged_dir
from edgecls.runtime.bundle import LABELS, MANIFEST
from edgecls.runtime.errors import EdgeclsError


def tar_path(out) -> Path:
    """BUNDLE.tar beside the bundle folder (absolute: `--out .` has a name too)."""
    out = Path(os.path.abspath(out))
    return out.with_name(out.name + ".tar")


def _bundle_names(manifest: dict) -> set:
    """What a bundle holds (as edgecls.core.outputs.bundle_contents reads it from a folder): its manifest, the
    files it lists and its artifacts."""
    names = {MANIFEST, LABELS, "verification.txt"}
    files, artifacts = manifest.get("files"), manifest.get("artifacts")
    names |= set(files) if isinstance(files, dict) else set()
    names |= {a.get("file") for a in artifacts if isinstance(a, dict)} if isinstance(artifacts, list) else set()
    return {n for n in names if isinstance(n, str)}


def _open_regular(path: Path):
    """A binary file object of `path` if it is a regular file (not a link), else None. O_NONBLOCK: opening
    a FIFO would otherwise wait forever for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _tar_contents(path: Path, bundle_name: str) -> list | None:
    """None unless `path` is a tar holding an edgecls bundle manifest at BUNDLE/manifest.json (one `--tar`
    wrote); else its members that such a bundle never holds (someone's own files added to it)."""
    f = _open_regular(path)
    if f is None:
        return None
    try:
        with f, tarfile.open(fileobj=f, mode="r:") as tar:
            members = tar.getmembers()
            member = tar.getmember(f"{bundle_name}/{MANIFEST}")
            data = tar.extractfile(member).read(1 << 22) if member.isfile() else b""
        meta = json.loads(data)
    except (OSError, KeyError, ValueError, tarfile.TarError, AttributeError):
        return None
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("edgecls-bundle/"):
        return None
    allowed = {f"{bundle_name}/{n}" for n in _bundle_names(meta)}
    return [
        m.name for m in members if not (m.name == bundle_name and m.isdir()) and not (m.name in allowed and m.isfile())
    ]


def check_tar_output(out, overwrite: bool = False) -> Path | None:
    """Refuse a BUNDLE.tar path whose replacement could destroy something that is not ours.

    Returns the archive of ours that `--overwrite` will replace, or None when the name is free (then the
    finished tar is linked there, which fails if anything took the name meanwhile).
    """
    target = tar_path(out)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EdgeclsError(f"cannot look at {target} (--tar) ({exc.strerror or exc}): choose another --out") from None
    if stat.S_ISLNK(info.st_mode):
        raise EdgeclsError(f"{target} (--tar) is a symbolic link: choose another --out or move it away yourself")
    if stat.S_ISDIR(info.st_mode):
        raise EdgeclsError(f"{target} (--tar) exists and is a folder: choose another --out or move it away yourself")
    if not stat.S_ISREG(info.st_mode):
        raise EdgeclsError(
            f"{target} (--tar) exists and is not a regular file (a FIFO, socket or device): "
            f"choose another --out or move it away yourself"
        )
    foreign = _tar_contents(target, target.name[: -len(".tar")])
    if foreign is None:
        raise EdgeclsError(
            f"{target} (--tar) already exists and is not an edgecls bundle archive, so --overwrite will not "
            f"replace it: choose another --out or move it away yourself"
        )
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise EdgeclsError(
            f"{target} (--tar) is an edgecls bundle archive but also holds {shown}, which edgecls did not write, "
            f"so --overwrite will not replace it: choose another --out or move it away yourself"
        )
    if not overwrite:
        raise EdgeclsError(f"{target} (--tar) already exists: choose another --out or pass --overwrite to replace it")
    return target


def write_tar(stage: Path, out: Path) -> Path:
    """BUNDLE.tar of the stage (as BUNDLE/), in a stage folder of its own beside it: a kill leaves only a stage
    that the next convert into this folder removes. Returns the finished file, still in its stage."""
    holder = Path(
        tempfile.mkdtemp(prefix=f".{out.name}.tar.{os.getpid()}@{host_tag()}.", suffix=".partial", dir=out.parent)
    )
    tmp = holder / f"{out.name}.tar"
    with tarfile.open(tmp, "w") as tar:
        tar.add(stage, arcname=out.name)
    return tmp


def publish_tar(tmp: Path, out: Path, overwrite: bool) -> Path:
    """Move the finished tar to BUNDLE.tar: replacing only our own archive, never a file that appeared meanwhile."""
    target = tar_path(out)
    try:
        if check_tar_output(out, overwrite) is not None:
            os.replace(tmp, target)  # our own archive, as checked (--overwrite)
        else:
            os.link(tmp, target)  # fails if anything took the name since the check
    except FileExistsError:
        raise EdgeclsError(
            f"{target} (--tar) appeared while this convert ran; it was left alone (the bundle folder is written): "
            f"choose another --out"
        ) from None
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return target


def _other_writer(out: Path) -> int | None:
    """The pid of a live process of this host staging `out` (staged_dir names its stage after its pid)."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)@{re.escape(host_tag())}\.[a-z0-9_]+\.partial$")
    for entry in out.parent.iterdir():
        m = pattern.match(entry.name)
        if m and int(m[1]) != os.getpid() and pid_alive(int(m[1])):
            return int(m[1])
    return None


@contextmanager
def claimed_stage(out: Path, overwrite: bool, guard: dict):
    """`staged_dir(out)` entered for the whole convert, after making sure no other convert stages `out`.

    The look and the stage's creation happen under flock(2) on the parent folder (released by the kernel
    if we die), so of two converts racing to one --out the second always sees the first's stage and pid.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out.parent, os.O_RDONLY)
    except OSError as exc:
        raise EdgeclsError(f"cannot write into {out.parent} ({exc.strerror or exc}): choose another --out") from None
    try:
        with ExitStack() as stack:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                pid = _other_writer(out)
                if pid is not None:
                    raise EdgeclsError(
                        f"another convert or import (pid {pid}) is writing {out}: "
                        "wait for it to finish or choose another --out"
                    )
                path = stack.enter_context(staged_dir(out, overwrite=overwrite, **guard))
            finally:
                os.close(fd)  # releases the flock: our stage now shows the next convert who holds `out`
            yield path
    except FileExistsError as exc:
        if exc.args[:1] != (out,):
            raise
        raise EdgeclsError(
            f"output {out} appeared while this convert ran (written by another process): it was left alone; "
            f"choose another --out"
        ) from None
