"""edgecls status (runtime/install/api.status): answers in seconds and never trusts a device reply."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from edgecls.devices.flash import FlashOptions, flash
from edgecls.devices.profiles import DeviceProfile
from tests.conftest import cli_error, run_cli
from tests.sshd import sshd  # noqa: F401  (fixture)
from tests.test_flash import PROFILE, bundles, current_release  # noqa: F401  (fixture)
from tests.test_smoke import HostileHealth, answer


def test_status_answers_within_seconds_when_the_daemon_trickles_its_answer(bundles, tmp_path):  # noqa: F811
    """A /healthz sending its status line one byte every 2 s: status's look at the daemon gives up after a few
    seconds and reports that, instead of hanging (before: still waiting after 40 s)."""
    root = tmp_path / "dev"
    assert flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))[0].ok
    server = HostileHealth("trickle_headers")
    (root / "device.json").write_text(json.dumps({"service": "", "health_url": server.url, "health_token_file": ""}))
    started = time.monotonic()
    try:
        ran = run_cli("status", root, timeout=40)
    finally:
        server.close()
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert time.monotonic() - started < 25
    assert f"health: {server.url} -> None (no complete answer within 5 s)" in ran.stdout, ran.stdout


def test_status_says_a_flash_is_in_progress_while_it_holds_the_lock(bundles, tmp_path):  # noqa: F811
    """During a flash's health wait its `pending` record is its own, not a killed flash's leftover: status says a
    flash is in progress (and its pid), never "interrupted flash ... or `edgecls rollback`"."""
    root = tmp_path / "dev"
    assert flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))[0].ok
    release = threading.Event()

    def healthz(head: bytes) -> bytes:  # 503 (loading) until released, then the daemon's answer for `current`
        if not release.is_set():
            return answer(503, b'{"status": "unhealthy"}')
        return answer(200, json.dumps({"model": {"bundle": os.path.realpath(root / "current")}}).encode())

    server = HostileHealth(healthz)
    profile = DeviceProfile(name="h", artifacts=("tflite-int8",), threads=1, health_url=server.url)
    results = []
    worker = threading.Thread(
        target=lambda: results.extend(flash(bundles["b"], [str(root)], FlashOptions(profile=profile)))
    )
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:  # switched, now in its health wait
            time.sleep(0.05)
        ran = run_cli("status", root, timeout=60)
    finally:
        release.set()
        worker.join(90)
        server.close()
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert f"a flash (pid {os.getpid()}" in ran.stdout and "in progress" in ran.stdout, ran.stdout
    assert "interrupted" not in ran.stdout, ran.stdout
    assert results and results[0].result == "installed", results


def test_status_refuses_a_device_reply_of_another_shape_in_one_line(tmp_path, sshd):  # noqa: F811
    """A device running other code (or lying) answers `{}` or a version whose slot is a number: one error line
    saying so, no traceback (before: KeyError: 'root')."""
    for reply in ("{}", '{"root": "/x", "versions": [{"slot": 5}], "requires_signature": false, "current": null}'):
        fake = tmp_path / "fake-python"
        fake.write_text(f"#!/bin/sh\ncat >/dev/null </dev/null\necho '{reply}'\n")
        fake.chmod(0o755)
        ran = run_cli(
            "status", sshd.target(tmp_path / "dev"), "--ssh-config", sshd.ssh_config, "--python", fake, timeout=120
        )
        assert "is not what this edgecls expects" in cli_error(ran), ran.stderr


def test_status_names_the_bundle_the_daemon_serves_and_the_one_it_refused(bundles, tmp_path):  # noqa: F811
    """status shows what the daemon says it serves (model.bundle) and what it refused (model.refused), not only
    the HTTP code: a daemon serving a while current is b reads so (before: `health: ... -> 200` and nothing more)."""
    from tests.test_install_api import DaemonHealth

    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    release = {r.slot: str((root / "releases" / r.slot).resolve()) for r in (a, b)}
    daemon = DaemonHealth(release[a.slot], {"bundle": release[b.slot], "error": "the bundle is not signed", "at": 1.0})
    (root / "device.json").write_text(json.dumps({"service": "", "health_url": daemon.url, "health_token_file": ""}))
    try:
        ran = run_cli("status", root, timeout=60)
    finally:
        daemon.close()
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert f"daemon serves: {a.slot} (not current {b.slot})" in ran.stdout, ran.stdout
    assert f"daemon refused: {b.slot}: the bundle is not signed" in ran.stdout, ran.stdout


HOLDER = r"""
import json, sys
from edgecls.runtime.install.layout import DeviceRoot
device = DeviceRoot(sys.argv[1])
with device.lock(5):
    state = json.loads(device.state_file.read_text())
    device.write_json(device.state_file, {**state, "pending": {"slot": sys.argv[2], "old": None, "prior": None}})
    print("ready", flush=True)
    sys.stdin.readline()
    device.write_json(device.state_file, state)  # the flash ends: its journal entry done, then the lock freed
