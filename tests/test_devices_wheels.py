"""edgecls.devices.wheels: `flash --setup` without a package index on the device (the fast parts).

tests/test_arm64_pi.py does it for real on an emulated Pi.
"""

import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from edgecls.devices.ssh import python_command
from edgecls.devices.wheels import PROBE, DevicePlatform, _requirements, install_script, wheelhouse, wheels_for
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.install.layout import DeviceRoot
from tests.sshd import sshd  # noqa: F401  (fixture)


def test_the_probe_reads_this_machine_and_its_wheel_tags():
    out = subprocess.run(["python3", "-c", PROBE], capture_output=True, text=True, check=True).stdout
    platform = DevicePlatform.parse(out, "here")
    assert platform.machine == os.uname().machine and platform.python.count(".") == 1
    bookworm_pi = DevicePlatform("aarch64", "3.11", ("glibc", "2.36"))
    tags = bookworm_pi.pip_platforms()
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags and "manylinux2014_aarch64" in tags
    assert "manylinux_2_16_aarch64" not in tags and all("x86" not in t for t in tags)


def test_a_musl_device_is_refused_in_one_line():
    with pytest.raises(EdgeclsError, match="glibc systems only"):
        DevicePlatform("aarch64", "3.11", ("", "")).pip_platforms()
    with pytest.raises(EdgeclsError, match="could not read the device's platform"):
        DevicePlatform.parse("Traceback ...", "pi@x")


def test_edgecls_with_extras_points_at_the_local_wheel():
    built = []

    def wheel():
        built.append(1)
        return "/tmp/edgecls-0.1.0-py3-none-any.whl"

    assert _requirements(["edgecls[runtime]", "numpy>=1.23"], wheel) == [
        "/tmp/edgecls-0.1.0-py3-none-any.whl[runtime]",
        "numpy>=1.23",
    ]
    assert _requirements(["numpy"], wheel) == ["numpy"] and len(built) == 1  # built only when asked for


def test_a_root_holding_only_the_setup_venv_is_still_ours_to_take(tmp_path):
    (tmp_path / "root" / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "root" / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "root" / ".venv-setup-123").mkdir()  # one a --setup is building (or a killed one's)
    DeviceRoot(tmp_path / "root").ensure()  # the venv --setup made before the first flash is not a foreign file
    (tmp_path / "other" / "venv").mkdir(parents=True)
    (tmp_path / "other" / "thesis.txt").write_text("mine")
    with pytest.raises(EdgeclsError, match="did not write"):
        DeviceRoot(tmp_path / "other").ensure()


def test_auto_python_prefers_the_setup_venv_on_the_device(tmp_path):
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


