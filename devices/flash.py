"""`edgecls flash`: send a bundle to one or many devices and install it the way system updaters do.

One target: check the bundle here (sha256, signature when the profile trusts keys) -> ask the device what
it still needs -> send only those files -> the device verifies every sha256 and the signature, promotes
the release, switches `current` with one rename, restarts or waits for the daemon, runs the smoke test,
and keeps the new version or rolls back (runtime/install). Many targets: the same in parallel threads,
one result row each. Re-flashing what is installed sends nothing and changes nothing.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgecls.devices.profiles import DeviceProfile, load_profile
from edgecls.devices.ssh import SshError, check_serves
from edgecls.devices.targets import make_target
from edgecls.runtime.bundle import MANIFEST, Bundle, load_bundle
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.install.layout import os_error_text
from edgecls.runtime.install.signature import SIGNATURE, verify_manifest

log = logging.getLogger("edgecls.devices")
RESULTS = ("installed", "unchanged", "rolled back")


@dataclass
class FlashOptions:
    profile: DeviceProfile = field(default_factory=lambda: DeviceProfile(name="default"))
    ssh_config: str | None = None  # `ssh -F FILE`; default: the user's ~/.ssh/config
    ssh_options: tuple = ()  # extra `ssh -o` options
    python: str = "auto"  # the device's interpreter; auto: ROOT/venv/bin/python (made by --setup), else python3
    setup: bool = False  # pip install the profile's packages (and its trusted keys) first
    install_service: bool = False
    unit_dir: str = "/etc/systemd/system"
    service_config: str = "/etc/edgecls/run.toml"  # the daemon's --config on the device, written when absent
    service_port: int = 8080  # the daemon's HTTP port there (its /healthz is awaited after a flash)
    smoke: bool = True
    say: object = field(default=lambda message: None, repr=False)  # progress lines (setup takes minutes)
    lock_timeout: float = 60.0
    jobs: int = 8  # targets flashed at once
    artifact: str | None = None  # an artifact name, "fastest" (from `bench`), or None: the profile's first
    bench: str | None = None  # an `edgecls bench --json` result for --artifact fastest (None: the recorded one)
    force_bench: bool = False  # use a bench measured on another kind of machine (a warning line says so)


@dataclass
class FlashResult:
    target: str
    result: str  # installed | unchanged | rolled back | failed
    slot: str = ""
    reason: str = ""
    seconds: float = 0.0
    sent: list = field(default_factory=list)
    smoke: dict | None = None

    @property
    def ok(self) -> bool:
        return self.result in ("installed", "unchanged")

    def to_dict(self) -> dict:
        return asdict(self)


def choose_artifacts(bundle: Bundle, profile: DeviceProfile) -> list:
    """The profile's most preferred artifact that the bundle has: the only model file sent."""
    have = {a.name for a in bundle.manifest.artifacts}
    for name in profile.artifacts:
        if name in have:
            return [name]
    raise EdgeclsError(
        f"the bundle has none of the artifacts profile {profile.name} can use ({', '.join(profile.artifacts)}"
        f"; it has {', '.join(sorted(have))}): convert with one of those formats or choose another --device"
    )


def artifacts_for(bundle: Bundle, target_text: str, options: FlashOptions) -> tuple:
    """(artifact names to send, the profile the smoke test and the device run them with): the profile's
    choice, the --artifact named, or the fastest row of a bench measured on this target's kind of machine."""
    from edgecls.devices import fastest

    if options.artifact is None:
        return choose_artifacts(bundle, options.profile), options.profile
    if options.artifact != fastest.FASTEST:
        return [bundle.artifact(options.artifact).name], options.profile
    from edgecls.devices.ssh import is_ssh_target
    from edgecls.runtime.bench.machine import describe

    doc, choice = fastest.pick(bundle, options.profile, options.bench)
    here = None if is_ssh_target(target_text) else describe()  # a local folder: this machine runs the daemon
    fastest.check_machine(doc, choice.bench, here, target_text, options.force_bench, options.say)
    derived = fastest.derive(options.profile, choice, bundle)
    fastest.check_record(derived)  # a user's own file of that name: refused before anything is sent
    if here is not None:  # the daemon runs here: the chosen engine must load here, checked before anything is sent
        _check_loads(bundle, derived, choice)
    for line in choice.refused:
        options.say(f"{target_text}: left out {line}")
    options.say(
        f"{target_text}: fastest qualifying row of {choice.bench}: {choice.row} ({choice.engine}) at "
        f"{choice.threads or 'default'} thread(s), p50 {choice.p50_ms:.3f} ms{fastest.tie_note(choice)}"
    )
    return [choice.artifact], derived


