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
