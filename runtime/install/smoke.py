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
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgecls.runtime.install.layout import InstallError

REFUSAL_SETTLE_S = 2.0  # a refusal older than the health wait must stay this long: the daemon polls every 0.5 s


def smoke_deadline(budget_ms: float | None, min_runs: int = 30) -> float:
    """Seconds the whole smoke test may take: three times the timing runs at budget, at least 10 s.

    Without a budget there is nothing to compare with: a generous 10 minutes, so a hung backend still ends.
    """
    return 600.0 if budget_ms is None else max(10.0, 3 * min_runs * budget_ms / 1000)


def smoke_test(
    release: Path, profile: dict, budget_ms: float | None, min_runs: int = 30, deadline_s: float | None = None
) -> dict:
    """{"ok", "reason", ...} for the bundle in `release`; never raises for a model failure (it is the result).

    Stops early once p95 is certainly over the budget, and fails when the whole test outlasts `deadline_s`
    (default `smoke_deadline`): a model far too slow must not hold the device's flash lock for minutes.
    """
    from edgecls.runtime.bench.machine import emulation
    from edgecls.runtime.bundle import load_bundle
    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.preprocess import load_image

    # Under emulation (qemu-user: the emulated Pi) the timings are not the device's: its budget cannot be judged.
    emulated = emulation()
    unjudged = budget_ms if emulated and budget_ms is not None else None
    budget_ms = None if unjudged is not None else budget_ms
    deadline_s = smoke_deadline(budget_ms, min_runs) if deadline_s is None else deadline_s
    deadline = time.monotonic() + deadline_s

    def late(done: str) -> str:
        return f"the smoke test did not finish within {deadline_s:g} s ({done}): the model is far too slow here"

    try:
        bundle = load_bundle(release)
        classifier = Classifier(bundle, profile=SimpleNamespace(**profile))
        checks = bundle.manifest.checks
        images = [load_image(release / c["file"]) for c in checks]
    except Exception as exc:  # whatever stops the model loading is the reason to roll back
        return {"ok": False, "reason": f"the new bundle does not load: {type(exc).__name__}: {exc}"}
    result = {"artifact": classifier.artifact.name, "backend": classifier.backend_name, "checks": len(checks)}
    if unjudged is not None:
        result["note"] = f"emulated ({emulated}): the {unjudged:g} ms latency budget is a real device's, not checked"
    wrong = []
    for number, (check, image) in enumerate(zip(checks, images)):
        if time.monotonic() > deadline:
            return {**result, "ok": False, "reason": late(f"{number} of {len(checks)} check images classified")}
        got = classifier.classify(image).label
        if got != check["label"]:
            wrong.append(f"{check['file']}: expected {check['label']}, got {got}")
    result["correct"] = len(checks) - len(wrong)
    if wrong:
        return {
            **result,
            "ok": False,
            "reason": f"{len(wrong)} of {len(checks)} check images got the wrong label ({'; '.join(wrong[:3])})",
        }
    if not images:  # a bundle converted before check images existed: time a plain image
        images = [np.full((*bundle.manifest.preprocess.shape[:2], 3), 128, np.uint8)]
        result["note"] = "; ".join(
            filter(
                None,
                [
                    result.get("note"),
                    "the bundle has no check images (converted by an older edgecls): labels not checked",
                ],
            )
        )
    return {**result, **_latency(classifier, images, budget_ms, min_runs, deadline, late)}


