"""Training: a class-per-folder dataset in, a run directory out. The CLI's `train` calls `train()`."""

from __future__ import annotations

import importlib.util
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgecls import __version__
from edgecls.progress import progress
from edgecls.augment import AugmentSpec, build_augmenter
from edgecls.data import fingerprint, load_split, make_tf_dataset
from edgecls.datasets import resolve_dataset, scan_folder
from edgecls.evaluate import evaluate_arrays, write_evaluation
from edgecls.models import create_model, head_activation
from edgecls import plots, rundir
from runtime.atomic import staged_dir, write_json
from runtime.errors import EdgeclsError, MissingDependencyError
from runtime.preprocess import PreprocessSpec

STRATEGIES = ("none", "mirrored", "multiworker")


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "simple"
    model_options: dict = field(default_factory=dict)
    image_size: int | None = None  # None: the dataset's default, else 64
    color: str | None = None  # None: the dataset's default, else rgb
    resize: str = "stretch"
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
    verbose: int | str = "auto"


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    history: dict
    seconds: float


def preprocess_spec_for(cfg: TrainConfig, defaults: dict) -> PreprocessSpec:
    size = cfg.image_size or defaults.get("image_size", 64)
    color = cfg.color or defaults.get("color", "rgb")
    normalize = cfg.normalize or ("symmetric" if cfg.model == "mobilenetv2" else "scale")
    if normalize == "scale":
        return PreprocessSpec.scaled(size, size, 1 / 255, 0.0, color=color, resize=cfg.resize)
    if normalize == "symmetric":
        return PreprocessSpec.scaled(size, size, 1 / 127.5, -1.0, color=color, resize=cfg.resize)
    raise EdgeclsError(f"unknown normalization {normalize!r}: use scale (0..1) or symmetric (-1..1)")


def _strategy(name: str):
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise EdgeclsError("--strategy multiworker needs TF_CONFIG set on every worker (cluster spec and task index)")
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


def _callbacks(cfg: TrainConfig, stage_dir: Path, has_val: bool):
    import keras

    monitor = "val_loss" if has_val else "loss"
    cbs = [
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=max(2, cfg.patience // 2), min_lr=1e-5, verbose=0),
    ]
    if cfg.patience:
        cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.patience, restore_best_weights=True))
    if cfg.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(log_dir=str(stage_dir / "tensorboard")))
    return cbs


def _merge_history(total: dict, new: dict) -> None:
    for key, values in new.items():
        total.setdefault(key, []).extend(float(v) for v in values)


def _unfreeze_top(model, n_layers: int) -> int:
    """Make the top `n_layers` of the frozen backbone trainable, BatchNorm kept frozen."""
    import keras

    from edgecls.models import backbone_layers

    backbone = backbone_layers(model)
    if all(l.trainable for l in backbone):
        raise EdgeclsError("--fine-tune-layers needs a frozen pretrained backbone: use --model mobilenetv2 --weights FILE")
    for i, layer in enumerate(backbone):
        layer.trainable = i >= len(backbone) - n_layers and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for l in backbone if l.trainable)


