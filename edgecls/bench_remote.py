"""`edgecls bench --device user@host[:port]`: the same bench on a device, by the device's own installed runtime.

The bundle (and --frame / --data when given) is copied into a fresh temp folder on the device, `python3 -m
runtime.bench ... --json -` runs there, its JSON comes back on stdout, and the folder is removed. The machine
description in the result is read on the device, so it names the device, not this host.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

from runtime.errors import EdgeclsError


def parse_device(text: str):
    """`user@host[:port]` as devices.ssh's SshTarget; a local path or a /root suffix is refused with the fix."""
    from devices.ssh import SshError, parse_target

    try:
        target = parse_target(text)
    except SshError as exc:
        raise EdgeclsError(f"--device {text!r}: {exc}") from None
    if target is None or target.root:
        raise EdgeclsError(f"--device {text!r} is not user@host or user@host:PORT (the bench runs in a temp folder there)")
    return target


def runner_args(options) -> list:
    """The runtime.bench command line for these BenchOptions (paths are rewritten by the caller)."""
    args = ["--threads", ",".join(str(t) if t else "default" for t in options.threads),
            "--repeats", options.repeats, "--runs", options.runs, "--time-budget", options.budget_s or 0,
            "--max-warmup", options.max_warmup_s]
    if options.frame_runs:
        args += ["--frame-runs", options.frame_runs]
    if options.artifacts:
        args += ["--artifacts", ",".join(options.artifacts)]
    return [str(a) for a in args]


def run_remote(device: str, bundle, options, ssh_config=None, python: str = "python3", progress=None,
               timeout_s: float = 3600) -> dict:
    """Run the bench on `device` and return its JSON document, with `remote` saying where and how."""
    from devices.ssh import SshClient

    say = progress or (lambda msg: None)
    bundle = Path(bundle)
    if not bundle.exists():
        raise EdgeclsError(f"bundle {bundle} does not exist: create one with `edgecls convert RUN --out {bundle}`")
    target = parse_device(device)
    client = SshClient(target, config=ssh_config, python=python)
    say(f"{target}: creating a temp folder")
    remote = client.run("mktemp -d \"${TMPDIR:-/tmp}/edgecls-bench.XXXXXXXX\"", timeout=60).stdout.decode().strip()
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
        say(f"{target}: running python3 -m runtime.bench (this takes as long as a local bench)")
        result = client.python("runtime.bench", [*args, *runner_args(options), "--json", "-", "--quiet"],
                               timeout=timeout_s)
    finally:
        client.run(["rm", "-rf", "--", remote], check=False, timeout=60)
    try:
        doc = json.loads(result.stdout.decode("utf-8"))
    except ValueError:
        raise EdgeclsError(f"{target}: python3 -m runtime.bench printed no JSON: is the device's edgecls too old? "
                           f"({result.stdout[-200:]!r})") from None
    doc["remote"] = {"device": str(target), "python": python}
    doc["bundle"]["path"] = str(bundle)
    return doc