"""


def test_status_never_calls_a_flash_that_ends_while_it_reads_interrupted(bundles, tmp_path):  # noqa: F811
    """A flash holding the lock with its `pending` record, which ends (record cleared, lock freed) just as status
    asks who holds the lock: status must report it as in progress or finished, never as an interrupted flash
    (before: state read first, the lock asked after it was freed: "interrupted ... never verified")."""
    import subprocess
    import sys

    from edgecls.runtime.install import api

    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), a.slot], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "ready"

    def end_the_flash(frame, event, arg):  # the first time status asks who holds the lock, the flash has ended
        if event == "call" and frame.f_code.co_name == "lock_holder" and holder.poll() is None:
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait(10)
        return None

    sys.settrace(end_the_flash)
    try:
        info = api.status(root)
    finally:
        sys.settrace(None)
    assert holder.returncode == 0
    assert not (info["pending"] and not info["in_progress"]), info


DEAD_DNS = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.83.0.53", 53))  # glibc asks port 53 only
print("ready", flush=True)
while True:
    s.recvfrom(4096)  # never answers
"""


def test_status_answers_within_its_deadline_when_the_health_urls_name_cannot_be_resolved(bundles, tmp_path):  # noqa: F811
    """A DNS server that never answers (in a mount namespace whose resolv.conf names it): status's look at the
    daemon ends in about 5 s, saying the name was not resolved (before: 10 s or more, the lookup ran before the
    request's deadline started)."""
    import shutil
    import subprocess
    import sys

    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -m (root) to give status its own resolv.conf")
    root = tmp_path / "dev"
    assert flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))[0].ok
    dns = subprocess.Popen([sys.executable, "-c", DEAD_DNS], stdout=subprocess.PIPE, text=True)
    try:
        assert dns.stdout.readline().strip() == "ready"
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 127.83.0.53\noptions timeout:5 attempts:2\n")
        probe = f"from edgecls.runtime.install import api; print(api.status({str(root)!r}, 'http://pi.invalid-lan:8080/healthz')['health'])"
        started = time.monotonic()
        ran = subprocess.run(
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                f'mount --bind {resolv} /etc/resolv.conf && exec {sys.executable} -c "{probe}"',
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
    finally:
        dns.kill()
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert took < 8.5, took
    assert "not resolved within 5 s" in ran.stdout, ran.stdout


def test_fleet_status_is_one_row_per_device_and_a_daemon_that_does_not_answer_is_unhealthy_in_its_row(
    bundles,
    tmp_path,  # noqa: F811
):
    from tests.fleet_helpers import free_port

    for name in ("door", "shelf"):
        assert flash(bundles["a"], [str(tmp_path / name)], FlashOptions(profile=PROFILE))[0].ok
    closed = free_port()  # nothing listens there
    fleet = tmp_path / "fleet.txt"
    fleet.write_text(
        f"{tmp_path / 'door'} name=door metrics=http://127.0.0.1:{closed}\n{tmp_path / 'shelf'} name=shelf\n"
    )
    rows = json.loads(run_cli("status", "--targets", fleet, "--json", timeout=60).stdout)
    slot = current_release(tmp_path / "door").name
    assert [(r["name"], r["version"]) for r in rows] == [("door", slot), ("shelf", slot)]
    assert rows[0]["health"].startswith("unhealthy (") and "refused" in rows[0]["health"], rows[0]
    assert rows[1]["health"] == "not watched" and rows[1]["fps"] == {}
    table = run_cli("status", "--targets", fleet, timeout=60).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "HEALTH", "FPS", "DRIFT", "LAST", "ROLLOUT", "STEP"]
    assert table[2].split()[:3] == ["shelf", slot, "not"]
    assert "one TARGET or --targets FLEET" in cli_error(run_cli("status", tmp_path / "door", "--targets", fleet))


def test_fleet_status_reads_a_token_protected_daemon_with_token_file(bundles, shapes_folder, tmp_path):  # noqa: F811
    from tests.daemon_helpers import start_cli_daemon

    assert flash(bundles["a"], [str(tmp_path / "door")], FlashOptions(profile=PROFILE))[0].ok
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    daemon, url, _ = start_cli_daemon(tmp_path / "door" / "current", shapes_folder, "--fps", "8", "--token-file", token)
    try:
        fleet = tmp_path / "fleet.txt"
        fleet.write_text(f"{tmp_path / 'door'} name=door metrics={url}\n")
        env = {"EDGECLS_TOKEN": ""}
        (row,) = json.loads(run_cli("status", "--targets", fleet, "--json", env=env, timeout=60).stdout)
        assert "401" in row["health"] and "--token-file" in row["health"], row
        args = ("status", "--targets", fleet, "--json", "--token-file", token)
        (row,) = json.loads(run_cli(*args, env=env, timeout=60).stdout)
        assert row["health"] == "ok" and row["serving"], row
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
