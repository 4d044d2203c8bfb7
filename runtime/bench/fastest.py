"""`--artifact fastest`: the fastest row of a bench result (`edgecls bench --json`, here or with --device) that
may serve this bundle on this kind of machine: its artifact, the engine that ran it, and its thread count.

What qualifies, and why:
- the bench must be of this bundle: the manifest's sha256 where the bench records it, else every artifact it
  timed must match the manifest (its sha256, file, size and the gate's accuracy figure), so a bench of a
  retrained, re-converted or another model is refused rather than trusted; a bench recording neither sha256
  (an older edgecls) is refused: same sizes and accuracy figures do not make the same files;
- only artifacts in the bundle (every one there passed convert's accuracy gate; a device's release offers those
  flash sent) and rows at the thread count asked for, when one is fixed;
- a row of an opt-in engine (`onnx-int8@openvino`) is one the gate never ran: it qualifies only with accuracy
  measured by the bench (--data, on at least one image) that loses, counted in images, against the same artifact
  in its default engine (the engine the gate verified it in) on the same images and machine, at most what the
  bundle's own max drop (manifest `max_drop`, convert --max-drop) leaves after the gate's loss below the reference
  (manifest `reference_accuracy`): the two losses never add up past the limit. Without --data it is left out,
  with why: OpenVINO's int8 can disagree with ONNX Runtime's.
Whether the bench was made on this kind of machine is the caller's to ask (`machine_mismatch`): only it knows
which machine will run the choice. Plain data in, plain data out: runs on a device, without TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from edgecls.runtime.bundle import MANIFEST, Bundle, sha256_file
from edgecls.runtime.errors import EdgeclsError

FASTEST = "fastest"  # the --artifact value that asks for this choice
# What decides which artifact and engine win on a CPU: its family, its model, its int8 instructions, emulation
MACHINE_KEYS = ("arch", "cpu", "cpu_flags", "emulated")


def make_bench_hint(bundle: str = "BUNDLE", device: str | None = None) -> str:
    """The command that writes the bench result `--artifact fastest` reads, with the accuracy it needs."""
    where = f" --device {device}" if device else ""
    return f"`edgecls bench {bundle} --data TEST_IMAGES --json bench.json{where}`"


@dataclass(frozen=True)
class Choice:
    """The fastest qualifying row: what to run, in which engine, at how many threads, and what was left out."""

    artifact: str
    engine: str  # the backend that ran the row (litert, onnxruntime, openvino...): the one to put first
    threads: int | None  # None: the backend's default (runtime/backends/threads.py)
    p50_ms: float
    row: str  # the bench's row label, e.g. onnx-int8@openvino
    bench: str  # the bench file it came from
    refused: tuple = ()  # one line per row that did not qualify, naming why
    provider: str = ""  # the engine's device or provider the row ran on (OpenVINO's CPU, ORT's CPUExecutionProvider)
    tied: tuple = ()  # the other rows within the round spread of the fastest (the profile's order chose among them)

    def to_dict(self) -> dict:
        return {**asdict(self), "refused": list(self.refused)}

    def backends(self, order) -> tuple:
        """`order` (a profile's backends) with this choice's engine first: the daemon then runs that engine (an
        old bench that did not record the engine leaves the order as it is)."""
        if not self.engine:
            return tuple(order)
        return (self.engine, *(b for b in order if b != self.engine))


def load_bench(path, bundle_shown: str = "BUNDLE") -> dict:
    """A bench JSON document with the fields a choice reads; a one-line error naming the command otherwise."""
    path = Path(path)
    hint = make_bench_hint(bundle_shown)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeclsError(f"--bench {path} does not exist: write one with {hint}") from None
    except (OSError, ValueError) as exc:
        raise EdgeclsError(f"--bench {path} is not a readable JSON file ({str(exc).splitlines()[0]}): {hint}") from None
    if not isinstance(doc, dict):
        doc = {}
    records = doc.get("records")
    whole = isinstance(records, list) and records and all(isinstance(r, dict) for r in records)
    if not str(doc.get("format", "")).startswith("edgecls-bench/") or not whole:
        raise EdgeclsError(f"--bench {path} is not an edgecls bench result: write one with {hint}")
    for r in records:
        p50 = r.get("p50_ms")
        if not isinstance(r.get("artifact"), str) or isinstance(p50, bool) or not isinstance(p50, (int, float)):
            raise EdgeclsError(f"--bench {path}: a record lacks its artifact or p50_ms: write it again with {hint}")
    wrong = _wrong_type(doc)
    if wrong:
        raise EdgeclsError(f"--bench {path}: {wrong} (edited?): write it again with {hint}")
    return doc


_NUMBER, _TEXT = (int, float), (str,)
# What a choice reads beyond artifact and p50_ms, and the JSON types it may have (null or absent: not recorded).
_PARTS = ("bundle", "machine", "remote")
_FIELDS = {
    "accuracy": _NUMBER,
    "accuracy_images": (int,),
    "threads": (int,),
    "bundle_accuracy": _NUMBER,
    "size_bytes": (int,),
    "macs": _NUMBER,
    "engine": _TEXT,
    "backend": _TEXT,
    "format": _TEXT,
    "file": _TEXT,
    "sha256": _TEXT,
}


def _wrong_type(doc: dict) -> str | None:
    """The first field a choice reads that has the wrong JSON type, in words, or None."""
    for part in _PARTS:
        if doc.get(part) is not None and not isinstance(doc[part], dict):
            return f"its {part} is {json.dumps(doc[part])[:40]}, not an object"
    for part, key in (("bundle", "manifest_sha256"), ("remote", "device")):
        value = (doc.get(part) or {}).get(key)
        if value is not None and not isinstance(value, str):
            return f"its {part}.{key} is {json.dumps(value)[:40]}, not a string"
    for record in doc["records"]:
        for key, kinds in _FIELDS.items():
            value = record.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                return f"record {record['artifact']}: its {key} is {json.dumps(value)[:40]}, not {_kind(kinds)}"
    return None


def _kind(kinds: tuple) -> str:
    return {_NUMBER: "a number", (int,): "a whole number", _TEXT: "a string"}[kinds]


def _artifact_of(record: dict) -> str:
    """The bundle artifact a record timed: `onnx-int8@openvino` -> onnx-int8."""
    engine = record.get("engine")
    label = record["artifact"]
    return label[: -len(engine) - 1] if engine and label.endswith(f"@{engine}") else label


def _timed_records(doc: dict) -> list:
    """The records of bundle artifacts (the Keras baseline is not something a device can run)."""
    return [r for r in doc["records"] if r.get("format") != "keras"]


def bundle_mismatch(doc: dict, bundle: Bundle) -> str | None:
    """Why `doc` is not a bench of `bundle` (one phrase), or None when it is."""
    recorded = (doc.get("bundle") or {}).get("manifest_sha256")
    if recorded:
        here = sha256_file(Path(bundle.root) / MANIFEST)
        return None if recorded == here else f"its manifest sha256 is {recorded[:12]}…, this bundle's {here[:12]}…"
    source = (doc.get("bundle") or {}).get("source")
    if source is not None and source != bundle.manifest.source.get("model", {}):
        return "it timed another model (its source model differs)"
    have = {a.name: a for a in bundle.manifest.artifacts}
    installed_only = (Path(bundle.root) / "release.json").is_file()  # a device's release holds what flash sent
    for record in _timed_records(doc):
        name = _artifact_of(record)
        artifact = have.get(name)
        if artifact is None:
            if installed_only:
                continue
            return f"it timed {name}, which this bundle does not have"
        if not record.get("sha256"):  # same file name, size and gate accuracy: a re-conversion can match them all
            return (
                f"it records neither the bundle's manifest sha256 nor {name}'s sha256 (an older edgecls wrote it), "
                f"so whether it timed these very files cannot be told: bench again with this edgecls"
            )
        theirs = (record["sha256"][:12], record.get("file"), record.get("size_bytes"), record.get("bundle_accuracy"))
        ours = (artifact.sha256[:12], artifact.file, artifact.size_bytes, artifact.accuracy)
        if theirs != ours:
            return (
                f"its {name} differs from this bundle's (sha256, file, bytes, gate accuracy: "
                f"{', '.join(map(str, theirs))} there, {', '.join(map(str, ours))} here)"
            )
    return None


def machine_mismatch(measured: dict | None, here: dict) -> str | None:
    """How the machine a bench ran on differs from `here` in what ranks artifacts and engines, or None."""
    measured = measured or {}
    differs = [key for key in MACHINE_KEYS if measured.get(key) != here.get(key)]
    if not differs:
        return None
    return "; ".join(f"{key} {measured.get(key)!r} there, {here.get(key)!r} here" for key in differs)


def _gate_used(bundle: Bundle, name: str) -> float:
    """Points the gate already measured `name` below the bundle's reference (Keras), 0 when not recorded."""
    artifact = next((a for a in bundle.manifest.artifacts if a.name == name), None)
    reference = bundle.manifest.reference_accuracy
    if artifact is None or artifact.accuracy is None or reference is None:
        return 0.0
    return max(0.0, round((reference - artifact.accuracy) * 100, 6))


def _accuracy_refusal(record: dict, baseline: dict | None, bundle: Bundle) -> str | None:
    """Why an opt-in engine's row may not serve (the gate never ran that engine), or None when it may: it may lose
    against its default engine only what the bundle's max drop leaves after the gate's own loss below the reference,
    so the two never add up past the limit the bundle was converted with."""
    row, engine = record["artifact"], record.get("engine")
    name = _artifact_of(record)
    if record.get("accuracy") is None or baseline is None or baseline.get("accuracy") is None:
        return (
            f"{row}: {engine} was never run by the accuracy gate and this bench measured no accuracy to vouch for "
            f"it: bench with --data (the bundle's test images) to qualify it"
        )
    images = record.get("accuracy_images") or baseline.get("accuracy_images") or 0
    if images <= 0:
        return (
            f"{row}: {engine}'s accuracy was measured on no images (the bench records no accuracy_images): bench "
            f"again with --data (the bundle's test images) to qualify it"
        )
    max_drop, used = bundle.manifest.max_drop, _gate_used(bundle, name)
    lost = round((baseline["accuracy"] - record["accuracy"]) * images)
    if lost * 100 <= max(0.0, max_drop - used) * images:
        return None
    gate = f"; the gate measured {name} {used:.2f} points below the reference already" if used else ""
    return (
        f"{row}: {engine} disagrees with {name} in {baseline.get('backend') or 'its default engine'} (the engine "
        f"the gate verified): accuracy {record['accuracy']:.4f} vs {baseline['accuracy']:.4f} on the same "
        f"{images} images ({lost} more wrong){gate}, more than the bundle's {max_drop:g}-point max drop"
    )


def _spread(record: dict) -> float:
    """A row's round spread as a fraction ((max - min) / median of its interleaved round medians), 0 if unknown."""
    value = record.get("round_spread_pct")
    return value / 100 if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0.0


def _tied(fit: list) -> list:
    """The rows no faster than the fastest by less than their round spread (either's, the larger): on a shared or
    noisy machine their order is noise, so the profile's order decides among them rather than the last digit."""
    fastest = min(fit, key=lambda r: r["p50_ms"])
    return [r for r in fit if r["p50_ms"] <= fastest["p50_ms"] * (1 + max(_spread(fastest), _spread(r)))]


def choose(
    doc: dict, bundle: Bundle, bench: str, threads: int | None = None, artifacts: tuple = (), engines: tuple = ()
) -> Choice:
    """The fastest qualifying row of `doc` (checked to be of `bundle` first); `threads` given: rows at that count
    only. Rows within their round spread of the fastest are tied: the first in `artifacts`, then in `engines` (a
    profile's order) wins, then the default engine, then the manifest's order. EdgeclsError when none qualifies."""
    why = bundle_mismatch(doc, bundle)
    if why:
        raise EdgeclsError(f"--bench {bench} is not a bench of bundle {bundle.root}: {why}: {make_bench_hint()}")
    order = [a.name for a in bundle.manifest.artifacts]
    records = [r for r in _timed_records(doc) if _artifact_of(r) in order]
    if not records:
        raise EdgeclsError(f"--bench {bench} timed none of the artifacts bundle {bundle.root} has: {make_bench_hint()}")
    at_threads = [r for r in records if threads is None or r.get("threads") == threads]
    if not at_threads:
        timed = sorted({str(r.get("threads") or "default") for r in records})
        raise EdgeclsError(
            f"--bench {bench} timed threads {','.join(timed)}, not {threads} (the profile's or --threads): "
            f"bench again with `--threads {threads}`"
        )
    defaults = {(_artifact_of(r), r.get("threads")): r for r in at_threads if not r.get("engine")}
    refused, fit = [], []
    for record in at_threads:
        baseline = defaults.get((_artifact_of(record), record.get("threads")))
        refusal = _accuracy_refusal(record, baseline, bundle) if record.get("engine") else None
        if refusal:
            refused.append(refusal)
        elif record.get("p50_ms") and record["p50_ms"] > 0:
            fit.append(record)
    if not fit:
        raise EdgeclsError(f"--bench {bench}: no row qualifies ({'; '.join(refused) or 'no timings'})")

    def rank(record: dict) -> tuple:
        name, engine = _artifact_of(record), record.get("backend") or record.get("engine") or ""
        return (
            list(artifacts).index(name) if name in artifacts else len(artifacts),
            list(engines).index(engine) if engine in engines else len(engines),
            bool(record.get("engine")),
            order.index(name),
            record["p50_ms"],
        )

    tied = _tied(fit)
    best = min(tied, key=rank)
    return Choice(
        artifact=_artifact_of(best),
        engine=best.get("backend") or best.get("engine") or "",
        threads=best.get("threads"),
        p50_ms=float(best["p50_ms"]),
        row=best["artifact"],
        bench=str(bench),
        refused=tuple(refused),
        provider=best.get("provider") if isinstance(best.get("provider"), str) else "",
        tied=tuple(r["artifact"] for r in tied if r is not best),
    )
