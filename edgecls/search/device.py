"""The device lab of `edgecls search`: measures a bundle's artifact on the target, one measurement at a time.

`DeviceLab(device)` takes what `--device` names: a device profile (a built-in name or a JSON file), measured on
this machine, or `user@host[:port]`, measured on that device with its own installed runtime over SSH. Both run
the very bench `edgecls bench` runs (`runtime.bench.runner.run_bench` here, `bench_remote.run_remote` there, as
`edgecls bench --device` does), on the one artifact the device would run (its profile's preference among the
bundle's artifacts, int8 first by default) at the profile's threads, so the figure the search keeps is the p50
`edgecls bench --artifacts A --threads T` reports later: the median of the interleaved rounds' medians.

One measurement at a time per device, whichever process or host asks (search workers on several machines share
one device): an flock on /tmp/edgecls-measure.lock on the measuring machine, whichever user asks: here taken by
this process and lent to the bench's (a search killed with -9 leaves it held until the bench is done); over SSH
taken ON the device, held by a small Python process that an SSH session of ours
keeps alive (stdlib only, so any device edgecls runs on has what it needs; a killed search drops the session and
with it the lock). `Measurement.started`/`ended` are read while the lock is held, on the device's own clock for
SSH, so two measurements of one device can be shown not to overlap.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError
from edgecls.search.types import Measurement

MB = 1024 * 1024  # as the bench's peak RSS (VmHWM kB / 1024)
REMOTE_LOCK = "/tmp/edgecls-measure.lock"

# Run by the device's python over SSH: take the device's measurement lock, say so with the device's clock, hold it
# until our side closes stdin (or the session drops), then say when it was let go. O_RDONLY when another user made
# the file (/tmp is sticky): flock works on a read-only descriptor.
_HOLD_LOCK = """
import fcntl, os, sys, time
p = sys.argv[1]
try:
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        os.fchmod(fd, 0o666)
    except OSError:
        pass
except OSError:
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print("busy", flush=True)
    fcntl.flock(fd, fcntl.LOCK_EX)
print("locked %r" % time.time(), flush=True)
if "done" not in sys.stdin.read().split() and os.path.isdir("/proc"):
    # our side died (kill -9) without saying done: its bench runs on in another session; hold the lock until
    # every process of it is gone, then remove the temp folder it was given
    import glob, re, shutil
    folders = set()
    while True:
        running = False
        for d in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                args = open(d, "rb").read().decode(errors="replace")
            except OSError:
                continue
            if "edgecls.runtime.bench" in args:
                found = re.findall(r"/[\\w./-]*?edgecls-bench\\.\\w+", args)
                folders.update(found)
                running = running or bool(found)
        if not running:
            break
        time.sleep(0.2)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
