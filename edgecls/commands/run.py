"""`edgecls run`: classify frames from a camera, stream, video or folder."""

from __future__ import annotations

import json
import math
import os

import click

from edgecls.commands._errors import OneLineErrors

ENV_PREFIX = "EDGECLS_RUN"
TOKEN_ENV = f"{ENV_PREFIX}_TOKEN"


class Finite(click.FloatRange):
    """A FloatRange that also refuses nan and infinity (FloatRange lets nan through: it compares false)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number: give a plain number such as 5 or 0.5", param, ctx)
        return number


SECONDS = Finite(min=0, min_open=True)


def _load_config(ctx, param, path):
    """--config FILE: its keys become the defaults of the other options (so flags and env still win)."""
    if path is None:
        return
    from edgecls.runtime.errors import EdgeclsError

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise EdgeclsError("--config needs Python 3.11+ (tomllib) or `pip install tomli`") from None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise EdgeclsError(f"cannot read --config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EdgeclsError(f"--config {path} is not valid TOML: {exc}") from exc
    names = {}  # "stall-timeout", "stall_timeout", "source" -> the parameter's name
    for p in ctx.command.params:
        if p.expose_value:
            names[p.name] = names[p.name.replace("_", "-")] = p.name
            names.update({o.lstrip("-"): p.name for o in p.opts if o.startswith("--")})
    unknown = sorted(k for k in data if k not in names)
    if unknown:
        raise EdgeclsError(
            f"--config {path}: unknown option(s) {', '.join(unknown)}; keys are `edgecls run` option "
            f"names such as bundle, source, port, stall-timeout"
        )
    ctx.default_map = {**(ctx.default_map or {}), **{names[k]: v for k, v in data.items()}}


@click.command(cls=OneLineErrors, context_settings={"auto_envvar_prefix": ENV_PREFIX})
@click.argument("bundle", type=click.Path(), required=False, envvar=f"{ENV_PREFIX}_BUNDLE")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help='TOML file of options: keys are option names (bundle = "...", source = ["0"], port = 8080, '
    "stall-timeout = 5). The command line, then EDGECLS_RUN_* variables (EDGECLS_RUN_SOURCE, "
    "EDGECLS_RUN_PORT, ...), override it.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    envvar=f"{ENV_PREFIX}_SOURCE",
    help="Camera index, /dev/videoN, csi://N, rtsp:// or http(s):// "
    "URL, GStreamer pipeline, video file, image or folder (default: the device profile's camera). Images "
    "and folders are offline inputs: every image is classified once, in order (unless --fps). Video files "
    "play at their own frame rate and frames inference cannot keep up with are dropped (unless --every-frame). Repeat "
    "--source to run several sources in one process (daemon mode), each with its own capture and watchdog.",
)
@click.option("--device", "device", help="Device profile name or JSON file.")
@click.option("--artifact", help="Artifact to run (default: the device profile's first runnable one).")
@click.option(
    "--threads", type=click.IntRange(1, 1024), help="Inference threads (default: the profile's, else the backend's)."
)
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True, help="Classes listed per result.")
@click.option("--loop", is_flag=True, help="Repeat a video file or folder.")
@click.option(
    "--every-frame",
    "--as-fast-as-possible",
    "every_frame",
    is_flag=True,
    help="Classify every frame of a video file as fast as inference goes (offline), instead of at its own frame rate.",
)
@click.option(
    "--fps",
    type=Finite(min=0, max=1000, min_open=True),
    help="Play a video file or folder as a live camera at this rate: the newest frame is classified and "
    "frames inference cannot keep up with are dropped (counted).",
)
@click.option("--max-frames", type=click.IntRange(1), help="Stop after this many classified frames (per source).")
@click.option(
    "--timeout",
    type=Finite(min=0, max=3600, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for a frame before reporting a stall.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Daemon mode: serve /healthz, /metrics (Prometheus) and "
    "/latest on this port (0: any free port; the URL is printed as a JSON event on stderr).",
)
@click.option("--host", help="Address the HTTP server binds to.  [default: 127.0.0.1]")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="File holding a bearer token that every HTTP "
    f"endpoint then requires (or set {TOKEN_ENV}). The token is never logged.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Daemon mode without a token: a Host name browsers may use to reach the HTTP server besides IP "
    "addresses, localhost and this machine's own names (repeatable; `*` turns the DNS-rebinding check off).",
)
@click.option(
    "--smooth",
    type=click.IntRange(1),
    help="Daemon mode: average the probabilities of the last N frames of each source.",
)
@click.option("--threshold", type=Finite(0, 1), help="Daemon mode: label results scoring below this `unknown`.")
@click.option(
    "--stall-timeout",
    type=SECONDS,
    help="Daemon mode: reopen a source that "
    "delivers no new frame for this many seconds (with capped exponential backoff).  [default: 10]",
)
@click.option("--duration", type=SECONDS, help="Daemon mode: stop after this many seconds.")
@click.option(
    "--results",
    type=click.Path(dir_okay=False),
    help="Daemon mode: append JSON lines to this file instead "
    "of stdout, rotated past --results-max-mb (3 old files kept).",
)
@click.option(
    "--results-max-mb",
    type=Finite(min=0),
    default=10.0,
    show_default=True,
    help="Rotate the --results file past this size (0: never).",
)
@click.option(
    "--mqtt",
    help="Daemon mode: publish results to mqtt://[user:pass@]host[:port]/topic-prefix "
    "(PREFIX/SOURCE/state on each label change, PREFIX/availability online/offline with a last will).",
)
@click.option(
    "--mqtt-qos",
    type=click.IntRange(0, 2),
    default=1,
    show_default=True,
    help="MQTT quality of service of each message.",
)
@click.option("--mqtt-every", type=click.IntRange(1), help="Also publish every N frames of a source, changed or not.")
@click.option(
    "--mqtt-discovery",
    is_flag=True,
    default=None,
    help="Publish Home Assistant MQTT discovery configs: a sensor per source appears by itself.",
)
@click.option(
    "--capture",
    type=click.Path(file_okay=False),
    help="Daemon mode: save frames scoring below "
    "--capture-below as JPEG + JSON sidecar in DIR/.unlabelled/SOURCE/ (move them into DIR/<class>/ to label; "
    "`edgecls train --data DIR` then takes the folder).",
)
@click.option(
    "--capture-below",
    type=Finite(0, 1),
    default=0.5,
    show_default=True,
    help="With --capture: save frames whose top-1 score is below this.",
)
@click.option("--capture-every", type=click.IntRange(1), help="Also capture a random 1 in N frames.")
@click.option(
    "--capture-max-mb",
    type=Finite(min=0, min_open=True),
    default=500.0,
    show_default=True,
    help="Delete the oldest captures past this size.",
)
@click.option(
    "--drift-window",
    type=click.IntRange(20, 100_000),
    help="Daemon mode: compare the last N classified frames of "
    "each source with the bundle's reference statistics and with the source's first N frames.  "
    "[default: 500]",
)
@click.option(
    "--drift-threshold",
    type=Finite(min=0, min_open=True),
    help="Daemon mode: a source whose "
    "mean brightness (either way) or mean top-1 confidence (downward) moved further than this many standard "
    "deviations of the test images, from the reference or from its own first window, is reported in drift "
    "(/healthz degraded, log line, edgecls_drift_degraded).  [default: 3]",
)
@click.option(
    "--allowed-signers",
    type=click.Path(dir_okay=False),
    help="OpenSSH allowed-signers file: load only "
    "bundles signed (`edgecls sign`) by one of its keys, at start and on every hot reload.",
)
@click.option(
    "--wait-for-sources/--no-wait-for-sources",
    default=None,
    help="Keep retrying a live source that cannot be opened at start (a camera plugged in later, a stream "
    "not up yet) instead of stopping with an error naming the cause. The default under systemd "
    "(Type=notify, as `edgecls service unit` writes it), off otherwise.",
)
@click.option(
    "--show",
    is_flag=True,
    default=None,
    help="Daemon mode: show the annotated frames in a window per "
    "source (needs OpenCV with GUI support and a display; q or Esc stops).",
)
def run(
    bundle,
    sources,
    device,
    artifact,
    threads,
    top_k,
    loop,
    every_frame,
    fps,
    max_frames,
    timeout,
    port,
    host,
    token_file,
    allowed_hosts,
    smooth,
    threshold,
    stall_timeout,
    duration,
    results,
    results_max_mb,
    mqtt,
    mqtt_qos,
    mqtt_every,
    mqtt_discovery,
    capture,
    capture_below,
    capture_every,
    capture_max_mb,
    drift_window,
    drift_threshold,
    allowed_signers,
    wait_for_sources,
    show,
):
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

    Every option can come from --config FILE (TOML) or an EDGECLS_RUN_<OPTION> variable;
    `edgecls service unit` prints a systemd unit that runs `edgecls run --config FILE`.
    """
    from edgecls.devices import load_profile
    from edgecls.runtime.errors import EdgeclsError

    if bundle is None:
        raise EdgeclsError("no bundle to run: give BUNDLE, `bundle = ...` in --config, or EDGECLS_RUN_BUNDLE")
    if wait_for_sources is None:  # a service waits for its camera (systemd sets NOTIFY_SOCKET for Type=notify)
        wait_for_sources = bool(os.environ.get("NOTIFY_SOCKET"))
    from edgecls.runtime.sources import parse_source, redact_uri

    profile = load_profile(device)
    uris = list(sources) or [profile.camera]
    daemon_only = (
        smooth,
        threshold,
        stall_timeout,
        duration,
        results,
        show,
        mqtt,
        capture,
        drift_window,
        drift_threshold,
    )
    if allowed_hosts:  # a port, scheme or path would never match a Host header: refused here, in one line
        from edgecls.runtime.daemon.http import allowed_host_names

        allowed_hosts = tuple(allowed_host_names(allowed_hosts))
    if port is None:
        for name, value in (("--host", host), ("--token-file", token_file), ("--allowed-host", allowed_hosts or None)):
            if value is not None:
                raise EdgeclsError(f"{name} configures the HTTP server: add --port")
    pacing = {}  # the source's defaults: every image of a folder, a video at its own frame rate
    if every_frame:
        pacing = {"every_frame": True}
    if fps is not None:
        if every_frame:
            raise EdgeclsError("--fps (paced, drops frames) and --every-frame (no drops) contradict: pick one")
        for uri in uris:
            if parse_source(uri, profile.csi_pipeline).live:
                raise EdgeclsError(
                    f"--fps paces a video file or folder; {redact_uri(uri)} is live and sets its own rate: drop --fps"
                )
        pacing = {"every_frame": False, "realtime": True, "fps": fps}
    from edgecls.runtime.daemon.nativelog import native_output_to_log

    if port is not None or len(uris) > 1 or any(v is not None for v in daemon_only):
        token = _read_token(token_file)
        with native_output_to_log():  # OpenCV/FFmpeg/LiteRT chatter: debug log lines, not raw stderr
            _run_daemon(
                bundle,
                uris,
                profile=profile,
                artifact=artifact,
                threads=threads,
                top_k=top_k,
                source_options={"loop": loop, "timeout_s": timeout, **pacing},
                max_frames=max_frames,
                port=port,
                host=host,
                token=token,
                allowed_hosts=allowed_hosts,
                smooth=smooth,
                threshold=threshold,
                show=bool(show),
                allowed_signers=allowed_signers,
                mqtt=mqtt,
                mqtt_qos=mqtt_qos,
                mqtt_every=mqtt_every,
                mqtt_discovery=bool(mqtt_discovery),
                capture=_capture(capture, capture_below, capture_every, capture_max_mb),
                stall_timeout=stall_timeout,
                duration=duration,
                results=results,
                results_max_mb=results_max_mb,
                wait_for_sources=wait_for_sources,
                **{
                    k: v
                    for k, v in (("drift_window", drift_window), ("drift_threshold", drift_threshold))
                    if v is not None
                },
            )
        return
    with native_output_to_log():
        _run_simple(
            bundle,
            uris[0],
            profile=profile,
            artifact=artifact,
            threads=threads,
            top_k=top_k,
            loop=loop,
            timeout=timeout,
            pacing=pacing,
            max_frames=max_frames,
            allowed_signers=allowed_signers,
            wait_for_sources=wait_for_sources,
        )


