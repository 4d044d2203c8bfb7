"""The device side of flash, rollback and status, as plain functions of a device root.

`python3 -m edgecls.runtime.install` wraps each in a JSON-speaking command for SSH targets; local targets (a mounted
SD card, the loopback device) call them directly. Either way the same code verifies and commits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from edgecls.runtime.bundle import MANIFEST, RELEASE, Manifest
from edgecls.runtime.install import commit, staging
from edgecls.runtime.install.layout import SLOT, DeviceRoot, InstallError, is_real_dir, os_error_text
from edgecls.runtime.install.signature import SIGNATURE, SignatureError, verify_manifest

KEEP_RELEASES = 3  # besides current and previous nothing is needed; a few more make `rollback` cheap to repeat
HISTORY = 20


def _manifest(manifest_bytes: bytes) -> Manifest:
    try:
        return Manifest.from_dict(json.loads(manifest_bytes))
    except (ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"the manifest sent is malformed ({type(exc).__name__}): convert the bundle again") from exc


def _state(device: DeviceRoot) -> dict:
    state = device.read_json(device.state_file, {"history": []})
    return state if isinstance(state, dict) else {"history": []}


def _state_damage(device: DeviceRoot) -> str | None:
    """Why state.json cannot be read (empty, cut short, not JSON, not an object), or None (fine or absent).
    Damaged is not the old format: nothing tells which releases were verified, so none is trusted."""
    try:
        text = device.state_file.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return f"{device.state_file} cannot be read ({getattr(exc, 'strerror', None) or exc})"
    try:
        ok = isinstance(json.loads(text), dict)
    except ValueError:
        ok = False
    return None if ok else f"{device.state_file} is damaged ({'empty' if not text.strip() else 'not a JSON object'})"


def _record(device: DeviceRoot, clear=(), **result) -> dict:
    """Append a result to state.json; `clear` names journal entries (pending, pending_rollback) it completes.

    One write, so a result and the end of its journal entry are durable together.
    """
    state = _state(device)
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["recorded_at"] = time.time()
    state["last_flash"] = result
    state["history"] = (state.get("history", []) + [result])[-HISTORY:]
    if result.get("result") == "installed":
        state.setdefault("healthy", {})[result["slot"]] = True
        state.setdefault("smoke_tested", {})[result["slot"]] = bool(result.get("smoke_tested"))
    for key in ("healthy", "smoke_tested"):  # only releases still on the device (_cleanup deletes old ones)
        if isinstance(state.get(key), dict):
            state[key] = {s: v for s, v in state[key].items() if SLOT.match(s) and is_real_dir(device.releases / s)}
    for entry in clear:
        state.pop(entry, None)
    try:
        device.write_json(device.state_file, state)
    except OSError as exc:  # a full disk: through the space reserved before the switch, if any
        data = (json.dumps(state, indent=2) + "\n").encode()
        if exc.errno not in commit.FULL or not commit.write_reserved(device, device.state_file, data):
            raise
    return result


def _is_installed(device: DeviceRoot, state: dict, current: str | None, slot: str, smoke: bool) -> bool:
    """Current, healthy (smoke-tested when asked for), intact, signed if the device wants that, and not a flash
    or rollback interrupted before its end (then the re-run finishes it)."""
    pending = (state.get("pending") or {}).get("slot")
    if current != slot or not state.get("healthy", {}).get(slot) or pending == slot or state.get("pending_rollback"):
        return False
    if smoke and not state.get("smoke_tested", {}).get(slot):
        return False  # installed with --no-smoke: a flash that wants the smoke test runs it
    if staging.release_damage(device, slot):
        return False  # the device must not vouch for bytes it finds wrong: the flash repairs them
    if device.signers.is_file():
        try:
            verify_manifest(device.releases / slot / MANIFEST, device.releases / slot / SIGNATURE, device.signers)
        except SignatureError:
            return False  # installed before the device trusted keys: a signed re-flash records the signature
    return True


def plan(root, manifest_bytes: bytes, artifacts, smoke: bool = True) -> dict:
    """What a flash of this bundle still has to send; read-only (no lock, creates nothing)."""
    device = DeviceRoot(root)
    device.check()
    manifest = _manifest(manifest_bytes)
    files = staging.wanted_files(manifest, manifest_bytes, artifacts)
    slot = staging.slot_name(manifest_bytes, artifacts)
    current = device.link_version(device.current)
    done = _is_installed(device, _state(device), current, slot, smoke) if device.is_ours() else False
    have = []
    for folder in (device.releases / slot, device.staging / slot):
        if is_real_dir(folder):
            have = staging.verified(folder, files)
            if len(have) == len(files):
                break
    missing = {n: files[n] for n in set(files) - set(have)}
    reusable = staging.find_in_releases(device, missing) if len(have) < len(files) else {}
    return {
        "slot": slot,
        "current": current,
        "installed": bool(done),
        "need": sorted(set(missing) - set(reusable)),
        "reuse": sorted(reusable),
        "signed_required": device.signers.is_file(),
    }


def _check_signature(device: DeviceRoot, slot: str, files: dict) -> dict:
    """Verify the signature just sent (staging/<slot>) if any, else the one installed with the release."""
    if not device.signers.is_file():
        return {"required": False, "signer": None}
    release, stage = device.releases / slot, device.staging / slot
    manifest = release if staging.verified(release, {MANIFEST: files[MANIFEST]}) else stage
    signature = stage / SIGNATURE if (stage / SIGNATURE).is_file() else release / SIGNATURE
    signer = verify_manifest(manifest / MANIFEST, signature, device.signers)
    return {"required": True, "signer": signer}


def _recover(device: DeviceRoot, slot: str | None = None, service: str = "") -> dict | None:
    """Under the lock, before anything else: finish what a killed command left (temps, trash, a rollback,
    a flash of another version interrupted before it was verified). The record of that last one, if any."""
    commit.remove_stale_temps(device)
    staging.remove_trash(device)
    _finish_rollback(device)
    return _resolve_interrupted(device, slot, service)


def _resolve_interrupted(device: DeviceRoot, slot: str | None, service: str, then: str = "") -> dict | None:
    """A flash killed between its switch and its verdict left `current` unchecked. The re-run of that flash
    finishes it; any other flash, and `edgecls rollback`, first restores the version it replaced (the last
    verified one), so that no rollback can ever return to a model nothing checked."""
    pending = _state(device).get("pending")
    if not pending or pending.get("slot") == slot:
        return None
    old = pending.get("old")
    unchecked = device.link_version(device.current) == pending["slot"]
    _roll_back(device, old, pending.get("prior"), service if unchecked else "")
    done = _record(
        device,
        clear=("pending",),
        slot=pending["slot"],
        result="rolled back",
        reason=f"the flash of {pending['slot']} was interrupted before it was verified: "
        f"{old or 'no version'} restored {then or f'before flashing {slot}'}",
        restored=old,
    )
    commit.drop_rollback(device)
    return done


@dataclass(frozen=True)
class ApplyOptions:
    """How `apply` receives the files it was not sent yet and checks the release after the switch."""

    stream: BinaryIO | None = None  # a tar of the files (SSH: `python3 -m edgecls.runtime.install apply`)
    sources: dict | None = None  # file name -> a path to copy from (local targets)
    profile: dict | None = None  # the smoke test's profile (artifacts, threads, ...)
    budget_ms: float | None = None  # the smoke test's p95 latency budget
    service: str = ""  # the daemon's systemd unit, restarted after the switch
    health_url: str = ""  # asked until healthy after the restart
    health_token_file: str = ""  # the path of the token for health_url (kept in device.json, never the token)
    smoke: bool = True
    lock_timeout: float = 60.0


@dataclass(frozen=True)
class _Upload:
    """The bundle a flash sends: its manifest, the artifacts asked for, the files they make, and its slot."""

    manifest: Manifest
    manifest_bytes: bytes
    artifacts: list
    files: dict
    slot: str


def apply(root, manifest_bytes: bytes, artifacts, **options) -> dict:
    """Receive, verify, commit, check, and keep or roll back. Returns the result recorded in state.json.

    `options` are `ApplyOptions`' fields. Refusals before the switch (corrupted upload, bad signature, foreign
    root, busy, a full disk) raise InstallError and leave `current` untouched; failures after it roll back and
    are returned as result "rolled back".
    """
    request = ApplyOptions(**options)
    device = DeviceRoot(root)
    manifest = _manifest(manifest_bytes)
    files = staging.wanted_files(manifest, manifest_bytes, artifacts)
    upload = _Upload(manifest, manifest_bytes, artifacts, files, staging.slot_name(manifest_bytes, artifacts))
    if request.health_url:
        from edgecls.runtime.install.health import url_problem

        if url_problem(request.health_url):
            raise InstallError(url_problem(request.health_url))
    if request.health_token_file:
        from edgecls.runtime.install.smoke import read_token

        read_token(request.health_token_file)  # unreadable: refuse now, not roll back a good model after the switch
    try:
        with _signals_interrupt(), device.claim(request.lock_timeout):
            return _apply_locked(device, upload, request)
    except OSError as exc:
        raise InstallError(_disk_failure(device, upload.slot, exc)) from exc


def _disk_failure(device: DeviceRoot, slot: str, exc: OSError) -> str:
    """The failure in words, and which version is current now (the tool must say which one serves)."""
    current = device.link_version(device.current) if device.current.is_symlink() else None
    pending = _state(device).get("pending") or {}
    if current == slot and pending.get("slot") == slot:
        where = f"`current` is {slot}, not yet verified: run the flash again to finish it, or `edgecls rollback`"
    else:
        where = f"`current` is still {current}" if current else "nothing is installed (no `current`)"
    return f"{os_error_text(exc)}; {where}"


def _apply_locked(device: DeviceRoot, upload: _Upload, request: ApplyOptions) -> dict:
    locked_at = time.time()
    slot, service = upload.slot, request.service
    resolved = _recover(device, slot, service)
    _receive(device, upload, request)
    state = _state(device)
    old = device.link_version(device.current)
    if _is_installed(device, state, old, slot, request.smoke):
        why = "this version is already installed and healthy"
        return {"slot": slot, "result": "unchanged", "reason": f"{resolved['reason']}; {why}" if resolved else why}
    staging.reuse_from_releases(device, slot, upload.files)  # files the host did not send: same bytes, older release
    try:
        signature = _check_signature(device, slot, upload.files)
    except SignatureError as exc:
        _record(device, slot=slot, result="refused", reason=str(exc), locked_at=locked_at)
        raise
    info = {
        "slot": slot,
        "artifacts": sorted(upload.artifacts),
        "created": upload.manifest.created,
        "labels": len(upload.manifest.labels),
        "signature": signature,
        "installed": time.time(),
    }
    release, repaired = staging.promote(device, slot, upload.files, info)
    pending = _pending(device, state, slot, old)
    _write_pending(device, pending)
    try:
        _switch(device, pending, slot, old != slot)
        failure, checks = _after_switch(device, release, request)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP through _signals_interrupt
        _interrupted(device, slot, pending, old != slot, service, exc, locked_at)
    with _signals_ignored():  # the verdict and its rollback are short: a second signal must not cut them
        if failure:
            restarted = _roll_back(device, pending.get("old"), pending.get("prior"), service)
            return _finish(
                device,
                slot=slot,
                result="rolled back",
                reason=failure + (f"; then {restarted}: the daemon is not running" if restarted else ""),
                smoke=checks,
                restored=pending.get("old"),
                locked_at=locked_at,
            )
        _cleanup(device)
        reason = f"repaired damaged file(s) of the installed release: {', '.join(repaired)}" if repaired else ""
        return _finish(
            device,
            slot=slot,
            result="installed",
            reason=reason,
            smoke=checks,
            smoke_tested=request.smoke,
            replaced=pending.get("old"),
            locked_at=locked_at,
        )


def _receive(device: DeviceRoot, upload: _Upload, request: ApplyOptions) -> None:
    """Keep the daemon's settings, then stage the manifest and the files sent (streamed or copied)."""
    settings = {
        "service": request.service,
        "health_url": request.health_url,
        "health_token_file": request.health_token_file,
    }
    if (request.service or request.health_url) and device.read_json(device.config_file, {}) != settings:
        device.write_json(device.config_file, settings)  # the token file's path, never the token
    # Staged first, so an upload cut off or refused below still leaves the manifest for the re-run.
    staging.put_manifest(device, upload.slot, upload.manifest_bytes, upload.files)
    if request.stream is not None:
        staging.receive(device, upload.slot, request.stream, upload.files)
    if request.sources:
        staging.copy_into(device, upload.slot, request.sources, upload.files)


