"""`edgecls run` (edgecls/commands/run.py) as a real subprocess: signals, exit codes, token, results file."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from tests.conftest import REPO, cli_error, run_cli  # noqa: E402
from tests.daemon_helpers import http_get, start_cli_daemon, wait_for, write_test_video  # noqa: E402
from tests.mjpeg_server import MjpegServer  # noqa: E402


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("daemon-cli") / "clip.avi", pattern="ramp")


def _pump(stream, lines):
    for line in stream:
        lines.append(line)


def _get(url, token=None):
    return http_get(url, token, timeout=5)[0]


def test_sigterm_stops_the_daemon_within_2_s_with_exit_0_and_the_token_never_logged(tiny_bundle, video, tmp_path):
    token = "cli-token-5b8e0d-secret"
    (tmp_path / "token").write_text(token + "\n")
    server = MjpegServer(fps=25).start()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecls.cli",
            "--debug",
            "run",
            str(tiny_bundle),
            "--source",
            str(video),
            "--loop",
            "--source",
            server.url,
            "--port",
            "0",
            "--token-file",
            str(tmp_path / "token"),
            "--stall-timeout",
            "2",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    out, err = [], []
    pumps = [
        threading.Thread(target=_pump, args=(process.stdout, out), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, err), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    try:
        deadline = time.monotonic() + 60
        started = None
        while started is None and time.monotonic() < deadline and process.poll() is None:
            started = next((json.loads(l) for l in list(err) if l.startswith('{"event": "started"')), None)
            time.sleep(0.1)
        assert started is not None, "".join(err)[-3000:]
        url = started["url"]
        assert url.startswith("http://127.0.0.1:") and started["sources"] == [str(video), server.url]
        while time.monotonic() < deadline and _get(url + "/healthz", token) != 200:
            time.sleep(0.1)
        assert [_get(url + p) for p in ("/healthz", "/metrics", "/latest")] == [401] * 3
        assert [_get(url + p, token) for p in ("/healthz", "/metrics", "/latest")] == [200] * 3
        while time.monotonic() < deadline and not any(server.url in l for l in list(out)):
            time.sleep(0.1)

        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = process.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
        server.kill()
    for pump in pumps:
        pump.join(5)
    print(f"SIGTERM to exit: {took:.2f} s")
    assert code == 0 and took < 2.0, "".join(err)[-3000:]
    results = [json.loads(l) for l in out]
    assert {r["source"] for r in results} == {str(video), server.url}
    assert all({"ts", "frame", "top1", "score", "topk", "latency_ms", "frame_age_ms"} <= set(r) for r in results)
    stopped = json.loads(err[-1])
    assert stopped["event"] == "stopped" and stopped["sources"][server.url]["classified"] > 0
    assert any("http 127.0.0.1" in l for l in err)  # requests were logged (debug), yet:
    assert not [l for l in err + out if token in l]


def test_two_sources_with_max_frames_write_the_results_file_and_exit_0(tiny_bundle, video, tmp_path):
    results = tmp_path / "results.jsonl"
    folder = tmp_path / "stills"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((32, 32, 3), 60 * i, np.uint8))
    done = run_cli(
        "run",
        tiny_bundle,
        "--source",
        video,
        "--source",
        folder,
        "--every-frame",
        "--max-frames",
        "5",
        "--results",
        results,
        "--smooth",
        "2",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""  # results went to the file
    rows = [json.loads(l) for l in results.read_text().splitlines()]
    assert [r["frame"] for r in rows if r["source"] == str(video)] == [0, 1, 2, 3, 4]
    assert [r["name"].rsplit("/", 1)[-1] for r in rows if r["source"] == str(folder)] == ["0.png", "1.png", "2.png"]
    summary = json.loads(done.stderr.strip().splitlines()[-1])["sources"]
    assert summary[str(video)]["classified"] == 5 and summary[str(folder)] == {
        "classified": 3,
        "captured": 3,
        "dropped": 0,
        "outages": 0,
        "reconnects": 0,
        "state": "ended",
    }


def test_http_options_without_a_port_are_refused(tiny_bundle, video):
    assert "--host configures the HTTP server: add --port" in cli_error(
        run_cli("run", tiny_bundle, "--source", video, "--host", "0.0.0.0")
    )


def test_the_daemon_exits_non_zero_when_its_sources_failed_and_zero_when_they_ended(tiny_bundle, video, tmp_path):
    """Failed is not ended: a video that cannot be decoded fails its source, and the daemon then exits 1 naming it
    (systemd's Restart=on-failure restarts it); a video that plays to its end exits 0."""
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"not a video at all" * 100)
    failed = run_cli("run", tiny_bundle, "--source", broken, "--duration", "60", timeout=120)
    assert f"cannot open source {broken}" in cli_error(failed)
    ended = run_cli("run", tiny_bundle, "--source", video, "--duration", "60", "--every-frame", timeout=120)
    assert ended.returncode == 0, ended.stderr[-2000:]


