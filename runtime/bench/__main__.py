"""`python3 -m edgecls.runtime.bench BUNDLE ...`: the bench as a device runs it (no TensorFlow, no edgecls CLI)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from edgecls.runtime.bench.runner import BenchOptions, run_bench
from edgecls.runtime.bench.table import format_table
from edgecls.runtime.errors import EdgeclsError

# Printed on its own line before the JSON of `--json -`: a device's shell or python shim may print first
# (a pyenv banner, an rc file's echo), so the reader takes what follows the marker, not the whole stdout.
JSON_MARKER = "--- edgecls-bench json ---"


def parse_threads(value: str) -> list:
    """'1,2' -> [1, 2]; 'default' -> [None] (the engine's own choice); repeats dropped, order kept."""
    out = []
    for part in (p.strip() for p in str(value).split(",") if p.strip()):
        if part == "default":
            out.append(None)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise EdgeclsError(f"--threads {value!r}: give positive whole numbers separated by commas, e.g. 1,2")
    if not out:
        raise EdgeclsError("--threads is empty: give e.g. 1 or 1,2")
    return list(dict.fromkeys(out))


def parse_engines(value: str | None) -> list | None:
    """'openvino' -> ['openvino']; None -> None (every installed opt-in engine); '' -> [] (none)."""
    return None if value is None else [e.strip() for e in value.split(",") if e.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m edgecls.runtime.bench", description=__doc__)
    p.add_argument("bundle")
    p.add_argument("--artifacts", help="comma-separated artifact names (default: all)")
    p.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2 (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per artifact and thread count")
    p.add_argument("--runs", type=int, default=200, help="timed runs per repeat (invoke and whole frame)")
    p.add_argument("--frame-runs", type=int, help="timed whole frames per repeat (default: --runs)")
    p.add_argument("--time-budget", type=float, default=10.0, help="seconds per timed phase of one repeat (0: none)")
    p.add_argument("--max-warmup", type=float, default=10.0, help="seconds of warm-up at most")
    p.add_argument("--frame", help="image for the whole-frame timing (default: a synthetic 640x480 JPEG)")
    p.add_argument("--data", help="class-per-folder images for accuracy")
    p.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="rounds of the interleaved pass (0: latency from the fresh processes alone)",
    )
    p.add_argument("--round-runs", type=int, default=20, help="timed invokes per artifact and round")
    p.add_argument(
        "--engines",
        help="opt-in engines to time beside each artifact's default, e.g. openvino "
        "(default: every installed one; '' for none)",
    )
    p.add_argument("--json", dest="json_path", help="write the results here ('-': standard output)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (notes and errors still go to stderr)")
    p.add_argument(
        "--pid-file",
        help="lead a process group of our own and write its id here, so that whoever started "
        "us (edgecls bench --device over SSH) can stop the bench and its worker together",
    )
    p.add_argument("--tmp-dir", help="folder for temporary files (the synthetic frame); default: the system's")
    return p


def _own_process_group(pid_file: str) -> None:
    """Become a process group leader (our workers join the group) and write the group id to `pid_file`."""
    if os.getpgrp() != os.getpid():  # sshd usually made us a session leader already; setsid would refuse then
        os.setsid()
    from edgecls.runtime.atomic import write_text

    write_text(pid_file, f"{os.getpgrp()}\n")


def _exit_on_signal(signum, frame):
    # SIGTERM/SIGHUP end us like Ctrl-C does: `finally` blocks run, the worker is stopped, temp folders removed.
    raise SystemExit(128 + signum)


def options_from(args) -> BenchOptions:
    return BenchOptions(
        artifacts=[a.strip() for a in args.artifacts.split(",") if a.strip()] if args.artifacts else None,
        threads=parse_threads(args.threads),
        repeats=args.repeats,
        runs=args.runs,
        frame_runs=args.frame_runs,
        budget_s=args.time_budget or None,
        max_warmup_s=args.max_warmup,
        frame=args.frame,
        data=args.data,
        rounds=args.rounds,
        round_runs=args.round_runs,
        engines=parse_engines(args.engines),
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    note = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log = (lambda m: None) if args.quiet else note
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        if args.pid_file:
            _own_process_group(args.pid_file)
        if args.tmp_dir:
            import tempfile

            tempfile.tempdir = args.tmp_dir
        doc = run_bench(args.bundle, options_from(args), progress=log, notify=note)
        text = json.dumps(doc, indent=2) + "\n"
        if args.json_path == "-":
            sys.stdout.write(f"\n{JSON_MARKER}\n{text}")
        elif args.json_path:
            from edgecls.runtime.atomic import write_text

            write_text(args.json_path, text)
        if args.json_path != "-":
            print(format_table(doc))
        elif not args.quiet:
            print(format_table(doc), file=sys.stderr)
    except EdgeclsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