def _pending(device: DeviceRoot, state: dict, slot: str, old: str | None) -> dict:
    """The journal entry of this flash: what to roll back to. A re-run after a kill between the switch and the
    verdict finds its own entry and keeps it."""
    pending = state.get("pending") if (state.get("pending") or {}).get("slot") == slot else None
    if old != slot:
        return pending or {"slot": slot, "old": old, "prior": device.link_version(device.previous)}
    # current already: checked again (not smoke-tested yet, repaired, or a re-run after a kill)
    return pending or {"slot": slot, "old": device.link_version(device.previous), "prior": None}


def _switch(device: DeviceRoot, pending: dict, slot: str, switching: bool) -> None:
    """The way back first (links and space), so that the rollback needs nothing a full disk could refuse; then,
    unless `slot` is current already, `previous` and `current` (the commit)."""
    try:
        commit.prepare_rollback(device, pending["old"], _prior(pending))
        if switching:
            if pending["old"]:
                commit.switch(device, "previous", pending["old"])
            commit.switch(device, "current", slot)  # the commit
    except OSError:
        if device.link_version(device.current) != slot:
            _abandon(device, pending)
        raise


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP during a flash: raised in the main thread like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)  # nothing else here: no lock, no I/O (it runs between any two bytecodes)


@contextmanager
def _signals_interrupt():
    """For a flash in the main thread: SIGTERM and SIGHUP interrupt it as Ctrl-C does, so that a flash stopped
    after its switch rolls back to the last verified release instead of leaving an unchecked model current."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before: dict = {}
    try:  # set inside the try: a signal arriving between two of them still has the first ones restored
        for s in (signal.SIGTERM, signal.SIGHUP):
            before[s] = signal.signal(s, _raise_interrupted)
        yield
    finally:
        _restore(before)


@contextmanager
def _signals_ignored():
    """SIGINT, SIGTERM and SIGHUP ignored (main thread only): a rollback once begun is finished."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before: dict = {}
    try:  # set inside the try: a SIGTERM raising Interrupted between two of them must not leave SIGINT ignored,
        # which every process started later would inherit
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            before[s] = signal.signal(s, signal.SIG_IGN)
        yield
    finally:
        _restore(before)