NOT_NUMBERS = [
    ("--timeout", "nan"),
    ("--timeout", "-1"),
    ("--timeout", "inf"),
    ("--fps", "nan"),
    ("--threshold", "nan"),
    ("--stall-timeout", "nan"),
    ("--stall-timeout", "inf"),
    ("--duration", "nan"),
    ("--results-max-mb", "inf"),
    ("--results-max-mb", "nan"),
    ("--capture-below", "nan"),
    ("--capture-max-mb", "inf"),
    ("--drift-threshold", "nan"),
    ("--smooth", "-1"),
    ("--smooth", "99999999999999999999999"),
]


def test_every_numeric_option_refuses_nan_infinity_and_negatives_in_one_line(tiny_bundle, video, tmp_path):
    """Each bad number is one `error:` line naming the option, exit 1, before any model loads (--duration 3 bounds a
    run that wrongly starts)."""
    for option, value in NOT_NUMBERS:
        extra = ["--capture", str(tmp_path / "captures")] if option.startswith("--capture-") else []
        args = ["run", tiny_bundle, "--source", video, "--duration", "3", *extra, option, value]
        if option == "--duration":
            args = ["run", tiny_bundle, "--source", video, "--port", "0", option, value]
        done = run_cli(*args, timeout=60)
        assert done.returncode == 1, (option, value, done.returncode, done.stderr[-1500:])
        line = cli_error(done)
        assert option in line and value in line, (option, value, line)
    config = tmp_path / "run.toml"  # a TOML file may hold nan and inf too
    config.write_text(f'bundle = "{tiny_bundle}"\nsource = ["{video}"]\nduration = 3\ntimeout = nan\n')
    assert "--timeout" in cli_error(run_cli("run", "--config", config, timeout=60))


def test_a_camera_that_never_opens_is_one_error_line_naming_the_fix_unless_asked_to_wait(tiny_bundle, tmp_path):
    """`edgecls run --source N` with no camera N: `error: cannot open source N: ... ls /dev/video* ... video ...`,
    exit 1, in the simple mode and in daemon mode; --wait-for-sources keeps trying instead (until --duration)."""
    missing = next(str(n) for n in range(64) if not os.path.exists(f"/dev/video{n}"))
    for mode in ([], ["--port", "0"]):
        done = run_cli("run", tiny_bundle, "--source", missing, *mode, timeout=30)
        line = cli_error(done)
        assert line.startswith(f"error: cannot open source {missing}: "), line
        assert "ls /dev/video*" in line and "`video`" in line and "--wait-for-sources" in line, line
    waited = run_cli(
        "run", tiny_bundle, "--source", missing, "--port", "0", "--duration", "3", "--wait-for-sources", timeout=60
    )
    assert waited.returncode == 0, waited.stderr[-2000:]
    assert "reconnecting" in waited.stderr


