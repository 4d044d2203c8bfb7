"""Device profiles are small JSON files (devices/profiles/*.json, or a path of your own)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from runtime.errors import EdgeclsError

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str = ""
    artifacts: tuple = ("tflite-int8", "onnx-int8", "tflite-fp32", "onnx-fp32", "tflite-fp16")  # preference order
    backends: tuple = ("litert", "tflite-runtime")  # for .tflite, in order
    providers: tuple = ("CPUExecutionProvider",)  # ONNX Runtime execution providers, in order
    threads: int | None = None
    camera: str = "0"  # default source URI
    csi_pipeline: str = ""  # GStreamer pipeline for csi:// sources; {sensor}, {width}, {height}, {fps} filled in
    notes: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "DeviceProfile":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EdgeclsError(f"device profile {d.get('name', '?')} has unknown field(s) {unknown}: allowed are {sorted(known)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


def list_profiles() -> list:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name_or_path: str | None) -> DeviceProfile:
    """A built-in profile by name (see `list_profiles()`), a JSON file, or the generic CPU default."""
    if not name_or_path:
        return DeviceProfile(name="default")
    path = Path(name_or_path)
    if not path.is_file():
        path = PROFILE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise EdgeclsError(f"unknown device profile {name_or_path!r}: use one of {', '.join(list_profiles())} or a JSON file")
    try:
        return DeviceProfile.from_dict(json.loads(path.read_text()))
    except ValueError as exc:
        raise EdgeclsError(f"cannot read device profile {path}: {exc}") from exc
