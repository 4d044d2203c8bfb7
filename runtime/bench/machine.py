"""What a benchmark ran on: CPU, cores, architecture, OS, Python and engine versions, read on that machine.

Plain data from /proc, /sys and the standard library only, so it is cheap and safe to call on any device;
every field is best effort (None when unknown) rather than an error.
"""

from __future__ import annotations

import os
import platform
import socket
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("edgecls", "numpy", "opencv-python-headless", "opencv-python", "ai-edge-litert", "tflite-runtime",
            "onnxruntime", "onnxruntime-gpu", "tensorflow", "keras")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def cpu_model() -> str | None:
    """'Intel(R) Xeon(R) ...' on x86; the board ('Raspberry Pi 4 Model B Rev 1.4') and cores on ARM."""
    info = _read("/proc/cpuinfo") or ""
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("cpu model") or fields.get("hardware")
    board = _read("/proc/device-tree/model")
    if board:
        model = f"{board} ({model})" if model else board
    if not model and fields.get("cpu part"):
        model = f"ARM part {fields['cpu part']} (implementer {fields.get('cpu implementer', '?')})"
    return model or platform.processor() or None


# Instruction sets that decide int8 speed: VNNI/AMX on x86, dot product and i8mm on ARM.
_INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")


def cpu_flags() -> list:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            have = set(value.split())
            return [f for f in _INT8_FLAGS if f in have]
    return []


def _os_name() -> str:
    release = _read("/etc/os-release") or ""
    for line in release.splitlines():
        if line.startswith("PRETTY_NAME="):
            return f"{line.split('=', 1)[1].strip(chr(34))} (kernel {platform.release()})"
    return platform.platform()


def _memory_mb() -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def package_versions(names=PACKAGES) -> dict:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


_X86 = ("x86_64", "i386", "i686", "amd64")


def emulation() -> str | None:
    """'qemu-user on an x86_64 CPU' when this process runs under user-mode emulation, else None.

    qemu-user shows the host's /proc/cpuinfo to the emulated program: an aarch64 Python reading an x86
    CPU description (or the reverse) is emulated, and its timings are not the target's.
    """
    info = (_read("/proc/cpuinfo") or "").lower()
    if not info:
        return None
    x86_cpu = "vendor_id" in info or "\nflags" in info or info.startswith("flags")
    arm_cpu = "cpu implementer" in info
    arch = platform.machine().lower()
    if arch not in _X86 and x86_cpu:
        return "qemu-user on an x86_64 CPU"
    if arch in _X86 and arm_cpu and not x86_cpu:
        return "qemu-user on an ARM CPU"
    return None


def describe() -> dict:
    """The machine this process runs on; `via_ssh` says whether it was started over SSH (a remote bench)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "arch": platform.machine(),
        "emulated": emulation(),  # timings taken under emulation are labelled, never a real device's
        "cpu_flags": cpu_flags(),
        "os": _os_name(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "memory_mb": _memory_mb(),
        "load_average": load,  # other work on the machine while it ran: the first thing to check on a noisy figure
        "via_ssh": bool(os.environ.get("SSH_CONNECTION")),
        "versions": package_versions(),
    }


def short(machine: dict) -> str:
    """One line for tables: 'host: CPU, N cores, arch' (and EMULATED when it was)."""
    line = f"{machine.get('hostname')}: {machine.get('cpu') or '?'}, {machine.get('cores')} cores, {machine.get('arch')}"
    if machine.get("emulated"):
        line += f", EMULATED ({machine['emulated']}): not timings of a real device"
    return line
