"""The model bundle: manifest.json + artifacts + labels.txt, each with its sha256.

It is the contract between converters, runtime, bench and flash: nothing downstream reads a
Keras file. A bundle is a directory or a single uncompressed .tar of one; a .tar is unpacked
once into a cache folder named by its sha256 and reused by every later load.
File names in the manifest are plain names inside the bundle, checked on load and on use.

Since issue 9 a manifest may list `checks` (held-out images with expected labels, for the on-device smoke
test; their sha256 are in `files`), a bundle may carry `manifest.json.sig` (runtime/install/signature.py),
and an installed release on a device holds `release.json` naming the artifacts flash sent there: loading
such a release offers only those. Since issue 12 a manifest may hold `reference`: per artifact name,
the statistics of the test split through that artifact, which the daemon's drift monitoring compares
with (runtime/monitor/). It is plain data inside the manifest (covered by its signature); its content
is checked where it is used, so a bad one turns monitoring off, never the model. Manifests without
these fields load as before.

Since issue 24 (imported models) a manifest may say `output: "logits"` (the runtime applies softmax, or
sigmoid for a one-unit sigmoid head; absent means "probs", the artifact's output is already probabilities),
`input.layout` may be "NCHW" (`input.shape` is then [1, C, H, W]), and an artifact may name the model's
`input_name`/`output_name` (empty: its first input and output). Absent, each means what it meant before.
Such a manifest lists them in `requires` (FEATURES, computed in `Manifest.to_dict`, absent when empty), so an
edgecls that does not know one refuses the bundle in one line instead of serving it wrongly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec

MANIFEST = "manifest.json"
LABELS = "labels.txt"
RELEASE = "release.json"  # written by runtime/install into a device's release: which artifacts were sent
BUNDLE_FORMAT = "edgecls-bundle/1"
OUTPUTS = ("probs", "logits")  # what an artifact's output holds: probabilities, or logits the runtime turns into them
# What a manifest may need beyond edgecls-bundle/1 (its `requires`), with the edgecls version that first serves each.
# A loader refuses a bundle that needs one it does not know; flash and bench --device refuse a device whose edgecls
# predates one (0.2.0 ignores `requires`, and served such bundles wrongly rather than loudly).
FEATURES = {"nchw-input": "0.3.0", "logits-output": "0.3.0", "named-tensors": "0.3.0", "raw-pixel-input": "0.3.0"}
CACHE_ENV = "EDGECLS_BUNDLE_CACHE"
_STALE_PARTIAL_S = 3600  # an unpack older than this was interrupted (a Pi unpacks a bundle in seconds)


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
    input_name: str = ""  # the model's input tensor to feed; "" = its first
    output_name: str = ""  # the model's output tensor to read; "" = its first

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Artifact:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["input"], d["output"] = TensorQuant(**d["input"]), TensorQuant(**d["output"])
        for key in ("input_name", "output_name"):
            if not isinstance(d.get(key, ""), str):
                raise TypeError(f"artifact {d.get('name')!r}: {key} is {json.dumps(d[key])[:40]}, not a string")
        return cls(**d)


@dataclass
class Manifest:
    labels: list
    preprocess: PreprocessSpec
    head: str  # softmax | sigmoid
    artifacts: list  # list[Artifact]
    reference_accuracy: float | None = None
    max_drop: float = 1.0  # the accuracy gate's limit in points (convert --max-drop); older bundles: the default
    source: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    pruning: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # other bundle files (labels.txt, ...) -> sha256
    created: str = ""
    checks: list = field(default_factory=list)  # [{"file": "check-00.png", "label": "cat"}]: smoke test
    reference: dict = field(default_factory=dict)  # artifact name -> reference statistics (runtime/monitor/stats.py)
    format: str = BUNDLE_FORMAT
    output: str = "probs"  # one of OUTPUTS
    requires: list = field(default_factory=list)  # as read from a manifest; `needs()` adds what the fields imply

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"output is {json.dumps(self.output)[:40]}: use one of {', '.join(OUTPUTS)}")

    def needs(self) -> list:
        """The FEATURES this manifest's own fields need (and any its file already listed), sorted.

        raw-pixel-input: uint8 pixels fed to a quantized input as they are; edgecls 0.2.0 quantized them again
        (the same only for scale 1, zero point 0)."""
        spec, arts = self.preprocess, self.artifacts
        implied = {
            "nchw-input": spec.layout == "NCHW",
            "logits-output": self.output == "logits",
            "named-tensors": any(a.input_name or a.output_name for a in arts),
            "raw-pixel-input": spec.dtype == "uint8"
            and any(a.input.scale and (a.input.scale, a.input.zero_point) != (1.0, 0) for a in arts),
        }
        return sorted(set(self.requires) | {name for name, needed in implied.items() if needed})

    def to_dict(self) -> dict:
        needs = self.needs()
        return {
            "format": self.format,
            **({"requires": needs} if needs else {}),  # absent when empty: old-style manifests stay as they were
            "labels": self.labels,
            "input": {"shape": [1, *self.preprocess.tensor_shape], **self.preprocess.to_dict()},
            "head": self.head,
            "output": self.output,
            "reference_accuracy": self.reference_accuracy,
            "max_drop": self.max_drop,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "source": self.source,
            "calibration": self.calibration,
            "pruning": self.pruning,
            "versions": self.versions,
            "files": self.files,
            "created": self.created,
            "checks": self.checks,
            **({"reference": self.reference} if self.reference else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        """Raises TypeError (or KeyError, ValueError) for a manifest whose fields have the wrong JSON types."""
        if not isinstance(d, dict):
            raise TypeError(f"the manifest is a {type(d).__name__}, not an object")
        labels = _typed(d, "labels", list, None, str)
        files = _typed(d, "files", dict, {}, str)
        if any(not isinstance(k, str) for k in files):
            raise TypeError("files has a name that is not a string")
        requires = _typed(d, "requires", list, [], str)
        check_features(requires)
        return cls(
            labels=labels,
            preprocess=PreprocessSpec.from_dict(_typed(d, "input", dict, None)),
            head=d.get("head", "softmax"),
            artifacts=[Artifact.from_dict(a) for a in _typed(d, "artifacts", list, None, dict)],
            reference_accuracy=d.get("reference_accuracy"),
            max_drop=_max_drop(d.get("max_drop", 1.0)),
            source=d.get("source", {}),
            calibration=d.get("calibration", {}),
            pruning=d.get("pruning", {}),
            versions=d.get("versions", {}),
            files=files,
            created=d.get("created", ""),
            checks=[dict(c) for c in _typed(d, "checks", list, [], dict)],
            reference=_reference(d.get("reference")),
            format=d.get("format", BUNDLE_FORMAT),
            output=d.get("output", "probs"),
            requires=requires,
        )


def _max_drop(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise TypeError(f"max_drop is {json.dumps(value)[:40]}, not a number of accuracy points from 0 to 100")
    return float(value)


def check_features(requires) -> None:
    """BundleError naming what a manifest requires that this edgecls does not know (a later version's feature)."""
    unknown = [name for name in requires if name not in FEATURES]
    if unknown:
        from importlib import metadata

        try:  # from the package metadata, as devices/ reads it: nothing below edgecls imports its __init__
            here = f"edgecls {metadata.version('edgecls')} here"
        except metadata.PackageNotFoundError:  # a checkout that is not installed
            here = "this edgecls"
        raise BundleError(
            f"this bundle needs {', '.join(map(repr, unknown))}, which {here} does not have: "
            "update edgecls on this device (`edgecls flash ... --setup`, or `pip install --upgrade 'edgecls[runtime]'`)"
        )


def unserved(requires, version: str) -> list:
    """What of `requires` an edgecls of `version` predates (unknown names included): the host's check before it
    sends a bundle to a device, whose edgecls may be older than `requires` itself."""

    def key(text: str) -> tuple:
        return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])

    return [name for name in requires if name not in FEATURES or key(version) < key(FEATURES[name])]


