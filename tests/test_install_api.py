"""edgecls.runtime.install: the device side of flash when the disk, the clock or another flash works against it.

Real file systems (tmpfs with size= or nr_inodes=, as root), real processes killed with SIGKILL, the session's
real tiny bundle and its smoke test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgecls.devices.flash import FlashOptions, flash, status
from edgecls.devices.profiles import DeviceProfile
from edgecls.runtime.bundle import MANIFEST
from tests.conftest import REPO, run_cli
from tests.test_flash import PROFILE, assert_complete, bundles, current_release, links  # noqa: F401  (fixture)


@contextmanager
def small_fs(folder: Path, options: str):
    """A tmpfs mounted at `folder` with `options` (size=, nr_inodes=); skipped where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# Another program on the device: waits for `current` to change, then takes every free block or inode.
FILLER = r"""
import os, sys, time
link, before, fill, kind = sys.argv[1:5]
print("ready", flush=True)
deadline = time.monotonic() + 60
while os.readlink(link) == before and time.monotonic() < deadline:
    pass
os.makedirs(fill, exist_ok=True)
try:
    if kind == "inodes":
        for i in range(10**6):
            open(os.path.join(fill, str(i)), "w").close()
    else:
        with open(os.path.join(fill, "blob"), "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
except OSError:
    pass
stat = os.statvfs(fill)
print("full", stat.f_bfree if kind == "blocks" else stat.f_ffree, time.time(), flush=True)
"""


