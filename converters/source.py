"""The reference every artifact is judged against: the run's Keras model (pruned when asked) and its
answers on the test split, by file, with what the test split is against the one the run was tested on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgecls.converters import testsplit
from edgecls.converters.macs import count_macs
from edgecls.converters.verify import AccuracyGateError, by_file, gate_passes
from edgecls.core.metrics import probabilities
from edgecls.core.progress import progress
from edgecls.runtime.errors import EdgeclsError


@dataclass
class Reference:
    model: object
    splits: dict
    split_kind: str  # recorded | recomputed
    changed: bool  # an old run's dataset changed since training
    paths: list  # the test files verified, in order
    y: np.ndarray
    probs: np.ndarray  # the reference model's answers on `paths`
    split_report: testsplit.TestSplitReport
    accuracy: float
    macs: int
    params: int
    source_accuracy: float = 0.0  # the run's own model (before pruning)
    pruning: dict = field(default_factory=dict)

    @property
    def test(self):
        return self.splits["test"]

    def right(self) -> np.ndarray:
        return self.probs.argmax(1) == self.y

    def keep_common(self, run, found: list, options) -> list:
        """Keep the files every pass decoded (`found`: each artifact's answers by file); returns the dropped
        ones. A file that stopped decoding mid-run leaves every side, and the split is checked again."""
        common = [i for i, p in enumerate(self.paths) if all(p in f for f in found)]
        kept = set(common)
        dropped = [p for i, p in enumerate(self.paths) if i not in kept]
        if not dropped:
            return dropped
        progress(
            f"warning: {len(dropped)} test image(s) stopped decoding or changed during verification "
            f"(first: {dropped[0]})"
        )
        self.split_report = testsplit.check(
            run, self.y[common], self.split_kind, self.changed, dropped, options.max_drop
        )
        testsplit.enforce(
            self.split_report, options.allow_partial_test, " (files stopped decoding or changed during verification)"
        )
        self.paths, self.y, self.probs = [self.paths[i] for i in common], self.y[common], self.probs[common]
        self.accuracy = float(self.right().mean())
        if not options.prune:
            self.source_accuracy = self.accuracy
        return dropped


def load_reference(run, options) -> Reference:
    """The run's model and its answers on the test split (refused when the split is not the training's,
    unless allowed); pruned, fine-tuned and gated when `options.prune` asks."""
    model = run.load_model()
    expected = tuple(run.metadata["input_shape"])
    if tuple(model.input_shape[1:]) != expected:
        raise EdgeclsError(
            f"{run.model_path} takes input {tuple(model.input_shape[1:])} but metadata.json says {expected}: "
            "the run directory is inconsistent"
        )
    splits, split_kind, changed = _load_data(run, options)
    keras_out = by_file(lambda x: probabilities(model.predict_on_batch(x)), splits["test"])
    paths = list(keras_out)  # the files verified, in order; a file that stops decoding later leaves every side
    y = np.asarray([keras_out[p][1] for p in paths])
    split_report = testsplit.check(run, y, split_kind, changed, max_drop=options.max_drop)
    testsplit.enforce(split_report, options.allow_partial_test)
    probs = np.stack([keras_out[p][0] for p in paths])
    accuracy = float((probs.argmax(1) == y).mean())
    reference = Reference(
        model=model,
        splits=splits,
        split_kind=split_kind,
        changed=changed,
        paths=paths,
        y=y,
        probs=probs,
        split_report=split_report,
        accuracy=accuracy,
        macs=count_macs(model),
        params=int(model.count_params()),
        source_accuracy=accuracy,
    )
    if options.prune:
        _prune(reference, run, options)
    return reference


def _load_data(run, options) -> tuple:
    """(splits, split kind, changed since training): an old run's recomputed split is checked as evaluate does."""
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.splits import read_split_record

    recorded = read_split_record(run.path) is not None
    names = ("train", "val", "test") if options.prune or not recorded else ("train", "test")
    progress("reading the run's data (train for calibration, test for verification)")
    # Pruning fine-tunes on whole splits in memory; otherwise large splits stream (edgecls.core.data).
    splits = load_run_splits(run, names, options.workers, stream=not options.prune)
    if "test" not in splits:
        raise EdgeclsError("the run has no test split to verify artifacts on: train with --test-fraction > 0")
    changed = False
    fingerprint = run.metadata.get("dataset", {}).get("fingerprint")
    if not recorded and fingerprint:
        from edgecls.core.data import fingerprint as dataset_fingerprint

        changed = dataset_fingerprint(run.labels, {n: splits[n] for n in names if n in splits}) != fingerprint
    return splits, ("recorded" if recorded else "recomputed"), changed


def _prune(reference: Reference, run, options) -> None:
    """Prune and fine-tune the reference model; it then stands for the run's (refused past --max-prune-drop)."""
    from edgecls.converters.prune import prune_model

    reference_right = int(reference.right().sum())
    model, report = prune_model(
        reference.model, options.prune, reference.splits, run, epochs=options.prune_epochs, seed=options.seed
    )
    test = reference.test
    pruned_probs = probabilities(model.predict(test.x, batch_size=64, verbose=0))
    report["accuracy_before"] = reference.accuracy
    pruned_right = int((pruned_probs.argmax(1) == test.y).sum())
    report["accuracy_after"] = pruned_right / len(test.y)
    drop = 100 * (report["accuracy_before"] - report["accuracy_after"])
    progress(
        f"pruned ({options.prune}): params {report['params_before']:,} -> {report['params_after']:,}, "
        f"MACs {report['macs_before']:,} -> {report['macs_after']:,} "
        f"({report['macs_before'] / max(1, report['macs_after']):.2f}x fewer), "
        f"accuracy {report['accuracy_before']:.4f} -> {report['accuracy_after']:.4f}"
    )
    if not gate_passes(reference_right, pruned_right, len(test.y), options.max_prune_drop):
        raise AccuracyGateError(
            f"pruning ({options.prune}) lost {drop:.2f} accuracy points after fine-tuning "
            f"(limit {options.max_prune_drop}): "
            f"prune less, fine-tune longer (--prune-epochs), or raise --max-prune-drop"
        )
    index = {p: k for k, p in enumerate(test.paths)}  # pruning runs in memory: every file decoded once
    reference.probs = pruned_probs[[index[p] for p in reference.paths]]
    reference.model, reference.pruning = model, report
    reference.accuracy, reference.macs, reference.params = (
        report["accuracy_after"],
        report["macs_after"],
        report["params_after"],
    )