def _typed(d: dict, key: str, kind: type, default, items: type | None = None):
    """d[key] if it is a `kind` (whose values, or items, are `items`); `default` when absent (None: required)."""
    if key not in d and default is not None:
        return type(default)(default)
    value = d[key]
    if not isinstance(value, kind):
        raise TypeError(f"{key} is {json.dumps(value)[:40]}, not a JSON {'array' if kind is list else 'object'}")
    values = value.values() if isinstance(value, dict) else value
    if items is not None and any(not isinstance(v, items) for v in values):
        raise TypeError(f"{key} holds an entry that is not a {'string' if items is str else 'JSON object'}")
    return kind(value)


def _reference(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"reference is a {type(value).__name__}, not an object of artifact name -> statistics")
    return dict(value)


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
        return self.root / check_file_name(artifact.file, f"bundle {self.root}: artifact {artifact.name}")

    def verify(self, artifact: Artifact) -> Path:
        """Check the artifact's name, place and sha256 against the manifest before anything loads it."""
        path = self.path_of(artifact)
        if path.is_symlink() and self.root.resolve() not in path.resolve().parents:
            raise BundleError(
                f"bundle {self.root}: {artifact.file} is a link to {path.resolve()}, outside the bundle: "
                f"copy the real file into the bundle"
            )
        if not path.is_file():
            raise BundleError(
                f"bundle {self.root} is incomplete: {artifact.file} is missing (convert again or copy the whole bundle)"
            )
        digest = sha256_file(path)
        if digest != artifact.sha256:
            raise BundleError(
                f"{path} does not match the manifest (sha256 {digest[:12]}… != {artifact.sha256[:12]}…): "
                f"the file was modified or corrupted; copy the bundle again"
            )
        return path

    def verify_files(self) -> None:
        """Every file the manifest's `files` lists, by sha256, and labels.txt against the manifest's labels:
        what flash checks before it sends a bundle, so a bundle edited by hand is refused here too."""
        for name, digest in self.manifest.files.items():
            path = self.root / check_file_name(name, f"bundle {self.root}: the files list")
            if path.is_symlink() or not path.is_file() or sha256_file(path) != digest:
                raise BundleError(
                    f"bundle {self.root}: {name} is missing or does not match the manifest (sha256): "
                    f"the bundle was edited or damaged; copy or convert it again"
                )
        labels = self.root / LABELS
        # split("\n") as convert joins them: splitlines() would also cut a label at U+2028 or a vertical tab
        if labels.is_file() and _lines(labels.read_text(encoding="utf-8", errors="replace")) != self.labels:
            raise BundleError(
                f"bundle {self.root}: {LABELS} does not list the manifest's labels in the same order: "
                f"the bundle was edited or damaged; copy or convert it again"
            )


