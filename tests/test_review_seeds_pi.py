"""Review seeds for issue 11 (explain, tune) and issue 13 (offline --setup, the emulated Pi).

Each test fails on the code it was written against, for the reason its docstring names.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecls.runtime.errors import EdgeclsError
from tests.conftest import REPO, make_home_like, require_tool, snapshot, write_image
from tests.sshd import sshd  # noqa: F401  (fixture)

SCRIPT = REPO / "devices" / "emulate" / "arm64-pi.sh"


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


def _can_unshare(*flags: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode == 0


# ---------------------------------------------------------------------------------------------- issue 11


def test_review_i11_explain_image_named_contact_sheet_is_not_overwritten_by_the_sheet(tmp_path, tiny_run_dir):
    """An input called contact_sheet.jpg gets the PNG name the contact sheet then overwrites (edgecls/explain.py:
    image_paths does not reserve contact_sheet*.png); the manifest lists one file twice."""
    from edgecls.explain import explain_run

    rng = np.random.default_rng(0)
    for name in ("contact_sheet.jpg", "cat.png"):
        write_image(tmp_path / "images" / name, rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    result = explain_run(tiny_run_dir, [tmp_path / "images"], tmp_path / "cams")
    names = [e.png for e in result.explanations] + result.sheets
    assert len(set(names)) == len(names), names


def test_review_i11_tune_every_trial_failing_is_one_error_line_with_the_cause(tmp_path, shapes_folder, monkeypatch):
    """Fault injection: every trial hits TensorFlow's out-of-memory error. keras-tuner raises its own RuntimeError
    (with tracebacks in the text) at the N-th consecutive failure, since max_consecutive_failed_trials == trials
    (edgecls/tune.py:_oracle), so tune()'s 'no trial completed' is unreachable; and _one_line keeps TF's last
    line (the Hint), dropping the cause."""
    import tensorflow as tf

    import edgecls.train
    from edgecls.tune import TuneConfig, tune

    def out_of_memory(cfg):
        raise tf.errors.ResourceExhaustedError(
            None,
            None,
            "OOM when allocating tensor with shape[64,64,3,3]\n"
            "Hint: If you want to see a list of allocated tensors when OOM "
            "happens, add report_tensor_allocations_upon_oom to RunOptions.",
        )

    monkeypatch.setattr(edgecls.train, "train", out_of_memory)
    out = tmp_path / "tuned"
    with pytest.raises(EdgeclsError) as error:
        tune(TuneConfig(data=str(shapes_folder), out=str(out), trials=2, max_epochs=1, image_size=16))
    message = str(error.value)
    assert "\n" not in message and "no trial completed" in message and "OOM when allocating" in message, message
    assert not out.exists()


def test_review_i11_tune_a_diverged_trial_never_wins():
    """train() has no NaN guard, so a diverged trial COMPLETES with val_loss NaN; with --objective val_loss and
    that trial first, edgecls/tune.py:best_row returns it (nothing compares below NaN)."""
    from edgecls.tune import best_row

    rows = [
        {"trial": "0", "status": "COMPLETED", "score": math.nan, "val_loss": math.nan},
        {"trial": "1", "status": "COMPLETED", "score": 0.7, "val_loss": 0.7},
    ]
    assert best_row(rows, "val_loss")["trial"] == "1"


# ---------------------------------------------------------------------------------------------- issue 13


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_review_i13_a_foreign_venv_entry_does_not_make_a_root_ours(tmp_path, kind):
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


def test_review_i13_setup_without_python3_venv_says_so_and_leaves_no_half_venv(tmp_path):
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
    if not ensurepip.is_dir() or not _can_unshare("--mount"):
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
def test_review_i13_setup_does_not_write_into_a_root_the_flash_then_refuses(
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


def test_review_i13_a_wheelhouse_for_other_packages_keeps_the_one_in_use(tmp_path, monkeypatch):
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


def _pi_rootfs() -> Path | None:
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]
    base = Path(os.environ.get("EDGECLS_PI_ROOTFS_CACHE", "~/.cache/edgecls/arm64-pi")).expanduser()
    for root in (base / f"bookworm-{digest}", Path("/tmp/pi-root")):
        if (root / ".edgecls-built").exists():
            return root
    return None


PI5_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def test_review_i13_emulation_is_seen_when_qemu_shows_an_arm_cpuinfo(tmp_path):
    """QEMU >= 8.2 emulates /proc/cpuinfo for arm/aarch64 guests (linux-user/aarch64/target_proc.h; Ubuntu 24.04
    ships 8.2), so runtime/bench/machine.py:emulation() sees an ARM CPU and returns None: emulated timings are
    then unlabelled and the smoke test judges the Pi's budget. Reproduced with Debian's qemu 7.2 by showing the
    guest a Pi 5 cpuinfo in a private mount namespace; /proc/sys/kernel/arch still tells the truth (x86_64)."""
    qemu = require_tool("qemu-aarch64-static", package="qemu-user-static")
    rootfs = _pi_rootfs()
    if rootfs is None or not _can_unshare("--mount"):
        pytest.skip("needs root, unshare and a built arm64 rootfs (devices/emulate/arm64-pi.sh build)")
    (tmp_path / "cpuinfo").write_text(PI5_CPUINFO)
    machine_py = str(REPO / "runtime/bench/machine.py")
    code = (
        f"import importlib.util as u, platform; s = u.spec_from_file_location('m', {machine_py!r}); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); print(platform.machine(), m.emulation())"
    )
    env = {**os.environ, "CPUINFO": str(tmp_path / "cpuinfo"), "QEMU": qemu, "ROOTFS": str(rootfs), "CODE": code}
    ran = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            'mount --bind "$CPUINFO" /proc/cpuinfo && '
            'exec "$QEMU" -L "$ROOTFS" "$ROOTFS/usr/bin/python3" -B -c "$CODE"',
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ran.stdout.startswith("aarch64 "), ran.stderr[-1000:]
    assert ran.stdout.strip() != "aarch64 None", "emulated aarch64 Python not recognised as emulated"


def test_review_i13_pi_script_stop_with_an_empty_root_leaves_the_machine_alone():
    """`arm64-pi.sh stop ""` (an unset variable) passes the argument count check and runs `umount -l /dev`,
    `/sys`, `/proc` on the machine itself (and `stop /` would kill -9 every process). Run in private mount and PID
    namespaces, so only their copies are touched."""
    if not _can_unshare("--mount", "--pid", "--fork", "--mount-proc"):
        pytest.skip("needs root and unshare (private mount and PID namespaces)")
    ran = subprocess.run(
        [
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            f'sh {SCRIPT} stop ""; echo "rc=$?"; mountpoint -q /dev && echo dev-intact',
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "rc=0" not in ran.stdout and "dev-intact" in ran.stdout, ran.stdout + ran.stderr[-500:]


def test_review_i13_pi_script_stop_does_not_kill_a_stale_pid(tmp_path):
    """After a host reboot or a kill -9, ROOT/run/sshd-edgecls.pid names a pid that may now be anyone's: stop
    kills it unchecked (as root), though its own loop already finds the processes that live in the rootfs."""
    (tmp_path / "pi" / "run").mkdir(parents=True)
    (
        tmp_path / "pi" / ".edgecls-built"
    ).touch()  # a built rootfs: stop runs (not refused), so the pid check is what holds
    victim = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "pi" / "run" / "sshd-edgecls.pid").write_text(f"{victim.pid}\n")
        subprocess.run(["sh", str(SCRIPT), "stop", str(tmp_path / "pi")], capture_output=True, timeout=120)
        assert victim.poll() is None, "stop killed a process outside the rootfs"
    finally:
        victim.kill()
        victim.wait()
