"""`edgecls search` end to end on the shapes fixture against this machine (profile desktop-cpu): real training,
real int8 conversion through the gate, real measurements with the bench's worker.

One module-scoped search is run by two concurrent worker processes sharing one --out; most tests read it. The
kill -9 test runs its own search. Tiny: simple nets at 16 px, 1 epoch, 4 trials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_error, run_cli

TRIALS = 4
BUDGET_MS = 50.0  # every tiny simple net meets it on any machine: the chosen one must be the most accurate
ARGS = ("--device", "desktop-cpu", "--models", "simple", "--sizes", "16", "--epochs", "1", "--max-drop", "100")


def _search_command(data, out, trials=TRIALS, budget=BUDGET_MS) -> list:
    return [sys.executable, "-m", "edgecls.cli", "search", "--data", str(data), "--out", str(out), "--trials",
            str(trials), "--max-latency-ms", str(budget), *ARGS]  # fmt: skip


def _trials(out: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted((out / "trials").glob("*/trial.json"))]


def _stage_events(out: Path) -> list:
    events = []
    for log in sorted((out / "trials").glob("*/stages.log")):
        events += [dict(json.loads(line), trial=log.parent.name) for line in log.read_text().splitlines()]
    return events


@pytest.fixture(scope="module")
def shared_search(tmp_path_factory, shapes_folder):
    """Two worker processes started together on one --out; returns (out, [CompletedProcess-like results])."""
    out = tmp_path_factory.mktemp("search") / "out"
    procs = [
        subprocess.Popen(_search_command(shapes_folder, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    return out, results


def test_two_workers_on_one_out_finish_exactly_the_trials_asked_each_number_once(shared_search):
    out, results = shared_search
    assert all(rc == 0 for rc, _, _ in results), [err[-3000:] for _, _, err in results]
    trials = _trials(out)
    assert [t["number"] for t in trials] == list(range(TRIALS))
    assert len({t["optuna_number"] for t in trials}) == TRIALS
    assert all(t["status"] == "meets-budget" for t in trials), [t["reason"] for t in trials]
    assert len({json.dumps(t["candidate"]["model_options"], sort_keys=True) for t in trials}) == TRIALS
    # the warm start: edgecls train's default first (it meets 50 ms, so no scaled-down versions), then TPE
    assert trials[0]["origin"] == "warm start: edgecls train's default", trials[0]
    assert trials[0]["candidate"]["model_options"] == {"widths": [16, 32, 64, 128], "convs_per_block": 2}
    assert [t["origin"] for t in trials[1:]] == ["sampled by TPE"] * (TRIALS - 1)
    assert sum("trial #0 (warm start: edgecls train's default)" in err for _, _, err in results) == 1
    # exactly one worker wrote the report; the other said who would
    reported = [err for _, _, err in results if "chosen: #" in err]
    assert len(reported) == 1, [err[-1500:] for _, _, err in results]


def test_measurements_of_two_workers_never_overlap_on_the_device(shared_search):
    out, _ = shared_search
    spans = sorted((t["measurement"]["started"], t["measurement"]["ended"]) for t in _trials(out))
    assert len(spans) == TRIALS
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, spans


def test_no_candidate_of_two_workers_is_trained_twice(shared_search):
    out, _ = shared_search
    done = [e["trial"] for e in _stage_events(out) if e["event"] == "train done"]
    assert sorted(done) == [f"{n:04d}" for n in range(TRIALS)]


def test_the_chosen_bundle_meets_the_budget_loads_in_the_runtime_and_is_the_chosen_trials(shared_search, shapes_folder):
    from edgecls.runtime.classifier import Classifier

    out, _ = shared_search
    table = json.loads((out / "trials.json").read_text())
    chosen = next(t for t in table["trials"] if t["number"] == table["chosen"])
    assert chosen["measurement"]["latency_ms"] <= BUDGET_MS
    assert chosen["val_accuracy"] == max(t["val_accuracy"] for t in table["trials"] if t["status"] == "meets-budget")
    trial_dir = out / "trials" / f"{chosen['number']:04d}"
    assert (out / "bundle" / "manifest.json").read_bytes() == (trial_dir / "bundle" / "manifest.json").read_bytes()
    assert (out / "run" / "model.keras").read_bytes() == (trial_dir / "run" / "model.keras").read_bytes()
    classifier = Classifier(out / "bundle")
    assert classifier.artifact.name == chosen["measurement"]["artifact"]
    image = next((shapes_folder / "circle").iterdir())
    assert classifier.classify_file(image).label in ("circle", "square", "triangle")
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == TRIALS + 1
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_search_that_found_no_model_within_the_budget_says_the_fastest_and_still_writes_the_table(
    shared_search, tmp_path
):
    out, _ = shared_search
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("trials.csv", "trials.json", "front.png"):
        (copy / name).unlink()
    shutil.rmtree(copy / "run")
    shutil.rmtree(copy / "bundle")
    doc = json.loads((copy / "search.json").read_text())
    doc["settings"]["budget"]["latency_ms"] = 1e-6
    (copy / "search.json").write_text(json.dumps(doc))
    fastest = min(t["measurement"]["latency_ms"] for t in _trials(copy))
    line = cli_error(run_cli("search", "--report", copy))
    assert "no trial meets the budget of 1e-06 ms" in line and f"{fastest:.3g} ms p50" in line, line
    assert (copy / "trials.csv").is_file() and (copy / "front.png").is_file()
    assert not (copy / "bundle").exists()


def test_a_finished_search_run_again_trains_nothing_and_keeps_its_numbering(shared_search, shapes_folder):
    out, _ = shared_search
    before = _stage_events(out)
    result = run_cli(*_search_command(shapes_folder, out)[3:])
    assert result.returncode == 0, result.stderr[-2000:]
    assert _stage_events(out) == before
    assert len(_trials(out)) == TRIALS


def _wait_for(predicate, timeout: float, proc) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_search_killed_during_training_resumes_and_trains_no_candidate_twice(tmp_path, shapes_folder):
    out = tmp_path / "out"
    proc = subprocess.Popen(_search_command(shapes_folder, out, trials=3), stderr=subprocess.PIPE, text=True)
    try:
        # trial 0 finished, trial 1 in training: the kill lands mid-training
        started = lambda: any(e["trial"] == "0001" and e["event"] == "train started" for e in _stage_events(out))  # noqa: E731
        _wait_for(lambda: (out / "trials").is_dir() and started(), 300, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed = _stage_events(out)
    assert [e["event"] for e in killed if e["trial"] == "0001"] == ["train started"], killed  # no convert yet
    assert json.loads((out / "trials" / "0001" / "trial.json").read_text())["status"] is None

    result = run_cli(*_search_command(shapes_folder, out, trials=3)[3:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stderr
    events = _stage_events(out)
    done = [e["trial"] for e in events if e["event"] == "train done"]
    assert sorted(done) == ["0000", "0001", "0002"], events  # each candidate's training finished exactly once
    assert [e["event"] for e in events if e["trial"] == "0000" and e["event"].startswith("train")] == [
        "train started",
        "train done",
    ]
    pids = {e["pid"] for e in events if e["trial"] == "0001" and e["event"].startswith("train")}
    assert len(pids) == 2  # the killed worker's start, then the resumed one's whole training
    trials = _trials(out)
    assert [t["number"] for t in trials] == [0, 1, 2] and all(t["status"] == "meets-budget" for t in trials)
    assert len({t["optuna_number"] for t in trials}) == 3
    assert (out / "bundle" / "manifest.json").is_file()


def test_a_killed_trial_with_a_trained_run_goes_straight_to_convert(shared_search, shapes_folder, tmp_path):
    """The stage on disk is never redone: an abandoned trial whose run is there is converted and measured, not
    trained, by the next search into that folder."""
    from edgecls.search import trial as stages
    from edgecls.search.api import SearchConfig, search
    from edgecls.search.types import Budget

    out = tmp_path / "out"
    shutil.copytree(shared_search[0], out)
    folder = out / "trials" / "0003"
    shutil.rmtree(folder / "bundle")
    data = json.loads((folder / "trial.json").read_text())
    data.update(status=None, measurement=None, bundle_dir=None, told=False,
                owner={"host": os.uname().nodename, "pid": 2**22 + 1, "since": 0})  # fmt: skip
    (folder / "trial.json").write_text(json.dumps(data))
    trains = lambda: [line for line in (folder / stages.STAGES_LOG).read_text().splitlines() if '"train ' in line]  # noqa: E731
    before = trains()
    cfg = SearchConfig(str(shapes_folder), "desktop-cpu", Budget(BUDGET_MS), str(out), trials=TRIALS,
                       models=("simple",), sizes=(16,), epochs=1, max_drop=100.0)  # fmt: skip
    result = search(cfg)
    assert trains() == before  # no training started
    after = json.loads((folder / "trial.json").read_text())
    assert after["status"] == "meets-budget" and after["measurement"]["latency_ms"] > 0
    assert (folder / "bundle" / "manifest.json").is_file()
    assert result.reported and len(result.trials) == TRIALS


@pytest.mark.parametrize(
    "args, words",
    [
        (("--max-latency-ms", "0"), "--max-latency-ms 0.0 is not a budget"),
        (("--max-latency-ms", "5", "--trials", "0"), "--trials 0 is out of range"),
        (("--max-latency-ms", "5", "--models", "resnet"), "--models resnet: choose among"),
        (("--max-latency-ms", "5", "--max-drop", "nan"), "--max-drop nan is not a number of accuracy points"),
        (("--max-latency-ms", "5", "--max-drop", "-1"), "--max-drop -1.0 is not a number of accuracy points"),
        (("--max-latency-ms", "5", "--models", ","), "',': give model names separated by commas"),
    ],
)
def test_bad_settings_are_refused_in_one_line_before_anything_is_written(tmp_path, shapes_folder, args, words):
    out = tmp_path / "out"
    line = cli_error(run_cli("search", "--data", shapes_folder, "--device", "desktop-cpu", "--out", out, *args))
    assert words in line, line
    assert not out.exists()


def test_an_out_that_is_not_a_search_is_never_touched(tmp_path, shapes_folder):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    for extra in ((), ("--overwrite",)):
        line = cli_error(run_cli("search", "--data", shapes_folder, "--device", "desktop-cpu", "--out", out,
                                 "--max-latency-ms", "5", *extra))  # fmt: skip
        assert "is not an edgecls search" in line, line
    assert [p.name for p in out.iterdir()] == ["thesis.txt"]


def test_an_out_inside_the_data_is_refused(tmp_path, shapes_folder):
    line = cli_error(run_cli("search", "--data", shapes_folder, "--device", "desktop-cpu", "--out",
                             shapes_folder / "search", "--max-latency-ms", "5"))  # fmt: skip
    assert "overlap" in line, line
    assert not (shapes_folder / "search").exists()


def test_missing_data_is_refused_naming_the_folder(tmp_path):
    line = cli_error(run_cli("search", "--data", tmp_path / "nope", "--device", "desktop-cpu", "--out", tmp_path / "o",
                             "--max-latency-ms", "5"))  # fmt: skip
    assert "nope" in line and "does not exist" in line, line


def test_a_search_needs_its_budget_device_data_and_out(tmp_path):
    line = cli_error(run_cli("search", "--data", "shapes", "--out", tmp_path / "o"))
    assert "missing --device, --max-latency-ms" in line, line


def _on_disk(out: Path, statuses: list) -> None:
    """Finished trials written as a search writes them (told to the study already), one per status."""
    from edgecls.search import trial as stages
    from edgecls.search.types import Candidate, Measurement, Trial

    for n, status in enumerate(statuses):
        candidate = Candidate("simple", 16, "stretch", {"widths": [4 * (n + 1)], "convs_per_block": 1})
        measured = Measurement("tflite-int8", "litert", 1.0, device="here") if status != "pruned" else None
        folder = stages.folder_of(out, n)
        folder.mkdir(parents=True)
        trial = Trial(n, candidate, status=status, predicted_ms=9.0, val_accuracy=0.5, measurement=measured)
        stages.save(folder, trial, told=True, optuna_number=n)


@pytest.mark.parametrize(
    "statuses, claims",
    [
        (["meets-budget", "pruned", "pruned"], True),  # 1 of --trials 2 reached training: pruned ones are extra
        (["meets-budget", "failed"], False),  # a failure reached training: it counts
        (["pruned"] * 5 + ["meets-budget"], False),  # 3 x --trials proposed: the space is mostly over budget
    ],
)
def test_pruned_candidates_do_not_use_up_the_trials_asked_up_to_three_proposals_a_trial(
    tmp_path, shapes_folder, capfd, statuses, claims
):
    from edgecls.search import api, study

    cfg = api.SearchConfig(str(shapes_folder), "desktop-cpu", api.Budget(5.0), str(tmp_path / "out"), trials=2,
                           models=("simple",), sizes=(16,))  # fmt: skip
    out, _ = api.prepare_out(cfg)
    _on_disk(out, statuses)
    claimed = api._claim(cfg, out, study.open_study(out), None)
    assert (claimed is not None) == claims
    if claimed:
        assert claimed[0].number == len(statuses) and json.loads((claimed[1] / "trial.json").read_text())["owner"]
    elif "pruned" in statuses[1:]:
        assert "the space is mostly over budget" in capfd.readouterr().err


def _tiny_config(data, out, **extra):
    from edgecls.search import api

    return api.SearchConfig(str(data), "desktop-cpu", api.Budget(5.0), str(out), trials=2, models=("simple",),
                            sizes=(16,), **extra)  # fmt: skip


def test_a_proposal_whose_worker_was_killed_before_its_trial_json_is_failed_not_left_running(tmp_path, shapes_folder):
    from optuna.trial import TrialState

    from edgecls.search import api, study

    cfg = _tiny_config(shapes_folder, tmp_path / "out")
    out, _ = api.prepare_out(cfg)
    opened = study.open_study(out)
    phantom = study.ask(opened, 0, 2)  # asked, then killed before trials/0000/trial.json
    claimed = api._claim(cfg, out, opened, None)
    states = {t.number: t.state for t in study.open_study(out).get_trials()}
    assert states[phantom.number] == TrialState.FAIL, states
    assert states[claimed[2]] == TrialState.RUNNING and claimed[2] != phantom.number


def test_a_search_resumed_on_data_with_another_class_or_other_images_is_refused(tmp_path, shapes_folder):
    from edgecls.search import api

    data = tmp_path / "data"
    shutil.copytree(shapes_folder, data)
    cfg = _tiny_config(data, tmp_path / "out")
    api.prepare_out(cfg, api._data_facts(cfg)["fingerprint"])
    assert api.prepare_out(cfg, api._data_facts(cfg)["fingerprint"])[1]  # the same data: resumed
    (data / "star").mkdir()
    for n, image in enumerate(sorted((data / "circle").iterdir())[:8]):
        shutil.copy(image, data / "star" / f"{n}{image.suffix}")
    classes = "with classes circle, square, triangle, not circle, square, star, triangle"
    with pytest.raises(api.EdgeclsError, match=classes):
        api.prepare_out(cfg, api._data_facts(cfg)["fingerprint"])
    shutil.rmtree(data / "star")
    victim = sorted((data / "square").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # one image changed: other bytes
    with pytest.raises(api.EdgeclsError, match="other images"):
        api.prepare_out(cfg, api._data_facts(cfg)["fingerprint"])


def test_overwrite_removes_a_report_stage_a_killed_search_left(tmp_path, shapes_folder):
    from edgecls.runtime.atomic import host_tag
    from edgecls.search import api

    cfg = _tiny_config(shapes_folder, tmp_path / "out")
    out, _ = api.prepare_out(cfg)
    stage = out / f".run.{2**22 + 1}@{host_tag()}.pv3n_ifz.partial"  # a dead pid's stage of OUT/run
    stage.mkdir()
    (stage / "model.keras").write_bytes(b"half")
    cfg.overwrite = True
    assert api.prepare_out(cfg) == (out, False)
    assert sorted(p.name for p in out.iterdir()) == [api.LOCK, api.SEARCH_JSON]


def _killed_at(out: Path, patch: str, call: str) -> None:
    """Run `call` (api's) in a process that SIGKILLs itself where `patch` (module.attribute) is reached."""
    code = (
        "import os, signal, sys; from edgecls.search import api, trial; from edgecls.search.device import DeviceLab; "
        f"setattr({patch.rsplit('.', 1)[0]}, {patch.rsplit('.', 1)[1]!r}, "
        "lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)); " + call
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def test_a_search_run_again_after_a_report_killed_before_its_bundle_writes_the_bundle(shared_search, shapes_folder,
                                                                                       tmp_path):  # fmt: skip
    out = tmp_path / "out"
    shutil.copytree(shared_search[0], out)
    for name in ("run", "bundle"):
        shutil.rmtree(out / name)
    _killed_at(out, "api._publish", f"api.report({str(out)!r})")  # trials.json and front.png written, no bundle
    assert (out / "trials.json").is_file() and not (out / "bundle").exists()
    before = _stage_events(out)
    result = run_cli(*_search_command(shapes_folder, out)[3:])
    assert result.returncode == 0, result.stderr[-2000:]
    chosen = json.loads((out / "trials.json").read_text())["chosen"]
    trial_bundle = out / "trials" / f"{chosen:04d}" / "bundle"
    assert (out / "bundle" / "manifest.json").read_bytes() == (trial_bundle / "manifest.json").read_bytes()
    assert _stage_events(out) == before  # nothing trained, converted or measured again


def test_a_search_that_chose_nothing_run_again_says_so_again_and_fails(shared_search, shapes_folder, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shared_search[0], out)
    for name in ("run", "bundle"):
        shutil.rmtree(out / name)
    doc = json.loads((out / "search.json").read_text())
    doc["settings"]["budget"]["latency_ms"] = 1e-6
    (out / "search.json").write_text(json.dumps(doc))
    for _ in range(2):
        line = cli_error(run_cli(*_search_command(shapes_folder, out, budget=1e-6)[3:]))
        assert "no trial meets the budget of 1e-06 ms" in line, line
    assert json.loads((out / "trials.json").read_text())["chosen"] is None and not (out / "bundle").exists()


def _abandon(folder: Path, **reset) -> None:
    data = json.loads((folder / "trial.json").read_text())
    data.update(status=None, told=False, owner={"host": os.uname().nodename, "pid": 2**22 + 1, "since": 0}, **reset)
    (folder / "trial.json").write_text(json.dumps(data))


def test_a_search_killed_after_convert_and_after_measuring_neither_converts_nor_measures_again(
    shared_search, shapes_folder, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(shared_search[0], out)
    folder = out / "trials" / "0003"
    shutil.rmtree(folder / "bundle")
    _abandon(folder, measurement=None, bundle_dir=None)
    before = len(_stage_events(out))
    search = f"api.search(api.SearchConfig({str(shapes_folder)!r}, 'desktop-cpu', api.Budget({BUDGET_MS}), "
    search += f"{str(out)!r}, trials={TRIALS}, models=('simple',), sizes=(16,), epochs=1, max_drop=100.0))"
    _killed_at(out, "DeviceLab.measure", search)  # the bundle is converted, then the kill
    assert (folder / "bundle" / "manifest.json").is_file()
    _killed_at(out, "trial.judge", search)  # measured and saved in trial.json, then the kill
    assert json.loads((folder / "trial.json").read_text())["measurement"]["latency_ms"] > 0
    result = run_cli(*_search_command(shapes_folder, out)[3:])
    assert result.returncode == 0, result.stderr[-2000:]
    events = [e["event"] for e in _stage_events(out)[before:] if e["trial"] == "0003"]  # since the copy
    assert "train started" not in events, events
    assert events.count("convert done") == 1 and events.count("convert started") == 1, events
    assert events.count("measure done") == 1, events  # the first measurement was cut by the kill, not repeated
    assert json.loads((folder / "trial.json").read_text())["status"] == "meets-budget"


def test_a_bundle_the_device_cannot_measure_fails_its_trial_and_the_search_goes_on(shared_search, shapes_folder,
                                                                                     tmp_path):  # fmt: skip
    from edgecls.search.api import SearchConfig, search
    from edgecls.search.types import Budget

    out = tmp_path / "out"
    shutil.copytree(shared_search[0], out)
    folder = out / "trials" / "0003"
    _abandon(folder, measurement=None)
    artifact = next(p for p in (folder / "bundle").iterdir() if p.suffix in (".tflite", ".onnx"))
    artifact.write_bytes(artifact.read_bytes()[:64])  # the runtime cannot load it
    cfg = SearchConfig(str(shapes_folder), "desktop-cpu", Budget(BUDGET_MS), str(out), trials=TRIALS,
                       models=("simple",), sizes=(16,), epochs=1, max_drop=100.0)  # fmt: skip
    result = search(cfg)
    after = json.loads((folder / "trial.json").read_text())
    assert after["status"] == "failed" and after["reason"].startswith("measurement failed: "), after["reason"]
    assert result.reported and result.chosen is not None and result.chosen.number != 3


def test_a_local_profiles_search_resumed_on_another_machine_is_refused(tmp_path, shapes_folder):
    from edgecls.search import api
    from edgecls.search.device import DeviceLab

    cfg, lab = _tiny_config(shapes_folder, tmp_path / "out"), DeviceLab("desktop-cpu")
    out, _ = api.prepare_out(cfg, None, lab)
    doc = json.loads((out / "search.json").read_text())
    assert doc["machine"]["kind"] == "local" and doc["machine"]["machine"]["hostname"]
    assert api.prepare_out(cfg, None, lab)[1]  # the same machine: resumed
    doc["machine"]["machine"]["hostname"] = "elsewhere"
    (out / "search.json").write_text(json.dumps(doc))
    with pytest.raises(api.EdgeclsError, match="this search measured on elsewhere"):
        api.prepare_out(cfg, None, lab)