def _lines(text: str) -> list:
    """The lines of a text file written as "\n".join(lines) + "\n" (labels.txt), cut at "\n" only."""
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def check_file_name(name, where: str) -> str:
    """`name` if it is a plain file name inside the bundle, else a BundleError.

    Flash writes files on devices by these names, so no folders, `..` or absolute paths.
    """
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise BundleError(
            f"{where} names the file {name!r}, which is not a plain file name inside the bundle "
            f"(no folders, '..' or absolute paths): the manifest was edited or damaged; convert again"
        )
    return name


# Names a device's release uses itself: flash would overwrite, forge or delete a bundle file of such a name.
SIGNATURE = MANIFEST + ".sig"  # the manifest's signature (`edgecls sign`); runtime/install/signature.py's too
DEVICE_NAMES = (MANIFEST, SIGNATURE, RELEASE)
DEVICE_NAMES_TEXT = f"{', '.join(DEVICE_NAMES)}, names starting with '.' or ending in .part or .tmp"


def device_reserved(name: str) -> bool:
    """Whether a device keeps `name` for itself: its release files, `.NAME.PID.part` staging and `.tmp` files."""
    return name in DEVICE_NAMES or name.startswith(".") or name.endswith((".part", ".tmp"))


def check_listed_names(manifest: Manifest, shown) -> None:
    """Every file the manifest lists (artifacts, files, check images) is a plain name no device uses itself."""
    listed = [(a.file, f"artifact {a.name}") for a in manifest.artifacts]
    listed += [(name, "the files list") for name in manifest.files]
    listed += [(check.get("file"), "check image") for check in manifest.checks]
    for name, where in listed:
        check_file_name(name, f"bundle {shown}: {where}")
        if device_reserved(name):
            raise BundleError(
                f"bundle {shown}: {where} names the file {name!r}, which devices keep for themselves "
                f"({DEVICE_NAMES_TEXT}): the manifest was edited or damaged; convert again"
            )


def bundle_cache_dir() -> Path:
    """Where .tar bundles are unpacked: $EDGECLS_BUNDLE_CACHE, else ~/.cache/edgecls/bundles.

    On disk rather than in the temp dir, which is RAM on a Raspberry Pi.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home directory (some service users)
        base = _private_temp_dir(Path(tempfile.gettempdir()) / f"edgecls-{os.getuid()}")
    return base / "edgecls" / "bundles"


def _private_temp_dir(path: Path) -> Path:
    """A folder in the shared temp dir that only we own: another user could otherwise plant a bundle there."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise BundleError(
            f"cannot create the bundle cache {path} ({exc.strerror}): set {CACHE_ENV} to a writable folder"
        ) from exc
    import stat

    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise BundleError(f"the bundle cache {path} is not a private folder of this user: remove it or set {CACHE_ENV}")
    return path


