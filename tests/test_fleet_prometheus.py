"""devices/fleet_prometheus.py and `edgecls fleet prometheus-targets`: Prometheus file-based service discovery from
the fleet file, written atomically, checked by promtool and followed by a real Prometheus without a restart."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading

import pytest

from edgecls.runtime.errors import EdgeclsError
from tests.conftest import REPO, cli_error, require_tool, run_cli

EXAMPLE = REPO / "devices" / "prometheus" / "prometheus.yml"


def fleet_file(tmp_path, *lines) -> str:
    path = tmp_path / "fleet.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def profile_with_health(tmp_path, port=8080):
    data = json.loads((REPO / "devices" / "profiles" / "desktop-cpu.json").read_text())
    data.update(name="cam-box", health_url=f"http://127.0.0.1:{port}/healthz")
    path = tmp_path / "cam-box.json"
    path.write_text(json.dumps(data))
    return path


def test_each_device_with_a_metrics_url_becomes_a_target_labelled_with_its_name(tmp_path):
    from edgecls.devices.fleet import read_fleet
    from edgecls.devices.fleet_prometheus import target_groups

    profile = profile_with_health(tmp_path, port=9000)
    done = target_groups(
        read_fleet(
            fleet_file(
                tmp_path,
                "# the fleet",
                "pi@10.0.0.5 name=door metrics=http://10.0.0.5:8080",
                f"pi@10.0.0.6 {profile} name=yard",  # its profile's health_url port, on the target's host
                "./bench-box name=bench",  # nothing says where its daemon listens
                "pi@10.0.0.7 name=gate metrics=https://10.0.0.7:8443",
            )
        )
    )
    assert done.groups == [
        {"targets": ["10.0.0.5:8080"], "labels": {"device": "door"}},
        {"targets": ["10.0.0.6:9000"], "labels": {"device": "yard", "profile": "cam-box"}},
        {"targets": ["10.0.0.7:8443"], "labels": {"device": "gate", "__scheme__": "https"}},
    ]
    assert done.unwatched == ["bench"]


def test_two_devices_naming_the_same_metrics_address_are_refused_naming_both(tmp_path):
    from edgecls.devices.fleet import read_fleet
    from edgecls.devices.fleet_prometheus import target_groups

    devices = read_fleet(
        fleet_file(
            tmp_path, "./a name=door metrics=http://127.0.0.1:8080", "./b name=yard metrics=http://127.0.0.1:8080"
        )
    )
    with pytest.raises(EdgeclsError, match=r"'door' and 'yard' both have metrics at 127.0.0.1:8080.*fix metrics="):
        target_groups(devices)


def test_the_command_writes_the_targets_and_names_each_device_left_out(tmp_path):
    fleet = fleet_file(tmp_path, "./a name=door metrics=http://127.0.0.1:8080", "./b name=yard")
    out = tmp_path / "sd" / "edgecls-targets.json"
    done = run_cli("fleet", "prometheus-targets", fleet, "--out", out)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == [{"targets": ["127.0.0.1:8080"], "labels": {"device": "door"}}]
    assert (
        done.stderr.strip()
        == "yard: not scraped: its line names no metrics=http://HOST:PORT (nor a profile with a health_url)"
    )
    assert "1 target(s)" in done.stdout
    # run again after the fleet file changed: the file is replaced
    fleet = fleet_file(
        tmp_path, "./a name=door metrics=http://127.0.0.1:8080", "./b name=yard metrics=http://127.0.0.1:8081"
    )
    assert run_cli("fleet", "prometheus-targets", fleet, "--out", out).returncode == 0
    assert [g["labels"]["device"] for g in json.loads(out.read_text())] == ["door", "yard"]


def test_a_fleet_file_without_a_profile_takes_the_metrics_port_from_the_device_option(tmp_path):
    profile = profile_with_health(tmp_path, port=8123)
    out = tmp_path / "targets.json"
    done = run_cli(
        "fleet", "prometheus-targets", fleet_file(tmp_path, "pi@10.0.0.9 name=door"), "--out", out, "--device", profile
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())[0]["targets"] == ["10.0.0.9:8123"]


def test_a_file_at_out_that_is_not_a_targets_list_is_left_alone(tmp_path):
    fleet = fleet_file(tmp_path, "./a name=door metrics=http://127.0.0.1:8080")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": "keep me"}\n')
    error = cli_error(run_cli("fleet", "prometheus-targets", fleet, "--out", notes))
    assert "is not a Prometheus targets file" in error and "left alone" in error
    assert notes.read_text() == '{"mine": "keep me"}\n'
    error = cli_error(run_cli("fleet", "prometheus-targets", fleet, "--out", tmp_path))
    assert "is a folder" in error


def test_a_targets_list_written_by_hand_for_other_jobs_is_left_alone(tmp_path):
    """A file_sd list is ours only when every group carries labels.device: a user's list for node exporters
    at --out is refused, not replaced."""
    fleet = fleet_file(tmp_path, "./a name=door metrics=http://127.0.0.1:8080")
    theirs = tmp_path / "node-targets.json"
    text = '[{"targets": ["10.0.0.1:9100"], "labels": {"job": "node"}}]\n'
    theirs.write_text(text)
    error = cli_error(run_cli("fleet", "prometheus-targets", fleet, "--out", theirs))
    assert "not a Prometheus targets file written by edgecls" in error and "left alone" in error
    assert theirs.read_text() == text
    mixed = tmp_path / "mixed.json"  # one of ours beside one of theirs: still theirs too
    mixed.write_text('[{"targets": ["a:1"], "labels": {"device": "door"}}, {"targets": ["10.0.0.1:9100"]}]')
    assert "left alone" in cli_error(run_cli("fleet", "prometheus-targets", fleet, "--out", mixed))
    ours = tmp_path / "ours.json"
    ours.write_text('[{"targets": ["10.0.0.9:1"], "labels": {"device": "old"}}]')
    assert run_cli("fleet", "prometheus-targets", fleet, "--out", ours).returncode == 0
    assert json.loads(ours.read_text()) == [{"targets": ["127.0.0.1:8080"], "labels": {"device": "door"}}]


def test_a_symlinked_out_is_written_through_to_the_file_it_points_at(tmp_path):
    """/etc/prometheus/edgecls-targets.json -> /srv/targets.json: the link stays, its target gets the new list
    (replacing the link by a regular file left the file Prometheus might read through the link stale)."""
    fleet = fleet_file(tmp_path, "./a name=door metrics=http://127.0.0.1:8080")
    real = tmp_path / "srv" / "targets.json"
    real.parent.mkdir()
    real.write_text('[{"targets": ["10.0.0.9:1"], "labels": {"device": "old"}}]')
    link = tmp_path / "edgecls-targets.json"
    link.symlink_to(real)
    assert run_cli("fleet", "prometheus-targets", fleet, "--out", link).returncode == 0
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert json.loads(real.read_text()) == [{"targets": ["127.0.0.1:8080"], "labels": {"device": "door"}}]
    notes = tmp_path / "notes.json"  # a link to a file that is not ours is refused like the file
    notes.write_text("keep me")
    other = tmp_path / "other.json"
    other.symlink_to(notes)
    assert "left alone" in cli_error(run_cli("fleet", "prometheus-targets", fleet, "--out", other))
    assert notes.read_text() == "keep me" and other.is_symlink()


@pytest.mark.parametrize(
    "first, second",
    [
        ("http://127.0.0.1:8080", "http://localhost:8080"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:08080"),
        ("http://LOCALHOST:8080", "http://[::1]:8080"),
        ("http://Cam.Local:8080", "http://cam.local.:8080"),
        ("http://[::1]:8080", "http://[0:0:0:0:0:0:0:1]:8080"),
    ],
)
def test_two_spellings_of_one_metrics_address_are_refused_as_the_same_daemon(tmp_path, first, second):
    from edgecls.devices.fleet import read_fleet
    from edgecls.devices.fleet_prometheus import target_groups

    devices = read_fleet(fleet_file(tmp_path, f"./a name=door metrics={first}", f"./b name=yard metrics={second}"))
    with pytest.raises(EdgeclsError, match=r"'door' and 'yard' both have metrics at .*fix metrics="):
        target_groups(devices)


def test_a_metrics_port_zero_is_refused_naming_the_device(tmp_path):
    out = tmp_path / "targets.json"
    fleet = fleet_file(tmp_path, "./a name=door metrics=http://10.0.0.1:0")
    error = cli_error(run_cli("fleet", "prometheus-targets", fleet, "--out", out))
    assert "'door'" in error and "port 0" in error and "metrics=" in error
    assert not out.exists()


def test_the_target_names_the_port_as_a_number(tmp_path):
    from edgecls.devices.fleet import read_fleet
    from edgecls.devices.fleet_prometheus import target_groups

    done = target_groups(read_fleet(fleet_file(tmp_path, "./a name=door metrics=http://[::1]:08080")))
    assert done.groups == [{"targets": ["[::1]:8080"], "labels": {"device": "door"}}]


@pytest.mark.parametrize(
    "lines, complaint",
    [
        (("./a name=door",), "no device in"),
        (("./a name=door metrics=ftp://x:1",), "is not http://HOST:PORT"),
        (("# nothing yet",), "names no device"),
    ],
)
def test_a_fleet_prometheus_cannot_scrape_is_refused_in_one_line(tmp_path, lines, complaint):
    out = tmp_path / "targets.json"
    error = cli_error(run_cli("fleet", "prometheus-targets", fleet_file(tmp_path, *lines), "--out", out))
    assert complaint in error
    assert not out.exists()


def test_a_reader_never_sees_a_half_written_targets_file(tmp_path):
    """Prometheus re-reads the file on every change: each read must be a whole JSON list, old or new."""
    from edgecls.devices.fleet_prometheus import write_targets

    small = fleet_file(tmp_path, "./a name=door metrics=http://127.0.0.1:8080")
    big_file = tmp_path / "big.txt"
    big_file.write_text("".join(f"./d{i} name=dev{i} metrics=http://127.0.0.1:{9000 + i}\n" for i in range(300)))
    out = tmp_path / "targets.json"
    write_targets(small, out)
    seen, bad, stop = set(), [], threading.Event()

    def read():
        while not stop.is_set():
            text = out.read_text()
            try:
                seen.add(len(json.loads(text)))
            except ValueError:
                bad.append(len(text))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(60):
            write_targets(big_file if i % 2 else small, out)
    finally:
        stop.set()
        reader.join()
    assert not bad, f"{len(bad)} partial reads"
    assert seen == {1, 300}


def test_promtool_check_config_passes_on_the_example_with_generated_targets(tmp_path):
    promtool = require_tool("promtool", package="prometheus")
    for name in ("prometheus.yml", "edgecls-rules.yml"):
        shutil.copy(EXAMPLE.with_name(name), tmp_path / name)
    fleet = fleet_file(
        tmp_path, "./a name=door metrics=http://127.0.0.1:8080", "./b name=yard metrics=http://127.0.0.1:8081"
    )
    assert run_cli("fleet", "prometheus-targets", fleet, "--out", tmp_path / "edgecls-targets.json").returncode == 0
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "SUCCESS: prometheus.yml is valid" in output and "SUCCESS: 8 rules found" in output
    assert "WARNING" not in output  # the targets file is found where the example's job looks


def test_a_running_prometheus_follows_the_regenerated_targets_file_without_a_restart(tiny_bundle, tmp_path):
    from tests.daemon_helpers import start_cli_daemon, wait_for, write_test_video
    from tests.prometheus_server import PrometheusServer

    clip = write_test_video(tmp_path / "clip.avi", frames=20)
    config = EXAMPLE.read_text().replace("interval: 15s", "interval: 1s")
    prometheus = PrometheusServer(tmp_path / "prometheus", config)
    shutil.copy(EXAMPLE.with_name("edgecls-rules.yml"), prometheus.folder)
    out = prometheus.folder / "edgecls-targets.json"
    daemons = []
    try:
        for _ in range(2):
            daemons.append(start_cli_daemon(tiny_bundle, clip, "--fps", 5))
        (door, door_url, _), (yard, yard_url, _) = daemons
        fleet = fleet_file(tmp_path, f"./a name=door metrics={door_url}")
        assert run_cli("fleet", "prometheus-targets", fleet, "--out", out).returncode == 0
        prometheus.start()

        def scraped():
            up = {r["metric"]["device"]: r["value"][1] for r in prometheus.query('up{job="edgecls"}')}
            frames = prometheus.query("edgecls_frames_processed_total > 0")
            return up, {r["metric"]["device"] for r in frames}

        wait_for(lambda: scraped() == ({"door": "1"}, {"door"}), 60, "door scraped")
        fleet = fleet_file(tmp_path, f"./a name=door metrics={door_url}", f"./b name=yard metrics={yard_url}")
        assert run_cli("fleet", "prometheus-targets", fleet, "--out", out).returncode == 0
        wait_for(lambda: scraped() == ({"door": "1", "yard": "1"}, {"door", "yard"}), 90, "yard scraped too")
        targets = {t["labels"]["device"]: t["scrapeUrl"] for t in prometheus.targets()}
        assert targets == {"door": f"{door_url}/metrics", "yard": f"{yard_url}/metrics"}
        # a device whose daemon stops stays a target: up 0, still a value of the dashboard's device variable
        yard.terminate()
        yard.wait(timeout=20)
        wait_for(lambda: scraped()[0] == {"door": "1", "yard": "0"}, 60, "yard down")
        assert sorted(prometheus.label_values("device", 'up{job="edgecls"}')) == ["door", "yard"]
    finally:
        prometheus.stop()
        for process, _, _ in daemons:
            process.terminate()
            process.wait(timeout=20)