def _check_loads(bundle: Bundle, derived: DeviceProfile, choice) -> None:
    """Refuse a choice whose engine does not load on this machine (another would serve, never timed)."""
    from edgecls.devices.fastest import served_refusal
    from edgecls.runtime.classifier import Classifier

    loaded = Classifier(bundle, profile=derived)
    why = served_refusal(choice, loaded.artifact.name, loaded.backend_name)
    if why:
        raise EdgeclsError(why)


def _bundle_files(bundle: Bundle, artifacts: list) -> dict:
    """name -> local path of everything to send, each checked against the manifest here first."""
    from edgecls.runtime.bundle import check_file_name, sha256_file

    files = {MANIFEST: bundle.root / MANIFEST}
    for name, digest in bundle.manifest.files.items():
        path = bundle.root / check_file_name(name, f"bundle {bundle.root}")
        if not path.is_file() or sha256_file(path) != digest:
            raise EdgeclsError(
                f"bundle {bundle.root}: {name} is missing or does not match the manifest: copy or "
                f"convert the bundle again"
            )
        files[name] = path
    for name in artifacts:
        artifact = bundle.artifact(name)
        files[artifact.file] = bundle.verify(artifact)
    if (bundle.root / SIGNATURE).is_file():
        files[SIGNATURE] = bundle.root / SIGNATURE
    return files


def flash_one(bundle: Bundle, target_text: str, options: FlashOptions) -> FlashResult:
    """Flash one target; refusals and failures raise EdgeclsError, a rollback is a result."""
    started = time.monotonic()
    artifacts, profile = artifacts_for(bundle, target_text, options)
    files = _bundle_files(bundle, artifacts)
    if profile.allowed_signers:  # refuse here already: nothing is sent for an unsigned bundle
        verify_manifest(bundle.root / MANIFEST, bundle.root / SIGNATURE, Path(profile.allowed_signers).expanduser())
    target = make_target(
        target_text, profile.install_root, config=options.ssh_config, options=options.ssh_options, python=options.python
    )
    if options.setup:
        # setup writes ROOT/venv: a root the flash would refuse (someone's folder) is refused before, untouched.
        # Asked of the device's bare python, as edgecls may not be there yet (runtime/install/rootcheck.py).
        target.check_root()
        target.setup(list(profile.packages), say=options.say)
        if profile.allowed_signers:
            target.trust(Path(profile.allowed_signers).expanduser().read_bytes())
    if bundle.manifest.needs():  # a device's edgecls older than `requires` ignores it: asked only then
        check_serves(bundle.manifest.needs(), target.edgecls_version(), target_text)
    health_url = profile.health_url
    recorded = False
    if options.install_service:
        if profile is not options.profile:  # the service's run.toml names the choice: the device must know it first
            _record_choice(profile, target_text, options.say)
            recorded = True
        service = target.install_service(
            name=profile.service or "edgecls",
            unit_dir=options.unit_dir,
            config=options.service_config,
            camera=profile.camera,
            port=options.service_port,
            profile=profile.name,
        )
        health_url = health_url or (service["health_url"] if service["enabled"] else "")
    manifest = files[MANIFEST].read_bytes()
    plan = device_reply(target.plan(manifest, artifacts, smoke=options.smoke), "plan", target_text)
    if not set(plan["need"]) <= set(files):
        raise EdgeclsError(f"{target_text}: {_unexpected('plan', 'need', 'names of files in this bundle')}")
    if plan["installed"]:
        if profile is not options.profile and not recorded:
            _record_choice(profile, target_text, options.say)
        return FlashResult(
            target_text, "unchanged", plan["slot"], "already installed and healthy", time.monotonic() - started
        )
    send = {name: files[name] for name in plan["need"]}
    if SIGNATURE in files:
        send[SIGNATURE] = files[SIGNATURE]
    try:
        done = target.apply(
            manifest,
            artifacts,
            send,
            profile=_smoke_profile(profile),
            budget_ms=profile.latency_budget_ms,
            service=profile.service,
            health_url=health_url,
            health_token_file=profile.health_token_file if health_url else "",
            smoke=options.smoke,
            lock_timeout=options.lock_timeout,
        )
    except SshError as exc:  # the device's side ended without its verdict: what does it serve now?
        raise SshError(f"{exc}{_device_now(target, target_text)}") from exc
    device_reply(done, "apply", target_text)
    wrong = _served_elsewhere(profile, done)
    if wrong:
        return _undo(target, target_text, profile, wrong, started)
    if profile is not options.profile and done["result"] != "rolled back" and not recorded:
        _record_choice(profile, target_text, options.say)
    return FlashResult(
        target_text,
        done["result"],
        done["slot"],
        done.get("reason", ""),
        time.monotonic() - started,
        sorted(send),
        done.get("smoke"),
    )


