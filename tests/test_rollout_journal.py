"""edgecls.devices.rollout's journal in use: a rollout interrupted (Ctrl-C) resumes from it, and an unfinished rollout
of another bundle refuses a new one until `--abandon`. Devices are local folders without daemons (not watched), so
the steps run at once; tests/test_rollout.py watches real daemons."""

from __future__ import annotations

import json
import os
import time

import pytest

from edgecls.devices.flash import FlashOptions
from edgecls.devices.rollout.plan import parse_criteria
from edgecls.devices.rollout.run import RolloutOptions, rollout
from edgecls.runtime.errors import EdgeclsError
from tests.conftest import cli_error, run_cli
from tests.test_flash import PROFILE, bundles  # noqa: F401  (fixture)


@pytest.fixture
def fleet(tmp_path):
    path = tmp_path / "fleet.txt"
    path.write_text("".join(f"{tmp_path / f'dev{i}'} name=dev{i}\n" for i in range(4)))
    return path


def _interrupt_at(prefix: str):
    def say(message: str) -> None:
        if message.startswith(prefix):
            raise KeyboardInterrupt  # what Ctrl-C raises in the host process

    return say


def _events(path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_rollout_interrupted_after_journaling_flashing_resumes_and_flashes_those_devices(bundles, fleet, tmp_path):
    journal = tmp_path / "j.jsonl"
    options = RolloutOptions(canary="1", waves="50%,100%", watch_s=0, journal=str(journal))
    with pytest.raises(KeyboardInterrupt):
        rollout(
            bundles["a"],
            fleet,
            FlashOptions(profile=PROFILE),
            RolloutOptions(**{**vars(options), "say": _interrupt_at("wave 1: flashing")}),
        )
    cut = _events(journal)
    assert [e["step"] for e in cut][-2:] == ["flashing", "flashing"] and not (tmp_path / "dev1" / "current").exists()
    said = []
    done = rollout(
        bundles["a"], fleet, FlashOptions(profile=PROFILE), RolloutOptions(**{**vars(options), "say": said.append})
    )
    assert done.result == "promoted" and any("resuming" in line for line in said)
    events = _events(journal)
    assert [e["device"] for e in events if e["step"] == "flashed"] == ["dev0", "dev1", "dev2", "dev3"]
    assert all((tmp_path / f"dev{i}" / "current").is_symlink() for i in range(4))
    assert [e["step"] for e in events].count("planned") == 1 and events[-1]["result"] == "promoted"


def test_an_unfinished_rollout_of_another_bundle_refuses_a_new_one_until_abandoned(
    bundles, fleet, tmp_path, monkeypatch
):
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"name": "test-cpu", "artifacts": ["tflite-int8"], "threads": 1}))
    monkeypatch.setenv("XDG_STATE_HOME", state["XDG_STATE_HOME"])  # the in-process rollout journals there too
    with pytest.raises(KeyboardInterrupt):
        rollout(
            bundles["a"],
            fleet,
            FlashOptions(profile=PROFILE),
            RolloutOptions(canary="1", watch_s=0, say=_interrupt_at("wave 1")),
        )
    args = ("flash", bundles["b"], "--targets", fleet, "--profile", profile, "--canary", "1", "--watch", "0s")
    refused = run_cli(*args, env=state)
    line = cli_error(refused)
    assert "unfinished rollout of" in line and "--abandon" in line and str(bundles["a"]) in line, line
    assert not (tmp_path / "dev1" / "current").exists()  # nothing of b was flashed
    done = run_cli(*args, "--abandon", env=state)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "abandoned the unfinished rollout" in done.stderr
    journals = sorted((tmp_path / "state" / "edgecls" / "rollouts").glob("*/*.jsonl"))
    results = sorted(_events(p)[-1].get("result") for p in journals)
    assert results == ["abandoned", "promoted"], results


