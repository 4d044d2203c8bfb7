"""runtime/daemon/config.py: the daemon's settings from `edgecls run`'s options, their defaults and their checks."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgecls.commands.run import run
from edgecls.devices import load_profile
from edgecls.runtime.daemon.config import (
    HOST,
    STALL_TIMEOUT_S,
    TOKEN_ENV,
    CaptureConfig,
    DaemonConfig,
    HttpConfig,
    MqttConfig,
    SourceConfig,
    read_token,
    read_toml,
)
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.monitor.drift import DEFAULT_THRESHOLD, DEFAULT_WINDOW


def _options(**given):
    """`edgecls run`'s options as click hands them over: every parameter, its default where not given."""
    context = run.make_context("run", [], resilient_parsing=True)
    return {**context.params, **given}


def _config(**given):
    return DaemonConfig.from_options(_options(bundle="b", **given), load_profile)


def test_a_token_from_the_environment_loses_its_trailing_newline(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "tok-1234\n")  # as `EDGECLS_RUN_TOKEN=$(cat file)` or an env file can leave it
    assert read_token(None) == "tok-1234"
    monkeypatch.setenv(TOKEN_ENV, "  \n")
    assert read_token(None) is None


def test_one_source_without_daemon_options_is_the_simple_mode_and_anything_else_the_daemon():
    simple = _config(sources=("clip.avi",))
    assert simple.simple and not simple.drift and simple.http is None
    assert simple.sources == ("clip.avi",) and simple.source_options == {"loop": False, "timeout_s": 5.0}
    for given in ({"port": 0}, {"sources": ("a.avi", "b.avi")}, {"smooth": 2}, {"stall_timeout": 3.0}):
        daemon = _config(**{"sources": ("clip.avi",), **given})
        assert not daemon.simple and daemon.drift, given


def test_unset_daemon_options_keep_the_defaults_held_once_in_the_configuration():
    """The documented defaults (README, `edgecls run --help`), written out: a wrong constant cannot pass."""
    config = _config(sources=("clip.avi",), port=8080)
    assert config.http == HttpConfig("127.0.0.1", 8080, None, ()) and HOST == "127.0.0.1"
    assert (config.smooth, config.threshold, config.stall_timeout) == (1, 0.0, 10.0) and STALL_TIMEOUT_S == 10.0
    assert (config.drift_window, config.drift_threshold) == (500, 3.0)
    assert (DEFAULT_WINDOW, DEFAULT_THRESHOLD) == (500, 3.0) and config.top_k == 3
    assert config.source_options["timeout_s"] == 5.0 and CaptureConfig("d").max_mb == 500.0
    assert config.mqtt is None and config.capture is None and config.results_max_mb == 10.0
    given = _config(sources=("clip.avi",), mqtt="mqtt://h/p", capture="dir", stall_timeout=2.5, drift_window=40)
    assert given.mqtt == MqttConfig("mqtt://h/p") and given.capture == CaptureConfig("dir")
    assert (given.stall_timeout, given.drift_window) == (2.5, 40)


def test_the_help_shows_the_defaults_the_configuration_holds():
    shown = " ".join(CliRunner().invoke(run, ["--help"], terminal_width=400).output.split())
    for default in (f"[default: {HOST}]", f"[default: {STALL_TIMEOUT_S:g}]", f"[default: {DEFAULT_WINDOW}]"):
        assert default in shown, default
    assert f"[default: {DEFAULT_THRESHOLD:g}]" in shown and f"[default: {CaptureConfig.max_mb}; x>0]" in shown
    for documented in ("127.0.0.1]", "[default: 10]", "[default: 500]", "[default: 3]", "[default: 3; x>=1]"):
        assert documented in shown, documented


def test_the_profile_names_the_camera_when_no_source_is_given():
    assert _config().sources == (load_profile(None).camera,)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"sources": ()}, "no source to run"),
        ({"smooth": 0}, "--smooth 0: the smoothing window is a number of frames, at least 1"),
        (
            {"smooth": 10**23},
            "--smooth 100000000000000000000000: the smoothing window is a number of frames, at least 1 "
            "and at most 10000",
        ),
        ({"threshold": 1.5}, "--threshold 1.5: a score threshold lies between 0 and 1"),
        ({"stall_timeout": 0}, "--stall-timeout 0: give a positive number of seconds"),
    ],
)
def test_a_configuration_is_checked_when_it_is_made(settings, message):
    with pytest.raises(EdgeclsError, match=message):
        DaemonConfig.of("b", **{"sources": ["0"], **settings})