def _restore(before: dict) -> None:
    """Put back the handlers `signal.signal` returned; None (a handler not set from Python) as the default."""
    for s, handler in before.items():
        signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _interrupted(device, slot: str, pending: dict, switching: bool, service: str, exc: BaseException, locked_at):
    """A flash interrupted between its journal entry and its verdict: back to the last verified release (or,
    before the switch, as it was), recorded, then raised as an InstallError saying which version is current."""
    name = exc.args[0] if isinstance(exc, Interrupted) else "SIGINT (Ctrl-C)"
    with _signals_ignored():
        if not switching:  # a check of the release current already: left journaled, as a kill would leave it
            raise InstallError(
                f"interrupted by {name}: `current` is {slot}, not verified again: run the flash again to finish "
                f"it, or `edgecls rollback`"
            )
        if device.link_version(device.current) != slot:
            _abandon(device, pending)
            now = device.link_version(device.current)
            raise InstallError(f"interrupted by {name} before the switch: `current` is still {now or 'nothing'}")
        restarted = _roll_back(device, pending.get("old"), pending.get("prior"), service)
        old = pending.get("old")
        _finish(
            device,
            slot=slot,
            result="rolled back",
            reason=f"interrupted by {name} before it was verified: {old or 'no version'} restored"
            + (f"; then {restarted}" if restarted else ""),
            restored=old,
            locked_at=locked_at,
        )
        raise InstallError(
            f"interrupted by {name}: rolled back to {old or 'nothing (no `current`)'}, the last verified release"
            + (f"; but {restarted}: the daemon is not running" if restarted else "")
        ) from None