def test_a_tiny_results_max_mb_rotates_the_results_file_instead_of_never(tiny_bundle, video, tmp_path):
    """--results-max-mb 0.0000001 (about 0.1 byte) rounded down to 0 bytes, which means 'never rotate'."""
    results = tmp_path / "r.jsonl"
    done = run_cli(
        "run",
        tiny_bundle,
        "--source",
        video,
        "--results",
        results,
        "--results-max-mb",
        "0.0000001",
        "--max-frames",
        "4",
    )
    assert done.returncode == 0, done.stderr[-1500:]
    assert (tmp_path / "r.jsonl.1").exists(), sorted(p.name for p in tmp_path.iterdir())


def test_device_profile_gives_daemon_mode_its_artifact_and_camera(tiny_bundle, video, tmp_path):
    """No --source and no --artifact: both come from the profile (a user's JSON file)."""
    import json

    profile = tmp_path / "bench-rig.json"
    profile.write_text(
        json.dumps({"name": "bench-rig", "artifacts": ["onnx-int8", "tflite-int8"], "threads": 1, "camera": str(video)})
    )
    results = tmp_path / "results.jsonl"
    done = run_cli(
        "-v",
        "run",
        str(tiny_bundle),
        "--device",
        str(profile),
        "--duration",
        "2",
        "--results",
        str(results),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded onnx-int8" in done.stderr, done.stderr[-2000:]
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert lines and {r["source"] for r in lines} == {str(video)}


def test_the_simple_mode_prints_its_own_lines_from_the_daemons_loop(tiny_bundle, video):
    """One source and no daemon option: a line per frame with the simple mode's keys, in their order, and a last
    line with that source's counts; stopped by --max-frames, its source says "closed" as a plain Source did."""
    done = run_cli("run", tiny_bundle, "--source", video, "--every-frame", "--max-frames", "3", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    keys = ["frame", "age_ms", "top1", "score", "topk", "latency_ms", "dropped", "model"]
    assert [list(r) for r in rows] == [keys] * 3 and [r["frame"] for r in rows] == [0, 1, 2]
    assert all(isinstance(r["latency_ms"], float) and r["model"]["artifact"] for r in rows)
    stopped = json.loads(done.stderr.strip().splitlines()[-1])
    assert list(stopped) == ["event", "frames", "captured", "dropped", "outages", "reconnects", "state"]
    assert (stopped["event"], stopped["frames"], stopped["state"]) == ("stopped", 3, "closed")
    assert '"event": "started"' not in done.stderr  # the daemon's events are not the simple mode's


def _start_simple(bundle, *options, stdout=subprocess.PIPE):
    """`edgecls run BUNDLE OPTIONS` in the simple mode as a subprocess; stderr piped (text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "edgecls.cli", "run", str(bundle), *map(str, options)],
        cwd=REPO,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_simple_mode_ends_with_one_error_line_when_it_cannot_write_its_lines(tiny_bundle, video):
    """`edgecls run ... | head -2` ends at once with `error: Broken pipe`, exit 1; stdout on a full disk ends with
    `error: No space left on device`, exit 1 (not 0 with the results lost)."""
    process = _start_simple(tiny_bundle, "--source", video, "--loop")
    try:
        for _ in range(2):
            assert process.stdout.readline(), process.stderr.read()[-2000:]
        process.stdout.close()  # the reader leaves, as `head -2` does
        assert process.wait(20) == 1
        err = process.stderr.read()
    finally:
        process.kill()
    assert err.strip().splitlines()[-1] == "error: Broken pipe", err[-2000:]
    assert "Traceback" not in err and '"event": "stopped"' not in err, err[-2000:]
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "edgecls.cli", "run", str(tiny_bundle), "--source", str(video), "--every-frame"],
            cwd=REPO,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert cli_error(done) == "error: No space left on device"


def test_a_hangup_ends_the_simple_mode_as_the_default_signal_action_does(tiny_bundle, video):
    """A dropped SSH session (SIGHUP) ends `edgecls run` in the simple mode, closing the camera; only the daemon
    takes SIGHUP as "reload the model"."""
    process = _start_simple(tiny_bundle, "--source", video, "--loop")
    try:
        assert process.stdout.readline(), process.stderr.read()[-2000:]
        process.send_signal(signal.SIGHUP)
        assert process.wait(10) == -signal.SIGHUP
    finally:
        process.kill()


def test_the_simple_mode_keeps_the_model_it_started_with_when_the_bundle_link_moves(tiny_bundle, video, tmp_path):
    """One results file, one model: a moved `current` link does not reload the simple mode (the daemon does)."""
    import shutil

    shutil.copytree(tiny_bundle, tmp_path / "other")
    current = tmp_path / "current"
    current.symlink_to(tiny_bundle)
    process = _start_simple(current, "--source", video, "--loop")
    lines = []
    try:
        lines.append(json.loads(process.stdout.readline()))
        moved = tmp_path / "current.new"
        moved.symlink_to(tmp_path / "other")
        os.replace(moved, current)
        deadline = time.monotonic() + 3  # the daemon's reloader looks at the link twice a second
        while time.monotonic() < deadline:
            lines.append(json.loads(process.stdout.readline()))
    finally:
        process.kill()
        process.wait(10)
    assert len(lines) > 10 and {line["model"]["bundle"] for line in lines} == {str(tiny_bundle)}


def test_a_stalled_live_source_is_reported_each_timeout_in_the_simple_mode(tiny_bundle):
    """A camera that stops sending: a `{"event": "stall", "detail", "state"}` line on stderr every --timeout
    seconds, as the simple mode always printed, while the source is retried."""
    server = MjpegServer(fps=20, stall_after=10).start()
    process = _start_simple(tiny_bundle, "--source", server.url, "--timeout", "1", stdout=subprocess.DEVNULL)
    err = []
    pump = threading.Thread(target=_pump, args=(process.stderr, err), daemon=True)
    pump.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum('"event": "stall"' in line for line in err) < 3:
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)
        server.kill()
        pump.join(5)
    stalls = [json.loads(line) for line in err if line.startswith('{"event": "stall"')]
    assert len(stalls) >= 3, "".join(err)[-3000:]
    for stall in stalls:
        assert list(stall) == ["event", "detail", "state"], stall
        assert stall["detail"].startswith(f"{server.url}: no frame for 1.0s (state "), stall


def test_each_simple_line_has_the_drop_count_of_the_moment_it_was_written(tiny_bundle, tmp_path):
    """The running drop count is exact: when frame i is the k-th classified, frames 0..i not classified were
    dropped, so the line says at least i + 1 - k (a count refreshed now and then says less)."""
    clip = write_test_video(tmp_path / "long.avi", frames=3000, fps=500.0)
    process = _start_simple(tiny_bundle, "--source", clip, "--fps", "500", "--max-frames", "400")
    lines = []
    try:
        time.sleep(1.5)  # the pipe fills and the writer waits on its reader: frames are dropped meanwhile
        for line in process.stdout:
            lines.append(json.loads(line))
            time.sleep(0.004)  # a slow reader: a few frames dropped per line
        assert process.wait(30) == 0, process.stderr.read()[-2000:]
    finally:
        process.kill()
    assert len(lines) == 400 and lines[-1]["dropped"] > 100, lines[-1]
    short = [
        (k, line["frame"], line["dropped"])
        for k, line in enumerate(lines, 1)
        if line["dropped"] < line["frame"] + 1 - k
    ]
    assert not short, short[:10]


def test_a_file_or_folder_that_cannot_be_opened_is_its_error_alone(tiny_bundle, tmp_path):
    """The simple mode says what it always said (`cannot open source F`, `no images in D`); daemon mode adds the
    file's fix to a file only: a folder without images needs none."""
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"not a video at all" * 100)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        cli_error(run_cli("run", tiny_bundle, "--source", broken, timeout=60)) == f"error: cannot open source {broken}"
    )
    assert cli_error(run_cli("run", tiny_bundle, "--source", empty, timeout=60)) == f"error: no images in {empty}"
    daemon = cli_error(run_cli("run", tiny_bundle, "--source", empty, "--port", "0", timeout=60))
    assert daemon == f"error: no images in {empty}"