def test_a_staged_rollout_without_a_fleet_file_is_refused_in_one_line(bundles, tmp_path):
    line = cli_error(run_cli("flash", bundles["a"], str(tmp_path / "dev"), "--canary", "1"))
    assert "--targets FLEET" in line


def test_a_bundle_that_cannot_be_loaded_is_refused_before_anything_is_journaled(fleet, tmp_path):
    (tmp_path / "broken").mkdir()
    journal = tmp_path / "j.jsonl"
    line = cli_error(run_cli("flash", tmp_path / "broken", "--targets", fleet, "--canary", "1", "--journal", journal))
    assert "broken" in line and not journal.exists(), line


def test_a_device_flashed_but_killed_before_its_flashed_line_is_rolled_back_when_its_wave_fails(
    bundles, tmp_path, monkeypatch
):
    from edgecls.devices.flash import flash
    from edgecls.devices.rollout.journal import Journal

    (tmp_path / "dev1").write_text("not a device folder")  # dev1's flash fails, so the canaries' wave fails
    fleet = tmp_path / "fleet.txt"
    fleet.write_text(f"{tmp_path / 'dev0'} name=dev0\n{tmp_path / 'dev1'} name=dev1\n")
    assert flash(bundles["a"], [str(tmp_path / "dev0")], FlashOptions(profile=PROFILE))[0].ok
    old = (tmp_path / "dev0" / "current").readlink()
    journal = tmp_path / "j.jsonl"
    options = RolloutOptions(canary="2", watch_s=0, journal=str(journal))
    append = Journal.append

    def killed_at_flashed(self, step, **fields):
        if step == "flashed":
            raise KeyboardInterrupt  # Ctrl-C after the wave's flash, before its first "flashed" line
        return append(self, step, **fields)

    monkeypatch.setattr(Journal, "append", killed_at_flashed)
    with pytest.raises(KeyboardInterrupt):
        rollout(bundles["b"], fleet, FlashOptions(profile=PROFILE), options)
    monkeypatch.setattr(Journal, "append", append)
    assert (tmp_path / "dev0" / "current").readlink() != old  # b is installed, the journal does not say so
    done = rollout(bundles["b"], fleet, FlashOptions(profile=PROFILE), options)
    assert done.result == "rolled back"
    assert (tmp_path / "dev0" / "current").readlink() == old, done.lines
    assert any(line.startswith("dev0:") and line.endswith("rolled back") for line in done.lines), done.lines


def test_two_devices_naming_one_daemon_however_spelled_are_refused_before_anything_is_journaled(bundles, tmp_path):
    fleet = tmp_path / "fleet.txt"
    fleet.write_text(
        f"{tmp_path / 'dev0'} name=dev0 metrics=http://127.0.0.1:9100\n"
        f"{tmp_path / 'dev1'} name=dev1 metrics=http://LocalHost:09100\n"
    )
    journal = tmp_path / "j.jsonl"
    with pytest.raises(EdgeclsError, match="dev0.*dev1.*both have metrics at"):
        rollout(
            bundles["a"],
            fleet,
            FlashOptions(profile=PROFILE),
            RolloutOptions(canary="1", watch_s=0, journal=str(journal)),
        )
    assert not journal.exists() and not (tmp_path / "dev0").exists()


def test_a_second_rollout_of_the_same_fleet_while_one_runs_is_refused_in_one_line(bundles, tmp_path):
    import socket
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens: the first rollout's baseline lasts its 60 s
    fleet = tmp_path / "fleet.txt"
    fleet.write_text(f"{tmp_path / 'dev0'} name=dev0 metrics=http://127.0.0.1:{port}\n")
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    args = ["flash", str(bundles["a"]), "--targets", str(fleet), "--profile", str(tmp_path / "p.json")]
    args += ["--canary", "1", "--baseline", "60s", "--watch", "1s"]
    (tmp_path / "p.json").write_text(json.dumps({"name": "test-cpu", "artifacts": ["tflite-int8"], "threads": 1}))
    log = tmp_path / "first.log"
    with open(log, "wb") as err:
        first = subprocess.Popen(
            [sys.executable, "-m", "edgecls.cli", *args], cwd=REPO, stderr=err, env={**os.environ, **state}
        )
    try:
        deadline = time.monotonic() + 60
        while "measuring every watched device" not in log.read_text():
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        line = cli_error(run_cli(*args, env=state))
        assert "another rollout of" in line and str(fleet) in line, line
        line = cli_error(run_cli(*args, "--journal", tmp_path / "mine.jsonl", env=state))
        assert "another rollout of" in line, line
    finally:
        first.kill()
        first.wait()
    assert not (tmp_path / "dev0").exists()