def _prior(pending: dict) -> str | None:
    """What `previous` becomes again if this flash rolls back."""
    prior = pending.get("prior")
    return prior if prior and prior != pending.get("old") else None


def _abandon(device: DeviceRoot, pending: dict) -> None:
    """A flash that failed before its switch (a full disk): put `previous` back and end its journal entry,
    best effort; what a full disk prevents here the next flash's `_resolve_interrupted` completes."""
    try:
        commit.restore(device, "previous", _prior(pending))
        _record(device, clear=("pending",), slot=pending["slot"], result="failed", reason="the disk was full")
        commit.drop_rollback(device)
    except OSError:
        pass


def _write_pending(device: DeviceRoot, pending: dict) -> None:
    state = _state(device)
    if state.get("pending") == pending:
        return  # a re-run: already journaled
    state["pending"] = pending
    # `healthy` records that this device verified a release once: a later failed flash of the same release does
    # not undo that (it may stay `previous`, and `edgecls rollback` must accept it); `pending` marks it unchecked.
    state.setdefault("smoke_tested", {}).pop(pending["slot"], None)
    device.write_json(device.state_file, state)


def _finish(device: DeviceRoot, **result) -> dict:
    done = _record(device, clear=("pending",), **result)
    commit.drop_rollback(device)
    return done


