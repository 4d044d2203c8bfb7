"""`edgecls run`'s options, in the order `--help` lists them; their defaults come from the daemon's configuration."""

from __future__ import annotations

import math

import click

from edgecls.runtime.daemon.config import TOKEN_ENV, CaptureConfig, DaemonConfig, HttpConfig, MqttConfig
from edgecls.runtime.daemon.source_config import MAX_SMOOTH
from edgecls.runtime.sources import SOURCE_TIMEOUT_S

ENV_PREFIX = "EDGECLS_RUN"


class Finite(click.FloatRange):
    """A FloatRange that also refuses nan and infinity (FloatRange lets nan through: it compares false)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number: give a plain number such as 5 or 0.5", param, ctx)
        return number


SECONDS = Finite(min=0, min_open=True)


def _layered_sets(ctx, param, value):
    """--set's layers merged key by key: the --config file's `set`, then EDGECLS_RUN_SET, then the command line
    (click alone would take the highest layer given, whole, and lose the others' keys)."""
    from edgecls.runtime.daemon.per_source import layered_sets

    from_line = value if ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE else ()
    return tuple(layered_sets(ctx.lookup_default(param.name, call=False), param.value_from_envvar(ctx), from_line))


def run_options(load_config):
    """Every option of `edgecls run` after BUNDLE; `load_config` is --config's callback."""
    options = [
        click.argument("bundle", type=click.Path(), required=False, envvar=f"{ENV_PREFIX}_BUNDLE"),
        click.option(
            "--config",
            type=click.Path(dir_okay=False),
            is_eager=True,
            expose_value=False,
            callback=load_config,
            help='TOML file of options: keys are option names (bundle = "...", source = ["0"], port = 8080, '
            "stall-timeout = 5), and a [sources.NAME] table per named source (uri = ..., rotate = 180, ...: the "
            "keys of --set). The command line, then EDGECLS_RUN_* variables (EDGECLS_RUN_SOURCE, "
            "EDGECLS_RUN_PORT, ...), override it; a --source list replaces its sources, NAME=URI keeping the "
            "NAME table's settings.",
        ),
        *_OPTIONS,
    ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


_OPTIONS = [
    click.option(
        "--source",
        "sources",
        multiple=True,
        envvar=f"{ENV_PREFIX}_SOURCE",
        help="Camera index, /dev/videoN, csi://N, rtsp:// or http(s):// "
        "URL, GStreamer pipeline, video file, image or folder (default: the device profile's camera). Images "
        "and folders are offline inputs: every image is classified once, in order (unless --fps). Video files "
        "play at their own frame rate and frames inference cannot keep up with are dropped (unless --every-frame). "
        "Repeat --source to run several sources in one process (daemon mode), each with its own capture and watchdog. "
        "NAME=URI names a source (door=rtsp://cam/door): the name replaces the URI in results, /latest, /metrics, "
        "MQTT and captures, and --set door.KEY=VALUE sets its own settings. NAME is a letter, then letters, digits, "
        "_ or -, so `rtsp://h/s?token=x` stays a URI; a file or folder that exists is always a path.",
    ),
    click.option(
        "--set",
        "settings",
        multiple=True,
        metavar="NAME.KEY=VALUE",
        envvar=f"{ENV_PREFIX}_SET",
        callback=_layered_sets,
        help="A setting of one named source (repeatable; KEY=VALUE alone: of every source): roi=x,y,w,h (region "
        "of interest: whole numbers are pixels, 0.5,0,0.5,0.5 fractions of the frame), rotate=0|90|180|270 "
        "(clockwise), flip=none|horizontal|vertical, max_fps=N (classify at most N frames a second), threshold=S, "
        "smooth=N, capture.below=S, capture.every=N (these four: the daemon options for this source alone). "
        "Crop, rotate, then flip. In --config, a [sources.NAME] table holds the same keys; key by key the "
        "command line wins over EDGECLS_RUN_SET, which wins over the file's `set` list, which wins over the table.",
    ),
    click.option("--device", "device", help="Device profile name or JSON file."),
    click.option(
        "--artifact",
        help="Artifact to run (default: the device profile's first runnable one); fastest: the fastest row of a "
        "bench result of this bundle (--bench) that passed the accuracy gate, run with the engine and threads it "
        "was timed with.",
    ),
    click.option(
        "--bench",
        type=click.Path(dir_okay=False),
        help="With --artifact fastest: an `edgecls bench --json` result measured on this kind of machine "
        "(default: the one `edgecls flash --artifact fastest` recorded for the --device profile).",
    ),
    click.option(
        "--force-bench", is_flag=True, default=None, help="Use a --bench measured on another kind of machine."
    ),
    click.option(
        "--threads",
        type=click.IntRange(1, 1024),
        help="Inference threads (default: the profile's, else every CPU but one; OpenVINO its own).",
    ),
    click.option(
        "--top-k",
        type=click.IntRange(1),
        default=DaemonConfig.top_k,
        show_default=True,
        help="Classes listed per result.",
    ),
    click.option("--loop", is_flag=True, help="Repeat a video file or folder."),
    click.option(
        "--every-frame",
        "--as-fast-as-possible",
        "every_frame",
        is_flag=True,
        help="Classify every frame of a video file as fast as inference goes (offline), instead of at its own "
        "frame rate.",
    ),
    click.option(
        "--fps",
        type=Finite(min=0, max=1000, min_open=True),
        help="Play a video file or folder as a live camera at this rate: the newest frame is classified and "
        "frames inference cannot keep up with are dropped (counted).",
    ),
    click.option("--max-frames", type=click.IntRange(1), help="Stop after this many classified frames (per source)."),
    click.option(
        "--timeout",
        type=Finite(min=0, max=3600, min_open=True),
        default=SOURCE_TIMEOUT_S,
        show_default=True,
        help="Seconds to wait for a frame before reporting a stall.",
    ),
    click.option(
        "--port",
        type=click.IntRange(0, 65535),
        help="Daemon mode: serve /healthz, /metrics (Prometheus) and "
        "/latest on this port (0: any free port; the URL is printed as a JSON event on stderr).",
    ),
    click.option("--host", help=f"Address the HTTP server binds to.  [default: {HttpConfig.host}]"),
    click.option(
        "--token-file",
        type=click.Path(dir_okay=False),
        help="File holding a bearer token that every HTTP "
        f"endpoint then requires (or set {TOKEN_ENV}). The token is never logged.",
    ),
    click.option(
        "--allowed-host",
        "allowed_hosts",
        multiple=True,
        metavar="NAME",
        help="Daemon mode without a token: a Host name browsers may use to reach the HTTP server besides IP "
        "addresses, localhost and this machine's own names (repeatable; `*` turns the DNS-rebinding check off).",
    ),
    click.option(
        "--smooth",
        type=click.IntRange(1, MAX_SMOOTH),
        help="Daemon mode: average the probabilities of the last N frames of each source.",
    ),
    click.option("--threshold", type=Finite(0, 1), help="Daemon mode: label results scoring below this `unknown`."),
    click.option(
        "--stall-timeout",
        type=SECONDS,
        help="Daemon mode: reopen a source that "
        "delivers no new frame for this many seconds (with capped exponential backoff).  "
        f"[default: {DaemonConfig.stall_timeout:g}]",
    ),
    click.option("--duration", type=SECONDS, help="Daemon mode: stop after this many seconds."),
    click.option(
        "--results",
        type=click.Path(dir_okay=False),
        help="Daemon mode: append JSON lines to this file instead "
        "of stdout, rotated past --results-max-mb (3 old files kept).",
    ),
    click.option(
        "--results-max-mb",
        type=Finite(min=0),
        default=DaemonConfig.results_max_mb,
        show_default=True,
        help="Rotate the --results file past this size (0: never).",
    ),
    click.option(
        "--mqtt",
        help="Daemon mode: publish results to mqtt://[user:pass@]host[:port]/topic-prefix "
        "(PREFIX/SOURCE/state on each label change, PREFIX/availability online/offline with a last will).",
    ),
    click.option(
        "--mqtt-qos",
        type=click.IntRange(0, 2),
        default=MqttConfig.qos,
        show_default=True,
        help="MQTT quality of service of each message.",
    ),
    click.option(
        "--mqtt-every", type=click.IntRange(1), help="Also publish every N frames of a source, changed or not."
    ),
    click.option(
        "--mqtt-discovery",
        is_flag=True,
        default=None,
        help="Publish Home Assistant MQTT discovery configs: a sensor per source appears by itself.",
    ),
    click.option(
        "--capture",
        type=click.Path(file_okay=False),
        help="Daemon mode: save frames scoring below "
        "--capture-below as JPEG + JSON sidecar in DIR/.unlabelled/SOURCE/ (move them into DIR/<class>/ to label; "
        "`edgecls train --data DIR` then takes the folder).",
    ),
    click.option(
        "--capture-below",
        type=Finite(0, 1),
        default=CaptureConfig.below,
        show_default=True,
        help="With --capture: save frames whose top-1 score is below this.",
    ),
    click.option("--capture-every", type=click.IntRange(1), help="Also capture a random 1 in N frames."),
    click.option(
        "--capture-max-mb",
        type=Finite(min=0, min_open=True),
        default=CaptureConfig.max_mb,
        show_default=True,
        help="Delete the oldest captures past this size.",
    ),
    click.option(
        "--drift-window",
        type=click.IntRange(20, 100_000),
        help="Daemon mode: compare the last N classified frames of "
        "each source with the bundle's reference statistics and with the source's first N frames.  "
        f"[default: {DaemonConfig.drift_window}]",
    ),
    click.option(
        "--drift-threshold",
        type=Finite(min=0, min_open=True),
        help="Daemon mode: a source whose "
        "mean brightness (either way) or mean top-1 confidence (downward) moved further than this many standard "
        "deviations of the test images, from the reference or from its own first window, is reported in drift "
        f"(/healthz degraded, log line, edgecls_drift_degraded).  [default: {DaemonConfig.drift_threshold:g}]",
    ),
    click.option(
        "--allowed-signers",
        type=click.Path(dir_okay=False),
        help="OpenSSH allowed-signers file: load only "
        "bundles signed (`edgecls sign`) by one of its keys, at start and on every hot reload.",
    ),
    click.option(
        "--wait-for-sources/--no-wait-for-sources",
        default=None,
        help="Keep retrying a live source that cannot be opened at start (a camera plugged in later, a stream "
        "not up yet) instead of stopping with an error naming the cause. The default under systemd "
        "(Type=notify, as `edgecls service unit` writes it), off otherwise.",
    ),
    click.option(
        "--show",
        is_flag=True,
        default=None,
        help="Daemon mode: show the annotated frames in a window per "
        "source (needs OpenCV with GUI support and a display; q or Esc stops).",
    ),
]