def train(cfg: TrainConfig) -> TrainResult:
    """Train, evaluate on the held-out split, and write the run directory atomically."""
    started = time.perf_counter()
    out = Path(cfg.out)
    if out.is_dir() and not cfg.overwrite and not any(out.iterdir()):
        out.rmdir()  # an empty folder made beforehand holds nothing to lose
    if out.exists() and not cfg.overwrite:
        raise EdgeclsError(f"output {out} already exists: choose another --out or pass --overwrite")

    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise MissingDependencyError("tensorboard", "train", "--tensorboard writes its logs")

    root, builtin = resolve_dataset(cfg.data)
    defaults = builtin.defaults if builtin else {}
    dataset = scan_folder(root, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    for note in dataset.notes:
        progress(f"warning: {note}")
    spec = preprocess_spec_for(cfg, defaults)
    augment = cfg.augment or AugmentSpec(flip=bool(defaults.get("flip", False)))
    epochs = cfg.epochs or defaults.get("epochs", 30)
    model_options = dict(cfg.model_options)
    if cfg.model == "simple" and "widths" in defaults:
        model_options.setdefault("widths", tuple(defaults["widths"]))
    progress(
        f"data: {root} ({len(dataset.labels)} classes, split from {dataset.split_source}: "
        + ", ".join(f"{k} {v}" for k, v in dataset.counts().items()) + f"); input {spec.shape}"
    )

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()  # --seed means the same run, augmentation order included
    splits = {name: load_split(samples, spec, cfg.workers, name) for name, samples in dataset.splits.items() if samples}
    if "train" not in splits:
        raise EdgeclsError("the train split is empty: add more images per class")
    num_classes = len(dataset.labels)
    activation = head_activation(num_classes, cfg.head)
    as_targets = (lambda y: y.astype(np.float32)[:, None]) if activation == "sigmoid" else None
    strategy = _strategy(cfg.strategy)

    with staged_dir(out, overwrite=cfg.overwrite) as stage:
        with strategy.scope():
            model = create_model(cfg.model, num_classes, spec.shape, head=cfg.head, **model_options)
            _compile(model, cfg, activation, cfg.learning_rate)
        augmenter = build_augmenter(augment, spec, cfg.seed)
        train_ds = make_tf_dataset(splits["train"], cfg.batch_size, True, cfg.seed, augmenter, as_targets)
        val_ds = make_tf_dataset(splits["val"], cfg.batch_size, False, cfg.seed, None, as_targets) if "val" in splits else None
        weights = _class_weights(splits["train"].y, num_classes, cfg.class_weight)
        if weights:
            progress("class weights: " + ", ".join(f"{dataset.labels[i]}={w:.2f}" for i, w in weights.items()))
        progress(f"training {cfg.model} ({model.count_params():,} parameters) for up to {epochs} epochs")
        history: dict = {}
        fit = model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=weights, shuffle=False,
                        callbacks=_callbacks(cfg, stage, val_ds is not None), verbose=cfg.verbose)
        _merge_history(history, fit.history)
        if cfg.fine_tune_layers and cfg.fine_tune_epochs:
            with strategy.scope():
                trainable = _unfreeze_top(model, cfg.fine_tune_layers)
                _compile(model, cfg, activation, cfg.learning_rate / 10)
            progress(f"fine-tuning the top {trainable} backbone layers for {cfg.fine_tune_epochs} epochs")
            fit = model.fit(train_ds, validation_data=val_ds, epochs=cfg.fine_tune_epochs, class_weight=weights, shuffle=False,
                            callbacks=_callbacks(cfg, stage, val_ds is not None), verbose=cfg.verbose)
            _merge_history(history, fit.history)
        history.pop("learning_rate", None)

        eval_split = splits.get("test") or splits.get("val") or splits["train"]
        report = evaluate_arrays(model, eval_split.x, eval_split.y, dataset.labels, cfg.batch_size)
        metrics = {
            "test_accuracy": report["accuracy"],
            "evaluated_on": "test" if "test" in splits else ("val" if "val" in splits else "train"),
            **report,
        }
        if "val" in splits:
            metrics["val_accuracy"] = evaluate_arrays(model, splits["val"].x, splits["val"].y, dataset.labels, cfg.batch_size)["accuracy"]
        metrics["train_seconds"] = round(time.perf_counter() - started, 2)

        model.save(stage / rundir.MODEL_FILE)
        metadata = {
            "format": rundir.RUN_FORMAT,
            "labels": dataset.labels,
            "input_shape": list(spec.shape),
            "preprocess": spec.to_dict(),
            "head": activation,
            "model": {"name": cfg.model, "options": model_options, "parameters": int(model.count_params())},
            "dataset": {
                "source": cfg.data if builtin else str(Path(root).resolve()),
                "builtin": builtin.name if builtin else None,
                "split_source": dataset.split_source,
                "val_fraction": cfg.val_fraction,
                "test_fraction": cfg.test_fraction,
                "counts": {k: len(v.y) for k, v in splits.items()},
                "skipped": sum(len(v.skipped) for v in splits.values()),
                "fingerprint": fingerprint(dataset.labels, splits),
            },
            "seed": cfg.seed,
            "augment": augment.to_dict(),
            "train": {k: v for k, v in asdict(cfg).items() if k not in ("augment", "data", "out", "model_options")} | {"epochs": epochs},
            "versions": {"edgecls": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                         "python": platform.python_version()},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(stage / rundir.METADATA_FILE, metadata)
        write_json(stage / rundir.HISTORY_FILE, history)
        write_evaluation(stage, metrics, dataset.labels)
        plots.training_curves(history, stage / rundir.CURVES_PNG, title=f"{cfg.model} on {Path(str(cfg.data)).name}")
    return TrainResult(out, metrics, history, time.perf_counter() - started)
