"""`flash --setup` (devices/wheels.py, the device root's venv in runtime/install/layout.py, devices/flash.py):
a venv edgecls did not make, a python3 without venv, a refused root left untouched, wheelhouses kept in use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import can_unshare, make_home_like, snapshot
from tests.sshd import sshd  # noqa: F401  (fixture)


def _tiny_wheel(folder: Path, name: str = "tinypkg") -> Path:
    """A real pure-Python wheel, built offline."""
    pkg = folder / f"src-{name}"
    (pkg / name).mkdir(parents=True)
    (pkg / name / "__init__.py").write_text("VALUE = 42\n")
    (pkg / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "1.0"\n[build-system]\n'
        'requires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(folder / "wheels"),
            str(pkg),
        ],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr[-1000:]
    return next((folder / "wheels").glob(f"{name}-*.whl"))


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_foreign_venv_entry_does_not_make_a_root_ours(tmp_path, kind):
    """runtime/install/layout.py:DeviceRoot.check exempts any entry named venv: someone's file, or a link to their
    own virtualenv, lets edgecls take the folder (and python_command 'auto' then runs whatever venv/bin/python is)."""
    from edgecls.runtime.install.layout import DeviceRoot, InstallError

    root = tmp_path / "root"
    root.mkdir()
    if kind == "file":
        (root / "venv").write_text("my notes")
    else:
        (tmp_path / "their-venv" / "bin").mkdir(parents=True)
        (root / "venv").symlink_to(tmp_path / "their-venv")
    with pytest.raises(InstallError):
        DeviceRoot(root).check()


def test_setup_without_python3_venv_says_so_and_leaves_no_half_venv(tmp_path):
    """Debian/Ubuntu without python3-venv (this machine's python3 with its ensurepip hidden in a private mount
    namespace): `python3 -m venv --help` still works, so devices/wheels.py:install_script's check passes; venv then
    fails with Debian's multi-line text and leaves ROOT/venv/bin/python without pip, which the next --setup
    ('No module named pip') and python_command('auto') then use."""
    from edgecls.devices.wheels import install_script

    version = (
        subprocess.run(
            ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if os.path.exists("/usr/bin/python3")
        else ""
    )
    ensurepip = Path(f"/usr/lib/python{version}/ensurepip")
    if not ensurepip.is_dir() or not can_unshare("--mount"):
        pytest.skip("needs root, unshare and a Debian python3 with python3-venv installed (to hide its ensurepip)")
    (tmp_path / "empty").mkdir()
    (tmp_path / "wheels").mkdir()
    shutil.copy(_tiny_wheel(tmp_path / "build"), tmp_path / "wheels")
    root = tmp_path / "root"
    env = {
        **os.environ,
        "EMPTY": str(tmp_path / "empty"),
        "EP": str(ensurepip),
        "SCRIPT": install_script(str(root), str(tmp_path / "wheels"), ["tinypkg"]),
    }
    ran = subprocess.run(
        ["unshare", "--mount", "sh", "-c", 'mount --bind "$EMPTY" "$EP" && PATH=/usr/bin:/bin exec sh -c "$SCRIPT"'],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    last = [l for l in ran.stderr.splitlines() if l.strip()][-1:]  # what SshClient.describe_failure shows
    assert ran.returncode != 0 and last and "python3-venv" in last[0], (ran.stdout + ran.stderr)[-1500:]
    assert not (root / "venv").exists()


@pytest.mark.slow  # 20 s here: it makes the venv the test says it must not make
def test_setup_does_not_write_into_a_root_the_flash_then_refuses(
    tmp_path,
    tiny_bundle,
    sshd,  # noqa: F811
    monkeypatch,
):
    """devices/flash.py:flash_one runs target.setup before target.plan checks the root, so --setup makes
    HOME/venv (or pip-installs into someone's HOME/venv) in a folder that the flash refuses a moment later."""
    from edgecls.devices.flash import FlashOptions, flash
    from edgecls.devices.profiles import DeviceProfile

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the host's wheel cache for this test only
    profile = DeviceProfile(
        name="test-cpu", artifacts=("tflite-int8",), threads=1, packages=(str(_tiny_wheel(tmp_path / "build")),)
    )
    home = make_home_like(tmp_path / "home")
    before = snapshot(home)
    [result] = flash(
        tiny_bundle, [sshd.target(home)], FlashOptions(profile=profile, ssh_config=str(sshd.ssh_config), setup=True)
    )
    assert result.result == "failed" and "did not write" in result.reason, result
    after = snapshot(home)
    added = sorted(set(after) - set(before))
    assert not added, added[:5]
    assert after == before


def test_a_wheelhouse_for_other_packages_keeps_the_one_in_use(tmp_path, monkeypatch):
    """devices/wheels.py:_drop_older deletes every other wheelhouse of the same machine and Python, whatever its
    packages: flashing desktop-cpu and desktop-gpu devices at once (both x86_64/3.11, other package lists), one
    setup deletes the wheels the other is still pushing."""
    from edgecls.devices.wheels import DevicePlatform, wheelhouse

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a, b = _tiny_wheel(tmp_path / "a", "pkga"), _tiny_wheel(tmp_path / "b", "pkgb")
    platform = DevicePlatform("x86_64", "3.11", ("glibc", "2.36"))
    first = wheelhouse(platform, [str(a)], say=lambda m: None)
    second = wheelhouse(platform, [str(b)], say=lambda m: None)
    assert second != first and (first / a.name).is_file()
