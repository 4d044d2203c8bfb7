"""Device profiles are small JSON files: built-in ones in devices/profiles/, users' own in a folder or a file.

A profile says what a device needs and prefers: architecture and Python, the runtime packages `flash --setup`
installs, artifacts and engines in preference order, threads, ONNX Runtime providers and spinning, OpenVINO's
device and precision, the default camera (and the CSI
GStreamer pipeline), where releases are installed, the daemon's service name, and the p95 latency budget
of the post-flash smoke test. `edgecls run --device` and the Classifier read artifacts/backends/providers/
threads/ort_allow_spinning/openvino_device/openvino_precision/camera/csi_pipeline; flash reads the rest.

User profiles: every *.json in $EDGECLS_PROFILES (a folder; several separated by `:`), else in
$XDG_CONFIG_HOME/edgecls/profiles (~/.config/edgecls/profiles); one of the same name replaces a built-in.
Any command that takes a profile also takes a path to a JSON file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.formats import (
    DEFAULT_PREFERENCE,
    ONNX_FP32,
    ONNX_INT8,
    TFLITE_FP16,
    TFLITE_FP32,
    TFLITE_INT8,
)

PROFILE_DIR = Path(__file__).parent / "profiles"
PROFILES_ENV = "EDGECLS_PROFILES"
# Every artifact name, in the order a profile's validation error lists them (TFLite first, then ONNX).
ARTIFACTS = tuple(f.name for f in (TFLITE_INT8, TFLITE_FP16, TFLITE_FP32, ONNX_INT8, ONNX_FP32))
BACKENDS = ("litert", "tflite-runtime", "onnxruntime", "openvino")
OPENVINO_PRECISIONS = ("", "f32", "bf16", "f16")
ARCHITECTURES = ("any", "aarch64", "armv7l", "x86_64")
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class ProfileError(EdgeclsError):
    """A device profile that is malformed or names something unknown."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str = ""
    artifacts: tuple = DEFAULT_PREFERENCE  # preference order
    backends: tuple = ("litert", "tflite-runtime")  # engines in order; each format takes those that run it
    providers: tuple = ("CPUExecutionProvider",)  # ONNX Runtime execution providers, in order
    threads: int | None = None
    ort_allow_spinning: bool | None = None  # ONNX Runtime's idle intra-op threads spin; None: its default (yes)
    openvino_device: str = "CPU"  # OpenVINO device; "GPU,CPU": the first one present (a warning names the other)
    openvino_precision: str = ""  # the float ops' inference precision (fp32 and int8 artifacts); "": f32
    camera: str = "0"  # default source URI
    csi_pipeline: str = ""  # GStreamer pipeline for csi:// sources; {sensor}, {width}, {height}, {fps} filled in
    architecture: str = "any"  # uname -m of the device
    python: str = "3.10"  # the oldest Python the device runs edgecls with (requires-python in pyproject.toml)
    packages: tuple = ("edgecls[runtime]",)  # what `flash --setup` installs with pip on the device
    install_root: str = "/opt/edgecls"  # releases/, current, previous (a TARGET's :/root overrides it)
    service: str = "edgecls"  # the systemd unit restarted after a flash, when installed
    latency_budget_ms: float | None = None  # p95 per image in the smoke test; None: not checked
    allowed_signers: str = ""  # an OpenSSH allowed-signers file: flash refuses bundles not signed by these keys
    health_url: str = ""  # the daemon's /healthz on the device, waited for after the switch
    health_token_file: str = (
        ""  # a file ON the device holding the daemon's bearer token (the path is kept, never the token)
    )
    notes: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> DeviceProfile:
        where = where or f"device profile {d.get('name', '?') if isinstance(d, dict) else '?'}"
        if not isinstance(d, dict):
            raise ProfileError(f'{where} is not a JSON object: write {{"name": ..., ...}}')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ProfileError(f"{where} has unknown field(s) {unknown}: allowed are {sorted(known)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if "name" not in d:
            raise ProfileError(f'{where} has no "name"')
        profile = cls(**d)
        profile.validate(where)
        return profile

    def validate(self, where: str = "") -> None:
        """Raise ProfileError naming the first field that is wrong, what it is, and what was expected."""
        where = where or f"device profile {self.name}"

        def bad(name: str, expected: str):
            from edgecls.runtime.redact import redact

            raise ProfileError(f'{where}: "{name}" is {redact(repr(getattr(self, name)))}; expected {expected}')

        def strings(name: str, allowed=None, empty_ok=False):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or not all(isinstance(v, str) and v for v in value)
                or (not value and not empty_ok)
            ):
                bad(name, "a list of names" + ("" if empty_ok else " (at least one)"))
            if allowed:
                for v in value:
                    if v not in allowed:
                        bad(name, f"names from {', '.join(allowed)} ({v!r} is not one)")

        if not isinstance(self.name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", self.name):
            bad("name", "letters, digits, '.', '_' or '-'")
        for name in ("description", "camera", "csi_pipeline", "allowed_signers", "health_url", "python"):
            if not isinstance(getattr(self, name), str):
                bad(name, "a string")
        strings("artifacts", ARTIFACTS)
        strings("backends", BACKENDS)
        strings("providers")
        strings("packages", empty_ok=True)
        if self.threads is not None and (
            not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1
        ):
            bad("threads", "a whole number of at least 1, or null: every CPU but one (OpenVINO: its own default)")
        if self.ort_allow_spinning is not None and not isinstance(self.ort_allow_spinning, bool):
            bad("ort_allow_spinning", "true, false, or null for ONNX Runtime's default")
        if not isinstance(self.openvino_device, str) or not re.match(
            r"^[A-Z][A-Z0-9_.:]*(,[A-Z][A-Z0-9_.:]*)*$", self.openvino_device
        ):
            bad("openvino_device", 'an OpenVINO device such as "CPU", "GPU", "NPU", or "GPU,CPU" to fall back')
        if self.openvino_precision not in OPENVINO_PRECISIONS:
            bad("openvino_precision", f"one of {', '.join(map(repr, OPENVINO_PRECISIONS))}")
        if self.architecture not in ARCHITECTURES:
            bad("architecture", f"one of {', '.join(ARCHITECTURES)}")
        if not re.match(r"^3\.\d+$", self.python):
            bad("python", 'a version such as "3.11"')
        if not isinstance(self.install_root, str) or not (
            self.install_root.startswith("/") or self.install_root.startswith("~/")
        ):
            bad("install_root", "an absolute folder such as /opt/edgecls (or ~/edgecls)")
        if not isinstance(self.service, str) or not (self.service == "" or _SERVICE.match(self.service)):
            bad("service", 'a systemd unit name such as edgecls, or "" for none')
        budget = self.latency_budget_ms
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
            bad("latency_budget_ms", "a positive number of milliseconds, or null")
        if self.health_url and not self.health_url.startswith(("http://", "https://")):
            bad("health_url", "an http:// URL such as http://127.0.0.1:8080/healthz")
        if self.health_url:
            from edgecls.runtime.install.health import url_problem

            problem = url_problem(self.health_url)  # a password or token: shown and stored; never the value here
            if problem:
                raise ProfileError(f"{where}: {problem}")
        if not isinstance(self.health_token_file, str) or (
            self.health_token_file and not self.health_token_file.startswith(("/", "~/"))
        ):
            bad("health_token_file", 'an absolute path on the device such as /etc/edgecls/token, or ""')
        if not isinstance(self.notes, dict):
            bad("notes", "an object")


def user_profile_dirs() -> list:
    """The folders searched for users' own profiles, first wins (see the module docstring)."""
    if os.environ.get(PROFILES_ENV):
        return [Path(p).expanduser() for p in os.environ[PROFILES_ENV].split(os.pathsep) if p]
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [Path(base) / "edgecls" / "profiles"]


def _profile_files() -> dict:
    """name -> file, users' folders over the built-in one."""
    found = {p.stem: p for p in PROFILE_DIR.glob("*.json")}
    for folder in reversed(user_profile_dirs()):
        if folder.is_dir():
            found.update({p.stem: p for p in folder.glob("*.json")})
    return found


def list_profiles() -> list:
    return sorted(_profile_files())


def profile_source(name: str) -> str:
    path = _profile_files().get(name)
    return "built-in" if path is not None and path.parent == PROFILE_DIR else str(path)


def read_profile_file(path: str | os.PathLike) -> DeviceProfile:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read device profile {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ProfileError(f"device profile {path} is not valid JSON ({exc}): fix the file") from exc
    profile = DeviceProfile.from_dict(data, f"device profile {path}")
    return profile


def load_profile(name_or_path: str | None) -> DeviceProfile:
    """A profile by name (see `list_profiles()`), a JSON file, or the generic CPU default."""
    if not name_or_path:
        return DeviceProfile(name="default")
    path = Path(name_or_path)
    if path.is_file():
        return read_profile_file(path)
    found = _profile_files().get(str(name_or_path))
    if found is None:
        raise ProfileError(
            f"unknown device profile {name_or_path!r}: use one of {', '.join(list_profiles())}, a JSON "
            f"file, or add {name_or_path}.json to {user_profile_dirs()[0]}"
        )
    return read_profile_file(found)
