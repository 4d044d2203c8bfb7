"""`--artifact fastest` on the host side: which bench result to read, whether it was measured on the machine
that will run the choice, and the derived profile that records the choice.

The choice (runtime/bench/fastest.py) becomes a *derived profile*: the profile used, renamed NAME-fastest, with
`artifacts` led by the chosen artifact, `backends` led by the engine that ran it and `threads` the row's, and in
`notes.fastest` where it came from (bench file, row, p50, bundle). `edgecls flash --artifact fastest` writes it
as a user profile (devices/profiles.py: the first user profiles folder), so `edgecls run --device NAME-fastest`
runs exactly what was benched, and `--artifact fastest` without --bench reads the bench it names again. A file
of that name that edgecls did not write (no `notes.fastest.written_by` mark) is the user's: never replaced.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from edgecls.devices.profiles import DeviceProfile, ProfileError, user_profile_dirs
from edgecls.runtime.bench.fastest import FASTEST, Choice, choose, load_bench, machine_mismatch, make_bench_hint
from edgecls.runtime.bundle import Bundle
from edgecls.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.devices")
SUFFIX = "-fastest"
MARK = "edgecls --artifact fastest"  # notes.fastest.written_by of the profiles this module writes

__all__ = [
    "FASTEST",
    "check_bench_option",
    "check_machine",
    "derive",
    "pick",
    "record",
    "check_record",
    "chosen",
    "served_refusal",
    "Benched",
    "tie_note",
]


def check_bench_option(artifact: str | None, bench: str | None, force_bench: bool = False) -> None:
    """--bench and --force-bench mean something only with --artifact fastest: alone they would be ignored."""
    if bench and artifact != FASTEST:
        raise EdgeclsError(f"--bench {bench} is read only with --artifact {FASTEST}: add it, or leave --bench out")
    if force_bench and artifact != FASTEST:
        raise EdgeclsError(f"--force-bench is read only with --artifact {FASTEST}: add it, or leave --force-bench out")


def _fastest_notes(profile: DeviceProfile) -> dict | None:
    notes = profile.notes.get("fastest") if isinstance(profile.notes, dict) else None
    return notes if isinstance(notes, dict) and notes.get("written_by") == MARK else None


def chosen(profile: DeviceProfile) -> dict | None:
    """The choice a derived profile records (row, artifact, engine, threads, bench...), or None for another one."""
    return _fastest_notes(profile)


def served_refusal(choice, artifact: str | None, backend: str | None) -> str | None:
    """Why what loaded (`artifact` in `backend`) is not what was benched (a Choice, or a derived profile's
    `chosen` notes), or None: an engine missing where the daemon runs is passed over for the next one, unmeasured."""
    get = choice.get if isinstance(choice, dict) else lambda key: getattr(choice, key)
    if artifact == get("artifact") and (not get("engine") or backend == get("engine")):
        return None
    return (
        f"--artifact {FASTEST}: {get('row')} was timed with {get('engine')}, but {artifact} in {backend} loaded "
        f"here: install {get('engine')} (openvino: `pip install 'edgecls[openvino]'`), or bench again here"
    )


def derived_name(profile: DeviceProfile) -> str:
    """NAME-fastest; a derived profile keeps its own name (choosing again replaces its choice)."""
    return profile.name if _fastest_notes(profile) else f"{profile.name}{SUFFIX}"


def record_path(profile: DeviceProfile) -> Path:
    return user_profile_dirs()[0] / f"{derived_name(profile)}.json"


def recorded_bench(profile: DeviceProfile) -> str | None:
    """The bench file the last choice recorded for this profile came from, or None."""
    notes = _fastest_notes(profile)
    if notes is None:
        for folder in user_profile_dirs():
            path = folder / f"{derived_name(profile)}.json"
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            fastest = (data.get("notes") or {}).get("fastest") if isinstance(data, dict) else None
            if isinstance(fastest, dict) and fastest.get("written_by") == MARK:
                notes = fastest
                break
    return str(notes["bench"]) if notes and notes.get("bench") else None


def pick(bundle: Bundle, profile: DeviceProfile, bench: str | None, threads: int | None = None) -> tuple:
    """(bench document, Choice): from `bench`, else the bench the profile's recorded choice came from; at
    `threads` (else the profile's; neither: any thread count, the row's becomes the choice's)."""
    path = bench or recorded_bench(profile)
    if not path or (not bench and not Path(path).is_file()):
        gone = f" (the one recorded for profile {profile.name}, {path}, is gone)" if path else ""
        raise EdgeclsError(
            f"--artifact {FASTEST} needs a bench result of this bundle{gone}: make one with "
            f"{make_bench_hint(str(bundle.root))} (add --device user@host to measure on the device), "
            f"then pass --bench bench.json"
        )
    doc = load_bench(path, str(bundle.root))
    threads = threads or _base_threads(profile)
    return doc, choose(doc, bundle, str(path), threads, tuple(profile.artifacts), tuple(profile.backends))


def _base_threads(profile: DeviceProfile) -> int | None:
    """The thread count a choice is filtered on: a derived profile's is the last row's, so choosing again through
    it asks its base profile's (no fixed count: any row qualifies, as for the first choice)."""
    notes = _fastest_notes(profile)
    if notes is None or not notes.get("profile"):
        return profile.threads
    from edgecls.devices.profiles import load_profile

    try:
        return load_profile(notes["profile"]).threads
    except EdgeclsError:  # the base profile is gone: the derived one's count, as before
        return profile.threads


def tie_note(choice: Choice) -> str:
    """What the choice was tied with, for its progress line ("" when it won alone)."""
    if not choice.tied:
        return ""
    return f" (tied within the round spread with {', '.join(choice.tied)}: the profile's order chose)"


def check_machine(doc: dict, bench: str, here: dict | None, where: str, force: bool, say) -> None:
    """Refuse a bench measured on another kind of machine than the one that will run the choice (`here`: its
    description; None: unknown, `where` names it), unless `force`, when a warning line says so instead.

    Refused by default: the ranking of artifacts and engines flips between CPUs (int8 wins with VNNI, loses
    without), and a wrong choice costs every frame, silently; benching there costs one command."""
    if here is None:
        remote = (doc.get("remote") or {}).get("device")
        local = f"{(doc.get('machine') or {}).get('hostname') or 'a host'}, not over SSH"
        why = None if remote and _same_host(remote, where) else f"it was measured on {remote or local}"
    else:
        why = machine_mismatch(doc.get("machine"), here)
    if not why:
        return
    if force:
        say(f"warning: --bench {bench} was measured on another machine than {where} ({why}); used (--force-bench)")
        return
    device = _ssh_device(where) if here is None else None
    raise EdgeclsError(
        f"--bench {bench} was not measured on {where} ({why}): bench there ({make_bench_hint(device=device)}), "
        f"or pass --force-bench if it is the same kind of machine"
    )


def _ssh_device(target: str) -> str:
    """user@host[:port] of an SSH target, as `edgecls bench --device` takes it (without the :/root suffix)."""
    from edgecls.devices.ssh import parse_target

    parsed = parse_target(target)
    return parsed.destination + (f":{parsed.port}" if parsed.port else "")


def _same_host(a: str, b: str) -> bool:
    from edgecls.devices.ssh import parse_target

    try:
        ta, tb = parse_target(a), parse_target(b)
    except EdgeclsError:
        return False
    return ta is not None and tb is not None and (ta.host, ta.port) == (tb.host, tb.port)


def derive(profile: DeviceProfile, choice: Choice, bundle: Bundle) -> DeviceProfile:
    """The profile that runs `choice`: its artifact and engine first, its threads, where it came from."""
    base = (_fastest_notes(profile) or {}).get("profile") or profile.name
    notes = {
        **profile.notes,
        "fastest": {
            "written_by": MARK,
            "profile": base,
            "bench": str(Path(choice.bench).resolve()),
            "row": choice.row,
            "artifact": choice.artifact,
            "engine": choice.engine,
            "threads": choice.threads,
            "p50_ms": round(choice.p50_ms, 4),
            "bundle": str(Path(bundle.root).resolve()),
            "bundle_created": bundle.manifest.created,
            "chosen": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }
    derived = replace(
        profile,
        name=derived_name(profile),
        description=f"{base}, running the fastest row of {Path(choice.bench).name}: {choice.row} at "
        f"{choice.threads or 'default'} thread(s), p50 {choice.p50_ms:.3f} ms",
        artifacts=(choice.artifact, *(a for a in profile.artifacts if a != choice.artifact)),
        backends=choice.backends(profile.backends),
        threads=choice.threads,
        notes=notes,
        **_engine_settings(choice),
    )
    derived.validate(f"the derived profile {derived.name}")
    return derived


def _engine_settings(choice: Choice) -> dict:
    """The profile fields that make the engine run as the bench timed it: OpenVINO on the device the row ran on at
    its default f32 (a profile's "GPU,CPU" or f16 was never timed nor accuracy-checked), ONNX Runtime with the
    row's provider. An older bench without the provider leaves the profile's settings."""
    if not choice.provider:
        return {}
    if choice.engine == "openvino":
        return {"openvino_device": choice.provider, "openvino_precision": ""}
    if choice.engine == "onnxruntime":
        return {"providers": (choice.provider,)}
    return {}


def check_record(derived: DeviceProfile) -> Path:
    """Where `record` will write, refused now (before any flash) when the folder cannot be written, or when a file
    of that name in any user profiles folder is the user's own (a later folder's would be shadowed by ours)."""
    folders = user_profile_dirs()
    for folder in folders:
        path = folder / f"{derived.name}.json"
        if path.exists() and _mark(path) != MARK:
            raise ProfileError(
                f"{path} is a profile of your own (edgecls did not write it), and the choice of --artifact "
                f"{FASTEST} is recorded under that name: rename or move your file; edgecls never replaces it"
            )
    _check_writable(folders[0])
    return folders[0] / f"{derived.name}.json"


def _mark(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return ((data.get("notes") or {}).get("fastest") or {}).get("written_by") if isinstance(data, dict) else None


def _check_writable(folder: Path) -> None:
    """The profiles folder the choice is written to, or the folder it would be made in, can be written."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    why = None
    if existing is None or not existing.is_dir():
        why = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable"
    if why:
        raise ProfileError(
            f"the profiles folder {folder} cannot be written ({why}), and the --artifact {FASTEST} choice is "
            f"recorded there: set EDGECLS_PROFILES to a folder you can write, or fix its permissions"
        )


def record(derived: DeviceProfile) -> Path:
    """Write the derived profile into the first user profiles folder, atomically; returns its path."""
    from edgecls.runtime.atomic import write_json

    path = check_record(derived)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(derived).items()}
    write_json(path, data)
    return path


class Benched:
    """A profile recording an --artifact fastest choice, as the daemon's Classifier reads it: the same fields, and
    `for_bundle(bundle)`, which leaves out the choice's opt-in engine (OpenVINO) for a bundle its bench does not
    cover: the gate never ran that engine, and only that bench's accuracy vouched for it on the bundle it measured.
    A hot reload onto another bundle then serves in the default engine, with a warning, not unchecked."""

    def __init__(self, profile: DeviceProfile):
        self.profile = profile

    def __getattr__(self, name):
        return getattr(self.profile, name)

    def for_bundle(self, bundle: Bundle) -> DeviceProfile:
        from edgecls.runtime.backends.registry import OPT_IN
        from edgecls.runtime.bench.fastest import bundle_mismatch

        notes = chosen(self.profile) or {}
        engine = notes.get("engine")
        if engine not in {cls.name for classes in OPT_IN.values() for cls in classes}:
            return self.profile
        try:
            why = bundle_mismatch(load_bench(notes.get("bench")), bundle)
        except EdgeclsError as exc:
            why = str(exc)
        if why is None:
            return self.profile
        log.warning(
            "%s serves in its default engine, not %s: %s was chosen by the bench %s of another bundle (%s), and "
            "only that bench checked its accuracy: bench this bundle and choose again (--artifact fastest --bench)",
            bundle.root,
            engine,
            engine,
            notes.get("bench"),
            why,
        )
        return replace(self.profile, backends=tuple(b for b in self.profile.backends if b != engine))


def benched(profile):
    """`profile` as `Benched` where it records an --artifact fastest choice, else as it is."""
    return Benched(profile) if isinstance(profile, DeviceProfile) and chosen(profile) else profile
