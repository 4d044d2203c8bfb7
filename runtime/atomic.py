"""Atomic writes: a reader sees the old file or the new one, never half of either.

Directories are staged beside their final path and renamed into place. A stage is named
`.NAME.PID@HOST.XXXXXXXX.partial` so that a later run into the same folder can tell a stage whose
process died (SIGKILL, power loss) from one that is still being written, and remove only the former.
Replacing an existing directory is allowed only when it is recognisably ours (see `check_output`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.runtime")

# A directory counts as ours when this file in it is JSON whose "format" starts with the prefix.
MARKERS = {
    "metadata.json": ("edgecls-run/", "an edgecls run (metadata.json)"),
    "manifest.json": ("edgecls-bundle/", "an edgecls bundle (manifest.json)"),
}
_STAGE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]*)\.[a-z0-9_]+\.(?P<kind>partial|old)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def is_ours(folder: str | os.PathLike, marker: str | None) -> bool:
    """True if `folder` is a real directory holding our `marker` file with our format key."""
    if marker is None:
        return False
    prefix, _ = MARKERS[marker]
    folder = Path(folder)
    path = folder / marker
    if folder.is_symlink() or not folder.is_dir() or path.is_symlink() or not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and str(meta.get("format", "")).startswith(prefix)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _relation(final: Path, other: Path) -> str | None:
    if final == other:
        return "is"
    if final in other.parents:
        return "contains"
    if other in final.parents:
        return "lies inside"
    return None


def check_output(final: str | os.PathLike, overwrite: bool = False, *, marker: str | None = None,
                 protect: Mapping[str, str | os.PathLike] | None = None) -> None:
    """Refuse an output path whose replacement could destroy something that is not ours.

    Call it before any work so that a refusal costs nothing; `staged_dir` calls it again.
    `final` may be replaced when it does not exist, is an empty folder, or (with `overwrite`) holds
    our `marker` file (see MARKERS). `protect` maps a description to a path that `final` must not
    be, contain or lie inside (the dataset, the run being converted).
    """
    final = Path(final)
    where = final.resolve()
    for what, path in (protect or {}).items():
        relation = _relation(where, Path(path).resolve())
        if relation:
            raise EdgeclsError(f"output {final} {relation} {what} ({path}): choose an --out outside it")
    if final.is_symlink():
        raise EdgeclsError(f"output {final} is a symbolic link: choose another --out (edgecls replaces only folders it wrote)")
    if not final.exists() or _is_empty_dir(final):
        return
    kind = MARKERS[marker][1] if marker else "an empty folder"
    if not final.is_dir():
        raise EdgeclsError(f"output {final} exists and is not a folder: choose another --out")
    if not is_ours(final, marker):
        raise EdgeclsError(f"output {final} already exists and is not {kind}, so --overwrite will not replace it: "
                           f"choose another --out or move it away yourself")
    if not overwrite:
        raise EdgeclsError(f"output {final} already exists: choose another --out or pass --overwrite to replace it")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_stages(parent: str | os.PathLike) -> list:
    """Remove stages in `parent` left by processes of this host that no longer exist.

    Only names of our own pattern are touched; a stage of a live process, or of another host (a
    shared file system), is left alone. A stale `.old` (the process died between its two renames)
    is moved back to its final name when that name is free, so the previous product survives.
    """
    parent, host, removed = Path(parent), _host(), []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        m = _STAGE.match(path.name)
        if not m or m["host"] != host or path.is_symlink() or not path.is_dir() or _pid_alive(int(m["pid"])):
            continue
        final = parent / m["name"]
        try:
            if m["kind"] == "old" and not final.exists() and not final.is_symlink():
                os.replace(path, final)
                log.warning("restored %s from an interrupted replacement", final)
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
            log.info("removed %s left by an interrupted run", path)
    return removed


@contextmanager
def staged_dir(final: str | os.PathLike, overwrite: bool = False, *, marker: str | None = None,
               protect: Mapping[str, str | os.PathLike] | None = None) -> Iterator[Path]:
    """Yield a temp directory beside `final`; rename it to `final` only if the block succeeds.

    An interrupted or failed run leaves no directory at `final` that looks complete, and the next
    run into the same folder removes its stage. `final` is replaced only as `check_output` allows;
    if something else appeared there meanwhile, the commit raises FileExistsError (not `overwrite`)
    or EdgeclsError (not ours) and the stage is removed.
    """
    final = Path(final)
    check_output(final, overwrite, marker=marker, protect=protect)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_stages(final.parent)
    prefix = f".{final.name}.{os.getpid()}@{_host()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if final.exists() and not _is_empty_dir(final):
            if not overwrite:
                raise FileExistsError(final)
            check_output(final, overwrite, marker=marker)
            old = tmp.with_suffix(".old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)  # rename(2) replaces an empty directory
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