def _read_manifest(root: Path, shown: Path) -> Manifest:
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{shown} is not a bundle: it has no {MANIFEST} (create one with `edgecls convert`)")
    try:
        raw = json.loads(manifest_path.read_text())
        manifest = Manifest.from_dict(raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(
            f"{shown}: {MANIFEST} is malformed ({type(exc).__name__}: {exc}): convert the model again"
        ) from exc
    if not str(raw.get("format", "")).startswith("edgecls-bundle/"):
        raise BundleError(f"{shown}: {MANIFEST} is not an edgecls bundle manifest")
    check_listed_names(manifest, shown)
    for check in manifest.checks:
        if check.get("label") not in manifest.labels or check["file"] not in manifest.files:
            raise BundleError(
                f"{shown}: check image {check['file']} has label {check.get('label')!r} or no sha256 "
                f"in the manifest: the manifest was edited or damaged; convert again"
            )
    _keep_installed_artifacts(root, manifest)
    return manifest


def _keep_installed_artifacts(root: Path, manifest: Manifest) -> None:
    """On a device, a release holds only the artifacts flash sent: offer only those (the manifest stays signed)."""
    release = root / RELEASE
    if not release.is_file():
        return
    try:
        sent = set(json.loads(release.read_text())["artifacts"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{root}: {RELEASE} is malformed ({exc}): flash the bundle again") from exc
    manifest.artifacts = [a for a in manifest.artifacts if a.name in sent]


def _bundle_root(folder: Path) -> Path:
    # convert writes the archive with the bundle's own folder inside it
    inner = [p for p in folder.iterdir() if p.is_dir()]
    return inner[0] if not (folder / MANIFEST).exists() and len(inner) == 1 else folder


def _extract(path: Path, target: Path) -> None:
    """Unpack `path` into `target`, refusing links, devices and names that would land outside it."""
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            inside = target.resolve()
            for member in members:
                dest = (inside / member.name).resolve()
                if not (member.isfile() or member.isdir()) or inside not in (dest, *dest.parents):
                    raise BundleError(
                        f"bundle archive {path} has an unsafe member {member.name!r}: "
                        f"only plain files inside the bundle are allowed; convert again"
                    )
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 checks again, and drops odd permissions
                tar.extractall(target, members, filter="data")
            else:  # e.g. Raspberry Pi OS Bookworm's 3.11.2: the loop above is the check
                tar.extractall(target, members)
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(
            f"cannot read bundle archive {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def _remove_stale_partials(cache: Path) -> None:
    now = time.time()
    for partial in cache.glob(".*.partial"):
        try:
            if now - partial.stat().st_mtime > _STALE_PARTIAL_S:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            pass


def _load_tar(path: Path) -> Bundle:
    """Unpack into the cache folder named by the archive's sha256 (once), then load from there.

    Unpacking goes to a temp folder beside it that is renamed into place only when the
    archive and its manifest check out, so a refused or interrupted unpack leaves nothing.
    """
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise BundleError(f"cannot read bundle archive {path}: {exc.strerror or exc}") from exc
    cache = bundle_cache_dir()
    final = cache / digest
    if final.is_dir():
        root = _bundle_root(final)
        return Bundle(root, _read_manifest(root, path))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.", suffix=".partial", dir=cache))
    except OSError as exc:
        raise BundleError(
            f"cannot unpack {path} into {cache} ({exc.strerror or exc}): set {CACHE_ENV} to a writable folder"
        ) from exc
    try:
        _extract(path, partial)
        manifest = _read_manifest(_bundle_root(partial), path)
        try:
            os.rename(partial, final)
        except OSError as exc:
            if not final.is_dir():  # else another process unpacked the same archive first: use theirs
                raise BundleError(
                    f"cannot unpack {path} into {cache} ({exc.strerror or exc}): set {CACHE_ENV} to a writable folder"
                ) from exc
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _remove_stale_partials(cache)
    return Bundle(_bundle_root(final), manifest)


def load_bundle(path) -> Bundle:
    """Open a bundle directory (or .tar) and parse its manifest; artifacts are verified on use."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist: create one with `edgecls convert RUN --out {path}`")
    if path.is_file():
        return _load_tar(path)
    return Bundle(path, _read_manifest(path, path))
