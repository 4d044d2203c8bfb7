"""The Optuna study behind `edgecls search`: what it proposes next, and what it is told each trial gave.

Why Optuna and not keras-tuner (which `edgecls tune` uses): keras-tuner 1.4.8's oracles (random, Bayesian,
Hyperband) accept several objectives but rank by their unweighted sum (`MultiObjective.get_value`: accuracy
and milliseconds added on one scale), and know no constraints, so "most accurate under 3 ms" would have to be
folded into one score by hand (a penalty whose size decides the result), and a candidate pruned before
training could only be reported as a failure or as a made-up score. Optuna 5.1 searches two objectives at
once (validation accuracy up, measured latency down) with TPE or NSGA-II, takes constraints (the
budget: a trial over it is infeasible and ranked behind every feasible one; Optuna 5 names them per
trial with `Trial.set_constraint`), and lets a trial end PRUNED, with
the latency that pruned it as its constraint, so the sampler learns "too slow there" without an invented
accuracy. TPE is used: NSGA-II needs a population (50 by default) before it breeds, more trials than a search
on one device affords; TPE's `constant_liar` keeps workers that ask at the same time apart.

Storage: `JournalStorage(JournalFileBackend(OUT/study.journal))`, an append-only file of operations guarded by
a file lock, replayed on open: a search killed at any point reopens with every told trial, and several
processes or hosts on one shared filesystem use one study (keras-tuner's distributed mode needs a chief
process to serve its oracle over gRPC, one more thing to keep alive). What Optuna 5.1 does NOT offer on a
journal: heartbeats (`heartbeat_interval` and `fail_stale_trials` are RDB-storage only, so
`RetryFailedTrialCallback` never fires there). A killed worker's trial stays RUNNING in the journal;
`edgecls.search.trial` keeps its own heartbeat file per trial and a later worker adopts and finishes it,
telling the study by trial number.

Warm start (`warm_start`): the study's first trials are enqueued, not sampled: `edgecls train`'s default model
at the data's size, then, once it is measured, the default scaled down to the budget (width from the measured
ms, one step smaller, and both at the next smaller size), the way a person starts and the way Edge Impulse's
EON Tuner starts from reference models. Why: the space is wide (four families, widths, sizes), trials are
expensive (each is trained, converted and measured), and TPE's random start spreads its first third over every
family: on the shapes set at 0.1 ms (benchmarks/results/device_search.txt) most of 12 trials went to
MobileNets, which trained from scratch for 10 epochs on small images sit near chance, and the simple family got
two draws; the search chose a 60 % model where the default at half width reached 83 %. The obvious moves first,
then TPE explores. Enqueued trials are ordinary trials (pruned if the latency model says so, measured, in the
table); their origin is the Optuna trial's user attribute `origin` and the trial.json key of the same name.
Each is enqueued once per study (the study's user attribute `warm_start` records how far it went), so a resumed
or joined search does not enqueue them again.
"""

from __future__ import annotations

import math
from pathlib import Path

from edgecls.search.types import FAILED, GATE_FAILED, MEETS, OVER_BUDGET, PRUNED, Budget, Trial

JOURNAL = "study.journal"
STUDY_NAME = "edgecls-search"
DIRECTIONS = ("maximize", "minimize")  # validation accuracy, measured latency (ms)
SAME_AS = "same_as"  # user attribute of a proposal that repeated a finished trial's candidate
ORIGIN = "origin"  # user attribute of an enqueued (warm start) trial: where it came from
WARM = "warm_start"  # study user attribute: "default" once the default is enqueued, "done" once its scalings are
DEFAULT_ORIGIN = "warm start: edgecls train's default"