def _served_elsewhere(profile: DeviceProfile, done: dict) -> str | None:
    """Why the device's smoke test ran another artifact or engine than the --artifact fastest choice, or None."""
    from edgecls.devices.fastest import chosen, served_refusal

    notes, smoke = chosen(profile), done.get("smoke") or {}
    if notes is None or done["result"] != "installed" or not smoke.get("backend"):
        return None
    return served_refusal(notes, smoke.get("artifact"), smoke.get("backend"))


def _undo(target, target_text: str, profile: DeviceProfile, why: str, started: float) -> FlashResult:
    """The device switched to a release that serves another engine than the one timed: back to the previous one."""
    try:
        back = device_reply(target.rollback(profile.service), "rollback", target_text)
    except EdgeclsError as exc:
        raise EdgeclsError(f"{target_text}: {why}; rolling back failed too: {exc}") from exc
    return FlashResult(
        target_text, "rolled back", back["slot"] or "", f"{why} (on the device)", time.monotonic() - started
    )


def _record_choice(derived: DeviceProfile, target_text: str, say) -> None:
    """The flashed --artifact fastest choice, as a user profile the daemon can be started with."""
    from edgecls.devices.fastest import record

    try:
        path = record(derived)
    except (OSError, EdgeclsError) as exc:  # after the switch: the device runs the new release all the same
        why = os_error_text(exc) if isinstance(exc, OSError) else str(exc)
        say(
            f"{target_text}: warning: the flash is done, but the choice could not be recorded as profile "
            f"{derived.name} ({why}): flash again with --artifact fastest once the profiles folder can be written"
        )
        return
    say(
        f"{target_text}: recorded the choice as profile {derived.name} ({path}): the daemon runs it with "
        f"`edgecls run ... --device {derived.name}` or `--artifact fastest --device {derived.name}`"
    )


def _device_now(target, target_text: str) -> str:
    """After a flash whose device side ended abruptly: which version the device's `current` is, from its own
    `status`, and what to run next (a flash killed after its switch leaves an unchecked model current)."""
    try:
        info = device_reply(target.status(), "status", target_text)
    except (EdgeclsError, OSError):
        return f"; the device did not answer `status` either: run `edgecls status {target_text}` once it does"
    current, pending = info["current"], info.get("pending") or {}
    if info.get("in_progress"):
        return f"; the device is still busy ({printable(info['in_progress'])}): run `edgecls status {target_text}`"
    if pending.get("slot") and pending["slot"] == current:
        return (
            f"; the device's `current` is {current}, never verified: flash again to finish it, or "
            f"`edgecls rollback {target_text}` to return to {pending.get('old') or 'nothing'}"
        )
    return f"; the device's `current` is {current or 'nothing'}"


_NONE = type(None)
_REPLIES = {
    "plan": {"slot": str, "installed": bool, "need": list},
    "apply": {"slot": str, "result": str, "reason": (str, _NONE), "smoke": (dict, _NONE)},
    "rollback": {"slot": (str, _NONE), "replaced": (str, _NONE)},
    "status": {
        "root": str,
        "current": (str, _NONE),
        "previous": (str, _NONE),
        "versions": list,
        "requires_signature": bool,
        "last_flash": (dict, _NONE),
        "pending": (dict, _NONE),
    },
}
# What `edgecls status` reads inside the reply's parts (each a JSON object where present).
_PARTS = {
    "versions": {"slot": str, "created": str, "artifacts": list, "signature": (dict, _NONE)},
    "health": {"url": str},
    "last_flash": {"result": str},
    "pending": {"slot": str},
}