print("released %r" % time.time(), flush=True)
"""


@dataclass(frozen=True)
class MeasureSettings:
    """How long the bench times one artifact: `edgecls bench`'s options, shorter by default (one fresh process
    for peak RSS and load, then the interleaved rounds that give the p50)."""

    repeats: int = 1
    runs: int = 100
    frame_runs: int = 10  # whole frames (decode, preprocess, invoke): the search needs only the invoke
    rounds: int = 10
    round_runs: int = 20
    time_budget_s: float = 5.0
    max_warmup_s: float = 5.0

    def bench_options(self, artifact: str, threads: int | None, engines: list | None):
        from edgecls.runtime.bench.runner import BenchOptions

        return BenchOptions(
            artifacts=[artifact],
            threads=[threads],
            repeats=self.repeats,
            runs=self.runs,
            frame_runs=self.frame_runs,
            budget_s=self.time_budget_s,
            max_warmup_s=self.max_warmup_s,
            engines=engines,
            rounds=self.rounds,
            round_runs=self.round_runs,
        )


class DeviceLab:
    """One device that measures bundles: a profile measured here, or `user@host[:port]` over SSH.

    `profile` (SSH only: for a local device the profile *is* `device`) says which artifact the device runs and at
    how many threads; None: the generic default (int8 first, the engine's threads). `python`: the device's
    interpreter as `edgecls bench --remote-python` takes it.
    """

    def __init__(
        self,
        device: str,
        profile: str | None = None,
        ssh_config=None,
        settings: MeasureSettings | None = None,
        python: str = "auto",
        progress=None,
    ):
        from edgecls.devices.ssh import is_ssh_target

        self.device = str(device or "")
        if not self.device.strip():
            raise EdgeclsError("--device is empty: give a device profile (e.g. desktop-cpu) or user@host[:port]")
        self.settings = settings or MeasureSettings()
        self.python = python
        self.ssh_config = str(ssh_config) if ssh_config else None
        self.say = progress or (lambda line: None)
        self.remote = is_ssh_target(self.device)
        if self.remote:
            from edgecls.bench_remote import parse_device

            self.target = parse_device(self.device)
            self.profile = _profile(profile, "--profile")
        else:
            if profile and profile != self.device:
                raise EdgeclsError(
                    f"--device {self.device} is a profile measured on this machine: leave out --profile {profile} "
                    f"(it chooses the artifact of an SSH device), or give --device {profile}"
                )
            self.profile = _profile(self.device, "--device")
        _check_benchable(self.profile)
        self._machine: dict | None = None
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"DeviceLab({self.device!r}, profile={self.profile.name!r})"

    @property
    def label(self) -> str:
        return str(self.target) if self.remote else f"{self.profile.name} on this machine"

    def artifact_for(self, bundle_dir) -> str:
        """The artifact the device runs from this bundle: the first of the profile's preference the bundle holds
        (here: that an installed engine runs, as `edgecls run` chooses), else the bundle's first."""
        from edgecls.runtime.bundle import load_bundle

        bundle = load_bundle(bundle_dir)
        if not self.remote:
            from edgecls.runtime.classifier import choose_artifact

            return choose_artifact(bundle, None, self.profile.artifacts).name
        names = [a.name for a in bundle.manifest.artifacts]
        return next(n for n in [*self.profile.artifacts, *names] if n in names)

    def engines_for(self, bundle_dir, artifact: str) -> list | None:
        """The bench's opt-in engines to time `artifact` in: the profile's engine when it is an opt-in one
        (OpenVINO for intel-cpu's ONNX), else none (the format's default engine, as the daemon's); None where
        no opt-in engine runs the format."""
        from edgecls.runtime.backends.registry import BACKENDS, OPT_IN
        from edgecls.runtime.bundle import load_bundle

        fmt = load_bundle(bundle_dir).artifact(artifact).format
        opt_in = {cls.name for cls in OPT_IN.get(fmt, ())}
        runs_it = opt_in | {cls.name for cls in BACKENDS.get(fmt, ())}
        first = next((b for b in self.profile.backends if b in runs_it), None)
        if first in opt_in:
            return [first]
        return [] if opt_in else None  # None: no --engines sent (a device's edgecls from before it runs too)

    def measure(self, bundle_dir) -> Measurement:
        """Latency p50/p90, the worker's peak RSS and the artifact's size on the device, holding the device."""
        from edgecls.runtime.bench.runner import row_label

        bundle_dir = Path(bundle_dir)
        if not (bundle_dir / "manifest.json").is_file():
            raise EdgeclsError(f"{bundle_dir} is not a bundle (no manifest.json): convert a run into it first")
        artifact = self.artifact_for(bundle_dir)
        engines = self.engines_for(bundle_dir, artifact)
        options = self.settings.bench_options(artifact, self.profile.threads, engines)
        row = row_label(artifact, engines[0] if engines else None)
        with self._held() as clock:
            self.say(f"{self.label}: measuring {row} of {bundle_dir}")
            doc = self._bench(bundle_dir, options)
        record = next((r for r in doc["records"] if r["artifact"] == row), None)
        if record is None:
            why = "; ".join(g["why"] for g in doc.get("left_out", [])) or "no record came back"
            raise EdgeclsError(f"{self.label}: {row} could not be measured ({why}): check the profile's backends")
        self._machine = doc["machine"]
        return Measurement(
            artifact=artifact,
            engine=record.get("backend") or "",
            latency_ms=float(record["p50_ms"]),
            latency_p90_ms=record.get("p90_ms"),
            peak_rss_mb=record.get("peak_rss_mb"),
            size_mb=record["size_bytes"] / MB if record.get("size_bytes") is not None else None,
            device=self._device_line(doc["machine"]),
            emulated=doc["machine"].get("emulated"),
            seconds=clock["ended"] - clock["started"],
            started=clock["started"],
            ended=clock["ended"],
            threads=record.get("threads", self.profile.threads),
        )

    def describe(self) -> dict:
        """What measures: the device string, local or SSH, the profile's choices, and the machine's description
        (read on the device: the last measurement's, or asked now)."""
        if self._machine is None:
            self._machine = self._probe_machine()
        return {
            "device": self.device,
            "kind": "ssh" if self.remote else "local",
            "label": self._device_line(self._machine),
            "profile": self.profile.name,
            "artifacts": list(self.profile.artifacts),
            "backends": list(self.profile.backends),
            "threads": self.profile.threads,
            "emulated": self._machine.get("emulated"),
            "machine": self._machine,
            "settings": asdict(self.settings),
        }

    def same_machine(self, recorded: dict) -> str | None:
        """None when this lab measures the machine `recorded` (a `describe()` stored by the search) did; else the
        one line refusing a resume or a worker that would mix another machine's figures into the same search. A
        local profile is measured wherever the worker runs, so its host and CPU must match; an SSH device is the
        same device whichever host reaches it."""
        if self.remote or not recorded or recorded.get("kind") != "local":
            return None
        then = recorded.get("machine") or {}
        now = self._machine if self._machine is not None else self._probe_machine()
        for key in ("hostname", "cpu"):
            if then.get(key) and then.get(key) != now.get(key):
                return (
                    f"--device {self.device} is measured on the machine the search runs on: this search measured on "
                    f"{then.get('hostname')} ({then.get('cpu')}), this is {now.get('hostname')} ({now.get('cpu')}); "
                    f"run it there, or give the device as user@host to measure it over SSH from anywhere"
                )
        return None

    def _device_line(self, machine: dict) -> str:
        """'pi@host:2222 (Raspberry Pi 4 Model B, 4 cores, aarch64)': what tables and plot titles name."""
        bits = [machine.get("cpu") or "unknown CPU", f"{machine.get('cores')} cores", machine.get("arch") or ""]
        line = f"{self.label} ({', '.join(b for b in bits if b)})"
        return f"{line}, EMULATED ({machine['emulated']})" if machine.get("emulated") else line

    def _bench(self, bundle_dir: Path, options) -> dict:
        if self.remote:
            from edgecls.bench_remote import run_remote

            return run_remote(
                self.device,
                bundle_dir,
                options,
                ssh_config=self.ssh_config,
                python=self.python,
                progress=self.say,
                root=self.profile.install_root,  # the python the lock and the description ran under
            )
        return self._bench_here(bundle_dir, options)

    def _bench_here(self, bundle_dir: Path, options) -> dict:
        """run_bench in a child process that inherits the device lock's descriptor: a flock belongs to the open
        file, so killed with -9, our process leaves the lock held by the child until its bench workers are done."""
        import json
        import sys

        job = json.dumps({"bundle": str(bundle_dir), "options": asdict(options)})
        proc = subprocess.Popen(
            [sys.executable, "-c", _BENCH_HERE, job],
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=(self._lock_fd,),
        )
        doc = error = None
        for line in proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "say":
                self.say(rest)
            elif kind == "doc":
                doc = json.loads(rest)
            elif kind == "error":
                error = rest
        proc.wait()
        if doc is None:
            raise EdgeclsError(error or f"{self.label}: the bench's process failed (exit {proc.returncode}): run again")
        return doc

    def _probe_machine(self) -> dict:
        from edgecls.runtime.bench import machine

        if not self.remote:
            return machine.describe()
        import json

        from edgecls.devices.ssh import python_command

        argv = ["-c", "import json; from edgecls.runtime.bench.machine import describe; print(json.dumps(describe()))"]
        result = self._client().run(
            python_command(self.python, self.profile.install_root, argv), timeout=60, what="python3"
        )
        return json.loads(result.stdout.decode().strip().splitlines()[-1])

    def _client(self):
        from edgecls.devices.ssh import SshClient

        return SshClient(self.target, config=self.ssh_config, options=["ServerAliveInterval=15"])

    @contextmanager
    def _held(self):
        """Hold the device for one measurement; yields a dict that gets `started` now and `ended` on the way out."""
        if self.remote:
            with self._remote_lock() as clock:
                yield clock
            return
        from edgecls.runtime.lockfile import holder, stamp

        path = Path(REMOTE_LOCK)  # this machine's, whichever user or profile measures it (and SSH from elsewhere)
        busy = holder(path)
        if busy is not None:
            self.say(f"{self.label}: waiting for the device ({busy or 'another measurement'} holds it)")
        # flock'd here rather than by file_lock: its descriptor is lent to the bench's process (_bench_here)
        fd = _open_shared(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, stamp(f"a measurement of {self.profile.name} by edgecls search").encode(), 0)
            except OSError:  # another user's file, opened read-only: the stamp only informs
                pass
            self._lock_fd = fd
            clock = {"started": time.time()}
            yield clock
            clock["ended"] = time.time()
        finally:
            self._lock_fd = None
            os.close(fd)  # releases the flock, unless the bench's process still holds it

    @contextmanager
    def _remote_lock(self):
        """The device's measurement lock, held by a python process on the device for as long as we keep its stdin
        open; the times are the device's."""
        from edgecls.devices.ssh import python_command

        client = self._client()
        line = python_command(self.python, self.profile.install_root, ["-c", _HOLD_LOCK, REMOTE_LOCK])
        line = line if isinstance(line, str) else " ".join(shlex.quote(str(a)) for a in line)
        proc = subprocess.Popen(
            [*client.ssh_argv(), line], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            started = self._await_lock(proc, client)
            clock = {"started": started}
            yield clock
            proc.stdin.write(b"done\n")
            proc.stdin.close()
            answer = proc.stdout.readline().decode(errors="replace").split()
            proc.wait(timeout=60)
            if answer[:1] != ["released"]:
                raise EdgeclsError(f"{self.label}: the device's measurement lock ended early: run again")
            clock["ended"] = float(answer[1])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if not stream.closed:
                    stream.close()

    def _await_lock(self, proc: subprocess.Popen, client) -> float:
        """Wait for the device's lock (saying so when another measurement holds it); its clock when taken."""
        while True:
            words = proc.stdout.readline().decode(errors="replace").split()
            if words[:1] == ["busy"]:
                self.say(f"{self.label}: waiting for the device (another measurement holds {REMOTE_LOCK} there)")
                continue
            if words[:1] == ["locked"] and len(words) == 2:
                return float(words[1])
            if words:  # a line of the device's shell or a python wrapper (conda, a banner): not ours
                continue
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise EdgeclsError(
                    f"{self.label}: the device's measurement lock did not answer in 60 s: check its python "
                    f"(--remote-python) runs `python3 -c 'import fcntl'`"
                ) from None
            stderr = proc.stderr.read()
            failed = subprocess.CompletedProcess(proc.args, proc.returncode, b"", stderr)
            raise EdgeclsError(client.describe_failure(failed, "python3 (the device's measurement lock)"))


# The local bench's process (see DeviceLab._bench_here): "say LINE" for progress, then "doc JSON" or "error LINE".
# A closed pipe (our process killed) is ignored, so the bench runs on, its workers waited on, and the lock held.
_BENCH_HERE = """
import json, sys
from edgecls.runtime.bench.runner import BenchOptions, run_bench
from edgecls.runtime.errors import EdgeclsError

def out(kind, text):
    try:
        print(kind, text, flush=True)
    except OSError:
        pass

job = json.loads(sys.argv[1])
try:
    doc = run_bench(job["bundle"], BenchOptions(**job["options"]), notify=lambda line: out("say", line))
except EdgeclsError as exc:
    out("error", str(exc).replace(chr(10), " "))
    sys.exit(1)
out("doc", json.dumps(doc))
"""


def _open_shared(path: Path) -> int:
    """The machine-wide lock file, made writable by every user (/tmp is sticky: another user's file is opened
    read-only, which flock accepts), as _HOLD_LOCK opens it on an SSH device."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, 0o666)
    except OSError:
        pass
    return fd


def _check_benchable(profile) -> None:
    """Refuse a profile whose engine settings the bench's worker does not apply (it runs ONNX Runtime on the CPU
    provider at its default spinning, OpenVINO on the CPU at f32): the search would time another device."""
    odd = [p for p in profile.providers if p != "CPUExecutionProvider"]
    settings = [f"providers {', '.join(odd)}"] if odd else []
    if profile.openvino_device != "CPU":
        settings.append(f"openvino_device {profile.openvino_device}")
    if profile.openvino_precision:
        settings.append(f"openvino_precision {profile.openvino_precision}")
    if profile.ort_allow_spinning is not None:
        settings.append(f"ort_allow_spinning {str(profile.ort_allow_spinning).lower()}")
    if settings:
        raise EdgeclsError(
            f"profile {profile.name} sets {'; '.join(settings)}, which edgecls search's bench does not apply (it "
            "times ONNX Runtime and OpenVINO on the CPU): give a CPU profile, or a copy of this one without them"
        )


def _profile(name: str | None, option: str):
    """A DeviceProfile by name or JSON path; an unknown one is one line naming the profiles and the SSH form."""
    from edgecls.devices.profiles import ProfileError, load_profile

    try:
        return load_profile(name)
    except ProfileError as exc:
        raise EdgeclsError(f"{option} {name}: {exc}; or give user@host[:port] to measure a device over SSH") from None
