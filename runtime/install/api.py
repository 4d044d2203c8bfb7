"""The device side of flash, rollback and status, as plain functions of a device root.

`python3 -m runtime.install` wraps each in a JSON-speaking command for SSH targets; local targets (a mounted
SD card, the loopback device) call them directly. Either way the same code verifies and commits.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import BinaryIO

from runtime.bundle import MANIFEST, RELEASE, Manifest
from runtime.install import commit, staging
from runtime.install.layout import DeviceRoot, InstallError
from runtime.install.signature import SIGNATURE, SignatureError, verify_manifest

KEEP_RELEASES = 3  # besides current and previous nothing is needed; a few more make `rollback` cheap to repeat
HISTORY = 20


def _manifest(manifest_bytes: bytes) -> Manifest:
    try:
        return Manifest.from_dict(json.loads(manifest_bytes))
    except (ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"the manifest sent is malformed ({type(exc).__name__}): convert the bundle again") from exc


def _state(device: DeviceRoot) -> dict:
    return device.read_json(device.state_file, {"history": []})


def _record(device: DeviceRoot, finished: bool = False, **result) -> dict:
    """Append a result to state.json; `finished` also clears the flash's pending record in the same write."""
    state = _state(device)
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    state["last_flash"] = result
    state["history"] = (state.get("history", []) + [result])[-HISTORY:]
    if result.get("result") == "installed":
        state.setdefault("healthy", {})[result["slot"]] = True
    if finished:
        state.pop("pending", None)
    device.write_json(device.state_file, state)
    return result


def _is_installed(state: dict, current: str | None, slot: str) -> bool:
    """Current, smoke-tested, and not a flash interrupted before its end (then the re-run finishes it)."""
    pending = (state.get("pending") or {}).get("slot")
    return current == slot and bool(state.get("healthy", {}).get(slot)) and pending != slot


def plan(root, manifest_bytes: bytes, artifacts) -> dict:
    """What a flash of this bundle still has to send; read-only (no lock, creates nothing)."""
    device = DeviceRoot(root)
    device.check()
    manifest = _manifest(manifest_bytes)
    files = staging.wanted_files(manifest, manifest_bytes, artifacts)
    slot = staging.slot_name(manifest_bytes, artifacts)
    current = device.link_version(device.current)
    done = _is_installed(_state(device), current, slot)
    have = []
    for folder in (device.releases / slot, device.staging / slot):
        if folder.is_dir():
            have = staging.verified(folder, files)
            if len(have) == len(files):
                break
    missing = {n: files[n] for n in set(files) - set(have)}
    reusable = staging.find_in_releases(device, missing) if len(have) < len(files) else {}
    return {"slot": slot, "current": current, "installed": bool(done), "need": sorted(set(missing) - set(reusable)),
            "reuse": sorted(reusable), "signed_required": device.signers.is_file()}


def _check_signature(device: DeviceRoot, folder: Path) -> dict:
    if not device.signers.is_file():
        return {"required": False, "signer": None}
    signer = verify_manifest(folder / MANIFEST, folder / SIGNATURE, device.signers)
    return {"required": True, "signer": signer}


def apply(root, manifest_bytes: bytes, artifacts, *, stream: BinaryIO | None = None, sources: dict | None = None,
          profile: dict | None = None, budget_ms: float | None = None, service: str = "", health_url: str = "",
          smoke: bool = True, lock_timeout: float = 60.0) -> dict:
    """Receive, verify, commit, check, and keep or roll back. Returns the result recorded in state.json.

    Refusals before the switch (corrupted upload, bad signature, foreign root, busy) raise InstallError and
    leave `current` untouched; failures after it roll back and are returned as result "rolled back".
    """
    device = DeviceRoot(root).ensure()
    manifest = _manifest(manifest_bytes)
    files = staging.wanted_files(manifest, manifest_bytes, artifacts)
    slot = staging.slot_name(manifest_bytes, artifacts)
    with device.lock(lock_timeout):
        commit.remove_stale_temps(device)
        staging.remove_trash(device)
        if (service or health_url) and device.read_json(device.config_file, {}) != {"service": service,
                                                                                    "health_url": health_url}:
            device.write_json(device.config_file, {"service": service, "health_url": health_url})
        if stream is not None:
            staging.receive(device, slot, stream, files)
        if sources:
            staging.copy_into(device, slot, sources, files)
        staging.reuse_from_releases(device, slot, files)  # files the host did not send: same bytes, older release
        state = _state(device)
        old = device.link_version(device.current)
        if _is_installed(state, old, slot):
            return {"slot": slot, "result": "unchanged", "reason": "this version is already installed and healthy"}
        release = device.releases / slot
        folder = release if release.is_dir() and len(staging.verified(release, files)) == len(files) \
            else device.staging / slot
        try:
            signature = _check_signature(device, folder)
        except SignatureError as exc:
            _record(device, slot=slot, result="refused", reason=str(exc))
            raise
        info = {"slot": slot, "artifacts": sorted(artifacts), "created": manifest.created,
                "labels": len(manifest.labels), "signature": signature, "installed": time.time()}
        staging.promote(device, slot, files, info)
        # A re-run after a kill between here and the end finds its own `pending` record: what to roll back to.
        pending = state.get("pending") if (state.get("pending") or {}).get("slot") == slot else None
        if old != slot:
            pending = pending or {"slot": slot, "old": old, "prior": device.link_version(device.previous)}
            _write_pending(device, pending)
            if pending["old"]:
                commit.switch(device, "previous", pending["old"])
            commit.switch(device, "current", slot)  # the commit
        pending = pending or {"slot": slot, "old": device.link_version(device.previous), "prior": None}
        failure, checks = _after_switch(device, release, profile or {}, budget_ms, service, health_url, smoke)
        if failure:
            _roll_back(device, pending.get("old"), pending.get("prior"), service)
            return _finish(device, slot=slot, result="rolled back", reason=failure, smoke=checks,
                           restored=pending.get("old"))
        _cleanup(device)
        return _finish(device, slot=slot, result="installed", reason="", smoke=checks, replaced=pending.get("old"))