def _latency(classifier, images: list, budget_ms: float | None, min_runs: int, deadline: float, late) -> dict:
    """The timing half of the smoke test: p95 over `min_runs` runs against the budget, with its verdict.

    Stops as soon as p95 is certainly over budget; past the `deadline` (monotonic) it fails with `late(done)`.
    """
    classifier.classify(images[0])  # warm-up: first-call allocations are not the steady state
    # With this many runs over budget among min_runs, the 95th percentile is over budget whatever comes next.
    certain = min_runs - int(0.95 * (min_runs - 1))
    timings, over = [], 0
    while len(timings) < min_runs and (budget_ms is None or over < certain):
        for image in images:
            if time.monotonic() > deadline:
                return {
                    "ok": False,
                    "runs": len(timings),
                    "budget_ms": budget_ms,
                    "reason": late(f"{len(timings)} timing runs of {min_runs}"),
                }
            start = time.perf_counter()
            classifier.classify(image)
            timings.append((time.perf_counter() - start) * 1000)
            over += budget_ms is not None and timings[-1] > budget_ms
            if over >= certain:
                break
    p95 = float(np.percentile(timings, 95))
    measured = {"p95_ms": round(p95, 3), "budget_ms": budget_ms, "runs": len(timings)}
    if budget_ms is not None and p95 > budget_ms:
        return {
            **measured,
            "ok": False,
            "reason": f"p95 latency {p95:.3f} ms is over the profile's budget of "
            f"{budget_ms:g} ms ({classifier.artifact.name} on "
            f"{classifier.backend_name})",
        }
    return {**measured, "ok": True, "reason": ""}


def service_installed(name: str) -> bool:
    systemctl = shutil.which("systemctl")
    if not name or not systemctl:
        return False
    return subprocess.run([systemctl, "is-enabled", "--quiet", name], capture_output=True).returncode == 0