def _run_simple(
    bundle,
    uri,
    *,
    profile,
    artifact,
    threads,
    top_k,
    loop,
    timeout,
    pacing,
    max_frames,
    allowed_signers,
    wait_for_sources,
) -> None:
    """One source, one JSON line per frame on stdout, events on stderr."""
    from edgecls.runtime.bundle import load_bundle
    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.errors import EdgeclsError
    from edgecls.runtime.sources import Source, SourceEnded, SourceTimeout

    bundle = os.path.realpath(bundle)  # a flashed `current`, resolved once: the model named is the one loaded
    if allowed_signers:
        from edgecls.runtime.install.signature import verify_bundle

        bundle = load_bundle(bundle)
        verify_bundle(bundle.root, allowed_signers)

    classifier = Classifier(bundle, artifact=artifact, profile=profile, threads=threads, top_k=top_k)
    from edgecls.runtime.daemon.loop import model_info

    model = model_info(classifier)  # each line names the model that produced it, as the daemon's do
    done = 0
    with Source(uri, loop=loop, timeout_s=timeout, profile=profile, **pacing) as src:
        if src.spec.live and src.stats.last_error and not src.stats.frames and not wait_for_sources:
            # Its first open failed (Source retries in the background): a camera that was never there.
            from edgecls.runtime.daemon.supervisor import open_fix

            raise EdgeclsError(f"cannot open source {src.spec.shown}: {open_fix(src.spec)}")
        while max_frames is None or done < max_frames:
            try:
                frame = src.read()
            except SourceEnded:
                break
            except SourceTimeout as exc:
                click.echo(json.dumps({"event": "stall", "detail": str(exc), "state": src.stats.state}), err=True)
                continue
            prediction = classifier.classify(frame.image, order="bgr")
            record = {
                "frame": frame.index,
                **({"name": frame.name} if frame.name else {}),
                "age_ms": round(frame.age_ms, 1),
                **prediction.to_dict(),
                "dropped": src.stats.dropped,
                "model": model,
            }
            click.echo(json.dumps(record))
            done += 1
    stats = src.stats
    click.echo(
        json.dumps(
            {
                "event": "stopped",
                "frames": done,
                "captured": stats.frames,
                "dropped": stats.dropped,
                "outages": stats.outages,
                "reconnects": stats.reconnects,
                "state": stats.state,
            }
        ),
        err=True,
    )