def _after_switch(device, release, request: ApplyOptions) -> tuple:
    """(failure or None, smoke result): anything that goes wrong here is a reason to roll back, not a crash
    that would leave an unchecked version current."""
    from edgecls.runtime.install import smoke as checks

    try:
        if checks.service_installed(request.service):
            failure = checks.restart_service(request.service)
            if failure:
                return failure, None
        if request.health_url:
            failure = checks.wait_healthy(request.health_url, release, token_file=request.health_token_file)
            if failure:
                return failure, None
        if not request.smoke:
            return None, None
        result = checks.smoke_test(release, request.profile or {}, request.budget_ms)
    except Exception as exc:
        return f"the check after the switch failed: {type(exc).__name__}: {exc}", None
    return (None if result["ok"] else f"smoke test failed: {result['reason']}"), result


def _roll_back(device: DeviceRoot, old: str | None, prior: str | None, service: str) -> str | None:
    """Links back to `old`, and the daemon restarted on it; the restart's failure message, or None."""
    from edgecls.runtime.install import smoke as checks

    commit.restore(device, "current", old)  # renames of links made before the switch: no new inode or space
    commit.restore(device, "previous", _prior({"old": old, "prior": prior}))
    if old and checks.service_installed(service):
        return checks.restart_service(service)
    return None


def _check_rollback_target(device: DeviceRoot, slot: str) -> None:
    """`previous` must be whole (and signed by a trusted key where the device requires it) before it is current."""
    bad = staging.release_damage(device, slot)
    if bad:
        raise InstallError(
            f"cannot roll back: the previous release {slot} no longer matches its manifest "
            f"({', '.join(bad[:3])}; disk damage?); nothing was switched: flash the version you "
            f"want instead"
        )
    if device.signers.is_file():
        release = device.releases / slot
        try:
            verify_manifest(release / MANIFEST, release / SIGNATURE, device.signers)
        except SignatureError as exc:
            raise InstallError(
                f"cannot roll back to {slot}, this device requires signed bundles: {exc}; nothing was switched"
            ) from exc


def _finish_rollback(device: DeviceRoot) -> dict | None:
    """Complete an `edgecls rollback` killed between its renames (its journal: state["pending_rollback"])."""
    todo = _state(device).get("pending_rollback")
    if not todo:
        return None
    for link in ("current", "previous"):  # `current` first, as rollback() switched them
        target = todo.get(link)
        if target and not is_real_dir(device.releases / target):
            continue  # cannot happen short of a hand edit; never point a link at nothing
        if device.link_version(getattr(device, link)) != target:
            commit.switch(device, link, target)
    return _record(
        device,
        clear=("pending_rollback", "pending"),
        slot=todo.get("current"),
        result="rolled back",
        reason=f"`edgecls rollback` from {todo.get('previous')} (completed after an interruption)",
        replaced=todo.get("previous"),
    )


