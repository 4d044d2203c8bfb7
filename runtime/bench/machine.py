"""What a benchmark ran on: CPU, cores, architecture, OS, Python and engine versions, read on that machine.

Plain data from /proc, /sys and the standard library only, so it is cheap and safe to call on any device;
every field is best effort (None when unknown) rather than an error.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = (
    "edgecls",
    "numpy",
    "opencv-python-headless",
    "opencv-python",
    "ai-edge-litert",
    "tflite-runtime",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorflow",
    "keras",
)


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
_INT8_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


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


def _family(machine: str) -> str:
    """x86, arm, or the name itself (s390x, ppc64le, riscv64): 32- and 64-bit of one family run natively."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"):
        return "x86"
    if machine.startswith(("arm", "aarch64")):
        return "arm"
    return "s390" if machine == "s390x" else re.sub(r"(64|32)?(le|el|be|eb)?$", "", machine) or machine  # ppc64le


def _cpuinfo_family(info: str) -> str | None:
    """The CPU family /proc/cpuinfo describes: x86 only by x86 flags (s390x also writes a vendor_id line)."""
    for line in info.lower().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and {"sse", "sse2", "avx"} & set(value.split()):
            return "x86"
    if "cpu implementer" in info.lower():
        return "arm"
    return None


def emulation() -> str | None:
    """'qemu-user on an x86_64 CPU' when this process runs under user-mode emulation, else None.

    qemu-user answers uname (so platform.machine()) for the emulated CPU, but not /proc/sys/kernel/arch: that
    is the real kernel's. Since QEMU 8.2 it also emulates /proc/cpuinfo for ARM guests, so cpuinfo is only
    the fallback, for kernels without kernel/arch (before Linux 6.1).
    """
    arch = platform.machine()
    kernel = _read("/proc/sys/kernel/arch")
    if kernel:
        return f"qemu-user on an {kernel} CPU" if _family(kernel) != _family(arch) else None
    cpu = _cpuinfo_family(_read("/proc/cpuinfo") or "")
    if cpu is None or cpu == _family(arch):
        return None
    return "qemu-user on an x86_64 CPU" if cpu == "x86" else "qemu-user on an ARM CPU"


def describe() -> dict:
    """The machine this process runs on; `via_ssh` says whether it was started over SSH (a remote bench)."""
    from edgecls.runtime.backends.threads import usable_cpus

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable_cpus(),
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
