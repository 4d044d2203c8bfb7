"""`flash --setup` for devices without a package index: the host fetches the wheels, the device installs offline.

A Pi on a factory floor or the emulated Pi (devices/emulate/arm64-pi.sh) has no internet. The host asks
the device for its platform (machine, Python, glibc), runs `pip download --only-binary=:all: --platform ...
--python-version ...` for the profile's packages (edgecls itself built from this checkout, or fetched at this
version), and the device installs them with `pip install --no-index --find-links` into a venv under its
install root. Wheelhouses are cached on the host per platform and requirement set.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgecls.devices.ssh import sh_path
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.install.layout import VENV  # under the device's install root
from edgecls.runtime.install.rootcheck import VENV_MARKER
from edgecls.runtime.lockfile import LockBusy, file_lock

# `bits`: a 32-bit userland (Raspberry Pi OS armhf) on a 64-bit kernel says aarch64 but takes armv7l wheels.
PROBE = (
    "import json, platform, struct, sys; print(json.dumps({'machine': platform.machine(), "
    "'python': '%d.%d' % sys.version_info[:2], 'libc': list(platform.libc_ver()), "
    "'bits': 8 * struct.calcsize('P')}))"
)
_OLDEST_GLIBC_MINOR = 17  # manylinux2014
_ARCH_32 = {"aarch64": "armv7l", "arm64": "armv7l", "armv8l": "armv7l", "x86_64": "i686"}  # 32-bit userland
COMPLETE, IN_USE = ".complete", ".in-use"  # in a wheelhouse: built to the end; flocked while pushed
STALE_BUILD_S = 3600  # a wheelhouse build folder this old belongs to a killed build
# In the cache key: wheelhouses built before edgecls's wheel came from a clean export (some hold a wheel with
# a stale build/lib's top-level runtime, converters, devices) are never reused.
_WHEEL_RECIPE = "clean-export"


@dataclass(frozen=True)
class DevicePlatform:
    machine: str  # uname -m: aarch64, x86_64, armv7l
    python: str  # "3.11"
    libc: tuple  # ("glibc", "2.36")
    bits: int = 0  # the interpreter's pointer size; 0: unknown (then the machine decides)

    @classmethod
    def parse(cls, text: str, where: str) -> DevicePlatform:
        try:
            data = json.loads(text.strip().splitlines()[-1])
            return cls(str(data["machine"]), str(data["python"]), tuple(data["libc"]), int(data.get("bits") or 0))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise EdgeclsError(
                f"{where}: could not read the device's platform from its python3 ({text[-200:]!r})"
            ) from exc

    @property
    def arch(self) -> str:
        """The wheels' architecture: the userland's, which a 32-bit one on a 64-bit kernel does not report."""
        if self.bits == 32 and self.machine in _ARCH_32:
            return _ARCH_32[self.machine]
        return {"armv8l": "armv7l", "arm64": "aarch64"}.get(self.machine, self.machine)

    def pip_platforms(self) -> list:
        """The wheel platform tags this device takes, newest glibc first (pip's --platform, repeatable)."""
        name, version = self.libc
        match = re.fullmatch(r"2\.(\d+)", version or "")
        if name != "glibc" or not match:
            raise EdgeclsError(
                f"the device's C library is {name or 'unknown'} {version}: edgecls ships wheels for "
                f"glibc systems only (Raspberry Pi OS, Debian, Ubuntu, Jetson Linux)"
            )
        minors = range(int(match.group(1)), _OLDEST_GLIBC_MINOR - 1, -1)
        return [f"manylinux_2_{m}_{self.arch}" for m in minors] + [f"manylinux2014_{self.arch}", f"linux_{self.arch}"]


def _edgecls_source() -> Path | None:
    """This checkout, when edgecls runs from one (a wheel is then built from it)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "runtime").is_dir() else None


def _edgecls_version() -> str:
    """The installed edgecls's version, from its package metadata: devices sit below the training code and
    import none of it (pyproject's import contracts)."""
    try:
        return metadata.version("edgecls")
    except metadata.PackageNotFoundError:  # a checkout that is not installed: its wheel is built from the source
        return "0+unknown"


def _edgecls_wheel(folder: Path) -> str:
    """A wheel of this edgecls in `folder`: built from the checkout, else downloaded at this version."""
    source = _edgecls_source()
    if source is not None:
        return build_wheel(source, folder)
    version = _edgecls_version()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run(command + ["-d", str(folder), f"edgecls=={version}"], capture_output=True, text=True)
    return _the_wheel(folder, result, f"downloading edgecls {version}")


def build_wheel(source: Path, folder: Path) -> str:
    """A wheel of the edgecls checkout `source` in `folder`, built from a clean export of it (`export_tree`)."""
    with tempfile.TemporaryDirectory(prefix="edgecls-export-") as tmp:
        tree = export_tree(source, Path(tmp) / "src")
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check"]
        result = subprocess.run(command + ["-w", str(folder), str(tree)], capture_output=True, text=True)
    return _the_wheel(folder, result, f"building a wheel of edgecls from {source}")


def _the_wheel(folder: Path, result: subprocess.CompletedProcess, what: str) -> str:
    wheels = sorted(folder.glob("edgecls-*.whl"))
    if result.returncode != 0 or not wheels:
        raise EdgeclsError(f"{what} failed: {_pip_error(result.stderr)}")
    check_top_level(wheels[-1], what)
    return str(wheels[-1])


def check_top_level(wheel: Path, what: str) -> None:
    """Refuses a wheel that installs packages besides `edgecls`: a device would import them under generic
    top-level names (runtime, converters, devices), a second copy beside edgecls's own."""
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    extra = sorted(t for t in tops if t != "edgecls" and not t.endswith((".dist-info", ".data")))
    if extra:
        raise EdgeclsError(
            f"{what} gave {Path(wheel).name}, which installs {', '.join(extra)} beside edgecls: refusing to put "
            f"it on a device (a wheel of edgecls holds the edgecls package only)"
        )


# What a wheel is built from, besides the top-level files (pyproject.toml, the README it names, license files).
_PACKAGE_FOLDERS = ("edgecls", "runtime", "converters", "devices")
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def export_tree(source: Path, dest: Path) -> Path:
    """The files a wheel is built from, copied to `dest` (links kept as links: edgecls/runtime -> ../runtime).

    The package folders and the top-level files (pyproject.toml, README.md, a license): in a git checkout those
    git knows (tracked, and new ones it does not ignore), as they are in the work tree. Never build/ or
    *.egg-info: setuptools builds in place and puts whatever an older build left in build/lib into the wheel.
    """
    names = _git_files(source)
    if names is None:
        dest.mkdir(parents=True)
        for entry in source.iterdir():
            if entry.name in _PACKAGE_FOLDERS and entry.is_dir():
                shutil.copytree(entry, dest / entry.name, symlinks=True, ignore=_JUNK)
            elif entry.is_file() and not entry.is_symlink():
                shutil.copy2(entry, dest / entry.name)
        return dest
    for name in names:
        source_file, target = source / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source_file.is_symlink():
            os.symlink(os.readlink(source_file), target)
        elif source_file.is_file():
            shutil.copy2(source_file, target)
    return dest


def _git_files(source: Path) -> list | None:
    """What git knows of the checkout `source`, or None where it is not one (or git is not installed)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    names = {n for n in listed.stdout.split("\0") if n and os.path.lexists(source / n)}
    return sorted(n for n in names if "/" not in n or n.split("/")[0] in _PACKAGE_FOLDERS)


def _pip_error(stderr: str) -> str:
    """pip's cause, not its closing hint ('See above for details')."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip() and not l.startswith("WARNING: Location")]
    causes = [l for l in lines if re.match(r"(error|\w+Error)\b", l, re.I) and "metadata-generation-failed" not in l]
    return ((causes or lines or ["no detail"])[-1])[:300]


def _requirements(packages, wheel_of_edgecls) -> list:
    """The profile's packages, `edgecls[extra]` pointing at our wheel (the device cannot fetch it)."""
    out = []
    for package in packages:
        match = re.fullmatch(r"\s*edgecls\s*(\[[\w,\s-]+\])?\s*", package)
        out.append(f"{wheel_of_edgecls()}{(match.group(1) or '').replace(' ', '')}" if match else package)
    return out


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgecls" / "wheels"


@contextmanager
def wheels_for(platform: DevicePlatform, packages, say=print):
    """The wheelhouse that installs `packages` on `platform` offline, held (a shared flock) until the caller has
    pushed it: cleaning skips a held one. Cached per platform, package list and edgecls code."""
    version = _edgecls_version()
    source = _edgecls_source()
    listed = hashlib.sha256(json.dumps(sorted(packages)).encode()).hexdigest()[:8]
    key = hashlib.sha256(
        json.dumps(
            [
                platform.arch,
                platform.python,
                list(platform.libc),
                sorted(packages),
                version,
                _tree_digest(source) if source else "",
                _WHEEL_RECIPE,
            ]
        ).encode()
    ).hexdigest()[:16]
    # One per platform and package list (desktop-cpu and desktop-gpu differ in packages): only an older
    # checkout's wheelhouse of the same prefix is ever dropped.
    final = _cache_root() / f"{platform.arch}-py{platform.python}-{listed}-{key}"
    final.parent.mkdir(parents=True, exist_ok=True)
    # A fleet flash sets up several devices at once: one builds the wheelhouse, the others wait and reuse it.
    # Builds, cleaning and taking a wheelhouse into use happen under this lock.
    with ExitStack() as held:
        with file_lock(final.parent / ".lock", what="a wheelhouse build"):
            _drop_stale_builds(final.parent)
            if not (final / COMPLETE).is_file():
                _build(final, platform, packages, say)
            held.enter_context(file_lock(final / IN_USE, shared=True))
        yield final


def wheelhouse(platform: DevicePlatform, packages, say=print) -> Path:
    """`wheels_for` without holding it: the folder, for a caller that pushes nothing."""
    with wheels_for(platform, packages, say) as house:
        return house


def _build(final: Path, platform: DevicePlatform, packages, say) -> Path:
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        local: list = []

        def edgecls_wheel():
            if not local:
                local.append(_edgecls_wheel(work))
            return local[0]

        requirements = _requirements(packages, edgecls_wheel)
        say(f"fetching wheels for {platform.arch}, Python {platform.python} ({' '.join(packages)})")
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            platform.python,
            "-d",
            str(work),
        ]
        for tag in platform.pip_platforms():
            command += ["--platform", tag]
        result = subprocess.run(command + requirements, capture_output=True, text=True)
        if result.returncode != 0:
            raise EdgeclsError(
                f"pip could not fetch wheels for {platform.arch}/Python {platform.python}: "
                f"{_pip_error(result.stderr)} (a package without a wheel for the device "
                f"cannot be installed offline: pin a version that has one in the profile)"
            )
        (work / COMPLETE).write_text(json.dumps({"packages": list(packages), "platform": platform.__dict__}))
        if final.exists():
            shutil.rmtree(final)  # an incomplete one (no .complete): nobody can hold it
        work.rename(final)
        _drop_older(final)
        return final
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _drop_older(kept: Path) -> None:
    """Other wheelhouses of the same platform and package list (an older checkout's), unless one is being
    pushed: a setup holds its wheelhouse with a shared flock, so an exclusive one fails while it pushes."""
    prefix = kept.name.rsplit("-", 1)[0] + "-"
    for other in kept.parent.iterdir():
        if other == kept or not other.name.startswith(prefix) or not (other / COMPLETE).is_file():
            continue
        try:
            with file_lock(other / IN_USE, timeout=0):
                shutil.rmtree(other, ignore_errors=True)
        except LockBusy:
            continue  # pushing now: the next build drops it


def _drop_stale_builds(cache: Path) -> None:
    """Build folders (mkdtemp's `.NAME.xxxx`) of builds killed midway; a live build holds the cache lock we
    hold now, but an hour's margin also spares one on a shared file system where flock is not shared."""
    for entry in cache.iterdir():
        try:
            stale = (
                entry.name.startswith(".")
                and entry.is_dir()
                and not entry.is_symlink()
                and time.time() - entry.stat().st_mtime > STALE_BUILD_S
            )
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


def _tree_digest(source: Path) -> str:
    """Changes when the checkout's code changes, so a cached wheel of edgecls is never stale."""
    h = hashlib.sha256()
    for folder in ("edgecls", "converters", "runtime", "devices"):
        for path in sorted((source / folder).rglob("*.py")):
            stat = path.stat()
            h.update(f"{path.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    h.update((source / "pyproject.toml").read_bytes())
    return h.hexdigest()


# Run by the new venv's python: the venv was made in a temporary folder, and its scripts (activate, pip's
# shebangs) and pyvenv.cfg name that folder; they must name the one it is renamed to.
_RELOCATE = """
import os, sys
old, new = sys.argv[1], sys.argv[2]
files = [os.path.join(old, "bin", n) for n in os.listdir(os.path.join(old, "bin"))] + [os.path.join(old, "pyvenv.cfg")]
for path in files:
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as f:
            data = f.read()
        if old.encode() in data:
            with open(path, "wb") as f:
                f.write(data.replace(old.encode(), new.encode()))
"""


def install_script(root: str, wheels_dir: str, packages: list, python: str = "") -> str:
    """The device-side shell: an offline `pip install --no-index --find-links WHEELS` of `packages`.

    Into ROOT/venv (made with the OS's python3, seeing its packages, e.g. Jetson's TensorRT), or into `python`
    when --python names one. The venv is built in ROOT/.venv-setup-PID and renamed to ROOT/venv only once it
    has pip, so a failed or killed setup never leaves a venv that `python_command("auto")` would then use.
    The pushed wheels are removed however it ends. Each failure of ours is one last stderr line.
    """
    from shlex import quote

    names = " ".join(quote(_requirement_name(p)) for p in packages)
    pip = "--quiet --disable-pip-version-check --no-index"
    return "\n".join(
        [
            "set -eu",
            f'R={sh_path(root.rstrip("/") or "/")}; W={sh_path(wheels_dir)}; PY={quote(python)}; V="$R"/{VENV}; T=',
            'cleanup() { rm -rf "$W"; [ -z "$T" ] || rm -rf "$T"; }',
            "trap cleanup EXIT; trap 'exit 129' HUP INT TERM",  # a signal exits, so EXIT cleans up
            'fail() { echo "edgecls setup: $*" >&2; exit 3; }',
            'if [ -z "$PY" ]; then',
            "  command -v python3 >/dev/null 2>&1 || fail 'python3 is not installed on the device: "
            "install the OS package python3'",
            # Debian and Ubuntu ship venv without ensurepip unless python3-venv is installed: `venv --help` works,
            # creating one fails with several lines and leaves a venv without pip.
            "  python3 -c 'import ensurepip; ensurepip.version()' >/dev/null 2>&1 || fail 'python3-venv is missing on "
            "the device (its python3 cannot make a virtualenv with pip): install it with the OS package manager "
            "(apt install python3-venv), then run --setup again'",
            '  if ! "$V/bin/python" -m pip --version >/dev/null 2>&1; then',
            '    mkdir -p "$R"',
            # builds killed over an hour ago (a live one is minutes old)
            "    find \"$R\" -maxdepth 1 -type d -name '.venv-setup-*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true",
            '    T="$R/.venv-setup-$$"; rm -rf "$T"',
            f'    out=$(python3 -m venv --system-site-packages --prompt {VENV} "$T" 2>&1) '
            '|| fail "python3 -m venv failed: $(printf "%s\\n" "$out" | grep . | tail -n 1)"',
            '    "$T/bin/python" -m pip --version >/dev/null 2>&1 || fail "the venv python3 made has no pip: install '
            'python3-venv (apt install python3-venv), then run --setup again"',
            f'    "$T/bin/python" -c {quote(_RELOCATE)} "$T" "$V"',
            f'    : > "$T"/{VENV_MARKER}',  # the mark of a venv edgecls made: only such a one is ever replaced
            # a venv of ours without pip (broken, or an older setup's): replaced; anyone else's is never deleted
            f'    if [ -d "$V" ] && [ ! -L "$V" ] && [ -f "$V"/{VENV_MARKER} ]; then rm -rf "$V"; fi',
            '    [ ! -e "$V" ] && [ ! -L "$V" ] || fail "$V is a virtualenv edgecls did not make (no '
            f'{VENV_MARKER} in it), left as it is: move it away (mv $V $V.old), then run --setup again"',
            '    mv "$T" "$V"; T=',
            "  fi",
            '  PY="$V/bin/python"',
            "fi",
            f'"$PY" -m pip install {pip} --find-links "$W" {names}',
            # the same version number with other code (a checkout): pip would keep the old one
            f'for w in "$W"/edgecls-*.whl; do [ ! -e "$w" ] || '
            f'"$PY" -m pip install {pip} --no-deps --force-reinstall "$w"; done',
        ]
    )


def _requirement_name(package: str) -> str:
    """`edgecls[runtime]` and `numpy>=1.23` install as given; pip finds them in --find-links."""
    return package.strip()