BAD_PER_SOURCE = [
    (["--set", "door.rotate=45"], "source door: rotate 45: give 0, 90, 180 or 270"),
    (["--set", "door.max_fps=0"], "source door: max_fps 0: give a positive number of frames per second"),
    (["--set", "door.max_fps=nan"], "source door: max_fps nan: give a positive number of frames per second"),
    (["--set", "door.rotation=90"], "--set door.rotation: unknown key rotation (did you mean rotate?)"),
    (["--set", "door.roi=0.5,0,0.75,1.0"], "source door: roi [0.5, 0, 0.75, 1.0]: x + w = 1.25 goes past"),
    (["--set", "door.threshold=2"], "source door: threshold 2: a score threshold lies between 0 and 1"),
    (["--set", "yard.flip=vertical"], "--set yard.flip: no source is named yard (named sources: door)"),
    (["--set", "door.uri=rtsp://admin:hunter2@cam/s?token=SECRETTOK"], "--set door.uri: a source's URI is given with"),
    (["--set", "door.max_fps=1e-11"], "source door: max_fps 1e-11: give a positive number of frames per second"),
    (["--set", "smooth=99999999999999999999999"], "source door: smooth 99999999999999999999999: give a number of"),
    (["--source", "door=other.avi"], "source name door is given twice: name each source once"),
]