def rollback(root, *, service: str = "", lock_timeout: float = 60.0) -> dict:
    """`edgecls rollback`: back to the last verified release. Returns {"slot": current now, "replaced", ...}.

    After a flash interrupted before its verdict, that is the version the flash replaced (its unchecked
    release is never kept as `previous`); otherwise `previous`, which becomes current (and the current one
    previous). Journaled like a flash: killed between its two renames, the next locked command completes it.
    On a full disk it uses the links and space the interrupted flash prepared; without them it fails before
    switching anything and says which version is current.
    """
    from edgecls.runtime.install import smoke as checks

    device = DeviceRoot(root).require()
    try:
        with device.lock(lock_timeout, "a rollback"):
            locked_at = time.time()
            commit.remove_stale_temps(device)
            staging.remove_trash(device)
            done = _finish_rollback(device) or _abandon_interrupted(device, service) or _swap(device, locked_at)
            failure = checks.restart_service(service) if checks.service_installed(service) else None
            failure = failure or _wait_daemon(device, done.get("slot"))
            if failure:
                raise InstallError(
                    f"current is now {done.get('slot') or 'nothing'} (was {done.get('replaced') or 'nothing'}), "
                    f"but {failure}"
                )
            return done
    except OSError as exc:
        current = device.link_version(device.current)
        pending = _state(device).get("pending") or {}
        where = f"`current` is {current or 'nothing'}" + (", never verified" if current == pending.get("slot") else "")
        raise InstallError(f"cannot roll back: {os_error_text(exc, 'run `edgecls rollback` again')}; {where}") from exc


def _wait_daemon(device: DeviceRoot, slot: str | None) -> str | None:
    """After a rollback, as after a flash: the daemon at device.json's health_url must serve `slot` (its
    failure in words, or None); without a health_url there is nothing to ask."""
    from edgecls.runtime.install.smoke import wait_healthy

    config = device.read_json(device.config_file, {})
    url = config.get("health_url", "") if isinstance(config, dict) else ""
    if not url or not slot:
        return None
    failure = wait_healthy(url, device.releases / slot, token_file=config.get("health_token_file", ""))
    return f"the daemon does not serve it: {failure}" if failure else None


def _abandon_interrupted(device: DeviceRoot, service: str) -> dict | None:
    """A flash interrupted before its verdict: restore what it replaced (`previous` too), nothing more."""
    before = device.link_version(device.current)
    record = _resolve_interrupted(device, None, service, then="by `edgecls rollback`")
    if record is None:
        return None
    now = device.link_version(device.current)
    return {**record, "slot": now, "replaced": before}


def _swap(device: DeviceRoot, locked_at: float) -> dict:
    """`previous` becomes current and current previous; only ever to a release this device verified."""
    damage = _state_damage(device)
    if damage:
        raise InstallError(
            f"cannot roll back: {damage}, so which releases this device verified is unknown; nothing was "
            f"switched: flash the version you want (its record starts state.json afresh)"
        )
    state = _state(device)
    current, previous = device.link_version(device.current), device.link_version(device.previous)
    if not previous or previous == current:
        raise InstallError(
            f"{device.root} has no previous version to roll back to (installed: "
            f"{', '.join(device.versions()) or 'none'})"
        )
    verified = state.get("healthy") if isinstance(state.get("healthy"), dict) else None
    if verified is not None and not verified.get(previous):
        raise InstallError(
            f"cannot roll back to {previous}: it was never verified on this device (its flash failed or was "
            f"interrupted); nothing was switched: flash the version you want instead"
        )
    _check_rollback_target(device, previous)
    keep = current if verified is None or verified.get(current) else None  # never an unchecked `previous`
    state["pending_rollback"] = {"slot": previous, "kind": "rollback", "current": previous, "previous": keep}
    device.write_json(device.state_file, state)
    commit.switch(device, "current", previous)  # the commit
    commit.switch(device, "previous", keep)
    return _record(
        device,
        clear=("pending_rollback", "pending"),
        slot=previous,
        result="rolled back",
        reason=f"`edgecls rollback` from {current}",
        replaced=current,
        locked_at=locked_at,
    )