def _unexpected(command: str, key: str, wanted: str) -> str:
    return (
        f"the device's reply to `{command}` is not what this edgecls expects ({key!r}: not {wanted}): it may run "
        f"another edgecls version; update it there (`edgecls flash ... --setup`), then flash again"
    )


def device_reply(reply, command: str, target_text: str) -> dict:
    """The device's answer to `command` with every field this host reads checked: a device running other
    code (or lying) fails its own row, never the whole fleet run."""
    if not isinstance(reply, dict):
        raise EdgeclsError(f"{target_text}: {_unexpected(command, 'reply', 'a JSON object')}")
    for key, kind in _REPLIES[command].items():
        absent = key not in reply and command in ("rollback", "status")  # there, null is an answer; absent not
        if absent or not isinstance(reply.get(key), kind) or (kind is bool and not isinstance(reply[key], bool)):
            raise EdgeclsError(f"{target_text}: {_unexpected(command, key, _kind_name(kind))}")
    if command == "plan" and not all(isinstance(n, str) for n in reply["need"]):
        raise EdgeclsError(f"{target_text}: {_unexpected(command, 'need', 'a list of file names')}")
    if command == "apply" and reply["result"] not in RESULTS:
        raise EdgeclsError(f"{target_text}: {_unexpected(command, 'result', ' or '.join(RESULTS))}")
    if command == "status":
        _status_parts(reply, target_text)
    return reply


def _status_parts(reply: dict, target_text: str) -> None:
    for part, fields in _PARTS.items():
        items = reply.get(part)
        if items is None:
            continue
        for item in items if part == "versions" else [items]:
            if not isinstance(item, dict):
                raise EdgeclsError(f"{target_text}: {_unexpected('status', part, 'an object')}")
            for key, kind in fields.items():
                if not isinstance(item.get(key), kind):
                    raise EdgeclsError(f"{target_text}: {_unexpected('status', f'{part}.{key}', _kind_name(kind))}")
            if part == "versions" and not all(isinstance(a, str) for a in item["artifacts"]):
                raise EdgeclsError(f"{target_text}: {_unexpected('status', 'versions.artifacts', 'names')}")


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {str: "a string", bool: "true/false", list: "a list", dict: "an object"}.get(k, "null") for k in kinds
    )


def _smoke_profile(profile: DeviceProfile) -> dict:
    """What the device's Classifier reads from a profile, as plain data (runtime never imports devices/): the
    artifacts, threads and every engine's own fields (runtime/formats.py's profile_options: backends, providers,
    ort_allow_spinning, openvino_device, openvino_precision), so the smoke test runs as the daemon will."""
    from edgecls.runtime.formats import CONTAINERS

    engine_fields = (field for container in CONTAINERS.values() for _, field in container.profile_options)
    plain = {name: getattr(profile, name) for name in ("artifacts", "threads", *engine_fields)}
    return {name: list(value) if isinstance(value, tuple) else value for name, value in plain.items()}


def flash(bundle_path, targets, options: FlashOptions | None = None) -> list:
    """Flash every target (in parallel); one FlashResult each, failures included as result "failed".

    A target is a TARGET string, or (TARGET, DeviceProfile) for a mixed fleet (see `read_targets_file`)."""
    options = options or FlashOptions()
    if not targets:
        raise EdgeclsError(
            "no TARGET given: name devices as user@host[:port][:/root] or local folders, or pass --targets FILE"
        )
    bundle = load_bundle(bundle_path)
    _check_artifact_choice(bundle, targets, options)

    def one(entry) -> FlashResult:
        target, profile = entry if isinstance(entry, tuple) else (entry, None)
        started = time.monotonic()
        try:
            return flash_one(bundle, target, replace(options, profile=profile) if profile else options)
        except EdgeclsError as exc:
            return FlashResult(target, "failed", reason=str(exc), seconds=time.monotonic() - started)
        except OSError as exc:  # a full or read-only disk on a local target
            return FlashResult(target, "failed", reason=os_error_text(exc), seconds=time.monotonic() - started)
        except Exception as exc:  # a bug or a reply nothing foresaw: this target's row, not the fleet's traceback
            log.debug("flash of %s failed", target, exc_info=True)
            return FlashResult(
                target,
                "failed",
                reason=f"unexpected error ({type(exc).__name__}: {exc}); please report it with the output of --debug",
                seconds=time.monotonic() - started,
            )

    if len(targets) == 1:
        return [one(targets[0])]
    with ThreadPoolExecutor(max_workers=max(1, min(options.jobs, len(targets)))) as pool:
        return list(pool.map(one, targets))


