"""The Optuna study on its journal file and the trial's stages that need no training: resume, pruning, adoption."""

from __future__ import annotations

import json
import os
import socket
import time
from types import SimpleNamespace

from edgecls.search import space, study
from edgecls.search import trial as stages
from edgecls.search.types import MEETS, OVER_BUDGET, PRUNED, Budget, Candidate, Measurement, Trial

BUDGET = Budget(latency_ms=5.0)


def _measured(number: int, candidate: Candidate, val: float, ms: float) -> Trial:
    status = MEETS if ms <= BUDGET.latency_ms else OVER_BUDGET
    measurement = Measurement(artifact="tflite-int8", engine="litert", latency_ms=ms, device="here")
    return Trial(number, candidate, status=status, val_accuracy=val, measurement=measurement)


def _candidate(size: int, macs: int = 0) -> Candidate:
    return Candidate("simple", size, "stretch", {"widths": [8], "convs_per_block": 1}, macs=macs)


def test_the_journal_reopens_with_every_told_trial_and_numbering_continues(tmp_path):
    from optuna.trial import TrialState

    first = study.open_study(tmp_path)
    measured, pruned, abandoned = (study.ask(first, 0, 10) for _ in range(3))
    study.tell(first, measured.number, _measured(0, _candidate(16), 0.9, 1.5), BUDGET)
    cut = Trial(1, _candidate(96), status=PRUNED, predicted_ms=20.0, reason="predicted 20 ms")
    study.tell(first, pruned.number, cut, BUDGET)

    again = study.open_study(tmp_path)  # a resumed search: a new process reads the journal
    states = [t.state for t in again.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
    assert again.get_trials()[0].values == [0.9, 1.5]
    study.tell(again, abandoned.number, _measured(2, _candidate(24), 0.8, 2.0), BUDGET)  # adopted, told by number
    assert study.ask(again, 0, 10).number == 3
    assert study.open_study(tmp_path).get_trials()[2].state == TrialState.COMPLETE


def test_a_pruned_trial_tells_no_accuracy_and_is_infeasible_by_its_predicted_latency(tmp_path):
    opened = study.open_study(tmp_path)
    proposal = study.ask(opened, 0, 10)
    study.tell(opened, proposal.number, Trial(0, _candidate(96), status=PRUNED, predicted_ms=20.0), BUDGET)
    told = opened.get_trials()[0]
    assert told.values is None  # no invented accuracy or latency
    assert told.constraints["latency"] == 3.0  # 20 ms against 5 ms: three budgets over
    over = study.ask(opened, 0, 10)
    study.tell(opened, over.number, _measured(1, _candidate(64), 0.95, 7.5), BUDGET)
    assert opened.get_trials()[1].constraints["latency"] == 0.5 and opened.get_trials()[1].values == [0.95, 7.5]


def _late_slow_proposals(tmp_path, told: bool) -> tuple:
    """Sizes of 48 px or more are too slow (pruned by the latency model); the others are measured. Returns how
    many of the last 30 of 60 proposals were too slow, with the pruned ones told to the study or not."""
    tmp_path.mkdir()
    opened = study.open_study(tmp_path)
    cfg = SimpleNamespace(models=("simple",), sizes=(16, 24, 32, 48, 64, 96, 128))
    late = []
    for n in range(60):
        proposal = study.ask(opened, 0, 30)
        candidate = space.suggest(proposal, cfg)
        slow = candidate.image_size >= 48
        if slow and told:
            predicted = BUDGET.latency_ms * candidate.image_size / 24
            study.tell(opened, proposal.number, Trial(n, candidate, status=PRUNED, predicted_ms=predicted), BUDGET)
        elif slow:
            study.fail(opened, proposal.number)  # what a search that hid its pruned candidates would do
        else:
            result = _measured(n, candidate, 0.5 + candidate.image_size / 100, candidate.image_size / 10)
            study.tell(opened, proposal.number, result, BUDGET)
        late.append(slow)
    return sum(late[30:]), len(late[30:])


def test_the_sampler_proposes_pruned_candidates_less_once_told_of_them(tmp_path):
    told, n = _late_slow_proposals(tmp_path / "told", told=True)
    hidden, _ = _late_slow_proposals(tmp_path / "hidden", told=False)
    # 4 of 7 sizes are slow: a blind sampler draws them 57 % of the time; TPE keeps exploring a little
    assert told <= 0.45 * n and hidden >= 2 * told, (told, hidden, n)


def test_a_candidate_the_latency_model_rules_out_is_pruned_before_any_training(tmp_path, shapes_folder):
    finished = [_measured(n, _candidate(16, macs), 0.9, ms) for n, (macs, ms) in
                enumerate([(100_000, 1.0), (200_000, 2.0), (400_000, 4.0)])]  # fmt: skip
    big = Candidate("simple", 64, "stretch", {"widths": [32, 64, 128], "convs_per_block": 2})
    folder = tmp_path / "trial"
    folder.mkdir()
    ctx = stages.TrialContext(str(shapes_folder), BUDGET, lab=None, data_color="rgb", num_classes=3, epochs=1,
                              patience=1, seed=0, batch_size=8, max_drop=100.0, calibration_size=8)  # fmt: skip
    trial = stages.run_trial(Trial(3, big), folder, ctx, finished)
    assert trial.status == PRUNED and trial.predicted_ms > BUDGET.latency_ms, trial
    assert trial.candidate.macs > 1_000_000 and trial.reason
    assert not (folder / stages.RUN).exists() and not (folder / stages.STAGES_LOG).exists()
    on_disk = json.loads((folder / stages.TRIAL_JSON).read_text())
    assert on_disk["status"] == PRUNED and on_disk["predicted_ms"] == trial.predicted_ms


def test_an_unfinished_trial_is_adopted_only_when_its_worker_is_gone(tmp_path):
    folder = tmp_path / "0000"
    folder.mkdir()
    here = socket.gethostname()
    mine = {"status": None, "owner": {"host": here, "pid": os.getpid(), "since": time.time()}}
    assert not stages.is_stale(folder, mine)
    assert stages.is_stale(folder, {"status": None, "owner": {"host": here, "pid": 2**22 + 1, "since": 0}})
    assert not stages.is_stale(folder, {"status": MEETS, "owner": {"host": here, "pid": 2**22 + 1}})
    elsewhere = {"status": None, "owner": {"host": "other-host", "pid": 1, "since": time.time()}}
    (folder / stages.HEARTBEAT).touch()
    assert not stages.is_stale(folder, elsewhere)  # another host's worker that still beats
    old = time.time() - stages.STALE_S - 5
    os.utime(folder / stages.HEARTBEAT, (old, old))
    assert stages.is_stale(folder, elsewhere)


def _warm_cfg():
    return SimpleNamespace(models=space.DEFAULT_MODELS, sizes=(24, 32, 48), budget=Budget(latency_ms=0.1))


def _params(candidate: Candidate) -> tuple:
    return candidate.model, candidate.image_size, candidate.resize, tuple(candidate.model_options["widths"])


def test_a_fresh_study_starts_with_the_default_then_the_default_scaled_to_the_budget_and_a_resume_adds_none(tmp_path):
    cfg = _warm_cfg()
    default = space.train_default(cfg, 48)  # shapes: 48 px, `edgecls train`'s simple widths 16..128
    opened = study.open_study(tmp_path)
    study.warm_start(opened, cfg, default)
    study.warm_start(opened, cfg, default)  # a second worker's claim while the default is not yet asked
    first = study.ask(opened, 0, 12)
    assert study.origin(first) == study.DEFAULT_ORIGIN
    assert _params(space.suggest(first, cfg)) == ("simple", 48, "stretch", (16, 32, 64, 128))
    study.warm_start(opened, cfg, default)  # the default is still running: nothing scaled yet
    assert study.origin(study.ask(opened, 0, 12)) == "sampled by TPE"
    # measured at 0.174 ms against 0.1 ms: width factor ~ sqrt(0.1 / 0.174) = 0.76, so half width and a quarter
    told = _measured(0, space.suggest(first, cfg), 0.98, 0.174)
    study.tell(opened, first.number, told, Budget(latency_ms=0.1))
    study.warm_start(opened, cfg, default)
    scaled = [study.ask(opened, 0, 12) for _ in range(4)]
    assert [study.origin(p) for p in scaled] == [
        "warm start: the default at 0.5x width",
        "warm start: the default at 0.25x width",
        "warm start: the default at 0.5x width, 32 px",
        "warm start: the default at 0.25x width, 32 px",
    ]
    assert [_params(space.suggest(p, cfg)) for p in scaled] == [
        ("simple", 48, "stretch", (8, 16, 32, 64)),
        ("simple", 48, "stretch", (4, 8, 16, 32)),
        ("simple", 32, "stretch", (8, 16, 32, 64)),
        ("simple", 32, "stretch", (4, 8, 16, 32)),
    ]
    resumed = study.open_study(tmp_path)  # a resumed or joined search: its claims call warm_start again
    study.warm_start(resumed, cfg, default)
    assert study.origin(study.ask(resumed, 0, 12)) == "sampled by TPE"
    origins = [t.user_attrs.get(study.ORIGIN) for t in study.open_study(tmp_path).get_trials()]
    assert origins.count(study.DEFAULT_ORIGIN) == 1 and len([o for o in origins if o]) == 5


def test_a_default_within_the_budget_is_not_scaled_down_and_no_simple_model_means_no_warm_start(tmp_path):
    cfg = _warm_cfg()
    default = space.train_default(cfg, 48)
    assert space.scaled_down(default, 0.08, 0.1, cfg.sizes) == []
    assert space.train_default(SimpleNamespace(models=("mobilenetv2",), sizes=(48,)), 48) is None
    narrow = space.train_default(SimpleNamespace(models=("simple",), sizes=(16, 24)), 48, widths=(16, 32, 64))
    assert narrow["image_size"] == 24 and narrow["simple_blocks"] == 3  # the nearest size allowed, digits' widths
    opened = study.open_study(tmp_path)
    study.warm_start(opened, cfg, None)
    assert study.origin(study.ask(opened, 0, 12)) == "sampled by TPE"


def test_a_trial_told_after_a_kill_between_two_constraints_gets_every_constraint(tmp_path):
    opened = study.open_study(tmp_path)
    proposal = study.ask(opened, 0, 10)
    study._trial(opened, proposal.number).set_constraint("latency", 0.5)  # killed before ram, size, unshippable
    study.tell(opened, proposal.number, _measured(0, _candidate(64), 0.95, 7.5), BUDGET)
    told = opened.get_trials()[0]
    assert told.constraints == {"latency": 0.5, "ram": 0.0, "size": 0.0, "unshippable": 0.0}, told.constraints
