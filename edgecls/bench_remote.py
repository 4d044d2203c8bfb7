"""`edgecls bench --device user@host[:port]`: the same bench on a device, by the device's own installed runtime.

The bundle (and --frame / --data when given) is copied into a fresh temp folder on the device, `python3 -m
edgecls.runtime.bench ... --json -` runs there, its JSON comes back on stdout, and the folder is removed, after the
remote bench is stopped if it still runs (Ctrl-C, timeout). The machine description in the result is read on the
device, so it names the device, not this host.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError


def parse_device(text: str):
    """`user@host[:port]` as edgecls.devices.ssh's SshTarget; a local path or a /root suffix is refused with the fix."""
    from edgecls.devices.ssh import SshError, parse_target

    try:
        target = parse_target(text)
    except SshError as exc:
        raise EdgeclsError(f"--device {text!r}: {exc}") from None
    if target is None or target.root:
        raise EdgeclsError(
            f"--device {text!r} is not user@host or user@host:PORT (the bench runs in a temp folder there)"
        )
    return target


def runner_args(options) -> list:
    """The edgecls.runtime.bench command line for these BenchOptions (paths are rewritten by the caller)."""
    from edgecls.runtime.bench.runner import BenchOptions

    args = [
        "--threads",
        ",".join(str(t) if t else "default" for t in options.threads),
        "--repeats",
        options.repeats,
        "--runs",
        options.runs,
        "--time-budget",
        options.budget_s or 0,
        "--max-warmup",
        options.max_warmup_s,
    ]
    if options.frame_runs:
        args += ["--frame-runs", options.frame_runs]
    if options.artifacts:
        args += ["--artifacts", ",".join(options.artifacts)]
    # Only when set: a device's edgecls from before the interleaved pass knows none of these
    if options.engines is not None:
        args += ["--engines", ",".join(options.engines)]
    if (options.rounds, options.round_runs) != (BenchOptions.rounds, BenchOptions.round_runs):
        args += ["--rounds", options.rounds, "--round-runs", options.round_runs]
    return [str(a) for a in args]


# Stops the device-side bench (its process group: edgecls.runtime.bench and its worker) before its folder goes:
# SIGINT first so it ends cleanly, SIGKILL after ~3 s, then the folder (bundle, frame, pid file, temp files).
_STOP_AND_REMOVE = (
    'd={dir}; if [ -s "$d/bench.pid" ]; then p=$(cat "$d/bench.pid"); '
    'if kill -INT -"$p" 2>/dev/null; then i=0; '
    'while kill -0 -"$p" 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; '
    'kill -KILL -"$p" 2>/dev/null; fi; fi; rm -rf -- "$d"'
)


def bench_args(remote: str, args: list) -> list:
    """edgecls.runtime.bench's arguments on the device: leading its own process group, temp files inside `remote`.

    Without a pty, killing the local ssh (Ctrl-C, timeout) leaves the remote side running; the pid file lets
    the cleanup stop it. --tmp-dir puts edgecls.runtime.bench's frame folder in `remote`, so `rm -rf` takes it even
    after a SIGKILL.
    """
    return [*args, "--json", "-", "--quiet", "--pid-file", posixpath.join(remote, "bench.pid"), "--tmp-dir", remote]


def parse_output(stdout: bytes, target) -> dict:
    """The JSON after edgecls.runtime.bench's marker line; whatever a chatty shell printed before it is skipped."""
    from edgecls.runtime.bench.__main__ import JSON_MARKER

    text = stdout.decode("utf-8", "replace")
    head, marker, body = text.rpartition(f"{JSON_MARKER}\n")
    if not marker:
        if not text.strip():
            raise EdgeclsError(
                f"{target}: python3 -m edgecls.runtime.bench printed nothing: is the device's edgecls too old? "
                f"update it (`edgecls flash ... --setup`)"
            )
        raise EdgeclsError(
            f"{target}: python3 -m edgecls.runtime.bench printed no result marker (output ends {text[-200:]!r}): "
            f"update the device's edgecls (`edgecls flash ... --setup`)"
        )
    try:
        return json.loads(body)
    except ValueError as exc:
        raise EdgeclsError(f"{target}: the bench result from the device is not valid JSON ({exc}): run again") from None