def _check_artifact_choice(bundle: Bundle, targets: list, options: FlashOptions) -> None:
    """--artifact NAME or fastest, checked once for the whole run: a missing or foreign bench, or a name the
    bundle lacks, is one error line before any target is touched (only the machine check is per target)."""
    if options.artifact is None:
        return
    from edgecls.devices import fastest

    if options.artifact != fastest.FASTEST:
        bundle.artifact(options.artifact)
        return
    if options.install_service:
        _check_service_choice(targets, options)
    plain = any(not isinstance(t, tuple) for t in targets)  # a target without its own profile takes --device's
    listed = [options.profile] * plain + [t[1] for t in targets if isinstance(t, tuple)]
    profiles = {id(p): p for p in listed}
    for profile in profiles.values():
        doc, choice = fastest.pick(bundle, profile, options.bench)
        fastest.check_record(fastest.derive(profile, choice, bundle))  # a user's own file there: never replaced


def _check_service_choice(targets: list, options: FlashOptions) -> None:
    """--install-service writes a run.toml naming the derived profile, which only this host records: an SSH device
    would not know it, and its service would run the default profile, silently."""
    from edgecls.devices.fastest import derived_name
    from edgecls.devices.ssh import is_ssh_target

    for entry in targets:
        target, profile = entry if isinstance(entry, tuple) else (entry, options.profile)
        if is_ssh_target(target):
            name = derived_name(profile)
            raise EdgeclsError(
                f"--install-service with --artifact fastest on {target}: the choice is recorded here as profile "
                f"{name}, which that device does not have, so its service would run the default profile: install "
                f"the service without --artifact fastest, then copy the recorded {name}.json into the device's "
                f'profiles folder (~/.config/edgecls/profiles) and set device = "{name}" in its run.toml'
            )


def read_targets_file(path) -> list:
    """`TARGET [PROFILE] [key=value ...]` per line (devices/fleet.py; PROFILE: a name or a JSON file, for mixed
    fleets); `#` comments.

    Returns TARGET strings, or (TARGET, DeviceProfile) where a line names a profile (the key=value words are
    read by `edgecls.devices.fleet.read_fleet`).
    """
    from edgecls.devices.fleet import read_devices

    return [(d.target, d.profile) if d.profile else d.target for d in read_devices(path)]


def printable(text) -> str:
    """`text` with control characters escaped (\\x1b, \\n): manifest fields and device messages come from
    files anyone could have written, and a terminal must not execute them."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def format_table(results: list) -> str:
    """target | result | version | seconds | reason; one row per target, in the order given."""
    rows = [("TARGET", "RESULT", "VERSION", "TIME", "REASON")]
    for r in results:
        rows.append(
            (printable(r.target), r.result, printable(r.slot or "-"), f"{r.seconds:.1f}s", printable(r.reason or ""))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)


def resolve_profile(device: str | None, profile_file: str | None) -> DeviceProfile:
    """`--device NAME` or `--profile FILE` (not both)."""
    if device and profile_file:
        raise EdgeclsError("give either --device NAME or --profile FILE, not both")
    return load_profile(profile_file or device)


def rollback(target_text: str, options: FlashOptions | None = None) -> dict:
    """`edgecls rollback TARGET`: `previous` becomes `current` again, on the device, with the same commit."""
    options = options or FlashOptions()
    target = make_target(
        target_text,
        options.profile.install_root,
        config=options.ssh_config,
        options=options.ssh_options,
        python=options.python,
    )
    return device_reply(target.rollback(options.profile.service), "rollback", target_text)


def status(target_text: str, options: FlashOptions | None = None) -> dict:
    """`edgecls status TARGET`: versions, current/previous, signatures, health, the last flash and its reason."""
    options = options or FlashOptions()
    target = make_target(
        target_text,
        options.profile.install_root,
        config=options.ssh_config,
        options=options.ssh_options,
        python=options.python,
    )
    return device_reply(target.status(), "status", target_text)