def test_http_options_without_a_port_and_contradicting_pacing_are_refused_in_one_line():
    with pytest.raises(EdgeclsError, match="--token-file configures the HTTP server: add --port"):
        _config(sources=("clip.avi",), token_file="t")
    with pytest.raises(EdgeclsError, match="--allowed-host 'pi.lan:80' is not a host name"):
        _config(sources=("clip.avi",), allowed_hosts=("pi.lan:80",))
    with pytest.raises(EdgeclsError, match="contradict: pick one"):
        _config(sources=("clip.avi",), fps=5.0, every_frame=True)
    with pytest.raises(EdgeclsError, match="no bundle to run"):
        DaemonConfig.from_options(_options(), load_profile)


def test_the_keyword_form_builds_the_http_part_only_with_a_port():
    assert DaemonConfig.of("b", ["0"]).http is None
    assert DaemonConfig.of("b", ["0"], port=0, token="t", allowed_hosts=["pi.lan"]).http == HttpConfig(
        HOST, 0, "t", ("pi.lan",)
    )


def test_a_config_file_that_is_not_toml_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "run.toml"
    bad.write_text("port = \n")
    with pytest.raises(EdgeclsError, match=f"--config {bad} is not valid TOML"):
        read_toml(bad)
    with pytest.raises(EdgeclsError, match="cannot read --config"):
        read_toml(tmp_path / "missing.toml")
    bad.write_text('bundle = "b"\nstall-timeout = 5\n')
    assert read_toml(bad) == {"bundle": "b", "stall-timeout": 5}


# Per-camera settings: --source NAME=URI, --set NAME.KEY=VALUE and [sources.NAME] tables -> one SourceConfig each.


def _from_file(tmp_path, text: str, *args: str, bundle='bundle = "b"\n'):
    """The configuration `edgecls run --config FILE ARGS` makes: the file read by run's own --config callback."""
    from edgecls.commands.run import SOURCE_TABLES

    config = tmp_path / "run.toml"
    config.write_text(bundle + text)
    context = run.make_context("run", ["--config", str(config), *args])
    options = {**context.params, "source_tables": context.meta.get(SOURCE_TABLES, {})}
    return DaemonConfig.from_options(options, load_profile)


def test_without_per_source_settings_every_source_keeps_the_defaults_of_today():
    config = _config(sources=("clip.avi", "rtsp://u:p@cam/s"), port=0)
    assert config.source_settings == (SourceConfig("clip.avi"), SourceConfig("rtsp://u:p@cam/s"))
    default = config.source_settings[0]
    assert (default.name, default.roi, default.rotate, default.flip, default.max_fps) == (None, None, 0, "none", None)
    assert (default.threshold, default.smooth, default.capture_below, default.capture_every) == (None,) * 4
    assert not default.transforms and DaemonConfig.of("b", ["0"]).settings_for(0) == SourceConfig("0")
    assert _config().source_settings == (SourceConfig(load_profile(None).camera),)


