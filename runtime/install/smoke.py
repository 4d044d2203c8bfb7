"""After the switch: is the daemon healthy, and does the new model give the right answers fast enough here?

System updaters roll back when a process dies; a model can load fine and still be wrong (a bad export) or
too slow for the device (the wrong artifact). The smoke test runs the bundle's check images (held-out
images with expected labels, stored by `convert`) through the same Classifier the daemon uses, and times it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def smoke_test(release: Path, profile: dict, budget_ms: float | None, min_runs: int = 30) -> dict:
    """{"ok", "reason", ...} for the bundle in `release`; never raises for a model failure (it is the result)."""
    from runtime.bundle import load_bundle
    from runtime.classifier import Classifier
    from runtime.preprocess import load_image

    try:
        bundle = load_bundle(release)
        classifier = Classifier(bundle, profile=SimpleNamespace(**profile))
        checks = bundle.manifest.checks
        images = [load_image(release / c["file"]) for c in checks]
    except Exception as exc:  # whatever stops the model loading is the reason to roll back
        return {"ok": False, "reason": f"the new bundle does not load: {type(exc).__name__}: {exc}"}
    result = {"artifact": classifier.artifact.name, "backend": classifier.backend_name, "checks": len(checks)}
    wrong = []
    for check, image in zip(checks, images):
        got = classifier.classify(image).label
        if got != check["label"]:
            wrong.append(f"{check['file']}: expected {check['label']}, got {got}")
    result["correct"] = len(checks) - len(wrong)
    if wrong:
        return {**result, "ok": False, "reason": f"{len(wrong)} of {len(checks)} check images got the wrong label "
                                                 f"({'; '.join(wrong[:3])})"}
    if not images:  # a bundle converted before check images existed: time a plain image
        images = [np.full((*bundle.manifest.preprocess.shape[:2], 3), 128, np.uint8)]
        result["note"] = "the bundle has no check images (converted by an older edgecls): labels not checked"
    classifier.classify(images[0])  # warm-up: first-call allocations are not the steady state
    timings = []
    while len(timings) < min_runs:
        for image in images:
            start = time.perf_counter()
            classifier.classify(image)
            timings.append((time.perf_counter() - start) * 1000)
    p95 = float(np.percentile(timings, 95))
    result.update(p95_ms=round(p95, 3), budget_ms=budget_ms, runs=len(timings))
    if budget_ms is not None and p95 > budget_ms:
        return {**result, "ok": False, "reason": f"p95 latency {p95:.3f} ms is over the profile's budget of "
                                                 f"{budget_ms:g} ms ({classifier.artifact.name} on "
                                                 f"{classifier.backend_name})"}
    return {**result, "ok": True, "reason": ""}


def service_installed(name: str) -> bool:
    systemctl = shutil.which("systemctl")
    if not name or not systemctl:
        return False
    return subprocess.run([systemctl, "is-enabled", "--quiet", name], capture_output=True).returncode == 0


def restart_service(name: str) -> str | None:
    """Restart the daemon's unit; a failure message, or None."""
    done = subprocess.run(["systemctl", "restart", name], capture_output=True, text=True, timeout=120)
    return None if done.returncode == 0 else f"systemctl restart {name} failed: {done.stderr.strip()[:200]}"


def wait_healthy(url: str, release: Path, timeout: float = 60.0) -> str | None:
    """Wait until GET `url` (the daemon's /healthz) is 200 and serves `release`; a failure message, or None.

    The daemon reports the bundle it serves (its hot reload follows `current`) and why a reload was refused.
    """
    want = str(Path(release).resolve())
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                detail = json.loads(response.read() or b"{}")
            model = detail.get("model") if isinstance(detail.get("model"), dict) else detail
            serving = model.get("bundle")
            error = model.get("last_error") or ""
            if serving is None or serving == want:
                return None
            if want in error:
                return f"the daemon refused the new bundle: {error[:300]}"
            last = f"still serving {serving}"
        except Exception as exc:  # refused while restarting, 503 while the first frame loads
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.25)
    return f"{url} did not report the new bundle healthy within {timeout:g} s ({last})"