def test_the_device_installs_offline_into_its_venv_and_forces_our_wheel(tmp_path):
    """install_script run for real here: a venv, pip --no-index from the pushed folder, edgecls reinstalled."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    pkg = tmp_path / "pkg"
    (pkg / "tinypkg").mkdir(parents=True)
    (pkg / "tinypkg" / "__init__.py").write_text("VALUE = 42\n")
    (pkg / "pyproject.toml").write_text(
        '[project]\nname = "tinypkg"\nversion = "1.0"\n[build-system]\n'
        'requires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    made = subprocess.run(
        ["python3", "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(pkg)],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr[-1000:]
    root = tmp_path / "root"
    (root / ".venv-setup-1" / "bin").mkdir(parents=True)  # a setup killed two hours ago
    os.utime(root / ".venv-setup-1", (time.time() - 7200,) * 2)
    ran = subprocess.run(
        ["sh", "-c", install_script(str(root), str(wheels), ["tinypkg"])], capture_output=True, text=True, timeout=600
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    value = subprocess.run(
        [str(root / "venv" / "bin" / "python"), "-c", "import tinypkg; print(tinypkg.VALUE)"],
        capture_output=True,
        text=True,
    )
    assert value.stdout.strip() == "42" and not wheels.exists()  # installed, and the pushed wheels cleaned up
    # Built in ROOT/.venv-setup-PID and renamed: nothing in the venv names the temporary folder (pip's shebang).
    assert [p.name for p in root.iterdir()] == ["venv"]
    assert not [
        f for f in (root / "venv" / "bin").iterdir() if not f.is_symlink() and b".venv-setup-" in f.read_bytes()
    ]
    assert subprocess.run([str(root / "venv" / "bin" / "pip"), "--version"], capture_output=True).returncode == 0
    assert json.loads(
        subprocess.run(
            [str(root / "venv" / "bin" / "python"), "-c", "import json, sys; print(json.dumps(sys.prefix))"],
            capture_output=True,
            text=True,
        ).stdout
    ) == str(root / "venv")


def _wheel(folder: Path, name: str, value: str = "42") -> Path:
    """A real pure-Python wheel NAME-1.0, built offline; VALUE tells two builds of one version apart."""
    src = folder / f"src-{name}-{value}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text(f"VALUE = {value!r}\n")
    (src / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "1.0"\n[build-system]\n'
        'requires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    out = folder / f"wheels-{value}"
    made = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr[-1000:]
    return next(out.glob(f"{name}-*.whl"))


def test_the_probe_reports_the_pointer_size_and_a_32_bit_userland_takes_armv7l_wheels():
    out = subprocess.run(["python3", "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert DevicePlatform.parse(out, "here").bits == 8 * struct.calcsize("P")
    armhf_on_arm64 = DevicePlatform("aarch64", "3.11", ("glibc", "2.36"), bits=32)  # Raspberry Pi OS 32-bit
    assert armhf_on_arm64.arch == "armv7l" and armhf_on_arm64.pip_platforms()[0] == "manylinux_2_36_armv7l"
    assert DevicePlatform("aarch64", "3.11", ("glibc", "2.36"), bits=64).pip_platforms()[0] == "manylinux_2_36_aarch64"
    assert DevicePlatform.parse('{"machine": "armv7l", "python": "3.9", "libc": ["glibc", "2.31"]}', "old").bits == 0


def test_setup_with_an_explicit_python_force_reinstalls_our_wheel(tmp_path):
    """--python /some/python: no venv of ours, but a checkout's edgecls of an unchanged version number is still
    replaced (pip alone keeps the installed one)."""
    made = subprocess.run(
        ["python3", "-m", "venv", "--without-pip", "--system-site-packages", str(tmp_path / "theirs")],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    python = str(tmp_path / "theirs" / "bin" / "python")
    root = tmp_path / "root"
    for value in ("old", "new"):
        wheels = tmp_path / f"push-{value}"
        wheels.mkdir()
        (wheels / _wheel(tmp_path, "edgecls", value).name).write_bytes(
            _wheel(tmp_path / "again", "edgecls", value).read_bytes()
        )
        ran = subprocess.run(
            ["sh", "-c", install_script(str(root), str(wheels), ["edgecls"], python=python)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": "", "PIP_TARGET": ""},
        )
        assert ran.returncode == 0, ran.stderr[-1500:]
    got = subprocess.run([python, "-I", "-c", "import edgecls; print(edgecls.VALUE)"], capture_output=True, text=True)
    assert got.stdout.strip() == "new", got.stderr[-500:]
    assert not root.exists()  # no venv made with an explicit interpreter


def test_a_failed_offline_install_removes_the_pushed_wheels_and_says_what_was_missing(tmp_path):
    wheels = tmp_path / "push"
    wheels.mkdir()
    (wheels / "README").write_text("no wheel for the package asked for")
    root = tmp_path / "root"
    ran = subprocess.run(
        ["sh", "-c", install_script(str(root), str(wheels), ["edgecls-no-such-package"])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = [l for l in ran.stderr.splitlines() if l.strip()][-1]
    assert ran.returncode != 0 and "edgecls-no-such-package" in last, ran.stderr[-1500:]
    assert not wheels.exists()  # the trap removed them (/tmp/edgecls-wheels-* on a device)
    assert [p.name for p in root.iterdir()] == ["venv"]  # the venv itself was whole: kept for the next --setup


def test_remote_errors_name_the_setup_step_not_the_scripts_first_word(sshd, tmp_path):  # noqa: F811
    from edgecls.devices.ssh import SshClient, SshError, parse_target

    client = SshClient(parse_target(sshd.target(tmp_path)), config=sshd.ssh_config)
    with pytest.raises(SshError) as error:
        client.run("set -e; echo 'edgecls setup: the cause' >&2; exit 3", what="edgecls setup")
    assert "`edgecls setup` failed (exit status 3): edgecls setup: the cause" in str(error.value)


def test_the_root_check_runs_on_a_bare_python_without_edgecls(tmp_path):
    """rootcheck.py is the program sent to the device's python before --setup: it must need nothing of ours."""
    from edgecls.runtime.install import rootcheck

    source = Path(rootcheck.__file__).read_bytes()

    def check(root):
        ran = subprocess.run([sys.executable, "-I", "-", str(root)], input=source, capture_output=True, cwd=tmp_path)
        return ran.returncode, json.loads(ran.stdout)

    assert check(tmp_path / "new") == (0, {"ok": True})
    (tmp_path / "home" / "venv").mkdir(parents=True)
    (tmp_path / "home" / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert check(tmp_path / "home") == (0, {"ok": True})  # only the venv --setup made
    (tmp_path / "home" / "thesis.txt").write_text("mine")
    code, answer = check(tmp_path / "home")
    assert code == 2 and "did not write (thesis.txt" in answer["error"]


def test_a_wheelhouse_being_pushed_is_never_dropped_and_killed_builds_are(tmp_path, monkeypatch):
    """Held (as setup holds it while pushing), an older wheelhouse of the same prefix survives a newer build's
    cleaning; released, the next cleaning drops it. Build folders of killed builds go after an hour."""
    from edgecls.devices import wheels

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    platform = DevicePlatform("x86_64", "3.11", ("glibc", "2.36"))
    package = str(_wheel(tmp_path, "pkga"))
    cache = tmp_path / "cache" / "edgecls" / "wheels"
    cache.mkdir(parents=True)
    killed, building = cache / ".x86_64-py3.11-aaaa.killed", cache / ".x86_64-py3.11-aaaa.live"
    killed.mkdir(), building.mkdir()
    os.utime(killed, (time.time() - 7200,) * 2)
    with wheels_for(platform, [package], say=lambda m: None) as held:
        assert not killed.exists() and building.exists()
        newer = held.with_name(held.name.rsplit("-", 1)[0] + "-0123456789abcdef")  # a later checkout's
        newer.mkdir()
        (newer / ".complete").write_text("{}")
        wheels._drop_older(newer)
        assert (held / Path(package).name).is_file()  # being pushed: kept
        with open(held / ".in-use") as probe, pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    wheels._drop_older(newer)
    assert not held.exists() and newer.is_dir()
    assert wheelhouse(platform, [package], say=lambda m: None) == held  # rebuilt on demand


def test_emulation_reads_the_kernel_not_the_cpu_description():
    """kernel/arch is the real kernel's, which qemu-user does not answer; cpuinfo is only the fallback, and
    there x86 is recognised by its flags: s390x's cpuinfo has a vendor_id line too."""
    from edgecls.runtime.bench.machine import _cpuinfo_family, _family, emulation

    assert emulation() is None  # this machine, natively
    assert _family("armv7l") == _family("aarch64") and _family("ppc64le") == _family("ppc")  # 32-bit userlands
    s390x = "vendor_id       : IBM/S390\n# processors    : 2\nfeatures\t: esan3 zarch stfle msa ldisp eimm dfp\n"
    x86 = "vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu vme de pse sse sse2 avx avx2\n"
    pi = "processor\t: 0\nFeatures\t: fp asimd evtstrm\nCPU implementer\t: 0x41\n"
    assert (_cpuinfo_family(s390x), _cpuinfo_family(x86), _cpuinfo_family(pi)) == (None, "x86", "arm")


def test_auto_python_finds_a_venv_under_a_home_relative_root(tmp_path):
    """Profiles allow install_root ~/edgecls: the device's shell must expand it, as DeviceRoot does."""
    venv_python = tmp_path / "edgecls" / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text('#!/bin/sh\necho "venv python"\n')
    venv_python.chmod(0o755)
    ran = subprocess.run(
        ["sh", "-c", python_command("auto", "~/edgecls", ["-c", "pass"])],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert ran.stdout.strip() == "venv python", ran


def test_emulation_falls_back_to_cpuinfo_where_the_kernel_has_no_arch_file(tmp_path):
    """Before Linux 6.1 there is no /proc/sys/kernel/arch (hidden here in a private mount namespace): the emulated
    Pi's Python (qemu-user, the rootfs of devices/emulate/arm64-pi.sh) still sees the host's x86 cpuinfo."""
    import shutil

    qemu = shutil.which("qemu-aarch64-static")
    cache = Path(os.environ.get("EDGECLS_PI_ROOTFS_CACHE", "~/.cache/edgecls/arm64-pi")).expanduser()
    rootfs = next(
        (r for r in [*sorted(cache.glob("bookworm-*")), Path("/tmp/pi-root")] if (r / ".edgecls-built").exists()), None
    )
    hidden = os.geteuid() == 0 and subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0
    if not (qemu and rootfs and hidden):
        why = (
            "needs root, unshare, qemu-user-static and a built arm64 rootfs "
            "(arm64-pi.sh build; test_arm64_pi builds it)"
        )
        if os.environ.get("CI"):  # CI installs all of it and builds the rootfs first: missing is a failure there
            pytest.fail(why)
        pytest.skip(why)
    (tmp_path / "empty").write_text("")
    machine_py = str(Path(__file__).resolve().parents[1] / "runtime" / "bench" / "machine.py")
    code = (
        f"import importlib.util as u, platform; s = u.spec_from_file_location('m', {machine_py!r}); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); print(platform.machine(), m.emulation())"
    )
    env = {**os.environ, "EMPTY": str(tmp_path / "empty"), "QEMU": qemu, "ROOTFS": str(rootfs), "CODE": code}
    ran = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            'mount --bind "$EMPTY" /proc/sys/kernel/arch && '
            '"$QEMU" -L "$ROOTFS" "$ROOTFS/usr/bin/python3" -B -c "$CODE" && python3 -c "$CODE"',
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ran.stdout.splitlines() == ["aarch64 qemu-user on an x86_64 CPU", f"{os.uname().machine} None"], (
        ran.stdout + ran.stderr[-1000:]
    )


def test_setup_never_deletes_a_virtualenv_edgecls_did_not_make(tmp_path):
    """install_script run for real: someone's venv without pip in the (already ours) root, their files in it,
    is left whole and refused in one line with the fix; a venv edgecls made (its marker) without pip is
    replaced, and the new one carries the marker."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    shutil.copy(_wheel(tmp_path, "pkgv"), wheels)
    root = tmp_path / "root"
    (root / "venv" / "bin").mkdir(parents=True)
    (root / ".edgecls-device").write_text('{"format": "edgecls-device/1"}')
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (root / "venv" / "notes.txt").write_text("my experiments")

    def setup():
        return subprocess.run(
            ["sh", "-c", install_script(str(root), str(wheels), ["pkgv"])], capture_output=True, text=True, timeout=600
        )

    ran = setup()
    assert ran.returncode == 3, ran.stderr[-2000:]
    [line] = [l for l in ran.stderr.splitlines() if l.startswith("edgecls setup:")]
    assert "virtualenv edgecls did not make" in line and "mv " in line, line
    assert (root / "venv" / "notes.txt").read_text() == "my experiments"
    assert sorted(p.name for p in root.iterdir()) == [".edgecls-device", "venv"]  # its build folder removed too
    (root / "venv" / ".edgecls-venv").write_text("")  # the same folder, had edgecls made it: a broken venv of ours
    wheels.mkdir(exist_ok=True)
    shutil.copy(next(tmp_path.glob("wheels-*/pkgv-*.whl")), wheels)
    ran = setup()
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert not (root / "venv" / "notes.txt").exists() and (root / "venv" / ".edgecls-venv").is_file()
    assert subprocess.run([str(root / "venv" / "bin" / "python"), "-c", "import pkgv"]).returncode == 0


STALE_BUILD = ("runtime", "converters", "devices", "edgecls")  # what build/lib held before the one namespace
BUILD_A_WHEEL = (
    "import sys; from pathlib import Path; from edgecls.devices import wheels; "
    "print(wheels._edgecls_wheel(Path(sys.argv[1])))"
)


@pytest.mark.parametrize("git", [True, False], ids=["git-checkout", "source-tree"])
def test_the_wheel_built_from_a_checkout_holds_only_edgecls_whatever_its_build_folder_holds(tmp_path, git):
    """setuptools builds a wheel in place and packs what an older build left in build/lib: a checkout that built
    one before edgecls.runtime would ship top-level runtime, converters and devices to every device."""
    repo = Path(__file__).resolve().parents[1]
    checkout = tmp_path / "checkout"
    for name in ("edgecls", "runtime", "converters", "devices"):
        shutil.copytree(repo / name, checkout / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", ".gitignore"):
        shutil.copy2(repo / name, checkout / name)
    if git:
        subprocess.run(["git", "init", "-q"], cwd=checkout, check=True)
        subprocess.run(["git", "add", "-A"], cwd=checkout, check=True)
    for name in STALE_BUILD:
        (checkout / "build" / "lib" / name).mkdir(parents=True)
        (checkout / "build" / "lib" / name / "__init__.py").write_text("")
    built = subprocess.run(
        [sys.executable, "-c", BUILD_A_WHEEL, str(tmp_path / "out")],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},  # this copy's edgecls builds from this copy
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = Path(built.stdout.strip().splitlines()[-1])
    assert wheel.parent == tmp_path / "out"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"edgecls"}, names
    assert "edgecls/runtime/bench/runner.py" in names and "edgecls/__init__.py" in names


def test_a_wheel_installing_other_top_level_packages_is_refused(tmp_path):
    from edgecls.devices.wheels import check_top_level

    good, bad = tmp_path / "edgecls-0.2.0-py3-none-any.whl", tmp_path / "edgecls-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(good, "w") as archive:
        for name in ("edgecls/__init__.py", "edgecls/runtime/__init__.py", "edgecls-0.2.0.dist-info/METADATA"):
            archive.writestr(name, "")
    check_top_level(good, "building a wheel")
    with zipfile.ZipFile(bad, "w") as archive:
        for name in ("edgecls/__init__.py", "runtime/__init__.py", "converters/__init__.py", "x.dist-info/RECORD"):
            archive.writestr(name, "")
    with pytest.raises(EdgeclsError, match=r"installs converters, runtime beside edgecls: refusing"):
        check_top_level(bad, "building a wheel")
