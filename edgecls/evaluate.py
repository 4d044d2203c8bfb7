"""Evaluation of a Keras model: the end of `train`, and `edgecls evaluate RUN`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgecls import plots
from edgecls.core import rundir
from edgecls.core.metrics import classification_report, probabilities
from edgecls.runtime.atomic import write_json
from edgecls.runtime.errors import DataError


def evaluate_split(model, split, labels: list, batch_size: int = 64) -> dict:
    """Classification report of the model over a split, in memory or streamed batch by batch."""
    from edgecls.core.data import predict_split

    probs, y = predict_split(lambda x: probabilities(model.predict_on_batch(x)), split, batch_size)
    return classification_report(y, probs.argmax(axis=1), labels)


def write_evaluation(folder: Path, metrics: dict, labels: list) -> None:
    write_json(Path(folder) / rundir.METRICS_FILE, metrics)
    plots.confusion_matrix(
        metrics["confusion_matrix"],
        labels,
        Path(folder) / rundir.CONFUSION_PNG,
        title=f"confusion matrix ({metrics.get('evaluated_on', 'test')}, accuracy {metrics['accuracy']:.4f})",
    )


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _same_folder(a, b) -> bool:
    if a is None or b is None:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _recorded_root(run) -> Path | None:
    from edgecls.core.rundata import run_root

    try:
        return run_root(run)
    except DataError:  # the run does not record its dataset: any --data is other data
        return None


def _other_samples(run, root: Path, split: str) -> list:
    """Samples of another dataset, labelled by the model's label indices: every image, or one seeded split."""
    from edgecls.core.datasets import scan_folder
    from edgecls.core.rundata import check_classes

    info = run.metadata.get("dataset", {})
    if split == "all":
        dataset = scan_folder(root, 0.0, 0.0, min_classes=1)
    else:
        dataset = scan_folder(
            root,
            info.get("val_fraction", 0.1),
            info.get("test_fraction", 0.2),
            run.metadata.get("seed", 0),
            min_classes=1,
        )
    check_classes(root, dataset.labels, run.labels, subset_ok=True)
    chosen = sum(dataset.splits.values(), []) if split == "all" else dataset.splits[split]
    remap = {i: run.labels.index(name) for i, name in enumerate(dataset.labels)}
    return [type(s)(s.path, remap[s.label], s.digest) for s in chosen]


def evaluate_run(
    run_path,
    data: str | None = None,
    split: str | None = None,
    batch_size: int = 64,
    workers: int = 4,
    save: bool | None = None,
) -> dict:
    """Evaluate a run's model on its own recorded split (default: test), or on every image of `data`.

    `data` naming the run's own dataset folder counts as the run's own data. With other data, class
    folders are matched to the run's labels by name (a subset is fine, an unknown class is refused)
    and `split` (default: all) narrows it to a seeded split drawn with the run's seed and fractions.
    `save` writes metrics.json and confusion_matrix.png into the run; by default only re-evaluating
    the run's own test split does, so other data never replaces the run's own figures unasked.
    """
    from edgecls.core.data import StreamedSplit, open_splits
    from edgecls.core.datasets import resolve_dataset
    from edgecls.core.rundata import holds_recorded_split, require_splits, run_dataset, trained_on

    run = rundir.open_run(run_path)
    root = resolve_dataset(data)[0] if data is not None else None
    own = root is None or _same_folder(root, _recorded_root(run))
    moved = not own and holds_recorded_split(run, root)
    if moved:  # the run's own folder, moved or copied: evaluating it whole would verify on training images
        _warn(f"note: {root} holds the files the run recorded in split.json: evaluating the run's own split there")
    if own or moved:
        split = split or "test"
        names = ["train", "val", "test"] if split == "all" else [split]
        dataset = run_dataset(run, workers, names, root if moved else None)
        require_splits(run, dataset, names)
        root, chosen = (
            dataset.root,
            sum(dataset.splits.values(), []) if split == "all" else dataset.splits.get(split, []),
        )
    else:
        split = split or "all"
        chosen = _other_samples(run, root, split)
    if not chosen:
        raise DataError(f"the {split} split of {root} is empty: use --split val|train|all")
    loaded = open_splits({split: chosen}, run.preprocess, workers)[split]  # streamed above the in-memory limit
    model = run.load_model()
    report = evaluate_split(model, loaded, run.labels, batch_size)
    if isinstance(loaded, StreamedSplit):
        loaded.report_new(" while evaluating")  # files that passed the header check but did not decode
    if not (own or moved):  # after the pass: only the images really evaluated count
        seen = trained_on(run)
        overlap = sum(d in seen for d in loaded.digests)
        if overlap:
            _warn(
                f"warning: {overlap} of the {len(loaded.digests)} images of {root} "
                "are images the run trained or validated on "
                f"(same bytes): their accuracy is not held-out"
            )
    metrics = {"evaluated_on": split, "data": str(root), **report}
    if own and split == "test":  # only the run's own held-out split is its test accuracy
        metrics = {"test_accuracy": report["accuracy"], **metrics}
    if save if save is not None else (own and split == "test"):
        # Keep what training recorded (val accuracy, time); the fields above say what was evaluated.
        previous = run.path / rundir.METRICS_FILE
        old = json.loads(previous.read_text()) if previous.is_file() else {}
        metrics = {**old, **metrics}
        write_evaluation(run.path, metrics, run.labels)
    return metrics