def run_remote(
    device: str,
    bundle,
    options,
    ssh_config=None,
    python: str = "auto",
    progress=None,
    timeout_s: float = 3600,
    root: str = "/opt/edgecls",
) -> dict:
    """Run the bench on `device` and return its JSON document, with `remote` saying where and how."""
    from edgecls.devices.ssh import SshClient, check_serves, device_edgecls_version, python_command
    from edgecls.runtime.bench.runner import data_note
    from edgecls.runtime.bundle import load_bundle

    say = progress or (lambda msg: None)
    bundle = Path(bundle)
    if not bundle.exists():
        raise EdgeclsError(f"bundle {bundle} does not exist: create one with `edgecls convert RUN --out {bundle}`")
    if options.data:  # checked here: the device's notes go to a stderr nobody reads
        note = data_note(options.data, load_bundle(bundle).labels)
        if note:
            say(note)
    target = parse_device(device)
    client = SshClient(target, config=ssh_config, python="python3" if python == "auto" else python)
    needs = load_bundle(bundle).manifest.needs()
    if needs:  # a device's edgecls older than the bundle's `requires` ignores it and would time a wrong model
        check_serves(needs, device_edgecls_version(client, python, root), str(target))
    say(f"{target}: creating a temp folder")
    remote = client.run('mktemp -d "${TMPDIR:-/tmp}/edgecls-bench.XXXXXXXX"', timeout=60).stdout.decode().strip()
    if not remote.startswith("/"):
        raise EdgeclsError(f"{target}: mktemp gave {remote!r}, not a folder path: check the device's /tmp")
    try:
        uploads, args = [bundle], [posixpath.join(remote, bundle.name)]
        for flag, local in (("--frame", options.frame), ("--data", options.data)):
            if local:
                uploads.append(Path(local))
                args += [flag, posixpath.join(remote, Path(local).name)]
        if len({p.name for p in uploads}) != len(uploads):
            raise EdgeclsError("the bundle, --frame and --data must have different names to be copied side by side")
        say(f"{target}: copying {', '.join(p.name for p in uploads)}")
        client.push(uploads, remote)
        say(f"{target}: running python3 -m edgecls.runtime.bench (this takes as long as a local bench)")
        argv = ["-m", "edgecls.runtime.bench", *bench_args(remote, [*args, *runner_args(options)])]
        result = client.run(python_command(python, root, argv), timeout=timeout_s, check=False)
    finally:
        client.run(_STOP_AND_REMOVE.format(dir=shlex.quote(remote)), check=False, timeout=60)
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace")
        errors = [l[len("error: ") :] for l in stderr.splitlines() if l.startswith("error: ")]
        if not errors and "unrecognized arguments" in stderr:  # argparse of an older edgecls.runtime.bench
            raise EdgeclsError(
                f"{target}: the device's edgecls is older than this one ({stderr.strip().splitlines()[-1][:200]}): "
                "update it there (`edgecls flash ... --setup`, "
                "or `pip install --force-reinstall` this edgecls's wheel)"
            )
        # edgecls.runtime.bench's own one-line error, once (not "`python3` failed: error: ..."); else ssh's diagnosis
        raise EdgeclsError(f"{target}: {errors[-1]}" if errors else client.describe_failure(result, python))
    doc = parse_output(result.stdout, target)
    for gone in doc.get("left_out", []):  # the device's notes went to a stderr nobody reads
        say(f"note: {gone['row']} left out (an opt-in engine's row): {gone['why']}")
    doc["remote"] = {"device": str(target), "python": python, "workdir": remote}
    doc["bundle"]["path"] = str(bundle)
    return doc
