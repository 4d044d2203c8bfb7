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
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from edgecls.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.runtime")

# A directory counts as ours when this file in it is JSON whose "format" starts with the prefix.
MARKERS = {
    "metadata.json": ("edgecls-run/", "an edgecls run (metadata.json)"),
    "manifest.json": ("edgecls-bundle/", "an edgecls bundle (manifest.json)"),
    "explanations.json": ("edgecls-explain/", "an edgecls explanation folder (explanations.json)"),
    "quickstart.json": ("edgecls-quickstart/", "an edgecls quickstart folder (quickstart.json)"),
}
# re.DOTALL: a name may hold a newline (`--out $'b\nx'`); `.` must match it, or that stage is never removed.
# \Z, not $: `$` also matches before a final newline, so `.b.1@h.x.partial\n` would pass for a stage.
_STAGE = re.compile(
    r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]*)\.[a-z0-9_]+\.(?P<kind>partial|old)\Z", re.DOTALL
)
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp\Z", re.DOTALL)  # write_bytes' temp file, left by a kill

# What a product of one kind may hold: names, or a function of the folder that lists them.
Contents = Callable[[Path], Iterable[str]] | Iterable[str] | None


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


def _absolute(final) -> Path:
    """`final` as an absolute path with `.` and `..` folded, so that `--out .` has a parent to stage in."""
    return Path(os.path.abspath(final))


def _foreign(folder: Path, contents: Contents) -> list:
    """Entries of `folder` that a product of its kind never holds (someone's own files put there)."""
    if contents is None:
        return []
    allowed = set(contents(folder) if callable(contents) else contents)
    foreign = []
    for entry in sorted(folder.iterdir()):
        temp = _TEMP_FILE.match(entry.name)
        if entry.name in allowed or (temp and temp["name"] in allowed) or _STAGE.match(entry.name):
            continue
        foreign.append(entry.name)
    return foreign


def _relation(final: Path, other: Path) -> str | None:
    if final == other:
        return "is"
    if final in other.parents:
        return "contains"
    if other in final.parents:
        return "lies inside"
    return None


def check_output(
    final: str | os.PathLike,
    overwrite: bool = False,
    *,
    marker: str | None = None,
    protect: Mapping[str, str | os.PathLike] | None = None,
    contents: Contents = None,
) -> None:
    """Refuse an output path whose replacement could destroy something that is not ours.

    Call it before any work so that a refusal costs nothing; `staged_dir` calls it again.
    `final` may be replaced when it does not exist, is an empty folder, or (with `overwrite`) holds
    our `marker` file (see MARKERS). `protect` maps a description to a path that `final` must not
    be, contain or lie inside (the dataset, the run being converted). `contents` names what such a
    product may hold: a folder of ours that also holds anything else (photos someone put into a run)
    is refused too, because replacing the folder would delete them.
    """
    final = _absolute(final)
    if final == Path(final.anchor):
        raise EdgeclsError(f"output {final} is the root of the file system: choose another --out")
    where = final.resolve()
    for what, path in (protect or {}).items():
        relation = _relation(where, Path(path).resolve())
        if relation:
            raise EdgeclsError(f"output {final} {relation} {what} ({path}): choose an --out outside it")
    if final.is_symlink():
        raise EdgeclsError(
            f"output {final} is a symbolic link: choose another --out (edgecls replaces only folders it wrote)"
        )
    if not final.exists() or _is_empty_dir(final):
        return
    kind = MARKERS[marker][1] if marker else "an empty folder"
    if not final.is_dir():
        raise EdgeclsError(f"output {final} exists and is not a folder: choose another --out")
    if not is_ours(final, marker):
        raise EdgeclsError(
            f"output {final} already exists and is not {kind}, so --overwrite will not replace it: "
            f"choose another --out or move it away yourself"
        )
    if not overwrite:
        raise EdgeclsError(f"output {final} already exists: choose another --out or pass --overwrite to replace it")
    foreign = _foreign(final, contents)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise EdgeclsError(
            f"output {final} is {kind} but also holds {shown}, which edgecls did not write, so "
            f"--overwrite will not replace it: move those out or choose another --out"
        )


def host_tag() -> str:
    """This machine's name as it goes into stage names (so a stage of another host sharing the folder is left)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63]


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (ours included; one owned by another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _started_after(pid: int, when: float) -> bool:
    """Whether process `pid` started after time `when`: then it reused the pid of a stage's dead writer.

    Linux only (/proc); elsewhere, or when unreadable, False (the stage is kept, never wrongly removed).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
        started = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return started > when + 2.0  # btime has whole-second precision


def remove_stale_stages(parent: str | os.PathLike) -> list:
    """Remove stages in `parent` left by processes of this host that no longer exist.

    Only names of our own pattern are touched; a stage of a live process, or of another host (a
    shared file system), is left alone. A process that started after the stage was last written
    only reuses the dead writer's pid, so its stage counts as stale. A stale `.old` (the process
    died between its two renames) is moved back to its final name when that name is free, so the
    previous product survives.
    """
    parent, host, removed = Path(parent), host_tag(), []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        m = _STAGE.match(path.name)
        if not m or m["host"] != host or path.is_symlink() or not path.is_dir():
            continue
        pid = int(m["pid"])
        try:
            if pid_alive(pid) and not (pid != os.getpid() and _started_after(pid, path.stat().st_mtime)):
                continue
        except OSError:
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
def staged_dir(
    final: str | os.PathLike,
    overwrite: bool = False,
    *,
    marker: str | None = None,
    protect: Mapping[str, str | os.PathLike] | None = None,
    contents: Contents = None,
) -> Iterator[Path]:
    """Yield a temp directory beside `final`; rename it to `final` only if the block succeeds.

    An interrupted or failed run leaves no directory at `final` that looks complete, and the next
    run into the same folder removes its stage. `final` is replaced only as `check_output` allows;
    if something else appeared there meanwhile, the commit raises FileExistsError (not `overwrite`)
    or EdgeclsError (not ours) and the stage is removed.
    """
    final = _absolute(final)
    if final.parent.is_dir():
        # First: a stale `.old` put back here is what the check below must see, not what the commit finds.
        remove_stale_stages(final.parent)
    check_output(final, overwrite, marker=marker, protect=protect, contents=contents)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.{os.getpid()}@{host_tag()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=final.parent))
    old = tmp.with_suffix(".old")
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if final.exists() and not _is_empty_dir(final):
            if not overwrite:
                raise FileExistsError(final)
            check_output(final, overwrite, marker=marker, contents=contents)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)  # rename(2) replaces an empty directory
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists() and not final.is_symlink():
            os.replace(old, final)  # the second rename failed: the previous product goes back now
        raise
