"""The wheel installs one top-level package, `edgecls`, holding the runtime, converters and devices folders."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

FOLDERS = ("runtime", "converters", "devices")  # in the repository at the top, in the wheel under edgecls/


def tracked_files() -> list:
    """The tree as it would be committed: tracked files still there and new ones not ignored (no build/ leftovers)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and os.path.lexists(REPO / name)})


def clean_copy(dest: Path) -> Path:
    """Copy the tracked tree into `dest`, links kept as links (edgecls/runtime -> ../runtime and the others)."""
    for name in tracked_files():
        source, target = REPO / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    work = tmp_path_factory.mktemp("wheel")
    source = clean_copy(work / "src")
    # With build isolation, as a user's `pip wheel .`: the license field needs setuptools>=77 (build-system.requires).
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "out"), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [path] = (work / "out").glob("edgecls-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_installs_only_the_edgecls_package(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    [info] = [t for t in tops if t.endswith(".dist-info")]
    assert tops == {"edgecls", info}, sorted(tops)
    assert not tops & set(FOLDERS)
    assert wheel.read(f"{info}/top_level.txt").decode().split() == ["edgecls"]


def test_the_wheel_holds_every_module_of_the_three_folders_under_edgecls(wheel):
    names = set(wheel.namelist())
    expected = {
        f"edgecls/{name}" if name.split("/")[0] in FOLDERS else name
        for name in tracked_files()
        if name.endswith(".py") and name.split("/")[0] in (*FOLDERS, "edgecls")
    }
    assert expected, "no modules found in the tree"
    assert not expected - names, sorted(expected - names)
    assert "edgecls/runtime/install/__main__.py" in names and "edgecls/runtime/bench/__main__.py" in names


def test_the_wheel_holds_the_data_files_the_code_reads_at_run_time(wheel):
    names = set(wheel.namelist())
    data = [name for name in tracked_files() if name.startswith("devices/") and not name.endswith(".py")]
    assert any(name.startswith("devices/profiles/") and name.endswith(".json") for name in data), data
    missing = [name for name in data if f"edgecls/{name}" not in names]
    assert not missing, missing


def test_the_readmes_name_the_python_that_pyproject_requires():
    """The lowest Python the READMEs give (workstation and device) is pyproject's requires-python, which pip
    enforces: the two once said 3.10 and 3.9."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, in the dev extra there
        import tomli as tomllib

    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    lowest = re.fullmatch(r">=\s*(3\.\d+)", requires.strip())
    assert lowest, f"requires-python is {requires!r}: a plain lower bound is what the READMEs can state"
    for readme in ("README.md", "README.zh-CN.md"):
        install = (REPO / readme).read_text().split("\n## ", 2)[1]  # the first section: the install
        named = re.findall(r"Python (3\.\d+) ?(?:to|or newer|到|或更新)", install)
        assert len(named) >= 2, f"{readme}'s install section names no lowest Python (workstation and device)"
        assert set(named) == {lowest.group(1)}, f"{readme} says Python {named}, pyproject.toml {requires!r}"


def test_the_tests_read_pyproject_on_python_3_10_with_tomli():
    """Python 3.10 (which requires-python allows) has no tomllib: the tests reading pyproject.toml fall back to
    tomli, which the dev extra installs there. Run here with tomllib hidden and tomli standing in for it."""
    code = (
        "import sys, tomllib; sys.modules['tomli'] = tomllib; sys.modules['tomllib'] = None\n"
        "from tests.test_readme import extra_is_installed; extra_is_installed('dev')\n"
        "from tests.test_packaging import test_the_readmes_name_the_python_that_pyproject_requires as a; a()\n"
        "from tests.test_devices_ssh import "
        "test_this_edgecls_is_a_newer_version_than_an_install_from_before_edgecls_runtime as b; b()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, in the dev extra there
        import tomli as tomllib

    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert "tomli>=2; python_version < '3.11'" in dev, f"the dev extra lacks tomli for Python 3.10: {dev}"