def _cleanup(device: DeviceRoot) -> None:
    """Old releases beyond KEEP_RELEASES and day-old uploads: only real folders named like a version."""
    keep = {device.link_version(device.current), device.link_version(device.previous)}
    others = sorted(
        (p for p in device.releases.iterdir() if is_real_dir(p) and SLOT.match(p.name) and p.name not in keep),
        key=lambda p: p.stat().st_mtime,
    )
    for old in others[: max(0, len(others) - KEEP_RELEASES)]:
        trash = device.releases / f".trash-{old.name}-{os.getpid()}"
        os.replace(old, trash)  # renamed first: a kill mid-delete leaves a .trash-* name, never half a release
        shutil.rmtree(trash, ignore_errors=True)
    for stage in device.staging.iterdir():
        if is_real_dir(stage) and SLOT.match(stage.name) and time.time() - stage.stat().st_mtime > 86400:
            shutil.rmtree(stage, ignore_errors=True)


def status(root, health_url: str = "") -> dict:
    """Installed versions, current and previous, signatures, last flash, and (with a URL) the daemon's health."""
    device = DeviceRoot(root).require()
    state, holder = _state_and_holder(device)
    versions = []
    for slot in device.versions():
        info = device.read_json(device.releases / slot / RELEASE, {})
        versions.append(
            {
                "slot": slot,
                "created": info.get("created", ""),
                "artifacts": info.get("artifacts", []),
                "signature": info.get("signature", {}),
            }
        )
    result = {
        "root": str(device.root),
        "current": device.link_version(device.current),
        "previous": device.link_version(device.previous),
        "versions": versions,
        "requires_signature": device.signers.is_file(),
        "last_flash": state.get("last_flash"),
        "pending": state.get("pending") or state.get("pending_rollback"),
        "state_error": _state_damage(device),
        "in_progress": holder,  # a flash or rollback running now: its `pending` is not a leftover
    }
    config = device.read_json(device.config_file, {})
    url = health_url or config.get("health_url", "")
    if url:
        result["health"] = _probe(url, config.get("health_token_file", ""))
    return result


def _state_and_holder(device: DeviceRoot) -> tuple:
    """state.json and the lock's holder, read so that a flash ending between the two reads is never taken for
    an interrupted one: the holder is asked before and after the state is read, and the state read again."""
    for _ in range(5):
        before = device.lock_holder()
        state = _state(device)
        after = device.lock_holder()
        if before or after or _state(device) == state:
            return state, before or after
    return state, None


def _probe(url: str, token_file: str, deadline_s: float = 5.0) -> dict:
    """Status's look at the daemon: one GET that ends within `deadline_s`, whatever answers."""
    from edgecls.runtime.install.health import health_get
    from edgecls.runtime.install.smoke import read_token
    from edgecls.runtime.redact import redact

    try:
        code, location, body = health_get(url, read_token(token_file) if token_file else "", deadline_s)
    except Exception as exc:
        return {"url": redact(url), "status": None, "error": redact(f"{exc}")[:200]}
    health = {"url": redact(url), "status": code}
    if 300 <= code < 400:
        health["error"] = f"a redirect to {redact(location) or 'nowhere'} (not followed)"
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        model = None
    if isinstance(model, dict):  # what the daemon serves, and the bundle it refused (status names both)
        if isinstance(model.get("bundle"), str):
            health["serving"] = _slot_of(model["bundle"])
        refused = model.get("refused")
        if isinstance(refused, dict) and isinstance(refused.get("bundle"), str):
            health["refused"] = _slot_of(refused["bundle"])
            health["refused_error"] = redact(str(refused.get("error") or ""))[:200]
    return health


def _slot_of(bundle: str) -> str:
    """A release folder's version (releases/<slot>) as status prints it, else the path as the daemon said it."""
    path = os.path.normpath(bundle)
    return os.path.basename(path) if SLOT.match(os.path.basename(path)) else bundle[:300]


def trust(root, allowed_signers: bytes) -> dict:
    """Install the allowed-signers file: from now on this device accepts only bundles signed by those keys."""
    from edgecls.runtime.install.layout import write_durable

    lines = [l for l in allowed_signers.decode("utf-8", "replace").splitlines() if l.strip() and not l.startswith("#")]
    if not lines:
        raise InstallError(
            'the allowed signers file is empty: give one `PRINCIPAL namespaces="edgecls-bundle" '
            "ssh-ed25519 KEY` line per trusted key"
        )
    device = DeviceRoot(root)
    with device.claim():
        write_durable(device.signers, allowed_signers)
    return {"root": str(device.root), "trusted_keys": len(lines)}
