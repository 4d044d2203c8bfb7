"""`edgecls run`: classify frames from a camera, stream, video or folder (a shell over edgecls.runtime.daemon)."""

from __future__ import annotations

import json

import click

from edgecls.commands._errors import OneLineErrors
from edgecls.commands._options import examples
from edgecls.commands.run_options import ENV_PREFIX, run_options

SOURCE_TABLES = "edgecls.run.source_tables"  # ctx.meta key: --config's [sources.NAME] tables


def _load_config(ctx, param, path):
    """--config FILE: its keys become the defaults of the other options (so flags and env still win)."""
    if path is None:
        return
    from edgecls.runtime.daemon.config import read_toml
    from edgecls.runtime.daemon.per_source import shown_text
    from edgecls.runtime.errors import EdgeclsError

    data = read_toml(path)
    ctx.meta[SOURCE_TABLES] = _source_tables(path, data)
    names = {}  # "stall-timeout", "stall_timeout", "source" -> the parameter's name
    for p in ctx.command.params:
        if p.expose_value:
            names[p.name] = names[p.name.replace("_", "-")] = p.name
            names.update({o.lstrip("-"): p.name for o in p.opts if o.startswith("--")})
    unknown = sorted(k for k in data if k not in names)
    if unknown:  # a key with a line break is quoted: it cannot add an `error:` line of its own
        raise EdgeclsError(
            f"--config {path}: unknown option(s) {', '.join(map(shown_text, unknown))}; keys are `edgecls run` option "
            f"names such as bundle, source, port, stall-timeout"
        )
    ctx.default_map = {**(ctx.default_map or {}), **{names[k]: v for k, v in data.items()}}


def _source_tables(path, data: dict) -> dict:
    """The file's [sources.NAME] tables, taken out of `data` (--source's default stays a list of URIs)."""
    from edgecls.runtime.errors import EdgeclsError

    tables = [key for key in ("source", "sources") if isinstance(data.get(key), dict)]
    if not tables:
        return {}
    if len(tables) > 1 or any(key in data for key in ("source", "sources") if key not in tables):
        raise EdgeclsError(
            f"--config {path}: sources given both as a list and as [sources.NAME] tables: make each one a table "
            '(door = "rtsp://cam/door" is a table holding only the URI)'
        )
    return data.pop(tables[0])


@click.command(cls=OneLineErrors, context_settings={"auto_envvar_prefix": ENV_PREFIX})
@run_options(_load_config)
@examples(
    "edgecls run bundles/digits --source 0",
    "edgecls run bundles/digits --source clip.mp4 --every-frame",
    "edgecls run bundles/digits --source photos/",
    "edgecls run bundles/digits --source 0 --artifact fastest --bench bench.json",
    "edgecls run bundles/digits --source 0 --port 8080   # preview on http://127.0.0.1:8080",
    "edgecls run --config /etc/edgecls/run.toml",
    "edgecls run bundles/digits --source clip.mp4 --set rotate=180   # a video recorded upside down",
    "edgecls run bundles/digits --source door=rtsp://cam/door --set door.roi=0.5,0,0.5,0.5 --set door.max_fps=5 "
    "--source yard=1 --set yard.threshold=0.8 --port 8080",
)
def run(**options):  # click passes each option by name: they become a DaemonConfig at once
    """Classify frames from a camera, stream, video or folder; one JSON line per frame.

    Each line has the frame index, its age when classified, the top-k and the running drop count.
    Images and folders deliver every image, in order; video files play at their own frame rate
    (--every-frame: every frame, as fast as inference goes; --fps: a paced live stand-in).
    Stalls of a live source are reported and reading resumes when it comes back. Ctrl-C stops.

    Daemon mode (--port, several --source, or any daemon option): every source gets a capture
    thread and a watchdog that reopens it after --stall-timeout, all share one loaded model, and
    results carry source, ts, frame, top1, score, topk, latency_ms (pre/infer/post) and
    frame_age_ms, and the model that produced them. SIGTERM or Ctrl-C stop it within 2 s with exit code 0;
    it exits 1 when its sources failed (a file that cannot be read, a camera that never opened: unless
    --wait-for-sources), so systemd's Restart=on-failure restarts it. Each source's last
    --drift-window frames are compared with the bundle's reference statistics and with the source's
    first window: /healthz says "degraded": "drift" (still 200) past --drift-threshold, /metrics has
    edgecls_drift_score.

    Per source (--source NAME=URI, then --set NAME.KEY=VALUE, or a [sources.NAME] table in --config):
    a region of interest, rotation and flip (the model sees that view), max_fps, and its own threshold,
    smooth and capture settings. One --set option rather than an option per setting: the keys are the
    TOML table's, EDGECLS_RUN_SET holds several, and the help stays short.

    Every option can come from --config FILE (TOML) or an EDGECLS_RUN_<OPTION> variable;
    `edgecls service unit` prints a systemd unit that runs `edgecls run --config FILE`.
    """
    from edgecls.devices import load_profile
    from edgecls.runtime.daemon import Daemon
    from edgecls.runtime.daemon.config import DaemonConfig
    from edgecls.runtime.daemon.nativelog import native_output_to_log
    from edgecls.runtime.errors import EdgeclsError

    options["source_tables"] = click.get_current_context().meta.get(SOURCE_TABLES, {})
    options, profiles, choice = _artifact_choice(options, load_profile)
    config = DaemonConfig.from_options(options, profiles)
    with native_output_to_log():  # OpenCV/FFmpeg/LiteRT chatter: debug log lines, not raw stderr
        daemon = Daemon(config)
        _check_served(daemon.classifier, choice)
        summary = daemon.run(on_start=None if config.simple else _started)
    failures = daemon.failures() if daemon.ended_by == "sources" else []
    if config.simple and failures:  # its one source failed: the error alone, as the simple mode always said it
        raise EdgeclsError("; ".join(failures))
    _event(_simple_summary(summary) if config.simple else {"event": "stopped", "sources": summary})
    if failures:  # failed is not ended: exit non-zero, so systemd's Restart=on-failure starts it again
        raise EdgeclsError("; ".join(failures))