@pytest.mark.parametrize("mine", ["spelled another way", "--journal"])
def test_an_unfinished_rollout_refuses_another_however_the_fleet_is_spelled_or_wherever_its_journal_is(
    bundles, fleet, tmp_path, monkeypatch, mine
):
    from edgecls.devices.rollout.journal import last_steps

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "sub").mkdir()
    journal = str(tmp_path / "jr" / "mine.jsonl") if mine == "--journal" else None
    with pytest.raises(KeyboardInterrupt):
        rollout(
            bundles["a"],
            fleet,
            FlashOptions(profile=PROFILE),
            RolloutOptions(canary="1", watch_s=0, journal=journal, say=_interrupt_at("wave 1")),
        )
    other = tmp_path / "sub" / ".." / "fleet.txt" if mine != "--journal" else fleet
    with pytest.raises(EdgeclsError, match="unfinished rollout of"):
        rollout(bundles["b"], other, FlashOptions(profile=PROFILE), RolloutOptions(canary="1", watch_s=0))
    assert not (tmp_path / "dev1" / "current").exists()
    assert last_steps(other)["dev1"][1].startswith("flashing")  # what `edgecls status --targets` shows


def test_a_rollback_cut_off_after_its_switch_is_not_repeated_on_the_re_run(bundles, tmp_path, monkeypatch):
    from edgecls.devices.flash import flash
    from edgecls.devices.rollout.journal import Journal

    (tmp_path / "dev1").write_text("not a device folder")  # dev1's flash fails, so the canaries' wave fails
    fleet = tmp_path / "fleet.txt"
    fleet.write_text(f"{tmp_path / 'dev0'} name=dev0\n{tmp_path / 'dev1'} name=dev1\n")
    assert flash(bundles["a"], [str(tmp_path / "dev0")], FlashOptions(profile=PROFILE))[0].ok
    old = (tmp_path / "dev0" / "current").readlink()
    options = RolloutOptions(canary="2", watch_s=0, journal=str(tmp_path / "j.jsonl"))
    append = Journal.append

    def killed_at_rolled_back(self, step, **fields):
        if step == "rolled back":
            raise KeyboardInterrupt  # dev0 was switched back; its "rolled back" line never written
        return append(self, step, **fields)

    monkeypatch.setattr(Journal, "append", killed_at_rolled_back)
    with pytest.raises(KeyboardInterrupt):
        rollout(bundles["b"], fleet, FlashOptions(profile=PROFILE), options)
    monkeypatch.setattr(Journal, "append", append)
    assert (tmp_path / "dev0" / "current").readlink() == old
    done = rollout(bundles["b"], fleet, FlashOptions(profile=PROFILE), options)
    assert done.result == "rolled back" and (tmp_path / "dev0" / "current").readlink() == old, done.lines


def test_rollout_lines_escape_control_characters_that_device_replies_carry(bundles, tmp_path):
    evil = tmp_path / "cam\x1b]0;pwned\x07\x1b[2J"
    evil.write_text("not a device folder")  # its flash fails, and the reason names its path
    fleet = tmp_path / "fleet.txt"
    fleet.write_text(f"{evil} name=dev0\n")
    (tmp_path / "p.json").write_text(json.dumps({"name": "test-cpu", "artifacts": ["tflite-int8"], "threads": 1}))
    args = ("flash", bundles["a"], "--targets", fleet, "--profile", tmp_path / "p.json", "--canary", "1")
    done = run_cli(*args, "--watch", "0s", "--journal", tmp_path / "j.jsonl", env={"XDG_STATE_HOME": str(tmp_path)})
    assert done.returncode == 1 and "rolled back" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "\\x1b]0;pwned\\x07" in done.stdout + done.stderr
    assert "\x1b" not in done.stdout + done.stderr and "\x07" not in done.stdout + done.stderr