def _write_pending(device: DeviceRoot, pending: dict) -> None:
    state = _state(device)
    state["pending"] = pending
    state.setdefault("healthy", {}).pop(pending["slot"], None)
    device.write_json(device.state_file, state)


def _finish(device: DeviceRoot, **result) -> dict:
    return _record(device, finished=True, **result)


def _after_switch(device, release, profile, budget_ms, service, health_url, smoke) -> tuple:
    from runtime.install import smoke as checks

    if checks.service_installed(service):
        failure = checks.restart_service(service)
        if failure:
            return failure, None
    if health_url:
        failure = checks.wait_healthy(health_url, release)
        if failure:
            return failure, None
    if not smoke:
        return None, None
    result = checks.smoke_test(release, profile, budget_ms)
    return (None if result["ok"] else f"smoke test failed: {result['reason']}"), result


def _roll_back(device: DeviceRoot, old: str | None, prior: str | None, service: str) -> None:
    from runtime.install import smoke as checks

    commit.switch(device, "current", old)
    commit.switch(device, "previous", prior if prior and prior != old else None)
    if old and checks.service_installed(service):
        checks.restart_service(service)


def rollback(root, *, service: str = "", lock_timeout: float = 60.0) -> dict:
    """`edgecls rollback`: make `previous` current again (and the current one previous)."""
    device = DeviceRoot(root).require()
    with device.lock(lock_timeout):
        current, previous = device.link_version(device.current), device.link_version(device.previous)
        if not previous:
            raise InstallError(f"{device.root} has no previous version to roll back to (installed: "
                               f"{', '.join(device.versions()) or 'none'})")
        commit.switch(device, "current", previous)  # the commit
        commit.switch(device, "previous", current)
        from runtime.install import smoke as checks

        if checks.service_installed(service):
            checks.restart_service(service)
        return _record(device, slot=previous, result="rolled back", reason=f"`edgecls rollback` from {current}",
                       replaced=current)


def _cleanup(device: DeviceRoot) -> None:
    keep = {device.link_version(device.current), device.link_version(device.previous)}
    others = sorted((p for p in device.releases.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and p.name not in keep), key=lambda p: p.stat().st_mtime)
    for old in others[:max(0, len(others) - KEEP_RELEASES)]:
        trash = device.releases / f".trash-{old.name}-{os.getpid()}"
        os.replace(old, trash)  # renamed first: a kill mid-delete leaves a .trash-* name, never half a release
        shutil.rmtree(trash, ignore_errors=True)
    for stage in device.staging.iterdir():
        if stage.is_dir() and time.time() - stage.stat().st_mtime > 86400:
            shutil.rmtree(stage, ignore_errors=True)


def status(root, health_url: str = "") -> dict:
    """Installed versions, current and previous, signatures, last flash, and (with a URL) the daemon's health."""
    device = DeviceRoot(root).require()
    state = _state(device)
    versions = []
    for slot in device.versions():
        info = device.read_json(device.releases / slot / RELEASE, {})
        versions.append({"slot": slot, "created": info.get("created", ""), "artifacts": info.get("artifacts", []),
                         "signature": info.get("signature", {})})
    result = {"root": str(device.root), "current": device.link_version(device.current),
              "previous": device.link_version(device.previous), "versions": versions,
              "requires_signature": device.signers.is_file(), "last_flash": state.get("last_flash"),
              "pending": state.get("pending")}
    url = health_url or device.read_json(device.config_file, {}).get("health_url", "")
    if url:
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                result["health"] = {"url": url, "status": response.status}
        except Exception as exc:
            result["health"] = {"url": url, "status": getattr(exc, "code", None), "error": str(exc)[:200]}
    return result


def trust(root, allowed_signers: bytes) -> dict:
    """Install the allowed-signers file: from now on this device accepts only bundles signed by those keys."""
    from runtime.install.layout import write_durable

    lines = [l for l in allowed_signers.decode("utf-8", "replace").splitlines() if l.strip() and not l.startswith("#")]
    if not lines:
        raise InstallError("the allowed signers file is empty: give one `PRINCIPAL namespaces=\"edgecls-bundle\" "
                           "ssh-ed25519 KEY` line per trusted key")
    device = DeviceRoot(root).ensure()
    write_durable(device.signers, allowed_signers)
    return {"root": str(device.root), "trusted_keys": len(lines)}