def test_a_toml_table_and_the_command_line_give_the_same_source_settings(tmp_path):
    table = _from_file(
        tmp_path,
        '[sources.door]\nuri = "door.avi"\nroi = [0.5, 0.0, 0.5, 0.5]\nrotate = 180\nflip = "horizontal"\n'
        "max_fps = 5\nthreshold = 0.8\nsmooth = 5\ncapture = {below = 0.6, every = 100}\n"
        '[sources.yard]\nuri = "yard.avi"\nroi = [10, 20, 300, 200]\n',
        "--capture",
        str(tmp_path / "captures"),
    )
    flags = ["--source", "door=door.avi", "--source", "yard=yard.avi", "--capture", str(tmp_path / "captures")]
    for setting in (
        "door.roi=0.5,0.0,0.5,0.5 door.rotate=180 door.flip=horizontal door.max_fps=5 door.threshold=0.8 "
        "door.smooth=5 door.capture.below=0.6 door.capture.every=100 yard.roi=10,20,300,200"
    ).split():
        flags += ["--set", setting]
    line = _from_file(tmp_path, "", *flags)
    door = SourceConfig("door.avi", "door", (0.5, 0.0, 0.5, 0.5), 180, "horizontal", 5.0, 0.8, 5, 0.6, 100)
    assert table.source_settings == line.source_settings == (door, SourceConfig("yard.avi", "yard", (10, 20, 300, 200)))
    assert table.sources == line.sources == ("door.avi", "yard.avi") and not table.simple
    assert [type(v) for v in line.source_settings[1].roi] == [int] * 4  # pixels stay ints: the view tells them apart
    assert [type(v) for v in line.source_settings[0].roi] == [float] * 4


def test_the_command_line_wins_over_the_table_key_by_key_and_its_source_list_replaces_the_tables(tmp_path, caplog):
    tables = '[sources.door]\nuri = "door.avi"\nrotate = 180\nflip = "vertical"\n[sources.yard]\nuri = "yard.avi"\n'
    assert [s.rotate for s in _from_file(tmp_path, tables, "--set", "rotate=90").source_settings] == [90, 90]
    over = _from_file(tmp_path, tables, "--set", "door.rotate=270", "--set", "rotate=90")
    assert [(s.name, s.rotate, s.flip) for s in over.source_settings] == [
        ("door", 270, "vertical"),
        ("yard", 90, "none"),
    ]
    caplog.set_level("WARNING", "edgecls.daemon")  # shown at the CLI's default level
    replaced = _from_file(tmp_path, tables, "--source", "door=recorded.avi", "--source", "extra.avi")
    assert replaced.source_settings == (
        SourceConfig("recorded.avi", "door", rotate=180, flip="vertical"),
        SourceConfig("extra.avi"),
    )
    assert "--source replaces the --config file's sources: yard not run" in caplog.text
    short = _from_file(tmp_path, '[sources]\ndoor = "door.avi"\nyard = { uri = 0 }\n')  # name = "URI": the URI alone
    assert short.source_settings == (SourceConfig("door.avi", "door"), SourceConfig("0", "yard"))


def test_the_settings_come_from_environment_variables_as_the_other_options_do(monkeypatch):
    monkeypatch.setenv("EDGECLS_RUN_SOURCE", "door=door.avi yard=yard.avi")
    monkeypatch.setenv("EDGECLS_RUN_SET", "door.rotate=90 yard.flip=horizontal")
    context = run.make_context("run", ["b"])
    config = DaemonConfig.from_options(context.params, load_profile)
    assert [(s.name, s.uri, s.rotate, s.flip) for s in config.source_settings] == [
        ("door", "door.avi", 90, "none"),
        ("yard", "yard.avi", 0, "horizontal"),
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("door=rtsp://cam/door", ("door", "rtsp://cam/door")),
        ("cam-2=0", ("cam-2", "0")),
        ("front_door=http://h/s?x=1", ("front_door", "http://h/s?x=1")),
        ("rtsp://h/s?token=x", (None, "rtsp://h/s?token=x")),  # a `:` before the first `=`
        ("videos/file=a.mp4", (None, "videos/file=a.mp4")),  # a `/`
        ("clip.v2=x.mp4", (None, "clip.v2=x.mp4")),  # a `.`
        (
            "v4l2src device=/dev/video0 ! videoconvert ! appsink",
            (None, "v4l2src device=/dev/video0 ! videoconvert ! appsink"),
        ),
        ("2cam=0", (None, "2cam=0")),  # a name starts with a letter
        ("0", (None, "0")),
    ],
)
def test_a_name_is_what_comes_before_the_first_equals_sign_only_when_it_reads_as_a_name(text, expected):
    from edgecls.runtime.daemon.per_source import split_source

    assert split_source(text) == expected