def test_a_later_wave_that_fails_names_the_devices_its_earlier_waves_left_on_the_new_bundle(bundles, tmp_path):
    from edgecls.devices.flash import flash

    (tmp_path / "dev3").write_text("not a device folder")  # the last wave's flash fails there
    fleet = tmp_path / "fleet.txt"
    fleet.write_text("".join(f"{tmp_path / f'dev{i}'} name=dev{i}\n" for i in range(4)))
    assert all(r.ok for r in flash(bundles["a"], [str(tmp_path / f"dev{i}") for i in range(3)], FlashOptions()))
    options = RolloutOptions(canary="1", waves="1,100%", watch_s=0, journal=str(tmp_path / "j.jsonl"))
    done = rollout(bundles["b"], fleet, FlashOptions(profile=PROFILE), options)
    assert done.result == "rolled back"
    assert "still on the new bundle (their waves passed): dev0, dev1" in " ".join(done.lines), done.lines


def test_a_device_added_to_the_fleet_before_a_resume_is_named_as_not_flashed(bundles, fleet, tmp_path):
    journal = tmp_path / "j.jsonl"
    options = RolloutOptions(canary="1", waves="50%,100%", watch_s=0, journal=str(journal))
    with pytest.raises(KeyboardInterrupt):
        rollout(
            bundles["a"],
            fleet,
            FlashOptions(profile=PROFILE),
            RolloutOptions(**{**vars(options), "say": _interrupt_at("wave 1: flashing")}),
        )
    with open(fleet, "a") as out:
        out.write(f"{tmp_path / 'late'} name=late\n")
    done = rollout(bundles["a"], fleet, FlashOptions(profile=PROFILE), options)
    assert done.result == "promoted" and not (tmp_path / "late").exists()
    assert not any("every device" in line for line in done.lines), done.lines
    assert any(line.startswith("not in this rollout") and "late" in line for line in done.lines), done.lines


@pytest.mark.parametrize(
    "given", [("--waves", "50%,100%"), ("--watch-waves", "5m"), ("--promote-if", "fps>=0.9"), ("--abandon",)]
)
def test_a_rollout_option_without_canary_or_watch_is_refused_instead_of_flashing_every_device(
    bundles, fleet, tmp_path, given
):
    line = cli_error(run_cli("flash", bundles["a"], "--targets", fleet, "--profile", _profile(tmp_path), *given))
    assert given[0] in line and "--canary" in line, line
    assert not any((tmp_path / f"dev{i}").exists() for i in range(4))


def _profile(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "test-cpu", "artifacts": ["tflite-int8"], "threads": 1}))
    return path


@pytest.mark.parametrize("text", ["my notes, no final newline", '{"a": 1}\n', "[1, 2]\n", '{"step": "planned"}\nnotes'])
def test_a_journal_option_naming_a_file_that_is_not_a_journal_is_refused_and_the_file_kept(
    bundles, fleet, tmp_path, text
):
    notes = tmp_path / "notes.txt"
    notes.write_text(text)
    options = RolloutOptions(canary="1", watch_s=0, journal=str(notes))
    with pytest.raises(EdgeclsError, match="not a rollout journal") as caught:
        rollout(bundles["a"], fleet, FlashOptions(profile=PROFILE), options)
    assert str(notes) in str(caught.value) and "\n" not in str(caught.value)
    assert notes.read_text() == text and not (tmp_path / "dev0").exists()