def test_a_bad_per_source_setting_stops_the_start_with_one_line_naming_the_source_and_the_key(
    tiny_bundle, video, tmp_path
):
    """From the command line and from a [sources.NAME] table: `error: ...` alone, exit 1, nothing classified
    (--duration 3 bounds a run that wrongly starts)."""
    for extra, message in BAD_PER_SOURCE:
        done = run_cli("run", tiny_bundle, "--source", f"door={video}", "--duration", "3", *extra, timeout=60)
        assert cli_error(done) == f"error: {message}" or cli_error(done).startswith(f"error: {message}"), extra
        assert done.stdout == "", extra
    config = tmp_path / "run.toml"
    for table, message in [
        ("rotate = 45", "source door: rotate 45: give 0, 90, 180 or 270"),
        ("max_fps = nan", "source door: max_fps nan: give a positive number"),
        ("zoom = 2", "source door: unknown key zoom; known keys: uri, roi, rotate"),
        ("max-fsp = 5", "source door: unknown key max_fsp (did you mean max_fps?)"),
    ]:
        config.write_text(f'bundle = "{tiny_bundle}"\nduration = 3\n[sources.door]\nuri = "{video}"\n{table}\n')
        assert cli_error(run_cli("run", "--config", config, timeout=60)).startswith(f"error: {message}"), table