def _capture(folder, below, every, max_mb):
    if folder is None:
        return None
    from edgecls.runtime.daemon.capture import Capture

    return Capture(folder, below=below, sample=every, max_bytes=_bytes(max_mb))


def _bytes(megabytes: float) -> int:
    """Whole bytes of a size in MiB, at least 1 when it is not 0: int() made a tiny size 0, which means 'never'."""
    return 0 if megabytes == 0 else max(1, math.ceil(megabytes * 2**20))


def _read_token(token_file) -> str | None:
    """The bearer token from --token-file, else from the environment; None when neither is set."""
    from edgecls.runtime.errors import EdgeclsError

    if token_file is None:  # stripped like the file: `echo tok >` and env files add a newline no client sends
        token = os.environ.get(TOKEN_ENV, "").strip()
        if any(c.isspace() for c in token):
            raise EdgeclsError(f"{TOKEN_ENV} must hold one token without spaces")
        return token or None
    try:
        token = open(token_file, encoding="utf-8").read().strip()
    except OSError as exc:
        raise EdgeclsError(f"cannot read --token-file {token_file}: {exc.strerror or exc}") from exc
    if not token or any(c.isspace() for c in token):
        raise EdgeclsError(f"--token-file {token_file} must hold one token on one line (it is empty or has spaces)")
    return token


