"""The model bundle: manifest.json + artifacts + labels.txt, each with its sha256.

It is the contract between converters, runtime, bench and flash: nothing downstream reads a
Keras file. A bundle is a directory or a single uncompressed .tar of one.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from runtime.errors import EdgeclsError
from runtime.preprocess import PreprocessSpec

MANIFEST = "manifest.json"
LABELS = "labels.txt"
BUNDLE_FORMAT = "edgecls-bundle/1"


class BundleError(EdgeclsError):
    """A bundle that is missing, incomplete or tampered with."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorQuant:
    """Affine quantization of a model input or output: real = scale * (q - zero_point)."""

    dtype: str  # float32 | int8 | uint8
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "uint8") and self.scale > 0


@dataclass(frozen=True)
class Artifact:
    name: str  # e.g. "tflite-int8"
    file: str
    format: str  # tflite | onnx
    precision: str  # fp32 | fp16 | int8
    size_bytes: int
    sha256: str
    input: TensorQuant
    output: TensorQuant
    accuracy: float | None = None
    agreement: float | None = None
    max_prob_diff: float | None = None
    macs: int | None = None
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Artifact":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["input"], d["output"] = TensorQuant(**d["input"]), TensorQuant(**d["output"])
        return cls(**d)


@dataclass
class Manifest:
    labels: list
    preprocess: PreprocessSpec
    head: str  # softmax | sigmoid
    artifacts: list  # list[Artifact]
    reference_accuracy: float | None = None
    source: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    pruning: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # other bundle files (labels.txt, ...) -> sha256
    created: str = ""
    format: str = BUNDLE_FORMAT

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "labels": self.labels,
            "input": {"shape": [1, *self.preprocess.shape], **self.preprocess.to_dict()},
            "head": self.head,
            "reference_accuracy": self.reference_accuracy,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "source": self.source,
            "calibration": self.calibration,
            "pruning": self.pruning,
            "versions": self.versions,
            "files": self.files,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        return cls(
            labels=list(d["labels"]),
            preprocess=PreprocessSpec.from_dict(d["input"]),
            head=d.get("head", "softmax"),
            artifacts=[Artifact.from_dict(a) for a in d["artifacts"]],
            reference_accuracy=d.get("reference_accuracy"),
            source=d.get("source", {}),
            calibration=d.get("calibration", {}),
            pruning=d.get("pruning", {}),
            versions=d.get("versions", {}),
            files=d.get("files", {}),
            created=d.get("created", ""),
            format=d.get("format", BUNDLE_FORMAT),
        )


@dataclass
class Bundle:
    root: Path
    manifest: Manifest

    @property
    def labels(self) -> list:
        return self.manifest.labels

    def artifact(self, name: str) -> Artifact:
        for a in self.manifest.artifacts:
            if a.name == name:
                return a
        have = ", ".join(a.name for a in self.manifest.artifacts)
        raise BundleError(f"bundle {self.root} has no artifact {name!r}: it has {have}")

    def path_of(self, artifact: Artifact) -> Path:
        return self.root / artifact.file

    def verify(self, artifact: Artifact) -> Path:
        """Check the artifact's size and sha256 against the manifest before anything loads it."""
        path = self.path_of(artifact)
        if not path.is_file():
            raise BundleError(f"bundle {self.root} is incomplete: {artifact.file} is missing (convert again or copy the whole bundle)")
        digest = sha256_file(path)
        if digest != artifact.sha256:
            raise BundleError(
                f"{path} does not match the manifest (sha256 {digest[:12]}… != {artifact.sha256[:12]}…): "
                f"the file was modified or corrupted; copy the bundle again"
            )
        return path


def _extract_tar(path: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="edgecls-bundle-"))
    try:
        with tarfile.open(path) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, filter="data")
            else:  # Python < 3.11.4 (e.g. Raspberry Pi OS Bookworm's 3.11.2): refuse escaping members ourselves
                for member in tar.getmembers():
                    dest = (target / member.name).resolve()
                    if not (member.isfile() or member.isdir()) or target.resolve() not in (dest, *dest.parents):
                        raise BundleError(f"bundle archive {path} has an unsafe member {member.name!r}")
                tar.extractall(target)
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"cannot read bundle archive {path}: {exc}") from exc
    inner = [p for p in target.iterdir() if p.is_dir()]
    return inner[0] if not (target / MANIFEST).exists() and len(inner) == 1 else target


def load_bundle(path) -> Bundle:
    """Open a bundle directory (or .tar) and parse its manifest; artifacts are verified on use."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist: create one with `edgecls convert RUN --out {path}`")
    root = _extract_tar(path) if path.is_file() else path
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a bundle: it has no {MANIFEST} (create one with `edgecls convert`)")
    try:
        raw = json.loads(manifest_path.read_text())
        manifest = Manifest.from_dict(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{manifest_path} is malformed ({type(exc).__name__}: {exc}): convert the model again") from exc
    if not str(raw.get("format", "")).startswith("edgecls-bundle/"):
        raise BundleError(f"{manifest_path} is not an edgecls bundle manifest")
    return Bundle(root, manifest)