def test_a_source_list_leaving_config_tables_out_is_a_warning_shown_by_default_naming_the_table_meant(
    tiny_bundle, video, tmp_path
):
    """`--source dor=...` beside a file with [sources.door]: the run goes on, and stderr says at the default log
    level which tables are not run and which one `dor` may mean."""
    config = tmp_path / "t2.toml"
    config.write_text(
        f'bundle = "{tiny_bundle}"\n[sources.door]\nuri = "{video}"\nrotate = 180\n[sources.yard]\nuri = "x"\n'
    )
    done = run_cli(
        "run", "--config", config, "--source", f"dor={video}", "--every-frame", "--max-frames", "1", timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    warning = (
        "WARNING: --source replaces the --config file's sources: door, yard not run; "
        "--source dor=... has no [sources.dor] table: did you mean door?"
    )
    assert warning in done.stderr.splitlines(), done.stderr[-2000:]


def test_a_named_source_is_shown_by_its_name_in_latest_metrics_and_events(tiny_bundle, video):
    """`--source door=URI`: the daemon's started event, /latest, /metrics and /healthz say door, never the URI."""
    process, url, lines = start_cli_daemon(tiny_bundle, f"door={video}", "--set", "door.rotate=180")
    try:
        assert json.loads(next(l for l in lines if l.startswith('{"event": "started"')))["sources"] == ["door"]
        latest = wait_for(lambda: json.loads(http_get(url + "/latest")[1] or "{}"), 30, "a result in /latest")
        metrics = http_get(url + "/metrics")[1].decode()
        health = json.loads(http_get(url + "/healthz")[1])
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(10)
    assert list(latest) == ["door"] and latest["door"]["top1"], latest
    assert 'edgecls_frames_processed_total{source="door"}' in metrics
    assert str(video) not in metrics and "door" in health["sources"], health
    assert code == 0, "".join(lines)[-2000:]


def _results(tiny_bundle, tmp_path, name, *args):
    results = tmp_path / f"{name}.jsonl"
    done = run_cli("run", tiny_bundle, *args, "--every-frame", "--max-frames", "4", "--results", results, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    timing = ("ts", "latency_ms", "frame_age_ms")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in results.read_text().splitlines()]


def test_a_toml_table_and_the_command_line_run_the_same_sources_with_the_same_results(tiny_bundle, tmp_path):
    """The same two cameras set up in a [sources.NAME] table and with --source NAME=URI --set: the same results,
    frame by frame (every frame of a video, so the frames are the same), named door and yard."""
    clip = write_test_video(tmp_path / "clip.avi", frames=8, size=(96, 64))
    config = tmp_path / "run.toml"
    config.write_text(
        f'bundle = "{tiny_bundle}"\n'
        f'[sources.door]\nuri = "{clip}"\nroi = [0.5, 0.0, 0.5, 1.0]\nrotate = 90\nflip = "horizontal"\n'
        f'[sources.yard]\nuri = "{clip}"\nroi = [8, 8, 48, 40]\nthreshold = 0.99\n'
    )
    from_file = _results(tiny_bundle, tmp_path, "file", "--config", config)
    flags = ["door.roi=0.5,0.0,0.5,1.0", "door.rotate=90", "door.flip=horizontal", "yard.roi=8,8,48,40"]
    from_line = _results(
        tiny_bundle,
        tmp_path,
        "line",
        *("--source", f"door={clip}", "--source", f"yard={clip}", "--set", "yard.threshold=0.99"),
        *[word for flag in flags for word in ("--set", flag)],
    )
    assert sorted(from_file, key=str) == sorted(from_line, key=str) and len(from_file) == 8
    assert {row["source"] for row in from_file} == {"door", "yard"}
    assert {row["top1"] for row in from_file if row["source"] == "yard"} == {"unknown"}  # its own threshold
    views = {row["source"]: row.get("view") for row in from_file}  # the settings reached the view: 96x64 frames
    assert views == {
        "door": {"roi": [48, 0, 48, 64], "rotate": 90, "flip": "horizontal"},
        "yard": {"roi": [8, 8, 48, 40], "rotate": 0, "flip": "none"},
    }, views


def test_an_existing_file_named_like_name_equals_uri_is_read_as_the_file(tiny_bundle, video, tmp_path):
    """`--source file=clip.avi` where that file exists: the file, not a source named `file` reading clip.avi."""
    import shutil

    shutil.copy(video, tmp_path / "file=clip.avi")
    done = run_cli(
        "run", tiny_bundle, "--source", "file=clip.avi", "--every-frame", "--max-frames", "2", cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line)["frame"] for line in done.stdout.splitlines()] == [0, 1]
