"""The emulated Raspberry Pi (devices/emulate/arm64-pi.sh: Debian bookworm arm64 under qemu-user) as a real SSH
device, and the script's own safety.

The rootfs is built by the script (cached under ~/.cache/edgecls/arm64-pi, keyed by the script's hash; a fresh
machine builds it, about 15-20 minutes) and runs its own arm64 sshd on 127.0.0.1. Then, as a user would: build the
digits bundle here -> `edgecls flash --device raspberry-pi-5 --setup` (wheels fetched here for aarch64, installed
offline there) -> `edgecls predict` on the device gives the host's top-1 labels -> `edgecls bench --device` brings
back a JSON whose machine is aarch64 and labelled emulated.

That test is marked `arm64` (and slow): `pytest -m "not arm64"` leaves it out locally; CI runs it. A machine that
cannot run arm64 binaries (binfmt_misc not mountable) fails there with the reason, never passes silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO, can_unshare, require_tool, run_cli
from tests.emulated_pi import (
    SCRIPT,
    ensure_built,
    in_use,
    pi_rootfs_alone,  # noqa: F401  (fixture)
    require_emulation,
    script,
)


@pytest.fixture
def pi(tmp_path_factory):
    """The emulated Pi, started for this test alone (its rootfs built first on a fresh machine), stopped after."""
    require_emulation()
    with in_use() as root:
        ensure_built(root)
        folder = tmp_path_factory.mktemp("pi")
        key = folder / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        from tests.sshd import _free_port

        port = _free_port()
        started = script("start", root, port, f"{key}.pub", timeout=600)
        try:
            assert started.returncode == 0, started.stderr
            config = folder / "ssh_config"
            config.write_text(
                f"Host 127.0.0.1 emulated-pi\n  HostName 127.0.0.1\n  Port {port}\n  User pi\n"
                f"  IdentityFile {key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
                f"  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            )
            yield SimpleNamespace(root=root, port=port, config=config, target=f"pi@127.0.0.1:{port}")
        finally:
            script("stop", root, timeout=120)


def _ssh(pi, command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", str(pi.config), "emulated-pi", command], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("digits")
    trained = run_cli("train", "--data", "digits", "--out", folder / "run", "--epochs", "4", "--quiet", timeout=900)
    assert trained.returncode == 0, trained.stderr[-2000:]
    converted = run_cli(
        "convert",
        folder / "run",
        "--out",
        folder / "bundle",
        "--formats",
        "tflite-int8,onnx-int8,tflite-fp32",
        timeout=900,
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    return folder / "bundle"


def _test_images(folder: Path, per_class: int = 2) -> Path:
    """Two images per digit from the built-in dataset, as files both sides classify."""
    from edgecls.core.datasets.builtin import materialize

    source = materialize("digits")
    folder.mkdir(parents=True, exist_ok=True)
    for label in sorted(p.name for p in source.iterdir() if p.is_dir()):
        for image in sorted((source / label).iterdir())[-per_class:]:
            shutil.copy(image, folder / f"{label}-{image.name}")
    return folder


def _top1(lines: str) -> dict:
    return {Path(r["path"]).name: r["top1"] for r in map(json.loads, filter(None, lines.splitlines()))}


@pytest.mark.arm64
@pytest.mark.slow
def test_flash_setup_predict_and_bench_on_the_emulated_pi(pi, digits_bundle, tmp_path):
    flashed = run_cli(
        "flash",
        digits_bundle,
        pi.target,
        "--device",
        "raspberry-pi-5",
        "--setup",
        "--ssh-config",
        pi.config,
        timeout=3600,
    )
    assert flashed.returncode == 0, flashed.stdout[-2000:] + flashed.stderr[-3000:]
    assert "installed" in flashed.stdout

    arch = _ssh(pi, "/opt/edgecls/venv/bin/python -c 'import platform; print(platform.machine())'")
    assert arch.stdout.strip() == "aarch64", arch

    images = _test_images(tmp_path / "images")
    from edgecls.devices.ssh import SshClient, parse_target

    # The flashed release holds the profile's choice (tflite-int8); the whole bundle goes along for ONNX Runtime.
    SshClient(parse_target(pi.target), config=pi.config).push([images, digits_bundle], "/tmp/edgecls-test")
    for artifact, bundle in (("tflite-int8", "/opt/edgecls/current"), ("onnx-int8", "/tmp/edgecls-test/bundle")):
        host = run_cli("predict", "--json", "--artifact", artifact, digits_bundle, images)
        assert host.returncode == 0, host.stderr[-2000:]
        device = _ssh(
            pi, f"/opt/edgecls/venv/bin/edgecls predict --json --artifact {artifact} {bundle} /tmp/edgecls-test/images"
        )
        assert device.returncode == 0, device.stderr[-2000:]
        assert _top1(device.stdout) == _top1(host.stdout) and len(_top1(host.stdout)) == 20, artifact

    out = tmp_path / "bench.json"
    bench = run_cli(
        "bench",
        digits_bundle,
        "--device",
        pi.target,
        "--ssh-config",
        pi.config,
        "--artifacts",
        "tflite-int8",
        "--repeats",
        "1",
        "--runs",
        "30",
        "--time-budget",
        "5",
        "--max-warmup",
        "2",
        "--no-keras",
        "--json",
        out,
        timeout=1800,
    )
    assert bench.returncode == 0, bench.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["machine"]["arch"] == "aarch64", doc["machine"]
    assert doc["machine"]["emulated"], doc["machine"]  # never presented as a Raspberry Pi figure
    assert "EMULATED" in bench.stdout
    size = subprocess.run(["du", "-sm", str(pi.root / "opt" / "edgecls" / "venv")], capture_output=True, text=True)
    print(
        f"runtime venv on aarch64: {size.stdout.split()[0]} MB; invoke p50 (emulated) "
        f"{doc['records'][0]['p50_ms']:.2f} ms"
    )


def _built(root: Path) -> Path | None:
    """`root`, or one built by hand at /tmp/pi-root, if its build finished."""
    return next((r for r in (root, Path("/tmp/pi-root")) if (r / ".edgecls-built").exists()), None)


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


def test_emulation_is_seen_when_qemu_shows_an_arm_cpuinfo(tmp_path, pi_rootfs_alone):  # noqa: F811
    """QEMU >= 8.2 emulates /proc/cpuinfo for arm/aarch64 guests (linux-user/aarch64/target_proc.h; Ubuntu 24.04
    ships 8.2), so runtime/bench/machine.py:emulation() sees an ARM CPU and returns None: emulated timings are
    then unlabelled and the smoke test judges the Pi's budget. Reproduced with Debian's qemu 7.2 by showing the
    guest a Pi 5 cpuinfo in a private mount namespace; /proc/sys/kernel/arch still tells the truth (x86_64)."""
    qemu = require_tool("qemu-aarch64-static", package="qemu-user-static")
    rootfs = _built(pi_rootfs_alone)
    if rootfs is None or not can_unshare("--mount"):
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


def test_pi_script_stop_with_an_empty_root_leaves_the_machine_alone():
    """`arm64-pi.sh stop ""` (an unset variable) passes the argument count check and runs `umount -l /dev`,
    `/sys`, `/proc` on the machine itself (and `stop /` would kill -9 every process). Run in private mount and PID
    namespaces, so only their copies are touched."""
    if not can_unshare("--mount", "--pid", "--fork", "--mount-proc"):
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


def test_pi_script_stop_does_not_kill_a_stale_pid(tmp_path):
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
