"""`python3 -m edgecls.runtime.install plan|apply|rollback|status|trust|service`: the device's half of flash, in JSON.

Every command prints one JSON object on stdout. A refusal prints {"error": "..."} and exits 2, so the host
can tell a reasoned refusal from a crash (exit 1, traceback on stderr).

The manifest never travels in argv (Linux caps one argument at 128 KiB, and a 10k-class manifest is
larger): `plan` reads it raw on stdin, `apply --stdin-tar` as the tar's first member, `apply --from-dir` raw
on stdin; argv carries only its sha256 (`--manifest-sha256`), checked before the manifest is parsed.
"""

from __future__ import annotations

import argparse
import json
import sys

from edgecls.runtime.errors import EdgeclsError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m edgecls.runtime.install", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("plan", "apply", "rollback", "status", "trust", "service"):
        c = sub.add_parser(name)
        c.add_argument("--root", required=True, help="the device root (releases/, current, previous)")
        if name in ("plan", "apply"):
            c.add_argument("--manifest-sha256", required=True, help="sha256 of the manifest.json given on stdin")
            c.add_argument("--artifacts", required=True, help="comma-separated artifact names sent")
            c.add_argument("--no-smoke", action="store_true", help="the flash skips the smoke test")
        if name == "apply":
            c.add_argument("--stdin-tar", action="store_true", help="read the files to stage as a tar on stdin")
            c.add_argument(
                "--from-dir", default=None, help="stage the files found in this folder (Ansible copies there)"
            )
            c.add_argument(
                "--profile-json", default="{}", help="artifacts/backends/providers/threads for the smoke test"
            )
            c.add_argument("--budget-ms", type=float, default=None)
            c.add_argument("--health-url", default="")
            c.add_argument("--health-token-file", default="", help="a file on the device holding the daemon's token")
        if name in ("apply", "rollback"):
            c.add_argument("--service", default="")
            c.add_argument("--lock-timeout", type=float, default=60.0)
        if name == "status":
            c.add_argument("--health-url", default="")
        if name == "service":
            c.add_argument("--name", default="edgecls")
            c.add_argument("--unit-dir", default="/etc/systemd/system")
            c.add_argument("--config", default="/etc/edgecls/run.toml")
            c.add_argument("--camera", default="0")
            c.add_argument("--port", type=int, default=8080)
            c.add_argument("--profile", default="")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from edgecls.runtime.install import api

    try:
        if args.command in ("plan", "apply"):
            from edgecls.runtime.install import staging

            artifacts = [a for a in args.artifacts.split(",") if a]
            stream = None
            if args.command == "apply" and args.stdin_tar:
                manifest, stream = staging.open_upload(sys.stdin.buffer, args.manifest_sha256)
            else:
                manifest = staging.check_manifest(sys.stdin.buffer.read(), args.manifest_sha256)
        if args.command == "plan":
            out = api.plan(args.root, manifest, artifacts, smoke=not args.no_smoke)
        elif args.command == "apply":
            _watch_host()
            sources = None
            if args.from_dir:
                from pathlib import Path

                sources = {p.name: p for p in Path(args.from_dir).iterdir() if p.is_file()}
            out = api.apply(
                args.root,
                manifest,
                artifacts,
                stream=stream,
                sources=sources,
                profile=json.loads(args.profile_json),
                budget_ms=args.budget_ms,
                service=args.service,
                health_url=args.health_url,
                health_token_file=args.health_token_file,
                smoke=not args.no_smoke,
                lock_timeout=args.lock_timeout,
            )
        elif args.command == "rollback":
            out = api.rollback(args.root, service=args.service, lock_timeout=args.lock_timeout)
        elif args.command == "trust":
            out = api.trust(args.root, sys.stdin.buffer.read())
        elif args.command == "service":
            from edgecls.runtime.install.service import install_service

            out = install_service(
                args.root,
                name=args.name,
                unit_dir=args.unit_dir,
                config=args.config,
                camera=args.camera,
                port=args.port,
                profile=args.profile,
            )
        else:
            out = api.status(args.root, args.health_url)
    except EdgeclsError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    except OSError as exc:  # a full or read-only disk: the device's own words, as for a local target
        from edgecls.runtime.install.layout import os_error_text

        print(json.dumps({"error": os_error_text(exc)}))
        return 2
    print(json.dumps(out))
    return 0


def _watch_host() -> None:
    """Over SSH, the host gone (Ctrl-C, a closed laptop) closes the pipe this process answers on: that counts as
    an interruption (SIGHUP to itself, which api.apply turns into a rollback to the last verified release), as no
    one would be told the verdict otherwise. Watched only when stdout is a pipe or socket."""
    import os
    import select
    import signal
    import stat
    import threading
    import time

    fd = sys.stdout.fileno()
    if not (stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode)):
        return
    poller = select.poll()
    poller.register(fd, select.POLLERR | select.POLLHUP)

    def watch() -> None:
        while not poller.poll(500):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGHUP)

    threading.Thread(target=watch, name="host-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
