"""The flash attacks of issue 22, repeated with counts: the device serves the old model or the new, verified one,
and the tool says which.

    python benchmarks/flash_attacks.py BUNDLE [--out benchmarks/results/flash_attacks.txt] [--seed 22]

BUNDLE: a converted bundle with a tflite-int8 artifact and check images (the tests' tiny bundle will do). Three
versions are made of it (a, b, and `wrong`, whose check labels fail the smoke test). Needs root (tmpfs and
ext4 loop mounts) and sshd (a throwaway server on 127.0.0.1, tests/sshd.py).

1. kill -9 at random moments of a local flash and of an SSH flash (the host's process group), and of the
   device's process over SSH at each of its renames and durable writes (EDGECLS_TEST_KILL_AT): after each,
   `current` is a whole release whose every file matches its manifest; every other round the next flash is
   of another version that fails its smoke test, and it must end on the last verified release (never on a
   version the killed flash switched to and did not check); a re-run then completes.
2. A full file system, blocks then inodes, on tmpfs and on ext4: the flash started with 0, 1, 2, ... units
   left (so it runs out at each of its allocations in turn), for a good version and for one that rolls back;
   and filled by another process the moment `current` switches (during the smoke test, then the rollback or
   the record). `current` must end on a verified release, the reason must read as a full disk.
3. First flashes racing for a new root: two processes at once, and a targets file naming the root twice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgecls.devices.flash import FlashOptions, flash, read_targets_file  # noqa: E402
from edgecls.devices.profiles import DeviceProfile  # noqa: E402
from edgecls.runtime.bundle import MANIFEST  # noqa: E402
from edgecls.runtime.install import staging  # noqa: E402
from edgecls.runtime.install.layout import KILL_ENV, DeviceRoot  # noqa: E402

PROFILE = DeviceProfile(name="test-cpu", artifacts=("tflite-int8",), threads=1)
WORKER = r"""
import json, sys
from edgecls.devices.flash import FlashOptions, flash
from edgecls.devices.profiles import DeviceProfile
bundle, target, config = sys.argv[1], sys.argv[2], sys.argv[3] or None
options = FlashOptions(profile=DeviceProfile(name="test-cpu", artifacts=("tflite-int8",), threads=1), ssh_config=config)
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(flash(bundle, [target], options)[0].to_dict()), flush=True)
"""


class Failure(AssertionError):
    pass


def check(condition, *what) -> None:
    if not condition:
        raise Failure(" ".join(map(str, what)))


def variants(bundle: Path, work: Path) -> dict:
    def variant(name, **changes):
        dst = work / name
        shutil.copytree(bundle, dst)
        manifest = json.loads((dst / MANIFEST).read_text())
        manifest.update(changes)
        (dst / MANIFEST).write_text(json.dumps(manifest, indent=2))
        return dst

    labels = json.loads((bundle / MANIFEST).read_text())["labels"]
    checks = json.loads((bundle / MANIFEST).read_text())["checks"]
    wrong = [{**c, "label": labels[(labels.index(c["label"]) + 1) % len(labels)]} for c in checks]
    return {
        "a": variant("a", created="2026-01-01T00:00:00+00:00"),
        "b": variant("b", created="2026-02-02T00:00:00+00:00"),
        "wrong": variant("wrong", checks=wrong),
    }


def verified_current(root: Path, manifests: dict) -> str:
    """Which version `current` is, after checking the release whole (the device's own check, release_damage)."""
    device = DeviceRoot(root)
    slot = device.link_version(device.current)
    check(slot, "no current at", root)
    check(not staging.release_damage(device, slot), "current is damaged", slot)
    now = (device.releases / slot / MANIFEST).read_bytes()
    names = [n for n, m in manifests.items() if m == now]
    check(names, "current is no known version")
    return names[0]


def last_verified(root: Path, manifests: dict) -> str:
    """The version a device must return to: current, unless a flash was interrupted after its switch."""
    state = json.loads((root / "state.json").read_text())
    pending = state.get("pending")
    now = verified_current(root, manifests)
    if not pending or DeviceRoot(root).link_version(root / "current") != pending["slot"]:
        return now
    old = DeviceRoot(root).releases / pending["old"] / MANIFEST
    return next(n for n, m in manifests.items() if m == old.read_bytes())


def worker(bundle: Path, target: str, config: str, env=None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(bundle), target, config],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    check(proc.stdout.readline().strip() == "ready", "worker did not start")
    return proc


def wait_device_idle(root: Path, timeout: float = 120) -> None:
    """Until no device-side process works on `root`: over SSH, the device's `python3 -m edgecls.runtime.install`
    outlives the killed host and may still finish (or start) its step; the expectation is taken after it."""
    deadline, idle_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        busy = False
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                data = cmdline.read_bytes()
            except OSError:
                continue
            busy = busy or (b"edgecls.runtime.install" in data and str(root).encode() in data)  # sh -c '... exec' too
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 1.0:  # sshd may still be starting a command the host sent
            return
        time.sleep(0.05)
    raise Failure(f"a device process on {root} still runs after {timeout} s")


def timed(bundle: Path, target: str, config: str) -> float:
    proc = worker(bundle, target, config)
    start = time.monotonic()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    result = json.loads(proc.stdout.readline())
    proc.wait(30)
    check(result["result"] == "installed", result)
    return time.monotonic() - start


def kill_rounds(bundles, manifests, target, root, config, rounds, rng, say) -> dict:
    """Random SIGKILLs of the flash's process group; counts of where `current` was after each."""
    options = FlashOptions(profile=PROFILE, ssh_config=config or None)
    check(flash(bundles["a"], [target], options)[0].ok, "first flash")
    duration = max(timed(bundles["b"], target, config), timed(bundles["a"], target, config))
    counts = {"rounds": 0, "old": 0, "new": 0, "unverified_after_kill": 0, "wrong_flash_ended_on_last_verified": 0}
    for i in range(rounds):
        old = verified_current(root, manifests)
        new = "b" if old == "a" else "a"
        proc = worker(bundles[new], target, config)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(duration * 1.05 * rng.random() ** 2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if config:
            wait_device_idle(root)
        now = verified_current(root, manifests)
        check(now in (old, new), "after a kill current is", now)
        counts["old" if now == old else "new"] += 1
        counts["unverified_after_kill"] += bool(json.loads((root / "state.json").read_text()).get("pending"))
        if i % 2 == 0:  # another version that fails its smoke test: back to the last verified, never the unchecked
            expected = last_verified(root, manifests)
            [w] = flash(bundles["wrong"], [target], options)
            check(w.result == "rolled back", "wrong flash", w)
            check(verified_current(root, manifests) == expected, "wrong flash ended on", now, "not", expected)
            counts["wrong_flash_ended_on_last_verified"] += 1
        [again] = flash(bundles[new], [target], options)
        check(again.ok, "re-run", again)
        check(verified_current(root, manifests) == new, "re-run ended on the wrong version")
        check("pending" not in json.loads((root / "state.json").read_text()), "journal left")
        counts["rounds"] += 1
    say(f"  {counts}")
    return counts


def device_kill_points(bundles, manifests, target, root, config, say) -> dict:
    """The device's process killed under sshd at its N-th rename and durable write, for every N: a flash of
    the other version, and a flash that fails its smoke test (its automatic rollback killed too)."""
    base = FlashOptions(profile=PROFILE, ssh_config=config)
    kills = {"flash": 0, "automatic rollback": 0}
    check(flash(bundles["a"], [target], base)[0].ok, "first flash")
    for scenario in kills:
        for point in ("write_durable", "switch"):
            for n in range(1, 30):
                old = verified_current(root, manifests)
                new = ("b" if old == "a" else "a") if scenario == "flash" else "wrong"
                expected = new if scenario == "flash" else old
                options = FlashOptions(
                    profile=PROFILE,
                    ssh_config=config,
                    ssh_options=(f"SetEnv={KILL_ENV}={point}:{n}", "ControlPath=none"),
                )
                [r] = flash(bundles[new], [target], options)
                now = verified_current(root, manifests)
                check(now in (old, new), scenario, point, n, now)
                if r.result != "failed":
                    check(now == expected, scenario, point, n, r)
                    break
                kills[scenario] += 1
                [again] = flash(bundles[new], [target], base)
                check(verified_current(root, manifests) == expected, "re-run", scenario, point, n, again)
    say(f"  device-side kills over SSH: {kills}")
    return kills


@contextmanager
def small_fs(folder: Path, kind: str, fs: str):
    """A tmpfs or ext4 loop file system small enough to fill: few blocks, or few inodes."""
    folder.mkdir(parents=True, exist_ok=True)
    image = folder.with_suffix(".img")
    if fs == "tmpfs":
        options = "size=4m" if kind == "blocks" else "nr_inodes=160"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    else:
        with open(image, "wb") as f:
            f.truncate(6 << 20)
        inodes = ["-N", "64"] if kind == "inodes" else []
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", *inodes, str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
        image.unlink(missing_ok=True)


def fill(sd: Path, kind: str) -> list:
    """Take every free block or inode; returns the filler files."""
    (sd / "filler").mkdir(exist_ok=True)
    made = []
    try:
        if kind == "inodes":
            for i in range(10**6):
                path = sd / "filler" / str(i)
                path.touch()
                made.append(path)
        else:
            path = sd / "filler" / "blob"
            made.append(path)
            with open(path, "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 4096)
    except OSError:
        pass
    os.sync()
    return made


def leave_free(made: list, kind: str, units: int) -> None:
    """Give back `units` inodes, or `units` x 4 KiB."""
    if kind == "inodes":
        for path in made[len(made) - units :]:
            path.unlink()
    else:
        os.truncate(made[0], max(0, made[0].stat().st_size - units * 4096))
    os.sync()


def full_disk(bundles, manifests, work: Path, fs: str, kind: str, say) -> dict:
    """Sweep: fill, leave 0..N units, flash (a good version, then one that rolls back); and fill at the switch."""
    counts = {"flashes": 0, "installed": 0, "rolled back": 0, "failed": 0, "unchanged": 0, "bad_reason": 0}
    options = FlashOptions(profile=PROFILE)
    for bundle_name in ("b", "wrong"):
        free, done = -1, 0
        while done < 3 and free < 400:  # every step until the flash has had enough space three times running
            free += 1
            sd = work / f"{fs}-{kind}-{bundle_name}-{free}"
            with small_fs(sd, kind, fs):
                root = sd / "edgecls"
                check(flash(bundles["a"], [str(root)], options)[0].ok, "first flash")
                made = fill(sd, kind)
                leave_free(made, kind, free)
                [r] = flash(bundles[bundle_name], [str(root)], options)
                counts["flashes"] += 1
                counts[r.result] += 1
                now = verified_current(root, manifests)
                expect = {"installed": bundle_name, "unchanged": bundle_name}.get(r.result, "a")
                check(now == expect, fs, kind, free, bundle_name, r, "current", now)
                done = done + 1 if r.result != "failed" else 0
                if r.result == "failed":
                    where = re.search(r"\(writing ([^)]*)\)", r.reason)
                    where = re.sub(r"[0-9a-f]{16}|\.\d+-\d+-[0-9a-f]+\.", "*", Path(where[1]).name) if where else "-"
                    counts.setdefault("failed_at", set()).add(where)
                    readable = "disk is full" in r.reason and "None" not in r.reason and "current" in r.reason
                    counts["bad_reason"] += not readable
                    check(readable, "reason", r.reason)
                for path in made:  # space back: the next flash completes whatever the full disk left
                    path.unlink(missing_ok=True)
                [again] = flash(bundles["b"], [str(root)], options)
                check(again.ok and verified_current(root, manifests) == "b", "after the space came back", again)
        counts[f"steps_{bundle_name}"] = free + 1
    for bundle_name in ("b", "wrong"):  # filled by another program the moment `current` switches
        for i in range(4):
            sd = work / f"{fs}-{kind}-switch-{bundle_name}-{i}"
            with small_fs(sd, kind, fs):
                root = sd / "edgecls"
                check(flash(bundles["a"], [str(root)], options)[0].ok, "first flash")
                filler = subprocess.Popen(
                    [sys.executable, "-c", FILLER, str(root / "current"), os.readlink(root / "current"), str(sd), kind],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                check(filler.stdout.readline().strip() == "ready", "filler")
                [r] = flash(bundles[bundle_name], [str(root)], options)
                line = filler.stdout.readline().split()
                filler.wait(30)
                counts["flashes"] += 1
                counts[r.result] += 1
                free_left = int(line[1]) if line[:1] == ["full"] else -1
                counts["free_after_switch_fill"] = max(counts.get("free_after_switch_fill", 0), free_left)
                now = verified_current(root, manifests)
                expect = "b" if r.result == "installed" else "a"
                check(now == expect and r.result in ("installed", "rolled back"), fs, kind, "at switch", r, now)
    counts["failed_at"] = sorted(counts.get("failed_at", ()))
    say(f"  {fs} {kind}: {counts}")
    return counts


FILLER = r"""
import os, sys, time
link, before, sd, kind = sys.argv[1:5]
print("ready", flush=True)
deadline = time.monotonic() + 60
while os.readlink(link) == before and time.monotonic() < deadline:
    pass
os.makedirs(os.path.join(sd, "filler"), exist_ok=True)
try:
    if kind == "inodes":
        for i in range(10**6):
            open(os.path.join(sd, "filler", str(i)), "w").close()
    else:
        with open(os.path.join(sd, "filler", "blob"), "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
except OSError:
    pass
s = os.statvfs(sd)
print("full", s.f_bfree if kind == "blocks" else s.f_ffree, flush=True)
"""


def first_flashes(bundles, work: Path, rounds: int, say) -> dict:
    spurious = {"two_processes": 0, "targets_file_twice": 0, "rounds": rounds}
    for i in range(rounds):
        root = work / f"race-{i}" / "edgecls"
        procs = [worker(bundles["a"], str(root), "") for _ in range(2)]
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=300)[0]) for proc in procs]
        spurious["two_processes"] += sum(r["result"] not in ("installed", "unchanged") for r in results)
        twice = work / f"twice-{i}" / "edgecls"
        targets = work / f"targets-{i}.txt"
        targets.write_text(f"{twice}\n{twice}\n")
        results = flash(bundles["a"], read_targets_file(targets), FlashOptions(profile=PROFILE))
        spurious["targets_file_twice"] += sum(not r.ok for r in results)
        for r in results:
            if not r.ok:
                say(f"  spurious: {r.reason}")
    say(f"  {spurious}")
    return spurious


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "flash_attacks.txt")
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--local-kills", type=int, default=50)
    p.add_argument("--ssh-kills", type=int, default=12)
    p.add_argument("--races", type=int, default=12)
    p.add_argument("--sections", default="1a,1b,1c,2,3", help="which to run (a quick check: --sections 2)")
    args = p.parse_args()
    from tests.sshd import SshServer

    rng = random.Random(args.seed)
    lines = []

    def say(text):
        print(text, flush=True)
        lines.append(text)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="flash-attacks-"))
    bundles = variants(args.bundle, work)
    manifests = {n: (b / MANIFEST).read_bytes() for n, b in bundles.items()}
    say(
        f"flash attacks, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {os.cpu_count()} CPUs"
    )
    checks = len(json.loads(manifests["a"])["checks"])
    say(f"bundle: {args.bundle} (tflite-int8, {checks} check images), seed {args.seed}")
    say(
        "every round checks that `current` is a whole release (each file against its manifest, the device's own "
        "release_damage); any round that does not holds up is a failure, counted at the end"
    )
    say(
        "2: steps_X = flashes started with 0, 1, 2... units free (4 KiB or 1 inode) until 3 in a row had enough; "
        "failed_at = the file each failure was writing (ENOSPC from write() names none: '-'); "
        "free_after_switch_fill = what statvfs still counted once the filler got ENOSPC (ext4 keeps reserved "
        "clusters that f_bfree includes)"
    )
    failures = []

    def section(title, fn, *a):
        if title.split(".")[0] not in args.sections.split(","):
            return None
        say(title)
        t = time.monotonic()
        try:
            out = fn(*a)
        except Failure as exc:
            failures.append(f"{title}: {exc}")
            say(f"  FAILED: {exc}")
            return None
        say(f"  ({time.monotonic() - t:.0f} s)")
        return out

    section(
        f"1a. kill -9 at {args.local_kills} random moments of a local flash",
        kill_rounds, bundles, manifests, str(work / "local-dev"), work / "local-dev", "", args.local_kills, rng, say,
    )  # fmt: skip
    with SshServer(work / "sshd").start() as sshd:
        target = sshd.target(work / "ssh-dev")
        section(
            f"1b. kill -9 at {args.ssh_kills} random moments of an SSH flash (the host's ssh and flash)",
            kill_rounds, bundles, manifests, target, work / "ssh-dev", str(sshd.ssh_config), args.ssh_kills, rng, say,
        )  # fmt: skip
        section(
            "1c. kill -9 of the device's process over SSH at each rename and durable write",
            device_kill_points, bundles, manifests, target, work / "ssh-dev", str(sshd.ssh_config), say,
        )  # fmt: skip
    for fs in ("tmpfs", "ext4"):
        for kind in ("blocks", "inodes"):
            section(
                f"2. full {fs} ({kind}): flash started with 0.. {kind} free, and filled at the switch",
                full_disk, bundles, manifests, work, fs, kind, say,
            )  # fmt: skip
    section(
        f"3. {args.races} x 2 concurrent first flashes to a new root (processes), {args.races} targets files naming "
        f"a new root twice",
        first_flashes, bundles, work, args.races, say,
    )  # fmt: skip
    say(f"total {time.monotonic() - started:.0f} s; failures: {len(failures)}")
    for f in failures:
        say(f"  {f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