def _filler(root: Path, fill: Path, kind: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", FILLER, str(root / "current"), os.readlink(root / "current"), str(fill), kind],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("kind, options", [("blocks", "size=3m"), ("inodes", "nr_inodes=120")])
def test_rollback_succeeds_when_the_filesystem_fills_up_after_the_switch(bundles, tmp_path, kind, options):
    """The switch done, something takes the last free block (or inode) during the smoke test, which then
    fails: the rollback must need nothing new, so `current` is the old, verified release and the result
    is recorded and reported as a rollback, not as a failure that leaves the bad model current."""
    with small_fs(tmp_path / "sd", options) as sd:
        root = sd / "edgecls"
        [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
        assert a.ok, a
        filler = _filler(root, sd / "filler", kind)
        [bad] = flash(bundles["wrong"], [str(root)], FlashOptions(profile=PROFILE))
        word, free, full_at = filler.stdout.readline().split()
        assert word == "full" and filler.wait(10) == 0 and int(free) == 0
        assert bad.result == "rolled back" and "smoke test failed" in bad.reason, bad
        assert current_release(root).name == a.slot
        assert_complete(root, bundles["a"] / MANIFEST)
        state = json.loads((root / "state.json").read_text())
        assert "pending" not in state and state["last_flash"]["result"] == "rolled back"
        assert float(full_at) < state["last_flash"]["recorded_at"]  # full before the rollback and its record
        assert status(str(root))["current"] == a.slot


def test_a_full_disk_is_reported_in_words_and_says_what_is_current(bundles, tmp_path):
    """A flash refused for lack of space says the disk is full (not "No space left on device (None)"), how to
    see which kind, and that the installed version is still current."""
    with small_fs(tmp_path / "sd", "size=192k") as sd:
        root = sd / "edgecls"
        [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
        assert a.ok, a
        with open(sd / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        fp32 = DeviceProfile(name="fp32", artifacts=("tflite-fp32",), threads=1)
        [full] = flash(bundles["a"], [str(root)], FlashOptions(profile=fp32))
        assert full.result == "failed", full
        assert "disk is full" in full.reason and "df -i" in full.reason and "None" not in full.reason, full.reason
        assert f"`current` is still {a.slot}" in full.reason, full.reason
        assert current_release(root).name == a.slot


KILL_AFTER_SWITCH = r"""
import json, sys
from edgecls.devices.flash import FlashOptions, flash
from edgecls.devices.profiles import DeviceProfile
options = FlashOptions(profile=DeviceProfile(name="test-cpu", artifacts=("tflite-int8",), threads=1))
print(json.dumps(flash(sys.argv[1], [sys.argv[2]], options)[0].to_dict()), flush=True)
"""


def _flash_killed_after_the_switch(bundle: Path, root: Path) -> None:
    """A flash SIGKILLed the moment `current` changes: switched, never verified."""
    before = os.readlink(root / "current")
    proc = subprocess.Popen([sys.executable, "-c", KILL_AFTER_SWITCH, str(bundle), str(root)], cwd=REPO)
    deadline = time.monotonic() + 120
    while os.readlink(root / "current") == before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_flash_of_another_version_never_rolls_back_to_an_interrupted_unverified_one(bundles, tmp_path):
    """A, then W killed right after its switch (current = W, never smoke-tested), then C, whose smoke test
    fails: C must end on A, the last verified release, not on W; and `status` says "interrupted" until a flash
    resolves it."""
    root = tmp_path / "device"
    options = FlashOptions(profile=PROFILE)
    [a] = flash(bundles["a"], [str(root)], options)
    assert a.ok, a
    _flash_killed_after_the_switch(bundles["b"], root)
    state = json.loads((root / "state.json").read_text())
    unchecked = state["pending"]["slot"]
    assert current_release(root).name == unchecked != a.slot  # the precondition: switched, no verdict
    ran = run_cli("status", root, timeout=120)
    assert f"interrupted flash of {unchecked}" in ran.stdout, ran.stdout
    [c] = flash(bundles["wrong"], [str(root)], options)
    assert c.result == "rolled back", c
    assert current_release(root).name == a.slot  # not the unchecked W
    assert_complete(root, bundles["a"] / MANIFEST)
    assert status(str(root))["pending"] is None  # resolved: status said "interrupted" until this flash
    history = json.loads((root / "state.json").read_text())["history"]
    resolved = [h for h in history if h["slot"] == unchecked]
    assert resolved and resolved[-1]["result"] == "rolled back" and "interrupted" in resolved[-1]["reason"]


FIRST_FLASH = r"""
import json, sys
from edgecls.devices.flash import FlashOptions, flash
from edgecls.devices.profiles import DeviceProfile
options = FlashOptions(profile=DeviceProfile(name="test-cpu", artifacts=("tflite-int8",), threads=1))
sys.stdin.readline()
print(json.dumps(flash(sys.argv[1], [sys.argv[2]], options)[0].to_dict()), flush=True)
"""


def test_two_first_flashes_to_a_new_root_never_refuse_each_other(bundles, tmp_path):
    """The same new root twice in one targets list (threads of one process), and two processes at once: one
    installs, the other waits for the lock and finds it installed; neither takes the other's half-made root
    for someone's files, nor its temporary files for its own."""
    for round_ in range(4):
        root = tmp_path / f"twice-{round_}"
        results = flash(bundles["a"], [str(root), str(root)], FlashOptions(profile=PROFILE))
        assert sorted(r.result for r in results) == ["installed", "unchanged"], results
    for round_ in range(3):
        root = tmp_path / f"procs-{round_}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", FIRST_FLASH, str(bundles["a"]), str(root)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for proc in procs:  # both started and imported: go at once
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
        assert sorted(r["result"] for r in results) == ["installed", "unchanged"], results


def test_a_root_that_is_a_link_to_a_folder_is_flashed_into_that_folder(bundles, tmp_path):
    """/opt/edgecls -> /data/edgecls (an SD card's folder) is a common layout: resolved, not refused as
    "not a folder"; a link to nothing is refused naming the link."""
    (tmp_path / "card" / "edgecls").mkdir(parents=True)
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "edgecls").symlink_to(tmp_path / "card" / "edgecls")
    [r] = flash(bundles["a"], [str(tmp_path / "opt" / "edgecls")], FlashOptions(profile=PROFILE))
    assert r.result == "installed", r
    assert_complete(tmp_path / "card" / "edgecls", bundles["a"] / MANIFEST)
    (tmp_path / "opt" / "gone").symlink_to(tmp_path / "nowhere")
    [dangling] = flash(bundles["a"], [str(tmp_path / "opt" / "gone")], FlashOptions(profile=PROFILE))
    assert dangling.result == "failed" and "link to nothing" in dangling.reason, dangling
    assert not (tmp_path / "nowhere").exists()


def test_the_device_refuses_a_health_url_holding_a_password_or_token(bundles, tmp_path):
    """From a host that did not check (another edgecls, a hand-made call): refused before the lock, nothing
    switched or stored, and the secret is not in the message (before: stored in device.json and state.json)."""
    from edgecls.runtime.install import api
    from edgecls.runtime.install.layout import InstallError

    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    manifest = (bundles["b"] / MANIFEST).read_bytes()
    sources = {p.name: p for p in bundles["b"].iterdir() if p.is_file()}
    for url in ("http://admin:hunter2@127.0.0.1:9/healthz", "http://127.0.0.1:9/healthz?token=s3cret"):
        with pytest.raises(InstallError, match="health_token_file") as refused:
            api.apply(str(root), manifest, ["tflite-int8"], sources=sources, health_url=url, smoke=False)
        assert "hunter2" not in str(refused.value) and "s3cret" not in str(refused.value)
    assert current_release(root).name == a.slot
    stored = "".join(p.read_text() for p in (root / "state.json", root / "device.json") if p.exists())
    assert "hunter2" not in stored and "s3cret" not in stored


class DaemonHealth:
    """A real HTTP server answering GET /healthz as the daemon does: 200 with model.bundle (the bundle it says it
    serves) and model.refused; the test sets both. Stands in for a daemon that never follows `current`."""

    def __init__(self, bundle: str = "", refused: dict | None = None):
        import http.server
        import threading

        self.bundle, self.refused = bundle, refused
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                model = {"bundle": outer.bundle}
                if outer.refused:
                    model["refused"] = outer.refused
                body = json.dumps({"status": "ok", "model": model}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/healthz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _health_profile(folder: Path, url: str, **more) -> Path:
    from tests.test_flash import _profile_file

    profile = DeviceProfile(name="with-daemon", artifacts=("tflite-int8",), threads=1, health_url=url, **more)
    return _profile_file(folder, profile, "health.json")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_flash_interrupted_after_the_switch_rolls_back_to_the_last_verified_release(bundles, tmp_path, sig):
    """Ctrl-C or SIGTERM while the flash waits for the daemon (current already switched to the unchecked
    release): the flash rolls back to the verified one, records it, cleans its rollback links and exits
    non-zero saying so (before: rc 130/143, `current` left on the unchecked model, its journal pending)."""
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    assert a.ok, a
    daemon = DaemonHealth(str((root / "releases" / a.slot).resolve()))  # never serves the new one
    try:
        profile = _health_profile(tmp_path, daemon.url)
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgecls.cli", "flash", str(bundles["b"]), str(root), "--profile", str(profile)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while os.readlink(root / "current").endswith(a.slot) and time.monotonic() < deadline:
            time.sleep(0.02)
        new = os.path.basename(os.readlink(root / "current"))
        assert new != a.slot, "the flash never switched"
        time.sleep(0.5)  # inside the health wait
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        daemon.close()
    assert proc.returncode not in (0, -sig, 128 + sig), (proc.returncode, out, err)
    assert f"rolled back to {a.slot}" in out + err and "interrupted" in out + err, (out, err)
    assert "Traceback" not in err, err
    assert current_release(root).name == a.slot
    state = json.loads((root / "state.json").read_text())
    assert "pending" not in state and state["last_flash"]["result"] == "rolled back", state
    assert not [n for n in os.listdir(root) if n.startswith((".rollback-", ".reserve"))]


def _fake_systemctl(folder: Path, restart_fails_after: int) -> dict:
    """A systemctl on PATH (this machine has no systemd): the unit is enabled; its restarts succeed
    `restart_fails_after` times, then fail as systemd says it. Returns the env for the CLI."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    count = folder / "restarts"
    (bin_dir / "systemctl").write_text(
        "#!/bin/sh\n"
        'case "$1" in is-enabled) exit 0;; restart)\n'
        f"  n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}\n"
        f'  if [ "$n" -ge {restart_fails_after} ]; then echo "Job for $2 failed because the control process exited '
        'with error code." >&2; exit 1; fi;;\nesac\nexit 0\n'
    )
    (bin_dir / "systemctl").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_a_flash_whose_rollback_cannot_restart_the_daemon_says_the_daemon_is_down(bundles, tmp_path):
    """The new model fails its smoke test; the rollback's `systemctl restart` then fails: the result says the
    daemon is not running (before: a plain "rolled back", the service down and nothing said)."""
    from tests.test_flash import _profile_file

    root = tmp_path / "dev"
    profile = _profile_file(
        tmp_path, DeviceProfile(name="svc", artifacts=("tflite-int8",), threads=1, service="edgecls-t")
    )
    env = _fake_systemctl(tmp_path, restart_fails_after=2)  # a's flash, then wrong's: the rollback's fails
    first = run_cli("flash", bundles["a"], root, "--profile", profile, env=env, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    bad = run_cli("flash", bundles["wrong"], root, "--profile", profile, env=env, timeout=120)
    assert bad.returncode == 1, bad.stderr[-2000:]
    assert "rolled back" in bad.stdout and "systemctl restart edgecls-t failed" in bad.stdout, bad.stdout
    assert "smoke test failed" in bad.stdout and "daemon is not running" in bad.stdout, bad.stdout


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/healthz",
        "http://127.0.0.1:8080/santé",
        "http://127.0.0.1:8080/a b",
        "http://h:8080/x\r\nX: 1",
    ],
)
def test_a_health_url_that_can_never_be_asked_is_refused_before_anything_is_switched(bundles, tmp_path, url):  # noqa: F811
    """A port out of range, a non-ASCII path, a space or a line break: the profile refuses it, and so does the
    device before it takes the lock, `current` untouched (before: switched, then a minute unchecked and a
    rollback with "ValueError: Port out of range")."""
    from edgecls.devices.profiles import ProfileError
    from edgecls.runtime.install import api
    from edgecls.runtime.install.layout import InstallError

    with pytest.raises(ProfileError, match="health_url"):
        DeviceProfile.from_dict({"name": "p", "health_url": url})
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    manifest = (bundles["b"] / MANIFEST).read_bytes()
    with pytest.raises(InstallError, match="health_url"):
        api.apply(root, manifest, ["tflite-int8"], sources={}, health_url=url)
    assert current_release(root).name == a.slot
    assert json.loads((root / "state.json").read_text())["last_flash"]["result"] == "installed"


def test_state_json_records_verification_only_for_releases_still_on_the_device(bundles, tmp_path):
    """healthy and smoke_tested name only releases kept (releases/ is pruned to a few): records of deleted ones
    are dropped at the next result, so state.json and the reserve made from its size stay small (before: one
    entry per version ever flashed, 30 after 30 flashes)."""
    root = tmp_path / "dev"
    [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
    state = json.loads((root / "state.json").read_text())
    gone = {f"{n:016x}": True for n in range(40)}  # releases flashed once and deleted since
    state["healthy"].update(gone)
    state["smoke_tested"].update(gone)
    (root / "state.json").write_text(json.dumps(state))
    [b] = flash(bundles["b"], [str(root)], FlashOptions(profile=PROFILE))
    state = json.loads((root / "state.json").read_text())
    kept = set(os.listdir(root / "releases"))
    assert set(state["healthy"]) == {a.slot, b.slot} <= kept, state["healthy"]
    assert set(state["smoke_tested"]) == {a.slot, b.slot}, state["smoke_tested"]


def test_a_full_disk_leaves_no_partial_files_and_current_intact(bundles, tmp_path):
    """_write_member() writes `.NAME.PID.part` and only removes it on a sha256 mismatch: on ENOSPC the partial
    file stays (resume is per whole file, so it is useless) and holds the space the daemon's logs need. Over
    SSH every retry is a new PID, so each failed retry leaves another one."""
    sd = tmp_path / "sd"
    sd.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(sd)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        root = sd / "edgecls"
        [a] = flash(bundles["a"], [str(root)], FlashOptions(profile=PROFILE))
        assert a.ok, a
        with open(sd / "filler", "wb", buffering=0) as f:  # another program fills the card
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        os.truncate(sd / "filler", max(0, os.path.getsize(sd / "filler") - 12 * 1024))  # 12 KiB left
        fp32 = DeviceProfile(name="fp32", artifacts=("tflite-fp32",), threads=1)  # a 21 KiB file to send
        [full] = flash(bundles["a"], [str(root)], FlashOptions(profile=fp32))
        assert full.result == "failed" and "space" in full.reason.lower(), full
        assert links(root)[0] == a.slot
        assert_complete(root, bundles["a"] / MANIFEST)
        leftovers = [str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith((".part", ".tmp"))]
        assert not leftovers, leftovers
    finally:
        subprocess.run(["umount", "-l", str(sd)], capture_output=True)


def test_the_device_refuses_a_manifest_needing_a_feature_its_edgecls_lacks_before_anything_is_written(
    bundles,  # noqa: F811
    tmp_path,
):
    """The device's own check, through `python3 -m edgecls.runtime.install plan` as an SSH flash runs it (a host
    of a later edgecls would send such a bundle): its one-line refusal, and the root left untouched."""
    manifest = json.loads((bundles["a"] / MANIFEST).read_text())
    manifest["requires"] = ["hdr-input"]
    data = json.dumps(manifest).encode()
    root = tmp_path / "dev"
    done = subprocess.run(
        [sys.executable, "-m", "edgecls.runtime.install", "plan", "--root", root, "--artifacts", "tflite-int8"]
        + ["--manifest-sha256", hashlib.sha256(data).hexdigest()],
        input=data,
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    error = json.loads(done.stdout.decode().strip().splitlines()[-1])["error"]
    assert "this bundle needs 'hdr-input', which edgecls" in error and "edgecls flash ... --setup" in error, error
    assert not root.exists() or not any(root.iterdir())


def test_the_lock_free_plan_never_fails_while_another_flash_moves_its_staged_files_into_releases(bundles, tmp_path):
    """A flash asks what to send (`plan`, no lock) while another flash commits staging/<slot> into releases/: a file
    that vanishes between "is it there" and "hash it" is simply not there yet. CI once saw one of two first flashes
    to a new root fail on it."""
    import threading

    from edgecls.runtime.install.api import plan

    root = tmp_path / "dev"
    (root / "releases").mkdir(parents=True)
    (root / "staging").mkdir()
    (root / ".edgecls-device").write_text(json.dumps({"format": "edgecls-device/1", "created": 0}))
    from edgecls.runtime.install.staging import slot_name

    manifest_bytes, artifacts = (bundles["a"] / MANIFEST).read_bytes(), ["tflite-int8"]
    slot = slot_name(manifest_bytes, artifacts)
    stage, release = root / "staging" / slot, root / "releases" / slot
    shutil.copytree(bundles["a"], stage)  # every file staged: plan hashes each while the folder moves
    stop, errors, moves, mover_errors = threading.Event(), [], [0], []

    def move_back_and_forth():
        try:
            while not stop.is_set():
                os.rename(stage, release)
                os.rename(release, stage)
                moves[0] += 1
        except OSError as exc:
            mover_errors.append(repr(exc))

    mover = threading.Thread(target=move_back_and_forth)
    mover.start()
    try:
        for _ in range(300):
            try:
                plan(str(root), manifest_bytes, artifacts)
            except Exception as exc:  # the defect: FileNotFoundError out of the read-only plan
                errors.append(repr(exc))
    finally:
        stop.set()
        mover.join()
    assert mover_errors == [] and moves[0] > 100, (mover_errors, moves)  # the folder really moved all along
    assert errors == [], errors[:3]
