"""Training: a class-per-folder dataset in, a run directory out. The CLI's `train` calls `train()`."""

from __future__ import annotations

import importlib.util
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgecls import __version__, distill, plots
from edgecls.callbacks import epoch_lines, keep_best, training_callbacks
from edgecls.core import rundir
from edgecls.core.augment import AugmentSpec, build_augmenter
from edgecls.core.data import (
    StreamedSplit,
    check_all_decoded,
    fingerprint,
    in_memory_limit,
    make_tf_dataset,
    open_splits,
)
from edgecls.core.datasets import resolve_dataset, scan_folder
from edgecls.core.datasets.merged import merged_dataset
from edgecls.core.outputs import run_guard
from edgecls.core.parent import check_out_apart, check_same_input, open_parent, parent_record, start_model
from edgecls.core.progress import progress
from edgecls.core.splits import CONTENT_RANK, write_split_record
from edgecls.distributed import MultiWorkerTrainer, is_chief, local_copy, output_dir
from edgecls.evaluate import evaluate_split, write_evaluation
from edgecls.models import (
    DEFAULT_MODEL,
    check_options,
    create_model,
    dataset_options,
    default_normalization,
    fine_tuning_hint,
    head_activation,
    list_models,
    supports_fine_tuning,
)
from edgecls.runtime.atomic import check_output, write_json
from edgecls.runtime.errors import DataError, EdgeclsError, MissingDependencyError
from edgecls.runtime.preprocess import COLORS, RESIZE_MODES, PreprocessSpec
from edgecls.runtime.preprocess import NORMALIZATIONS as NAMED_NORMALIZATIONS

STRATEGIES = ("none", "mirrored", "multiworker")
OPTIMIZERS = ("adam", "sgd")
CLASS_WEIGHTS = ("auto", "balanced", "none")
HEADS = ("auto", "sigmoid", "softmax")
NORMALIZATIONS = tuple(NAMED_NORMALIZATIONS)


