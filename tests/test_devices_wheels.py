"""Issue 13 point 2: `flash --setup` without a package index on the device (the fast parts; the arm64 test
in tests/test_arm64_pi.py does it for real on an emulated Pi)."""

import json
import os
import subprocess

import pytest

from devices.ssh import python_command
from devices.wheels import DevicePlatform, PROBE, _requirements, install_script
from runtime.errors import EdgeclsError
from runtime.install.layout import DeviceRoot


def test_i13_p2_the_probe_reads_this_machine_and_its_wheel_tags():
    out = subprocess.run(["python3", "-c", PROBE], capture_output=True, text=True, check=True).stdout
    platform = DevicePlatform.parse(out, "here")
    assert platform.machine == os.uname().machine and platform.python.count(".") == 1
    bookworm_pi = DevicePlatform("aarch64", "3.11", ("glibc", "2.36"))
    tags = bookworm_pi.pip_platforms()
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags and "manylinux2014_aarch64" in tags
    assert "manylinux_2_16_aarch64" not in tags and all("x86" not in t for t in tags)


def test_i13_p2_a_musl_device_is_refused_in_one_line():
    with pytest.raises(EdgeclsError, match="glibc systems only"):
        DevicePlatform("aarch64", "3.11", ("", "")).pip_platforms()
    with pytest.raises(EdgeclsError, match="could not read the device's platform"):
        DevicePlatform.parse("Traceback ...", "pi@x")


def test_i13_p2_edgecls_with_extras_points_at_the_local_wheel():
    built = []

    def wheel():
        built.append(1)
        return "/tmp/edgecls-0.1.0-py3-none-any.whl"

    assert _requirements(["edgecls[runtime]", "numpy>=1.23"], wheel) == \
        ["/tmp/edgecls-0.1.0-py3-none-any.whl[runtime]", "numpy>=1.23"]
    assert _requirements(["numpy"], wheel) == ["numpy"] and len(built) == 1  # built only when asked for


def test_i13_p2_a_root_holding_only_the_setup_venv_is_still_ours_to_take(tmp_path):
    (tmp_path / "root" / "venv" / "bin").mkdir(parents=True)
    DeviceRoot(tmp_path / "root").ensure()  # the venv --setup made before the first flash is not a foreign file
    (tmp_path / "other" / "venv").mkdir(parents=True)
    (tmp_path / "other" / "thesis.txt").write_text("mine")
    with pytest.raises(EdgeclsError, match="did not write"):
        DeviceRoot(tmp_path / "other").ensure()


def test_i13_p2_auto_python_prefers_the_setup_venv_on_the_device(tmp_path):
    """The shell line runs here as the device's sh would: ROOT/venv/bin/python when it exists, else python3."""
    root = tmp_path / "dev root"  # a space: quoting must hold
    line = python_command("auto", str(root), ["-c", "import sys; print(sys.argv[0] or 'python3')"])
    ran = subprocess.run(["sh", "-c", line], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.strip() == "-c"  # plain python3 ran the -c code
    venv_python = root / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text('#!/bin/sh\necho "venv python: $*"\n')
    venv_python.chmod(0o755)
    ran = subprocess.run(["sh", "-c", line], capture_output=True, text=True)
    assert ran.stdout.startswith("venv python: -c import sys"), ran
    assert python_command("/usr/bin/python3.11", str(root), ["-m", "x"]) == ["/usr/bin/python3.11", "-m", "x"]


def test_i13_p2_the_device_installs_offline_into_its_venv_and_forces_our_wheel(tmp_path):
    """install_script run for real here: a venv, pip --no-index from the pushed folder, edgecls reinstalled."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    pkg = tmp_path / "pkg"
    (pkg / "tinypkg").mkdir(parents=True)
    (pkg / "tinypkg" / "__init__.py").write_text("VALUE = 42\n")
    (pkg / "pyproject.toml").write_text('[project]\nname = "tinypkg"\nversion = "1.0"\n[build-system]\n'
                                        'requires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    made = subprocess.run(["python3", "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(wheels), str(pkg)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-1000:]
    root = tmp_path / "root"
    ran = subprocess.run(["sh", "-c", install_script(str(root), str(wheels), ["tinypkg"])], capture_output=True,
                         text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    value = subprocess.run([str(root / "venv" / "bin" / "python"), "-c", "import tinypkg; print(tinypkg.VALUE)"],
                           capture_output=True, text=True)
    assert value.stdout.strip() == "42" and not wheels.exists()  # installed, and the pushed wheels cleaned up
    assert json.loads(subprocess.run([str(root / "venv" / "bin" / "python"), "-c",
                                      "import json, sys; print(json.dumps(sys.prefix))"],
                                     capture_output=True, text=True).stdout) == str(root / "venv")