def _artifact_choice(options: dict, load_profile) -> tuple:
    """(options, the profile loader, the Choice or None): with --artifact fastest, the bench's fastest qualifying
    row for this machine, run as its derived profile says (artifact and engine first, its threads)."""
    from edgecls.devices.fastest import (
        FASTEST,
        Benched,
        benched,
        check_bench_option,
        check_machine,
        derive,
        pick,
        tie_note,
    )

    bench, force = options.pop("bench", None), options.pop("force_bench", None)
    check_bench_option(options["artifact"], bench, bool(force))
    if options["artifact"] != FASTEST or options["bundle"] is None:  # no bundle: from_options says so
        return options, (lambda name: benched(load_profile(name))), None
    from edgecls.runtime.bench.machine import describe
    from edgecls.runtime.bundle import load_bundle

    profile = load_profile(options["device"])
    bundle = load_bundle(options["bundle"])
    doc, choice = pick(bundle, profile, bench, options["threads"])
    say = lambda message: click.echo(message, err=True)  # noqa: E731
    check_machine(doc, choice.bench, describe(), "this machine", bool(force), say)
    derived = derive(profile, choice, bundle)
    for line in choice.refused:
        say(f"note: left out {line}")
    say(
        f"--artifact fastest: {choice.row} ({choice.engine}) at {choice.threads or 'default'} thread(s), "
        f"p50 {choice.p50_ms:.3f} ms in {choice.bench}{tie_note(choice)}"
    )
    # The derived profile leads to the choice (artifact and engine first) rather than a fixed artifact name, so a
    # hot reload onto a bundle flashed with another choice still finds its artifact.
    return {**options, "artifact": None}, (lambda name: Benched(derived)), choice


def _check_served(classifier, choice) -> None:
    """The daemon loads what was benched, or says why not (an engine not installed here would be passed over)."""
    from edgecls.devices.fastest import served_refusal
    from edgecls.runtime.errors import EdgeclsError

    why = served_refusal(choice, classifier.artifact.name, classifier.backend_name) if choice else None
    if why:
        raise EdgeclsError(why)


def _event(event: dict) -> None:
    click.echo(json.dumps(event), err=True)


def _started(daemon) -> None:
    _event(
        {
            "event": "started",
            "sources": [s.name for s in daemon.supervisors],
            **({"url": daemon.url} if daemon.url else {}),
        }
    )


def _simple_summary(summary: dict) -> dict:
    """The simple mode's last line: its one source's counts, `frames` being those classified."""
    (counts,) = summary.values()
    stopped = {"event": "stopped", "frames": counts["classified"], **counts}
    del stopped["classified"]
    if stopped["state"] == "stopped":  # stopped before its end (--max-frames, a signal): as the Source says it
        stopped["state"] = "closed"
    return stopped