def test_an_existing_file_whose_name_holds_an_equals_sign_is_a_path_not_a_name(tmp_path, monkeypatch):
    from edgecls.runtime.daemon.per_source import split_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "file=a.mp4").write_bytes(b"")
    assert split_source("file=a.mp4") == (None, "file=a.mp4")
    assert split_source("./file=a.mp4") == (None, "./file=a.mp4")
    assert split_source("other=a.mp4") == ("other", "a.mp4")  # no such file: a name
    with pytest.raises(EdgeclsError, match=r"--source door=: give the source after the name: NAME=URI"):
        split_source("door=")


def test_a_rotation_or_a_frame_rate_cap_keeps_the_simple_mode_and_a_threshold_of_its_own_leaves_it():
    assert _config(sources=("clip.avi",), settings=("rotate=180", "max_fps=5", "roi=0,0,32,32")).simple
    assert _config(sources=("door=clip.avi",), settings=("door.flip=vertical",)).simple
    for setting in ("threshold=0.5", "smooth=3"):
        assert not _config(sources=("clip.avi",), settings=(setting,)).simple, setting


BAD_SETTINGS = [
    ("door.rotate=45", r"source door: rotate 45: give 0, 90, 180 or 270 \(degrees clockwise\)"),
    ("door.rotate=upside", "source door: rotate 'upside' is not a number"),
    ("door.flip=both", "source door: flip 'both': give none, horizontal or vertical"),
    ("door.max_fps=0", "source door: max_fps 0: give a positive number of frames per second"),
    ("door.max_fps=-5", "source door: max_fps -5: give a positive number"),
    ("door.max_fps=nan", "source door: max_fps nan: give a positive number"),
    ("door.max_fps=inf", "source door: max_fps inf: give a positive number"),
    ("door.threshold=1.5", "source door: threshold 1.5: a score threshold lies between 0 and 1"),
    ("door.threshold=nan", "source door: threshold nan: a score threshold lies between 0 and 1"),
    ("door.smooth=0", "source door: smooth 0: give a whole number of frames, at least 1"),
    ("door.capture.every=0", "source door: capture.every 0: give a whole number of frames, at least 1"),
    ("door.roi=0.5,0.5,0.5", r"source door: roi \[0.5, 0.5, 0.5\]: give 4 numbers x, y, w, h"),
    ("door.roi=a,b,c,d", "source door: roi 'a,b,c,d': give 4 numbers x,y,w,h"),
    ("door.roi=0.5,0,0,0.5", r"source door: roi \[0.5, 0, 0, 0.5\]: its width and height \(w, h\) must be above 0"),
    ("door.roi=0.6,0,0.5,1.0", r"source door: roi \[0.6, 0, 0.5, 1.0\]: x \+ w = 1.1 goes past the frame's right edge"),
    ("door.roi=0,0.5,1.0,0.75", r"source door: roi \[0, 0.5, 1.0, 0.75\]: y \+ h = 1.25 goes past the frame's bottom"),
    ("door.roi=0,0,1.5,0.5", r"source door: roi \[0, 0, 1.5, 0.5\]: fractions of the frame lie between 0 and 1"),
    ("door.roi=-10,0,64,48", r"source door: roi \[-10, 0, 64, 48\]: x and y count pixels from the top-left corner"),
    ("door.roi=0,0,0,48", r"source door: roi \[0, 0, 0, 48\]: its width and height \(w, h\) must be above 0"),
    ("door.roi=0,0,1,1", r"source door: roi \[0, 0, 1, 1\] is 1 pixel wide: whole numbers are pixels; write fractions"),
    ("door.roi=10,10,1,40", r"source door: roi \[10, 10, 1, 40\] is 1 pixel wide: give a region of 2 pixels or more"),
    ("door.rotation=90", r"--set door.rotation: unknown key rotation \(did you mean rotate\?\)"),
    ("door.max-fsp=5", r"--set door.max-fsp: unknown key max_fsp \(did you mean max_fps\?\)"),
    ("doro.rotate=90", r"--set doro.rotate: no source is named doro \(named sources: door\); did you mean door\?"),
    ("door.uri=x.avi", r"--set door.uri: a source's URI is given with --source NAME=URI"),
    (
        "door.max_fps=1e-11",
        r"source door: max_fps 1e-11: give a positive number of frames per second, at least 1.16e-05",
    ),
    (
        "door.smooth=99999999999999999999999",
        "source door: smooth 99999999999999999999999: give a number of frames from 1",
    ),
    ("door.roi=0.3,0,0.7000001,1.0", r"source door: roi \[0.3, 0, 0.7000001, 1.0\]: x \+ w = 1.0000001 goes past"),
    ("door\nfoo.rotate=90", r"--set 'door\\nfoo.rotate': no source is named 'door\\nfoo' \(named sources: door\)"),
    ("door.rot\nate=90", r"--set 'door.rot\\nate': unknown key 'rot\\nate'"),
    ("door.rotate", r"--set door.rotate: write NAME.KEY=VALUE"),
    ("door.capture.below=0.5", "source door: capture.below needs --capture DIR"),
]