def restart_service(name: str, timeout: float = 120.0) -> str | None:
    """Restart the daemon's unit within `timeout` s; a failure message, or None (never raises)."""
    systemctl = shutil.which("systemctl")
    if not systemctl:
        return f"systemctl is not installed here, so {name} cannot be restarted"
    try:
        done = subprocess.run([systemctl, "restart", name], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"systemctl restart {name} did not finish within {timeout:g} s: check `journalctl -u {name}`"
    return None if done.returncode == 0 else f"systemctl restart {name} failed: {done.stderr.strip()[:200]}"


def read_token(token_file: str) -> str:
    """The daemon's bearer token from a file on the device (the setting keeps the path, never the token)."""
    path = Path(token_file).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InstallError(
            f"cannot read the health token file {path}: {exc.strerror or exc}: fix the profile's "
            f"health_token_file (a path on the device) or the file's permissions"
        ) from exc
    if not token or any(c.isspace() for c in token):
        raise InstallError(f"the health token file {path} must hold one token on one line")
    return token


def wait_healthy(url: str, release: Path, timeout: float = 60.0, token_file: str = "") -> str | None:
    """Wait until GET `url` (the daemon's /healthz) is 200 and serves `release`; a failure message, or None.

    One deadline for the whole wait: each request ends by it too (health.py), so a trickled or endless answer
    fails in time and the flash rolls back. The daemon reports the bundle it serves (`model.bundle`; its hot
    reload follows `current`) and, apart, the one it refused (`refused`): a refused `release` fails at once,
    and so does a 200 without `model.bundle` (another service), a redirect (never followed: it would carry the
    token elsewhere) and a 401/403 (waiting does not make a missing or wrong token right). A 429 (the daemon's
    back-off after wrong tokens from this address) is asked once more, then fails naming the cause.
    """
    from edgecls.runtime.install.health import HealthTooLarge, health_get
    from edgecls.runtime.redact import redact

    want = str(Path(release).resolve())
    shown = redact(url)
    try:
        token = read_token(token_file) if token_file else ""
    except InstallError as exc:
        return str(exc)
    deadline, last = time.monotonic() + timeout, "no answer"
    started, older = time.time(), None  # older: (its time, first seen) of a refusal from before this wait
    backed_off = False  # a 429 seen: asked once more after 2 s, then a failure naming the cause
    while (left := deadline - time.monotonic()) > 0:
        try:
            code, location, body = health_get(url, token, min(5.0, left))
        except InstallError as exc:
            return str(exc)
        except HealthTooLarge as exc:
            return f"{shown} sent {exc}: set health_url to the daemon's /healthz"
        except Exception as exc:  # refused while restarting, a timeout, a connection cut
            last = redact(f"{type(exc).__name__}: {exc}")
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            continue
        if code in (401, 403):
            return _refusal(shown, code, body, token_file)
        if code == 429:  # the daemon's back-off after wrong tokens from this address: it holds the right one too
            if backed_off:
                return (
                    f"{shown} answered 429: the daemon refuses this address after too many wrong tokens from it "
                    "(its log names the client, /metrics counts edgecls_http_wrong_tokens_total): fix that "
                    "client's token, then flash again"
                )
            backed_off, last = True, "HTTP 429"
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            continue
        if 300 <= code < 400:
            return (
                f"{shown} answered {code}, a redirect to {redact(location) or 'nowhere'}, which is not followed: "
                f"set health_url to the daemon's own /healthz"
            )
        if code != 200:  # 503 while the first frame loads
            last = f"HTTP {code}"
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            continue
        verdict, why, older = _judge(body, want, shown, started, older)
        if verdict != "again":
            return why
        last = why
        time.sleep(0.1)
    return f"{shown} did not report the new bundle healthy within {timeout:g} s ({last})"


def _refusal(shown: str, code: int, body: bytes, token_file: str) -> str:
    """A 401/403 in words: the daemon's own reason (short, masked), and the fix that fits it. A token-less
    daemon answers 403 to a Host name it does not know (DNS rebinding): no token helps there."""
    from edgecls.runtime.redact import redact

    try:
        said = json.loads(body).get("error")
    except (ValueError, AttributeError):
        said = None
    said = redact(str(said))[:200] if isinstance(said, str) and said else ""
    if code == 403 and said.startswith("Host "):
        return (
            f"{shown} answered 403: {said!r}: set health_url to the daemon's IP address (http://127.0.0.1:PORT/healthz "
            f"on the device), or start the daemon with --allowed-host NAME"
        )
    hint = (
        "the token in health_token_file is not the daemon's"
        if token_file
        else "set the profile's health_token_file to the daemon's token file on the device"
    )
    return f"{shown} answered {code} (the daemon requires a bearer token{f': {said!r}' if said else ''}): {hint}"


def _judge(body: bytes, want: str, shown: str, started: float, older) -> tuple:
    """(verdict, failure or what to say, older) for a 200's body: "pass", "fail" or "again" (ask again)."""
    try:
        detail = json.loads(body)
    except ValueError:
        detail = None
    model = detail.get("model") if isinstance(detail, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("bundle"), str):
        said = body[:120].decode("utf-8", "replace")
        return (
            "fail",
            f"{shown} answered 200 without the daemon's model.bundle ({said!r}{'…' if len(body) > 120 else ''}): "
            f"not an edgecls daemon's /healthz; set health_url to the daemon's",
            older,
        )
    refused = model.get("refused") if isinstance(model.get("refused"), dict) else {}
    # The refusal first: a daemon that keeps the old model must never count as serving the new one.
    if refused.get("bundle") == want:
        at = refused.get("at") or 0.0
        if older is None or older[0] != at:
            older = (at, time.monotonic())
        # One from before this wait may be an earlier flash of this same release (signed since): the
        # daemon retries a release the link moves back to within its poll, so only one that stays counts.
        retrying = (model.get("last_attempt") or 0.0) > at  # a newer load under way: its answer decides
        if not retrying and (at >= started or time.monotonic() - older[1] >= REFUSAL_SETTLE_S):
            return "fail", f"the daemon refused the new bundle: {str(refused.get('error'))[:300]}", older
        return "again", "the daemon refused the new bundle a moment ago", older
    error = str(model.get("last_error") or "")
    if want in error and "refused" not in model:  # a daemon from before `refused` existed
        return "fail", f"the daemon refused the new bundle: {error[:300]}", older
    if model["bundle"] == want:
        return "pass", None, older
    return "again", f"still serving {model['bundle']}", older