def _run_daemon(
    bundle,
    uris,
    *,
    results,
    results_max_mb,
    stall_timeout,
    host,
    smooth,
    threshold,
    mqtt,
    mqtt_qos,
    mqtt_every,
    mqtt_discovery,
    **options,
) -> None:
    """Several sources, HTTP, smoothing: the daemon in edgecls.runtime.daemon; events go to stderr as JSON lines."""
    from edgecls.runtime.daemon import Daemon
    from edgecls.runtime.daemon.sinks import JsonlFileSink, StdoutSink
    from edgecls.runtime.errors import EdgeclsError

    sinks = [JsonlFileSink(results, max_bytes=_bytes(results_max_mb))] if results else [StdoutSink()]
    if mqtt:
        from edgecls.runtime.daemon.mqtt import MqttSink

        sinks.append(MqttSink(mqtt, qos=mqtt_qos, every=mqtt_every, discovery=mqtt_discovery))
    daemon = Daemon(
        bundle,
        uris,
        sinks=sinks,
        stall_timeout=10.0 if stall_timeout is None else stall_timeout,
        host=host or "127.0.0.1",
        smooth=smooth or 1,
        threshold=threshold or 0.0,
        **options,
    )

    def started(d):
        click.echo(
            json.dumps(
                {"event": "started", "sources": [s.name for s in d.supervisors], **({"url": d.url} if d.url else {})}
            ),
            err=True,
        )

    summary = daemon.run(on_start=started)
    click.echo(json.dumps({"event": "stopped", "sources": summary}), err=True)
    failures = daemon.failures() if daemon.ended_by == "sources" else []
    if failures:  # failed is not ended: exit non-zero, so systemd's Restart=on-failure starts it again
        raise EdgeclsError("; ".join(failures))