def open_study(out: Path, quiet: bool = True):
    """The study in OUT/study.journal, created on first use (every worker and every resume loads the same)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(Path(out) / JOURNAL)))
    return optuna.create_study(study_name=STUDY_NAME, storage=storage, directions=list(DIRECTIONS), load_if_exists=True)


def sampler(seed: int, number: int, trials: int):
    """TPE, seeded by the search's seed and the trial number it will propose: any worker asking for trial k
    draws what any other would, so two workers with one seed do not propose the same start."""
    from optuna.samplers import TPESampler

    return TPESampler(
        seed=(seed * 1_000_003 + number) % 2**32,
        n_startup_trials=max(3, min(10, trials // 3)),
        multivariate=True,
        group=True,  # conditional parameters (a MobileNet's alpha, simple's widths) in their own groups
        constant_liar=True,
    )


def ask(study, seed: int, trials: int):
    """A new optuna.Trial, proposed by a sampler seeded for its number."""
    import warnings

    number = len(study.get_trials(deepcopy=False))
    with warnings.catch_warnings():  # multivariate/group TPE are "experimental" in Optuna: said here, not per trial
        warnings.simplefilter("ignore")
        study.sampler = sampler(seed, number, trials)
        return study.ask()


def warm_start(study, cfg, default: dict | None) -> None:
    """Enqueue the warm start's next trials, once per study; call it under the search's claim lock.

    `default`: space.train_default's params (None: the space cannot hold the default, no warm start). First the
    default; once it is told, its scaled-down versions from its measured latency (none when it met the budget,
    was pruned or failed)."""
    from edgecls.search import space

    state = study.user_attrs.get(WARM)
    if default is None or state == "done":
        return
    if state is None:
        study.enqueue_trial(default, user_attrs={ORIGIN: DEFAULT_ORIGIN})
        study.set_user_attr(WARM, "default")
        return
    first = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ORIGIN) == DEFAULT_ORIGIN), None)
    if first is None or not first.state.is_finished():
        return  # the default is still being trained or measured (by this worker or another)
    if first.values:
        for params, origin in space.scaled_down(default, first.values[1], cfg.budget.latency_ms, cfg.sizes):
            study.enqueue_trial(params, user_attrs={ORIGIN: origin})
    study.set_user_attr(WARM, "done")


def origin(proposal) -> str:
    """Where an asked trial came from: its warm-start origin, else the sampler."""
    return proposal.user_attrs.get(ORIGIN) or "sampled by TPE"


def constraint_values(trial: Trial, budget: Budget) -> dict:
    """Named constraints, relative excess over the budget (<= 0: met): latency, RAM, size, and unshippable
    (a gate failure or a refusal: 1). A pruned trial's latency is the predicted one."""
    m = trial.measurement
    return {
        "latency": _excess(m.latency_ms if m else trial.predicted_ms, budget.latency_ms),
        "ram": _excess(m.peak_rss_mb if m else None, budget.ram_mb),
        "size": _excess(m.size_mb if m else None, budget.size_mb),
        "unshippable": 1.0 if trial.status in (GATE_FAILED, FAILED) else 0.0,
    }


def _excess(value, limit) -> float:
    if value is None or limit is None or not math.isfinite(float(value)):
        return 0.0
    return float(value) / float(limit) - 1.0


def tell(study, number: int, trial: Trial, budget: Budget, same_as: int | None = None) -> None:
    """Tell the study how optuna trial `number` ended: measured trials with (val accuracy, latency); pruned,
    gate-failed and refused ones PRUNED with their constraints (no invented accuracy); a crash FAIL."""
    from optuna.trial import TrialState

    handle = _trial(study, number)
    if handle.storage.get_trial(handle._trial_id).state.is_finished():
        return  # told already (a worker killed between telling and writing trial.json)
    attrs = handle.storage.get_trial_system_attrs(handle._trial_id)
    for key, value in constraint_values(trial, budget).items():
        if attrs.get(f"constraints:{key}") is None:  # each on its own: a kill may have left some set
            handle.set_constraint(key, value)  # what TPE reads: feasible when every value is <= 0
    if same_as is not None:
        handle.set_user_attr(SAME_AS, same_as)
    if trial.status in (MEETS, OVER_BUDGET) and trial.val_accuracy is not None and trial.measurement:
        study.tell(number, [float(trial.val_accuracy), float(trial.measurement.latency_ms)])
    elif trial.status in (PRUNED, GATE_FAILED) or (trial.status == FAILED and trial.candidate.macs == 0):
        study.tell(number, state=TrialState.PRUNED)
    else:
        study.tell(number, state=TrialState.FAIL)


def _trial(study, number: int):
    """An optuna.Trial handle on trial `number`, whichever process asked for it (a resumed or adopted trial)."""
    from optuna.trial import Trial as OptunaTrial

    study_id = study._storage.get_study_id_from_name(study.study_name)
    return OptunaTrial(study, study._storage.get_trial_id_from_study_id_trial_number(study_id, number))


def fail(study, number: int, same_as: int | None = None) -> None:
    """End a proposal that is not run (it repeats a running trial's candidate) as FAIL: TPE ignores it."""
    from optuna.trial import TrialState

    if same_as is not None:
        _trial(study, number).set_user_attr(SAME_AS, same_as)
    study.tell(number, state=TrialState.FAIL)


def fail_phantoms(study, named) -> list:
    """End as FAIL every RUNNING optuna trial whose number no trial.json names (`named`): asked by a worker
    killed before it wrote the trial's folder. Left RUNNING, constant_liar TPE would treat it as running for
    good. Call it under the search's claim lock (a live worker asks and writes trial.json within it)."""
    from optuna.trial import TrialState

    phantoms = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    phantoms = [n for n in phantoms if n not in set(named)]
    for number in phantoms:
        study.tell(number, state=TrialState.FAIL)
    return phantoms