@pytest.mark.parametrize("setting, message", BAD_SETTINGS, ids=[s for s, _ in BAD_SETTINGS])
def test_a_bad_setting_is_one_line_naming_the_source_and_the_key(setting, message):
    with pytest.raises(EdgeclsError, match=f"^{message}") as refused:
        _config(sources=("door=door.avi",), settings=(setting,))
    assert "\n" not in str(refused.value)


def test_a_bad_table_is_one_line_naming_the_source_and_the_key(tmp_path):
    for text, message in [
        ('[sources.door]\nuri = "d.avi"\nrotation = 90\n', r"source door: unknown key rotation \(did you mean rotate"),
        ('[sources.door]\nuri = "d.avi"\ncapture = {folder = "x"}\n', "source door: unknown key capture.folder"),
        ('[sources.door]\nuri = "d.avi"\nrotate = 45\n', "source door: rotate 45: give 0, 90, 180 or 270"),
        ('[sources.door]\nuri = "d.avi"\nmax_fps = nan\n', "source door: max_fps nan: give a positive number"),
        ('[sources.door]\nuri = "d.avi"\nroi = [true, 0, 1, 1]\n', r"source door: roi \[True, 0, 1, 1\]: give 4"),
        ('[sources.door]\nuri = "d.avi"\nsmooth = 2.5\n', "source door: smooth 2.5: give a whole number"),
        ("[sources.door]\nrotate = 180\n", r'source door: no uri: add uri = "rtsp://..." to \[sources.door\]'),
        ('[sources."front door"]\nuri = "d.avi"\n', r"\[sources.front door\]: a source name is up to 64 letters"),
        ('[sources.rotate]\nuri = "d.avi"\n', "source name rotate is also a setting's key"),
        ('source = ["0"]\n[sources.door]\nuri = "d.avi"\n', "sources given both as a list and as"),
    ]:
        with pytest.raises(EdgeclsError, match=message):
            _from_file(tmp_path, text)


def test_a_name_given_twice_or_shown_twice_is_refused():
    with pytest.raises(EdgeclsError, match="^source name door is given twice: name each source once$"):
        _config(sources=("door=a.avi", "door=b.avi"))
    with pytest.raises(EdgeclsError, match="^source name door is also how another source is shown"):
        _config(sources=("door=a.avi", "door"))
    with pytest.raises(EdgeclsError, match=r"--set door.rotate is given twice: keep one"):
        _config(sources=("door=a.avi",), settings=("door.rotate=180", "door.rotate=90"))
    with pytest.raises(EdgeclsError, match=r"no source is named door \(no source is named: --source NAME=URI\)"):
        _config(sources=("a.avi",), settings=("door.rotate=180",))