def test_a_token_protected_daemon_is_watched_with_token_file_and_refused_in_one_line_without(
    bundles, shapes_folder, tmp_path, monkeypatch
):
    from edgecls.devices.flash import flash
    from tests.daemon_helpers import start_cli_daemon

    monkeypatch.delenv("EDGECLS_TOKEN", raising=False)
    assert flash(bundles["a"], [str(tmp_path / "dev0")], FlashOptions(profile=PROFILE))[0].ok
    old = (tmp_path / "dev0" / "current").readlink()
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    daemon, url, _ = start_cli_daemon(tmp_path / "dev0" / "current", shapes_folder, "--fps", "8", "--token-file", token)
    try:
        fleet = tmp_path / "fleet.txt"
        fleet.write_text(f"{tmp_path / 'dev0'} name=dev0 metrics={url}\n")
        journal = tmp_path / "j.jsonl"
        loose = parse_criteria("fps>=0.3,confidence>=-1")  # judged on the token, not on 3 s of a busy machine
        options = RolloutOptions(canary="1", watch_s=3, baseline_s=3, criteria=loose, journal=str(journal))
        with pytest.raises(EdgeclsError, match="baseline counted no frames.*401.*--token-file") as caught:
            rollout(bundles["b"], fleet, FlashOptions(profile=PROFILE), options)
        assert "\n" not in str(caught.value) and (tmp_path / "dev0" / "current").readlink() == old
        said: list = []
        options = RolloutOptions(**{**vars(options), "token_file": str(token), "say": said.append})
        done = rollout(bundles["b"], fleet, FlashOptions(profile=PROFILE), options)
        assert done.result == "promoted", (done.lines, said)
        assert (tmp_path / "dev0" / "current").readlink() != old
        assert "s3cret" not in journal.read_text() and not any("s3cret" in line for line in said + done.lines)
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)


def test_a_prometheus_watch_shorter_than_four_scrapes_is_refused_and_samples_carry_scrape_times(
    bundles, shapes_folder, tmp_path
):
    from edgecls.devices.flash import flash
    from edgecls.devices.rollout.watch import PrometheusReader
    from tests.daemon_helpers import start_cli_daemon, wait_for
    from tests.prometheus_server import PrometheusServer

    assert flash(bundles["a"], [str(tmp_path / "dev0")], FlashOptions(profile=PROFILE))[0].ok
    daemon, url, _ = start_cli_daemon(tmp_path / "dev0" / "current", shapes_folder, "--fps", "8")
    address = url.split("//", 1)[1].rstrip("/")
    config = "global: {scrape_interval: 3s}\nscrape_configs:\n  - job_name: edgecls\n"
    config += f"    static_configs: [{{targets: ['{address}']}}]\n"
    server = PrometheusServer(tmp_path / "prometheus", config).start()
    try:
        wait_for(lambda: server.query(f'edgecls_frames_processed_total{{instance="{address}"}}'), 30, "a scrape")
        fleet = tmp_path / "fleet.txt"
        fleet.write_text(f"{tmp_path / 'dev0'} name=dev0 metrics={url}\n")
        options = RolloutOptions(canary="1", watch_s=8, prometheus=server.url, journal=str(tmp_path / "j.jsonl"))
        with pytest.raises(EdgeclsError, match="every 3 s.*--watch 8 s.*at least 4 scrapes"):
            rollout(bundles["b"], fleet, FlashOptions(profile=PROFILE), options)
        assert not (tmp_path / "j.jsonl").exists()
        first = PrometheusReader(server.url).sample(address)
        time.sleep(3.5)
        later = PrometheusReader(server.url).sample(address)
        scrapes = (later.at - first.at) / 3  # Prometheus's scrape times, 3 s apart, not this host's clock
        assert first.healthy and round(scrapes) in (1, 2) and abs(scrapes - round(scrapes)) < 0.05, (first, later)
    finally:
        server.stop()
        daemon.terminate()
        daemon.wait(timeout=20)
