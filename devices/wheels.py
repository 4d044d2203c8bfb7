"""`flash --setup` for devices without a package index: the host fetches the wheels, the device installs offline.

A Pi on a factory floor or the emulated Pi (devices/emulate/arm64-pi.sh) has no internet. The host asks
the device for its platform (machine, Python, glibc), runs `pip download --only-binary=:all: --platform ...
--python-version ...` for the profile's packages (edgecls itself built from this checkout, or fetched at this
version), and the device installs them with `pip install --no-index --find-links` into a venv under its
install root. Wheelhouses are cached on the host per platform and requirement set.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import EdgeclsError
from runtime.install.layout import VENV  # under the device's install root

PROBE = ("import json, platform, sys; print(json.dumps({'machine': platform.machine(), "
         "'python': '%d.%d' % sys.version_info[:2], 'libc': list(platform.libc_ver())}))")
_OLDEST_GLIBC_MINOR = 17  # manylinux2014


@dataclass(frozen=True)
class DevicePlatform:
    machine: str  # uname -m: aarch64, x86_64, armv7l
    python: str  # "3.11"
    libc: tuple  # ("glibc", "2.36")

    @classmethod
    def parse(cls, text: str, where: str) -> "DevicePlatform":
        try:
            data = json.loads(text.strip().splitlines()[-1])
            return cls(str(data["machine"]), str(data["python"]), tuple(data["libc"]))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EdgeclsError(f"{where}: could not read the device's platform from its python3 ({text[-200:]!r})") from exc

    def pip_platforms(self) -> list:
        """The wheel platform tags this device takes, newest glibc first (pip's --platform, repeatable)."""
        name, version = self.libc
        match = re.fullmatch(r"2\.(\d+)", version or "")
        if name != "glibc" or not match:
            raise EdgeclsError(f"the device's C library is {name or 'unknown'} {version}: edgecls ships wheels for "
                               f"glibc systems only (Raspberry Pi OS, Debian, Ubuntu, Jetson Linux)")
        arch = {"armv7l": "armv7l", "armv8l": "armv7l"}.get(self.machine, self.machine)
        minors = range(int(match.group(1)), _OLDEST_GLIBC_MINOR - 1, -1)
        return [f"manylinux_2_{m}_{arch}" for m in minors] + [f"manylinux2014_{arch}", f"linux_{arch}"]


def _edgecls_source() -> Path | None:
    """This checkout, when edgecls runs from one (a wheel is then built from it)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "runtime").is_dir() else None


def _edgecls_wheel(folder: Path) -> str:
    """A wheel of this edgecls in `folder`: built from the checkout, else downloaded at this version."""
    from edgecls import __version__

    source = _edgecls_source()
    if source is not None:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "-w", str(folder), str(source)]
        what = f"building a wheel of edgecls from {source}"
    else:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                   "-d", str(folder), f"edgecls=={__version__}"]
        what = f"downloading edgecls {__version__}"
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("edgecls-*.whl"))
    if result.returncode != 0 or not wheels:
        raise EdgeclsError(f"{what} failed: {_pip_error(result.stderr)}")
    return str(wheels[-1])


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


def wheelhouse(platform: DevicePlatform, packages, say=print) -> Path:
    """A folder of wheels that installs `packages` on `platform` offline; cached per platform and packages."""
    from edgecls import __version__

    source = _edgecls_source()
    key = hashlib.sha256(json.dumps([platform.machine, platform.python, list(platform.libc), sorted(packages),
                                     __version__, _tree_digest(source) if source else ""]).encode()).hexdigest()[:16]
    final = _cache_root() / f"{platform.machine}-py{platform.python}-{key}"
    final.parent.mkdir(parents=True, exist_ok=True)
    # A fleet flash sets up several devices at once: one builds the wheelhouse, the others wait and reuse it.
    with open(final.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").is_file():
            return final
        return _build(final, platform, packages, say)


def _build(final: Path, platform: DevicePlatform, packages, say) -> Path:
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        local: list = []

        def edgecls_wheel():
            if not local:
                local.append(_edgecls_wheel(work))
            return local[0]

        requirements = _requirements(packages, edgecls_wheel)
        say(f"fetching wheels for {platform.machine}, Python {platform.python} ({' '.join(packages)})")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--only-binary=:all:", "--implementation", "cp", "--python-version", platform.python,
                   "-d", str(work)]
        for tag in platform.pip_platforms():
            command += ["--platform", tag]
        result = subprocess.run(command + requirements, capture_output=True, text=True)
        if result.returncode != 0:
            raise EdgeclsError(f"pip could not fetch wheels for {platform.machine}/Python {platform.python}: "
                               f"{_pip_error(result.stderr)} (a package without a wheel for the device "
                               f"cannot be installed offline: pin a version that has one in the profile)")
        (work / ".complete").write_text(json.dumps({"packages": list(packages), "platform": platform.__dict__}))
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        _drop_older(final)
        return final
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _drop_older(kept: Path) -> None:
    """Other wheelhouses for the same platform (an older checkout's): one per platform is enough."""
    prefix = kept.name.rsplit("-", 1)[0] + "-"
    for other in kept.parent.iterdir():
        if other != kept and other.name.startswith(prefix) and (other / ".complete").is_file():
            shutil.rmtree(other, ignore_errors=True)


def _tree_digest(source: Path) -> str:
    """Changes when the checkout's code changes, so a cached wheel of edgecls is never stale."""
    h = hashlib.sha256()
    for folder in ("edgecls", "converters", "runtime", "devices"):
        for path in sorted((source / folder).rglob("*.py")):
            stat = path.stat()
            h.update(f"{path.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    h.update((source / "pyproject.toml").read_bytes())
    return h.hexdigest()


def install_script(root: str, wheels_dir: str, packages: list) -> str:
    """The device-side shell: a venv (seeing the OS's Python packages, e.g. Jetson's TensorRT) and an offline pip."""
    from shlex import quote

    venv = f"{root.rstrip('/')}/{VENV}"
    names = " ".join(quote(_requirement_name(p)) for p in packages)
    return (f"set -e; python3 -m venv --help >/dev/null 2>&1 || {{ echo 'python3-venv is missing on the device: "
            f"install it with the OS package manager (apt install python3-venv)' >&2; exit 3; }}; "
            f"[ -x {quote(venv)}/bin/python ] || python3 -m venv --system-site-packages {quote(venv)}; "
            f"{quote(venv)}/bin/python -m pip install --quiet --disable-pip-version-check --no-index "
            f"--find-links {quote(wheels_dir)} {names}; "
            # the same version number with other code (a checkout): pip would keep the old one
            f"for w in {quote(wheels_dir)}/edgecls-*.whl; do [ -e \"$w\" ] && {quote(venv)}/bin/python -m pip install "
            f"--quiet --disable-pip-version-check --no-index --no-deps --force-reinstall \"$w\"; done; "
            f"rm -rf {quote(wheels_dir)}")


def _requirement_name(package: str) -> str:
    """`edgecls[runtime]` and `numpy>=1.23` install as given; pip finds them in --find-links."""
    return package.strip()
