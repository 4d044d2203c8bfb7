"""The daemon's configuration: every setting, its default (here only) and its checks (here only, once).

    DaemonConfig.from_options(options, load_profile)  # `edgecls run`'s parsed options
    DaemonConfig.of(bundle, sources, port=0, ...)      # the keyword form scripts and tests use

`edgecls run` reads the --config TOML file with `read_toml`; click puts the command line over EDGECLS_RUN_*
variables over that file, and `from_options` turns what it resolved into this typed, checked configuration.
The simple mode (one source, no daemon option) is the same daemon with its own lines on stdout (`simple`).
Each source's own settings are a SourceConfig (source_config.py), one per source in `source_settings`, layered
from --source NAME=URI, --set and the file's [sources.NAME] tables by per_source.py.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from edgecls.runtime.daemon.source_config import FLIPS, MAX_SMOOTH, ROTATIONS, SOURCE_NAME, SourceConfig
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.monitor.drift import DEFAULT_THRESHOLD, DEFAULT_WINDOW

HOST = "127.0.0.1"  # the HTTP server binds to loopback unless told otherwise
STALL_TIMEOUT_S = 10.0  # no new frame for this long: the source is reopened
TOKEN_ENV = "EDGECLS_RUN_TOKEN"
WORKERS = 16  # threads serving requests, started as needed; the daemon's own threads come on top
MAX_STREAMS = 8  # preview viewers at once: each holds a worker, the rest stay for scrapers and health checks
MAX_PENDING = 512  # connections still sending their request (no thread each); more are answered 503

# Options that only the daemon has: any of them set (or --port, or several sources) leaves the simple mode.
DAEMON_ONLY = (
    "smooth",
    "threshold",
    "stall_timeout",
    "duration",
    "results",
    "show",
    "mqtt",
    "capture",
    "drift_window",
    "drift_threshold",
)
__all__ = ["FLIPS", "ROTATIONS", "SOURCE_NAME", "DaemonConfig", "SourceConfig"]  # SourceConfig lives in source_config


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP server's part (runtime/daemon/http.py). allowed_hosts: Host names a token-less server accepts
    besides IP addresses, localhost and this machine's names ("*" accepts any); idle_timeout: seconds a viewer
    may stop reading; request_timeout: seconds from the accept to the whole request (None: idle_timeout)."""

    host: str = HOST
    port: int = 0
    token: str | None = None
    allowed_hosts: tuple = ()
    idle_timeout: float = 10.0
    request_timeout: float | None = None
    workers: int = WORKERS
    max_pending: int = MAX_PENDING
    max_streams: int = MAX_STREAMS


@dataclass(frozen=True)
class MqttConfig:
    """--mqtt: where results are published (runtime/daemon/mqtt.py)."""

    url: str
    qos: int = 1
    every: int | None = None
    discovery: bool = False


@dataclass(frozen=True)
class CaptureConfig:
    """--capture: frames scoring below `below` (and 1 in `every`) saved in `folder`, at most `max_mb` MiB."""

    folder: str
    below: float = 0.5
    every: int | None = None
    max_mb: float = 500.0