@dataclass
class TrainConfig:
    """What `train` does. `validate()` checks every field before any data is read.

    With fine-tuning the saved model is the epoch with the lowest validation loss (training loss
    without a val split) over both phases together, and metadata.json says which epoch that was.
    """

    data: str | tuple  # a folder or built-in name; several (a tuple) are merged by class name
    out: str
    model: str = DEFAULT_MODEL
    model_options: dict = field(default_factory=dict)
    image_size: int | None = None  # None: the dataset's default, else 64
    color: str | None = None  # None: the dataset's default, else rgb
    resize: str | None = None  # None: the teacher's when distilling, else stretch
    normalize: str | None = None  # "scale" (0..1) or "symmetric" (-1..1); None: by model
    epochs: int | None = None
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    patience: int = 8
    class_weight: str = "auto"  # auto | balanced | none
    head: str = "auto"
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    augment: AugmentSpec | None = None
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 0
    strategy: str = "none"
    tensorboard: bool = False
    overwrite: bool = False
    workers: int = 4
    verbose: int | str = "auto"  # Keras' progress bars; 2: one plain line per epoch (logs in files); 0: none
    in_memory_mb: float | None = None  # None: EDGECLS_IN_MEMORY_MB, else 256 (edgecls.core.data)
    teacher: str | None = None  # a run directory to distil from (edgecls.distill)
    temperature: float = distill.DEFAULT_TEMPERATURE
    distill_alpha: float = distill.DEFAULT_ALPHA
    init_from: str | None = None  # a run to start from: its weights, input and classes; its test split is kept
    callbacks: tuple = ()  # extra Keras callbacks, from Python only (benchmarks watch every epoch)

    @property
    def datasets(self) -> list:
        return [self.data] if isinstance(self.data, (str, os.PathLike)) else list(self.data)

    def validate(self) -> None:
        """Raise EdgeclsError (one line, naming the option) for any value training would choke on later."""
        for value, allowed, what in (
            (self.model, list_models(), "model"),
            (self.optimizer, OPTIMIZERS, "optimizer"),
            (self.class_weight, CLASS_WEIGHTS, "class weight mode"),
            (self.head, HEADS, "head"),
            (self.strategy, STRATEGIES, "strategy"),
            (self.resize, (None, *RESIZE_MODES), "resize mode"),
            (self.normalize, (None, *NORMALIZATIONS), "normalization"),
            (self.color, (None, *COLORS), "color"),
        ):
            if value not in allowed:
                raise EdgeclsError(f"unknown {what} {value!r}: use one of {', '.join(a for a in allowed if a)}")
        _check_int("--image-size", self.image_size, 8, 1024, optional=True)
        _check_int("--epochs", self.epochs, 1, optional=True)
        _check_int("--batch-size", self.batch_size, 1)
        _check_int("--patience", self.patience, 0)
        _check_int("--fine-tune-layers", self.fine_tune_layers, 0)
        _check_int("--fine-tune-epochs", self.fine_tune_epochs, 0)
        _check_int("workers", self.workers, 1)
        in_memory_limit(self.in_memory_mb)
        _check_int("--seed", self.seed, 0, 2**32 - 1)  # numpy's seed range
        _check_float("--lr", self.learning_rate, 0.0, math.inf, low_open=True)
        _check_float("--momentum", self.momentum, 0.0, 1.0, high_open=True)
        _check_float("--val-fraction", self.val_fraction, 0.0, 1.0, high_open=True)
        _check_float("--test-fraction", self.test_fraction, 0.0, 1.0, high_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            raise EdgeclsError(
                f"--val-fraction {self.val_fraction:g} and --test-fraction {self.test_fraction:g} "
                "leave no images for training: keep their sum below 1"
            )
        if self.augment is not None:
            self.augment.validate()
        check_options(self.model, None, **self.model_options)  # the image-size checks wait for the dataset's defaults
        if bool(self.fine_tune_layers) != bool(self.fine_tune_epochs):
            raise EdgeclsError(
                "fine-tuning needs both --fine-tune-layers N and --fine-tune-epochs N (one of them is 0)"
            )
        if self.fine_tune_layers and not supports_fine_tuning(self.model, self.model_options):
            raise EdgeclsError(f"--fine-tune-layers needs a frozen pretrained backbone: use {fine_tuning_hint()}")
        if self.teacher is not None:
            distill.check_settings(self.temperature, self.distill_alpha)
            if self.strategy == "multiworker":
                raise EdgeclsError(
                    "--teacher does not work with --strategy multiworker: use --strategy none or mirrored"
                )
        if self.init_from is not None and (self.teacher is not None or self.strategy == "multiworker"):
            raise EdgeclsError(
                "--init-from starts from a run's weights: it does not combine with --teacher or --strategy multiworker"
            )
        if not self.datasets:
            raise EdgeclsError("no --data given: pass a class-per-folder directory or a built-in name")
        if self.strategy == "multiworker" and "TF_CONFIG" not in os.environ:
            raise EdgeclsError(
                "--strategy multiworker needs TF_CONFIG set on every worker (cluster spec and task index)"
            )


def _check_int(flag: str, value, low: int, high: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        bound = f"from {low} to {high}" if high is not None else f"of {low} or more"
        raise EdgeclsError(f"{flag} {value!r} is out of range: use a whole number {bound}")


def _check_float(flag: str, value, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    try:
        value = float(value)
        ok = (
            math.isfinite(value)
            and (low < value if low_open else low <= value)
            and (value < high if high_open else value <= high)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        lower = f"above {low:g}" if low_open else f"from {low:g}"
        upper = "" if high == math.inf else (f" to below {high:g}" if high_open else f" to {high:g}")
        raise EdgeclsError(f"{flag} {value!r} is out of range: use a value {lower}{upper}")


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    history: dict
    seconds: float
    chief: bool = True  # False on the other workers of a multi-worker run: they wrote nothing


def preprocess_spec_for(cfg: TrainConfig, defaults: dict) -> PreprocessSpec:
    size = cfg.image_size or defaults.get("image_size", 64)
    color = cfg.color or defaults.get("color", "rgb")
    normalize = cfg.normalize or default_normalization(cfg.model)
    return PreprocessSpec.normalized(size, size, normalize, color=color, resize=cfg.resize or "stretch")


def _strategy(name: str):
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise EdgeclsError(
                "--strategy multiworker needs TF_CONFIG set on every worker (cluster spec and task index)"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise EdgeclsError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")


def _class_weights(y: np.ndarray, num_classes: int, mode: str) -> dict | None:
    counts = np.bincount(y, minlength=num_classes).astype(float)
    if mode == "none":
        return None
    if mode == "auto" and counts.max() <= 1.5 * counts.min():
        return None  # balanced enough; weights would only add noise
    if mode not in ("auto", "balanced"):
        raise EdgeclsError(f"unknown class weight mode {mode!r}: use auto, balanced or none")
    weights = counts.sum() / (num_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def _optimizer(cfg: TrainConfig, learning_rate: float):
    import keras

    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=cfg.momentum, nesterov=True)
    raise EdgeclsError(f"unknown optimizer {cfg.optimizer!r}: use adam or sgd")


def _compile(model, cfg: TrainConfig, activation: str, learning_rate: float) -> None:
    loss = "binary_crossentropy" if activation == "sigmoid" else "sparse_categorical_crossentropy"
    model.compile(optimizer=_optimizer(cfg, learning_rate), loss=loss, metrics=["accuracy"])


def _merge_history(total: dict, new: dict) -> None:
    for key, values in new.items():
        total.setdefault(key, []).extend(float(v) for v in values)


def _unfreeze_top(model, n_layers: int) -> int:
    """Make the top `n_layers` of the frozen backbone trainable, BatchNorm kept frozen."""
    import keras

    from edgecls.models import backbone_layers

    backbone = backbone_layers(model)
    if all(l.trainable for l in backbone):
        raise EdgeclsError(f"--fine-tune-layers needs a frozen pretrained backbone: use {fine_tuning_hint()}")
    for i, layer in enumerate(backbone):
        layer.trainable = i >= len(backbone) - n_layers and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for l in backbone if l.trainable)


def _decode_held_out(splits: dict) -> None:
    """Decode streamed val and test files once before training (a third of a pass): a held-out split
    whose files pass the header check but never decode is refused now, with the cause, not after
    the last epoch (val would pick the kept epoch on nothing)."""
    for name in ("val", "test"):
        split = splits.get(name)
        if isinstance(split, StreamedSplit):
            split.check_unseen()
            split.report_new()
            if not len(split):
                raise DataError(
                    f"no readable images in the {name} split: every file failed to decode "
                    f"({split.skipped[0][1]}); replace them or move good images into {name}"
                )


def _skip_reporter(splits: dict):
    """A callback: at the end of each epoch, one line for the streamed files found unreadable during it."""
    import keras

    streamed = [s for s in splits.values() if isinstance(s, StreamedSplit)]

    class ReportSkipped(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for split in streamed:
                split.report_new(f" during epoch {epoch + 1}")
                if not len(split):  # a whole pass decoded nothing: every batch weighed 0
                    raise DataError(
                        f"no readable images in the {split.name} split: every file failed to decode "
                        f"({split.skipped[0][1]})"
                    )

    return ReportSkipped()


def _fit_function(cfg: TrainConfig, strategy, model, splits: dict, activation: str, augmenter, weights, chief: bool):
    """`fit(callbacks, end, start) -> history` for epochs start..end-1: Keras' fit, or the multi-worker loop."""
    if cfg.strategy == "multiworker":
        trainer = MultiWorkerTrainer(
            strategy,
            model,
            activation,
            splits["train"],
            splits.get("val"),
            cfg.batch_size,
            cfg.seed,
            augmenter,
            weights,
            verbose=chief,
        )
        return lambda callbacks, end, start: trainer.fit(end, start, callbacks)
    as_targets = (lambda y: y.astype(np.float32)[:, None]) if activation == "sigmoid" else None
    streamed = isinstance(splits["train"], StreamedSplit)  # its dataset carries the class weights itself
    train_ds = make_tf_dataset(
        splits["train"], cfg.batch_size, True, cfg.seed, augmenter, as_targets, weights if streamed else None
    )
    val_ds = (
        make_tf_dataset(splits["val"], cfg.batch_size, False, cfg.seed, None, as_targets) if "val" in splits else None
    )

    def fit(callbacks, end, start):
        return model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=end,
            initial_epoch=start,
            class_weight=None if streamed else weights,
            shuffle=False,
            callbacks=callbacks,
            verbose=0 if cfg.verbose == 2 else cfg.verbose,  # 2: our own one line per epoch (_train_model)
        ).history

    return fit


@dataclass
class _Plan:
    """What `train` settles before any image is read: the data, the preprocessing and the model's options."""

    root: Path
    builtin: object  # the built-in dataset, or None
    guard: dict  # what `--out` may replace
    teacher: object  # the distillation teacher's run, or None
    dataset: object  # the scanned folder: labels, split files
    spec: PreprocessSpec
    augment: AugmentSpec
    epochs: int
    model_options: dict
    activation: str
    parent: object = None  # the --init-from run, or None
    view: Path | None = None  # several folders merged: the folder of symlinks trained on (kept as RUN/data)
    sources: list = field(default_factory=list)  # the folders a merged dataset's images come from

    @property
    def labels(self) -> list:
        return self.dataset.labels


def _train_model(cfg: TrainConfig, plan: _Plan, strategy, chief: bool, splits: dict, stage: Path):
    """Both phases (head, then optional fine-tuning); returns (model, history, the kept epoch)."""
    multiworker = cfg.strategy == "multiworker"
    spec, augment, epochs, activation, labels = plan.spec, plan.augment, plan.epochs, plan.activation, plan.labels
    with strategy.scope():
        if plan.parent is not None:
            model = start_model(plan.parent, labels, activation)
        else:
            model = create_model(cfg.model, len(labels), spec.shape, head=cfg.head, **plan.model_options)
        trainer = model  # what fits: the model itself, or the Distiller around it and the teacher
        if cfg.teacher:
            _, teacher = distill.load_teacher(cfg.teacher, cfg.out)
            trainer = distill.Distiller(model, teacher, cfg.temperature, cfg.distill_alpha)
            trainer.compile(_optimizer(cfg, cfg.learning_rate))
        else:
            _compile(model, cfg, activation, cfg.learning_rate)
    weights = _class_weights(splits["train"].y, len(labels), cfg.class_weight)
    if weights:
        progress("class weights: " + ", ".join(f"{labels[i]}={w:.2f}" for i, w in weights.items()))
    fit = _fit_function(
        cfg, strategy, trainer, splits, activation, build_augmenter(augment, spec, cfg.seed), weights, chief
    )
    monitor = "val_loss" if "val" in splits else "loss"
    best = keep_best(monitor)  # one keeper for both phases: the saved model is the best epoch overall
    logs = stage / "tensorboard" if cfg.tensorboard and chief else None

    def callbacks():
        lines = [epoch_lines()] if cfg.verbose == 2 and not multiworker else []  # the loop prints its own
        return training_callbacks(cfg.patience, monitor, best, logs, graph=not multiworker) + [
            _skip_reporter(splits),
            *lines,
            *cfg.callbacks,
        ]

    progress(
        f"training {cfg.model} ({model.count_params():,} parameters) for up to {epochs} epochs"
        + (
            f", distilled from {cfg.teacher} (T={cfg.temperature:g}, alpha={cfg.distill_alpha:g})"
            if cfg.teacher
            else ""
        )
    )
    history: dict = {}
    _merge_history(history, fit(callbacks(), epochs, 0))
    best.restore()  # fine-tuning starts from the best head
    head_epochs = len(history.get("loss", []))
    if cfg.fine_tune_layers and cfg.fine_tune_epochs:
        with strategy.scope():
            trainable = _unfreeze_top(model, cfg.fine_tune_layers)
            if cfg.teacher:
                trainer.compile(_optimizer(cfg, cfg.learning_rate / 10))
            else:
                _compile(model, cfg, activation, cfg.learning_rate / 10)
        progress(f"fine-tuning the top {trainable} backbone layers for {cfg.fine_tune_epochs} epochs")
        # initial_epoch continues the epoch count, so TensorBoard and the history do not overlap
        _merge_history(history, fit(callbacks(), head_epochs + cfg.fine_tune_epochs, head_epochs))
        best.restore()
    history.pop("learning_rate", None)
    kept = None
    if best.best_epoch is not None:
        phase = "fine-tune" if best.best_epoch >= head_epochs else ("head" if cfg.fine_tune_layers else "train")
        kept = {"epoch": best.best_epoch + 1, "phase": phase, "monitor": monitor, "value": round(best.best, 6)}
        progress(_kept_line(kept, len(history.get("loss", []))))
    if multiworker:
        model = local_copy(model)  # evaluate and save outside the strategy, like the other engines
    return model, history, kept


def _kept_line(kept: dict, ran: int) -> str:
    """'restored the best epoch (29 of 30, lowest validation loss 0.0421)': which weights are saved, and why."""
    phase = {"head": ", head phase", "fine-tune": ", fine-tuning phase"}.get(kept["phase"], "")
    value = f"{kept['value']:.4f}"
    by = (
        f"lowest validation loss {value}"
        if kept["monitor"] == "val_loss"
        else f"lowest training loss {value}; no validation split"
    )
    return f"restored the best epoch ({kept['epoch']} of {ran}{phase}, {by})"


def train(cfg: TrainConfig) -> TrainResult:
    """Train, evaluate on the held-out split, and write the run directory atomically.

    Every option and the output path are checked before any image is read or any epoch runs. With
    `--strategy multiworker` every worker runs this; only the chief (task 0) writes `cfg.out`.
    """
    started = time.perf_counter()
    cfg.validate()
    out = Path(cfg.out)
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise MissingDependencyError("tensorboard", "train", "--tensorboard writes its logs")
    cfg, plan = _plan(cfg, out)
    try:
        return _train_planned(cfg, plan, out, started)
    finally:
        if plan.view is not None:
            shutil.rmtree(plan.view, ignore_errors=True)


def _train_planned(cfg: TrainConfig, plan: _Plan, out: Path, started: float) -> TrainResult:
    import keras
    import tensorflow as tf

    strategy = _strategy(cfg.strategy)  # MultiWorkerMirroredStrategy must exist before other TF ops run
    chief = is_chief(strategy)
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()  # --seed means the same run, augmentation order included
    splits = _open_data(cfg, plan)

    with output_dir(out, chief, overwrite=cfg.overwrite, **plan.guard) as stage:
        model, history, kept = _train_model(cfg, plan, strategy, chief, splits, stage)
        metrics = _evaluate(model, splits, plan.labels, cfg.batch_size, started)
        if chief:  # split.json, counts and the fingerprint list the files really used (the others' are discarded)
            check_all_decoded(splits)

        model.save(stage / rundir.MODEL_FILE)
        write_json(stage / rundir.METADATA_FILE, _metadata(cfg, plan, splits, model, kept, strategy))
        write_split_record(stage, plan.root, plan.labels, splits)
        if plan.view is not None:  # the merged folders' symlinks: the run's dataset folder from now on
            shutil.copytree(plan.view, stage / rundir.DATA_DIR, symlinks=True)
        write_json(stage / rundir.HISTORY_FILE, history)
        write_evaluation(stage, metrics, plan.labels)
        name = " + ".join(Path(str(d)).name for d in cfg.datasets)
        plots.training_curves(history, stage / rundir.CURVES_PNG, title=f"{cfg.model} on {name}")
    return TrainResult(out, metrics, history, time.perf_counter() - started, chief)


def _plan(cfg: TrainConfig, out: Path) -> tuple:
    """(cfg with the teacher's defaults, the plan): the output, the dataset's files and every option that
    depends on them are checked here, before any image is decoded."""
    if cfg.init_from is not None or len(cfg.datasets) > 1:
        return _merged_plan(cfg, out)
    root, builtin = resolve_dataset(cfg.data)
    guard = run_guard(root)
    check_output(out, cfg.overwrite, **guard)  # a refusal costs nothing
    defaults = builtin.defaults if builtin else {}
    teacher = None
    if cfg.teacher:
        teacher = distill.open_teacher(cfg.teacher, cfg.out)  # metadata only; the model loads with the student
        cfg = replace(cfg, **{k: v for k, v in distill.teacher_defaults(teacher).items() if getattr(cfg, k) is None})
    dataset = scan_folder(root, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    for note in dataset.notes:
        progress(f"warning: {note}")
    spec = preprocess_spec_for(cfg, defaults)
    augment = cfg.augment or AugmentSpec(flip=bool(defaults.get("flip", False)))
    epochs = cfg.epochs or defaults.get("epochs", 30)
    model_options = dict(cfg.model_options)
    for name, value in dataset_options(cfg.model, defaults).items():  # e.g. the digits' widths for simple
        model_options.setdefault(name, value)
    activation = head_activation(len(dataset.labels), cfg.head)
    check_options(cfg.model, spec.shape, **model_options)
    if teacher is not None:
        distill.check_teacher(teacher, spec, dataset.labels)
    progress(
        f"data: {root} ({len(dataset.labels)} classes, split from {dataset.split_source}: "
        + ", ".join(f"{k} {v}" for k, v in dataset.counts().items())
        + f"); input {spec.shape}"
    )
    return cfg, _Plan(root, builtin, guard, teacher, dataset, spec, augment, epochs, model_options, activation)


def _merged_plan(cfg: TrainConfig, out: Path) -> tuple:
    """`_plan` for several --data folders or --init-from: the folders merged behind a folder of symlinks, and
    with a parent its input, model, classes and test split."""
    if cfg.init_from is not None:
        check_out_apart(cfg.init_from, out)
    roots = [resolve_dataset(d) for d in cfg.datasets]
    guard = run_guard(roots[0][0])  # every folder is protected, and RUN/data is the run's own
    guard["protect"] = {f"the dataset {root}": root for root, _ in roots}
    guard["contents"] = guard["contents"] | {rundir.DATA_DIR}
    check_output(out, cfg.overwrite, **guard)
    defaults = _merged_defaults([b for _, b in roots if b], said=cfg.init_from is None)  # a parent's input wins
    parent = fixed = teacher = None
    if cfg.teacher:  # never with --init-from (validate): the teacher's input is the student's default, as in _plan
        teacher = distill.open_teacher(cfg.teacher, cfg.out)
        cfg = replace(cfg, **{k: v for k, v in distill.teacher_defaults(teacher).items() if getattr(cfg, k) is None})
    if cfg.init_from is not None:
        parent, fixed = open_parent(cfg.init_from, cfg.workers)
        check_same_input(parent, image_size=cfg.image_size, color=cfg.color, resize=cfg.resize, normalize=cfg.normalize)
        cfg = replace(cfg, model=parent.metadata.get("model", {}).get("name", cfg.model))
    view = Path(tempfile.mkdtemp(prefix="edgecls-data-"))
    try:
        dataset, sources = merged_dataset(
            [str(root) for root, _ in roots], view, cfg.val_fraction, cfg.test_fraction, cfg.seed, fixed, cfg.workers
        )
        spec, model_options, activation, epochs = _merged_model(cfg, dataset.labels, defaults, parent, teacher)
    except BaseException:
        shutil.rmtree(view, ignore_errors=True)
        raise
    augment = cfg.augment or AugmentSpec(flip=bool(defaults.get("flip", False)))
    progress(
        f"data: {' + '.join(str(s) for s in sources)} ({len(dataset.labels)} classes, "
        + (f"the test split of {parent.path}, " if parent is not None else "")
        + ", ".join(f"{k} {v}" for k, v in dataset.counts().items())
        + f"); input {spec.shape}"
    )
    plan = _Plan(view, None, guard, teacher, dataset, spec, augment, epochs, model_options, activation)
    plan.parent, plan.view, plan.sources = parent, view, sources
    return cfg, plan


def _merged_defaults(builtins: list, said: bool = True) -> dict:
    """The defaults (input, widths, epochs) of the built-in datasets among several --data, wherever they stand."""
    if not builtins:
        return {}
    names = ", ".join(dict.fromkeys(b.name for b in builtins))
    if any(b.defaults != builtins[0].defaults for b in builtins):
        if said:
            progress(f"the built-ins {names} have other defaults: none used (give --image-size, --color, --widths)")
        return {}
    if said:
        progress(
            f"defaults of the built-in {names} for every --data folder (--image-size, --color, --widths change them)"
        )
    return builtins[0].defaults


def _merged_model(cfg: TrainConfig, labels: list, defaults: dict, parent, teacher) -> tuple:
    """(spec, model options, head activation, epochs) of a merged run: the parent's, else from the options."""
    if parent is not None:
        spec = parent.preprocess
        model_options = dict(parent.metadata.get("model", {}).get("options", {}))
        grown = len(labels) != len(parent.labels)
        activation = head_activation(len(labels), "auto") if grown else parent.metadata.get("head", "softmax")
        return spec, model_options, activation, cfg.epochs or parent.metadata.get("train", {}).get("epochs") or 30
    spec = preprocess_spec_for(cfg, defaults)
    model_options = dict(cfg.model_options)
    for name, value in dataset_options(cfg.model, defaults).items():
        model_options.setdefault(name, value)
    check_options(cfg.model, spec.shape, **model_options)
    if teacher is not None:
        distill.check_teacher(teacher, spec, labels)
    return spec, model_options, head_activation(len(labels), cfg.head), cfg.epochs or defaults.get("epochs", 30)


def _open_data(cfg: TrainConfig, plan: _Plan) -> dict:
    """The splits, in memory or streamed; held-out files that never decode are refused now."""
    splits = open_splits(plan.dataset.splits, plan.spec, cfg.workers, cfg.in_memory_mb)
    if "train" not in splits:
        raise EdgeclsError("the train split is empty: add more images per class")
    _decode_held_out(splits)
    if plan.teacher is not None and "test" in splits:
        distill.check_split(plan.teacher, splits["test"].digests)
    return splits


def _evaluate(model, splits: dict, labels: list, batch_size: int, started: float) -> dict:
    """metrics.json: on the test split (else val, else train), with val's accuracy too when there is one."""
    eval_split = splits.get("test") or splits.get("val") or splits["train"]
    report = evaluate_split(model, eval_split, labels, batch_size)
    metrics = {
        "test_accuracy": report["accuracy"],
        "evaluated_on": "test" if "test" in splits else ("val" if "val" in splits else "train"),
        **report,
    }
    if "val" in splits:
        metrics["val_accuracy"] = evaluate_split(model, splits["val"], labels, batch_size)["accuracy"]
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    return metrics


def _metadata(cfg: TrainConfig, plan: _Plan, splits: dict, model, kept, strategy) -> dict:
    """metadata.json: what the run is (labels, input, preprocessing, head, model, dataset) and how it was made."""
    import keras
    import tensorflow as tf

    builtin, dataset = plan.builtin, plan.dataset
    if plan.view is not None:  # RUN/data, where the run's split.json finds its images
        source = str((Path(cfg.out) / rundir.DATA_DIR).resolve())
    else:
        source = cfg.data if builtin else str(Path(plan.root).resolve())
    return {
        "format": rundir.RUN_FORMAT,
        "labels": dataset.labels,
        "input_shape": list(plan.spec.shape),
        "preprocess": plan.spec.to_dict(),
        "head": plan.activation,
        "model": {"name": cfg.model, "options": plan.model_options, "parameters": int(model.count_params())},
        "dataset": {
            "source": source,
            "sources": [str(Path(r).resolve()) for r in plan.sources] if plan.view is not None else None,
            "builtin": builtin.name if builtin else None,
            "split_source": dataset.split_source,
            "split_method": CONTENT_RANK,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "counts": {k: len(v.y) for k, v in splits.items()},
            "skipped": sum(len(v.skipped) for v in splits.values()),
            "fingerprint": fingerprint(dataset.labels, splits),
        },
        "seed": cfg.seed,
        "augment": plan.augment.to_dict(),
        "teacher": distill.teacher_record(plan.teacher, cfg.temperature, cfg.distill_alpha) if plan.teacher else None,
        "parent": parent_record(plan.parent) if plan.parent is not None else None,
        "train": {
            f.name: getattr(cfg, f.name)
            for f in fields(cfg)
            if f.name not in ("augment", "data", "out", "model_options", "callbacks")
        }
        | {"epochs": plan.epochs, "kept_epoch": kept, "replicas": int(strategy.num_replicas_in_sync)},
        "versions": {
            "edgecls": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