def test_source_settings_from_scripts_are_checked_too():
    door = SourceConfig("door.avi", name="door", rotate=90)
    config = DaemonConfig.of("b", [door, "yard.avi"])
    assert config.sources == ("door.avi", "yard.avi") and config.source_settings == (door, SourceConfig("yard.avi"))
    assert DaemonConfig.of("b", ["door.avi"], source_settings=[door]).settings_for(0) is door
    with pytest.raises(EdgeclsError, match="source_settings has 1 entries for 2 sources"):
        DaemonConfig.of("b", ["door.avi", "yard.avi"], source_settings=[door])
    with pytest.raises(EdgeclsError, match=r"source_settings\[0\] is not a SourceConfig of sources\[0\] \(yard.avi\)"):
        DaemonConfig.of("b", ["yard.avi"], source_settings=[door])
    with pytest.raises(EdgeclsError, match="source rtsp://cam/s: rotate 45") as refused:
        SourceConfig("rtsp://cam/s", rotate=45)
    with pytest.raises(EdgeclsError, match="rotate 45") as refused:  # an unnamed source is shown without password
        _config(sources=("rtsp://admin:hunter2-secret@cam/s",), settings=("rotate=45",))
    assert "hunter2-secret" not in str(refused.value) and "cam/s" in str(refused.value)
    with pytest.raises(EdgeclsError, match="source door: threshold '0.5': a score threshold"):
        SourceConfig("d.avi", "door", threshold="0.5")
    typed = SourceConfig("d.avi", rotate=90.0, smooth=3.0, max_fps=5, threshold=1, capture_every=2.0)
    assert [type(v) for v in (typed.rotate, typed.smooth, typed.max_fps, typed.threshold, typed.capture_every)] == [
        int,
        int,
        float,
        float,
        int,
    ]


def test_the_readmes_per_camera_table_is_a_configuration_that_runs_as_it_says(tmp_path):
    """README.md's `[sources.NAME]` example (and its Chinese twin) parse into the settings its comments name."""
    from tests.conftest import REPO
    from tests.readme_blocks import read_blocks

    for readme, section in (("README.md", "Per-camera settings"), ("README.zh-CN.md", "每个摄像头的设置")):
        (block,) = [b for b in read_blocks(REPO / readme) if b.section == section and b.language == "toml"]
        config = _from_file(tmp_path, block.text.replace("/data/captures", str(tmp_path / "captures")), bundle="")
        assert config.sources == ("rtsp://cam1/stream", "rtsp://cam2/stream") and config.http.port == 8080
        door = SourceConfig(
            "rtsp://cam1/stream", "door", (0.5, 0.0, 0.5, 0.5), 180, "horizontal", 5.0, 0.8, 5, 0.6, 100
        )
        assert config.source_settings == (door, SourceConfig("rtsp://cam2/stream", "yard")), readme


SECRET_SETS = [
    "door.uri=rtsp://admin:hunter2@cam/s?token=SECRETTOK",
    "uri=rtsp://admin:hunter2@cam/s?token=SECRETTOK",
    "door.url=rtsp://admin:hunter2@cam/s?token=SECRETTOK",
    "rtsp://admin:hunter2@cam/s?token=SECRETTOK",
]


@pytest.mark.parametrize("setting", SECRET_SETS)
def test_a_refused_set_names_the_setting_and_never_shows_its_value(setting):
    """A URI given to --set by mistake is refused without its password or token in the error line."""
    with pytest.raises(EdgeclsError, match="^--set ") as refused:
        _config(sources=("door=door.avi",), settings=(setting,))
    assert "hunter2" not in str(refused.value) and "SECRETTOK" not in str(refused.value), str(refused.value)


def test_a_name_or_key_with_a_line_break_from_the_file_is_quoted_in_one_error_line(tmp_path):
    """A table's name or key from the TOML file cannot forge a second `error:` line."""
    for text, message in [
        (
            '[sources."door\\nerror: all fine"]\nuri = "d.avi"\n',
            r"^\[sources.'door\\nerror: all fine'\]: a source name",
        ),
        ('[sources.door]\nuri = "d.avi"\n"rot\\nate" = 1\n', r"^source door: unknown key 'rot\\nate'"),
        ('"bun\\ndle" = 1\n', r"unknown option\(s\) 'bun\\ndle'"),
    ]:
        with pytest.raises(EdgeclsError, match=message) as refused:
            _from_file(tmp_path, text)
        assert "\n" not in str(refused.value), text