@dataclass(frozen=True)
class DaemonConfig:
    """What a daemon runs and how. sources: URIs as `edgecls.runtime.sources` parses them; profile: a loaded
    device profile or None; source_options go to every Source (loop, every_frame, realtime, fps, timeout_s);
    max_frames is per source; http None: no HTTP server; drift_window / drift_threshold: the rolling window
    (frames per source) and the shift, in standard deviations of the reference's test images, past which a
    source is in drift; wait_for_sources False: a live source whose first open fails ends the run."""

    bundle: str | None
    sources: tuple
    artifact: str | None = None
    profile: object = None
    threads: int | None = None
    top_k: int = 3
    source_options: dict = field(default_factory=dict)
    smooth: int = 1
    threshold: float = 0.0
    stall_timeout: float = STALL_TIMEOUT_S
    max_frames: int | None = None
    duration: float | None = None
    http: HttpConfig | None = None
    results: str | None = None
    results_max_mb: float = 10.0
    mqtt: MqttConfig | None = None
    capture: CaptureConfig | None = None
    drift: bool = True
    drift_window: int = DEFAULT_WINDOW
    drift_threshold: float = DEFAULT_THRESHOLD
    allowed_signers: str | None = None
    wait_for_sources: bool = True
    show: bool = False
    simple: bool = False  # the simple mode: a line per frame as `edgecls run` prints it without daemon options
    # One SourceConfig per entry of `sources`, same order; empty: every source with the defaults.
    source_settings: tuple = ()

    def settings_for(self, index: int) -> SourceConfig:
        """The settings of sources[index] (the defaults when none were given)."""
        if self.source_settings:
            return self.source_settings[index]
        return SourceConfig(self.sources[index])

    def __post_init__(self):
        given = tuple(self.sources)
        if any(isinstance(s, SourceConfig) for s in given):  # DaemonConfig.of(bundle, [SourceConfig(...), "0"])
            if self.source_settings:
                raise EdgeclsError("give each source's settings once: as SourceConfig sources or as source_settings")
            settings = tuple(s if isinstance(s, SourceConfig) else SourceConfig(str(s)) for s in given)
            object.__setattr__(self, "source_settings", settings)
            given = tuple(s.uri for s in settings)
        object.__setattr__(self, "sources", tuple(str(s) for s in given))
        object.__setattr__(self, "source_settings", tuple(self.source_settings))
        if not self.sources:
            raise EdgeclsError("no source to run: give at least one --source (or a device profile with a camera)")
        self._check_source_settings()
        if not 1 <= self.smooth <= MAX_SMOOTH:
            raise EdgeclsError(
                f"--smooth {self.smooth}: the smoothing window is a number of frames, at least 1 and at most "
                f"{MAX_SMOOTH}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise EdgeclsError(f"--threshold {self.threshold}: a score threshold lies between 0 and 1")
        if self.stall_timeout <= 0:
            raise EdgeclsError(f"--stall-timeout {self.stall_timeout}: give a positive number of seconds")

    def _check_source_settings(self) -> None:
        """One SourceConfig per source, in order, each name once; capture settings only with a capture folder."""
        settings = self.source_settings
        if not settings:
            return
        if len(settings) != len(self.sources):
            raise EdgeclsError(
                f"source_settings has {len(settings)} entries for {len(self.sources)} sources: give one SourceConfig "
                "per source, in the order of sources"
            )
        for index, (setting, uri) in enumerate(zip(settings, self.sources)):
            if not isinstance(setting, SourceConfig) or setting.uri != uri:
                raise EdgeclsError(f"source_settings[{index}] is not a SourceConfig of sources[{index}] ({uri})")
            capture = [key for key in setting.daemon_only() if key.startswith("capture.")]
            if capture and self.capture is None:
                raise EdgeclsError(
                    f"source {setting.label}: {capture[0]} needs --capture DIR, the folder captured frames go to"
                )
        names = {}  # casefolded -> as given: capture folders of `Door` and `door` are one on vfat/exFAT media
        for setting in settings:
            if setting.name in names.values():
                raise EdgeclsError(f"source name {setting.name} is given twice: name each source once")
            if setting.name is not None and setting.name.casefold() in names:
                raise EdgeclsError(
                    f"source names {names[setting.name.casefold()]} and {setting.name} differ only in case (their "
                    "capture folders would be one on vfat/exFAT cards): name them apart"
                )
            if setting.name is not None:
                names[setting.name.casefold()] = setting.name
        for setting in settings:
            if setting.name is None and setting.label.casefold() in names:
                raise EdgeclsError(
                    f"source name {names[setting.label.casefold()]} is also how another source is shown: name the "
                    f"source {setting.label} differently, or name it with NAME=URI"
                )

    def names(self) -> list:
        """Each source's name in results, metrics and capture folders: its own, else its URI with passwords
        hidden, `#2`, `#3` ... for the same URI again. Only unnamed sources are counted, so naming or removing
        another source never renames one."""
        shown, seen = [], {}
        for index in range(len(self.sources)):
            setting = self.settings_for(index)
            if setting.name is not None:
                shown.append(setting.name)
                continue
            seen[setting.label] = seen.get(setting.label, 0) + 1
            shown.append(setting.label if seen[setting.label] == 1 else f"{setting.label}#{seen[setting.label]}")
        return shown

    @classmethod
    def of(cls, bundle, sources, *, host=HOST, port=None, token=None, allowed_hosts=(), source_options=None, **kw):
        """The keyword form: `port` None for no HTTP server, 0 for any free port; the rest as the fields."""
        http = None if port is None else HttpConfig(host, port, token, tuple(allowed_hosts))
        return cls(bundle, tuple(sources), http=http, source_options=dict(source_options or {}), **kw)

    @classmethod
    def from_options(cls, options: dict, load_profile) -> DaemonConfig:
        """`edgecls run`'s options (by parameter name) -> the configuration, checked in the order the CLI
        always checked them. load_profile: name or file -> device profile (the devices layer sits above)."""
        o = dict(options)
        if o["bundle"] is None:
            raise EdgeclsError("no bundle to run: give BUNDLE, `bundle = ...` in --config, or EDGECLS_RUN_BUNDLE")
        if o["wait_for_sources"] is None:  # a service waits for its camera (systemd sets NOTIFY_SOCKET, Type=notify)
            o["wait_for_sources"] = bool(os.environ.get("NOTIFY_SOCKET"))
        profile = load_profile(o["device"])
        settings = _source_settings(o, profile)
        uris = tuple(s.uri for s in settings)
        allowed_hosts = _allowed_hosts(o)
        source_options = {"loop": o["loop"], "timeout_s": o["timeout"], **_pacing(o, uris, profile)}
        simple = (
            o["port"] is None
            and len(uris) == 1
            and all(o[name] is None for name in DAEMON_ONLY)
            and not settings[0].daemon_only()  # a rotation or max_fps alone keeps the simple mode
        )
        token = None if simple else read_token(o["token_file"])  # checked in daemon mode, with or without HTTP
        http = None if o["port"] is None else HttpConfig(o["host"] or HOST, o["port"], token, allowed_hosts)
        return cls(
            o["bundle"],
            uris,
            artifact=o["artifact"],
            profile=profile,
            threads=o["threads"],
            top_k=o["top_k"],
            source_options=source_options,
            max_frames=o["max_frames"],
            http=http,
            allowed_signers=o["allowed_signers"],
            wait_for_sources=o["wait_for_sources"],
            simple=simple,
            drift=not simple,
            source_settings=settings,
            **_daemon_settings(o),
        )


def _source_settings(o: dict, profile) -> tuple:
    """--source (NAME=URI), --set and the --config file's [sources.NAME] tables -> one SourceConfig per source."""
    from edgecls.runtime.daemon.per_source import resolve

    return resolve(o["sources"], o.get("settings") or (), o.get("source_tables") or {}, profile.camera)


def _daemon_settings(o: dict) -> dict:
    """The daemon-only options that are set; the unset ones keep the fields' defaults."""
    settings = {
        "duration": o["duration"],
        "results": o["results"],
        "results_max_mb": o["results_max_mb"],
        "show": bool(o["show"]),
        "mqtt": None
        if not o["mqtt"]
        else MqttConfig(o["mqtt"], o["mqtt_qos"], o["mqtt_every"], bool(o["mqtt_discovery"])),
        "capture": None
        if o["capture"] is None
        else CaptureConfig(o["capture"], o["capture_below"], o["capture_every"], o["capture_max_mb"]),
    }
    for name in ("smooth", "threshold", "stall_timeout", "drift_window", "drift_threshold"):
        if o[name] is not None:
            settings[name] = o[name]
    return settings


def _allowed_hosts(o: dict) -> tuple:
    """--allowed-host as the server compares them; it, --host or --token-file without --port refused in one line."""
    allowed = o["allowed_hosts"]
    if allowed:  # a port, scheme or path would never match a Host header: refused here, in one line
        allowed = tuple(allowed_host_names(allowed))
    if o["port"] is None:
        for name, value in (
            ("--host", o["host"]),
            ("--token-file", o["token_file"]),
            ("--allowed-host", allowed or None),
        ):
            if value is not None:
                raise EdgeclsError(f"{name} configures the HTTP server: add --port")
    return tuple(allowed)


def _pacing(o: dict, uris, profile) -> dict:
    """The sources' pacing: their own (every image of a folder, a video at its frame rate), --every-frame or --fps."""
    from edgecls.runtime.sources import parse_source, redact_uri

    if o["fps"] is None:
        return {"every_frame": True} if o["every_frame"] else {}
    if o["every_frame"]:
        raise EdgeclsError("--fps (paced, drops frames) and --every-frame (no drops) contradict: pick one")
    for uri in uris:
        if parse_source(uri, profile.csi_pipeline).live:
            raise EdgeclsError(
                f"--fps paces a video file or folder; {redact_uri(uri)} is live and sets its own rate: drop --fps"
            )
    return {"every_frame": False, "realtime": True, "fps": o["fps"]}


def read_token(token_file) -> str | None:
    """The bearer token from --token-file, else from the environment; None when neither is set."""
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


def megabytes(size: float) -> int:
    """Whole bytes of a size in MiB, at least 1 when it is not 0: int() made a tiny size 0, which means 'never'."""
    return 0 if size == 0 else max(1, math.ceil(size * 2**20))


def read_toml(path) -> dict:
    """The --config file's table (keys as written); a missing, unreadable or invalid file in one line."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise EdgeclsError("--config needs Python 3.11+ (tomllib) or `pip install tomli`") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise EdgeclsError(f"cannot read --config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EdgeclsError(f"--config {path} is not valid TOML: {exc}") from exc


def allowed_host_names(names) -> list:
    """--allowed-host values as the Host check compares them (lower case, no trailing dot); a value with a port, a
    scheme or a path would never match a request's Host: refused in one line naming the name to give."""
    out = []
    for given in names:
        name = str(given).strip().lower().rstrip(".")
        if name != "*" and not _HOST_NAME.fullmatch(name):
            bare = re.sub(r"^[a-z][a-z0-9+.-]*://|[:/].*$", "", name) or "pi.lan"
            raise EdgeclsError(
                f"--allowed-host {str(given)[:100]!r} is not a host name: give the name alone, such as {bare!r} "
                "(no scheme, port or path: any port is accepted)"
            )
        out.append(name)
    return out


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)