def test_set_lists_from_the_file_the_environment_and_the_command_line_merge_key_by_key(tmp_path, monkeypatch):
    """Each layer of --set adds its keys: the command line replaces only the keys it sets (before, the highest
    layer given replaced the others whole and the rotation from the file or EDGECLS_RUN_SET was lost)."""
    table = '[sources.door]\nuri = "door.avi"\nflip = "vertical"\n'
    sets = 'set = ["door.rotate=180", "door.max_fps=5"]\n'
    (door,) = _from_file(tmp_path, sets + table, "--set", "door.threshold=0.5").source_settings
    assert (door.rotate, door.max_fps, door.threshold, door.flip) == (180, 5.0, 0.5, "vertical")
    monkeypatch.setenv("EDGECLS_RUN_SET", "door.rotate=90 door.smooth=3")
    (door,) = _from_file(tmp_path, sets + table, "--set", "door.max_fps=2").source_settings
    assert (door.rotate, door.max_fps, door.smooth, door.flip) == (90, 2.0, 3, "vertical")
    context = run.make_context("run", ["b", "--source", "door=clip.avi", "--set", "door.max_fps=5"])
    (door,) = DaemonConfig.from_options(context.params, load_profile).source_settings
    assert (door.rotate, door.smooth, door.max_fps) == (90, 3, 5.0)
    with pytest.raises(EdgeclsError, match=r"^--set door.max_fps is given twice: keep one$"):
        run.make_context("run", ["b", "--source", "door=c.avi", "--set", "door.max_fps=5", "--set", "door.max-fps=6"])


def test_a_source_list_leaving_tables_out_warns_and_names_the_table_a_misspelt_name_means(tmp_path, caplog):
    tables = '[sources.door]\nuri = "door.avi"\nrotate = 180\n[sources.yard]\nuri = "yard.avi"\n'
    caplog.set_level("WARNING", "edgecls.daemon")
    (dor,) = _from_file(tmp_path, tables, "--source", "dor=clip.avi").source_settings
    assert dor == SourceConfig("clip.avi", "dor")
    (record,) = [r for r in caplog.records if "not run" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert record.getMessage() == (
        "--source replaces the --config file's sources: door, yard not run; "
        "--source dor=... has no [sources.dor] table: did you mean door?"
    )


def test_a_frame_rate_cap_of_one_frame_a_day_is_the_lowest_taken():
    assert SourceConfig("d.avi", max_fps=1 / 86400).max_fps == 1 / 86400
    with pytest.raises(EdgeclsError, match="max_fps 1e-06: give a positive number of frames per second, at least"):
        SourceConfig("d.avi", max_fps=1e-6)
    assert SourceConfig("d.avi", smooth=10_000).smooth == 10_000


def test_an_unnamed_source_keeps_its_shown_name_whatever_named_sources_run_beside_it():
    """`#2` counts the unnamed sources only: naming, adding or removing a named source never renames the others
    (their metric labels and capture folders)."""
    assert _config(sources=("door=clip.avi", "clip.avi")).names() == ["door", "clip.avi"]
    assert _config(sources=("clip.avi", "door=clip.avi", "clip.avi")).names() == ["clip.avi", "door", "clip.avi#2"]
    assert DaemonConfig.of("b", ["rtsp://u:pw@cam/s", "rtsp://u:pw@cam/s"]).names() == [
        "rtsp://u:***@cam/s",
        "rtsp://u:***@cam/s#2",
    ]


def test_source_names_equal_but_for_case_are_refused():
    """`Door` and `door` would share one capture folder on vfat/exFAT media."""
    with pytest.raises(EdgeclsError, match="^source names Door and door differ only in case"):
        _config(sources=("Door=a.avi", "door=b.avi"))
    with pytest.raises(EdgeclsError, match="^source name Door is also how another source is shown"):
        _config(sources=("Door=a.avi", "door"))
    with pytest.raises(EdgeclsError, match="differ only in case"):
        DaemonConfig.of("b", [SourceConfig("a.avi", "yard"), SourceConfig("b.avi", "YARD")])


def test_a_key_written_with_dashes_is_the_key_and_a_source_may_not_be_named_like_one():
    for setting in ("max-fps=5", "door.max-fps=5"):
        assert _config(sources=("door=d.avi",), settings=(setting,)).source_settings[0].max_fps == 5.0, setting
    for name in ("max-fps", "max_fps", "capture"):
        with pytest.raises(EdgeclsError, match=f"^source name {name} is also a setting's key"):
            _config(sources=(f"{name}=x.avi",))
