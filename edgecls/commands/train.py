"""`edgecls train`: train a CNN on a class-per-folder dataset."""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from edgecls.commands._errors import OneLineErrors
from edgecls.commands._options import examples
from edgecls.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE
from edgecls.models import DEFAULT_MODEL
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import NORMALIZATIONS


def _model_help() -> str:
    from edgecls.models import list_models

    return f"Architecture: {', '.join(list_models())}."


# What --init-from takes from its parent: the architecture, its options and its head (the weights fit only them)
PARENTS_MODEL = ("model", "head", "widths", "dense", "pooling", "batch_norm", "dropout", "l2", "alpha", "weights")


def _refuse_parents_model_options(o: dict) -> None:
    ctx = click.get_current_context()
    given = [n for n in PARENTS_MODEL if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)]
    if o["init_from"] and given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise EdgeclsError(
            f"{flags} cannot change a model started with --init-from {o['init_from']}: it keeps its parent's "
            "architecture, options and head (leave them out, or train from scratch)"
        )


def _parse_widths(value: str | None):
    if value is None:
        return None
    items = value.split(",")
    if items and not items[-1].strip():
        items = items[:-1]  # a trailing comma is harmless; an empty item inside (8,,16) is a typo
    try:
        return tuple(int(v) for v in items)
    except ValueError:
        raise EdgeclsError(f"--widths {value!r} is invalid: use comma-separated integers, e.g. 32,64,128") from None


@click.command(cls=OneLineErrors)
@click.option(
    "--data",
    required=True,
    multiple=True,
    help="Class-per-folder directory, or a built-in dataset: digits, shapes. Give it several times to train on "
    "several folders merged by class name (dot folders such as .unlabelled are ignored).",
)
@click.option(
    "--init-from",
    type=click.Path(),
    help="A run directory to start from: its weights, input, model and classes (added classes grow the head); "
    "its recorded test split stays the test split, so `edgecls compare RUN OUT` compares them on the same images.",
)
@click.option("--out", "out", required=True, type=click.Path(), help="Run directory to create.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help=_model_help())
@click.option("--image-size", type=click.IntRange(8, 1024), help="Square input size (default: per dataset, else 64).")
@click.option(
    "--color", type=click.Choice(["rgb", "bgr", "gray"]), help="Input colour (default: per dataset, else rgb)."
)
@click.option(
    "--resize",
    type=click.Choice(["stretch", "center-crop", "letterbox"]),
    help="How images reach the input size  [default: stretch, or the teacher's]",
)
@click.option(
    "--normalize",
    type=click.Choice(list(NORMALIZATIONS)),
    help="scale 0..1, symmetric -1..1, imagenet mean/std (default: by model).",
)
@click.option("--epochs", type=click.IntRange(1), help="Maximum epochs (default: per dataset, else 30).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Images per training step.")
@click.option(
    "--optimizer",
    type=click.Choice(["adam", "sgd"]),
    default="adam",
    show_default=True,
    help="Adam, or SGD with --momentum.",
)
@click.option(
    "--lr",
    "learning_rate",
    type=click.FloatRange(0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Learning rate.",
)
@click.option(
    "--momentum", type=click.FloatRange(0, 1, max_open=True), default=0.9, show_default=True, help="SGD momentum."
)
@click.option(
    "--patience", type=click.IntRange(0), default=8, show_default=True, help="Early stopping patience (0: off)."
)
@click.option(
    "--class-weight",
    type=click.Choice(["auto", "balanced", "none"]),
    default="auto",
    show_default=True,
    help="auto weights classes only when the folders are imbalanced.",
)
@click.option(
    "--head",
    type=click.Choice(["auto", "sigmoid", "softmax"]),
    default="auto",
    show_default=True,
    help="auto: sigmoid for two classes, softmax otherwise.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    show_default=True,
    help="Seeds the split, initialization, augmentation and shuffling (op determinism on).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of each class held out for validation (when the folder has no val/).",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of each class held out for the test (when the folder has no test/).",
)
@click.option("--widths", help="simple: filters per block, e.g. 32,64,128.")
@click.option("--dense", type=click.IntRange(0), help="simple: hidden Dense units before the head.")
@click.option("--pooling", type=click.Choice(["global", "flatten"]), help="simple: how the head sees the features.")
@click.option(
    "--batch-norm/--no-batch-norm", default=None, help="simple: BatchNormalization after each conv (default: on)."
)
@click.option("--dropout", type=click.FloatRange(0, 0.95), help="Dropout before the head.")
@click.option("--l2", type=click.FloatRange(0), help="L2 weight decay.")
@click.option(
    "--alpha", type=click.FloatRange(0, min_open=True), help="MobileNetV2/V3: width multiplier (e.g. 0.35, 0.75, 1.0)."
)
@click.option(
    "--weights",
    help="Pretrained backbone of a Keras applications model, for transfer learning: imagenet (Keras' file, downloaded "
    "once into ~/.keras/models) or a local no-top weights file. It starts frozen: see --fine-tune-layers.",
)
@click.option(
    "--fine-tune-layers",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Unfreeze this many top backbone layers (BatchNorm stays frozen) after the head is trained; needs --weights.",
)
@click.option(
    "--fine-tune-epochs",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Epochs of fine-tuning; the saved model is the epoch with the lowest val loss over both phases.",
)
@click.option(
    "--augment/--no-augment", default=True, show_default=True, help="Random rotation, shift, shear, zoom, brightness."
)
@click.option(
    "--rotation",
    type=click.FloatRange(0, 180),
    default=10.0,
    show_default=True,
    help="Augmentation: max rotation in degrees.",
)
@click.option(
    "--shift",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Augmentation: max shift as a fraction.",
)
@click.option(
    "--shear", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="Augmentation: max shear factor."
)
@click.option(
    "--zoom",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Augmentation: max zoom as a fraction.",
)
@click.option(
    "--brightness",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Augmentation: max brightness change.",
)
@click.option("--flip/--no-flip", default=None, help="Augmentation: horizontal flip (default: per dataset, else off).")
@click.option(
    "--strategy",
    type=click.Choice(["none", "mirrored", "multiworker"]),
    default="none",
    show_default=True,
    help="tf.distribute strategy: mirrored (GPUs on one host) or multiworker (reads TF_CONFIG; start one "
    "process per worker, task 0 writes the run).",
)
@click.option(
    "--teacher",
    type=click.Path(),
    help="A trained run to distil from: the student learns from its softened "
    "outputs as well as the labels (its preprocessing and classes are the student's; they are the defaults).",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0, min_open=True),
    help=f"Distillation: how much both models' outputs are softened  [default: {DEFAULT_TEMPERATURE:g}]",
)
@click.option(
    "--distill-alpha",
    type=click.FloatRange(0, 1),
    help=f"Distillation: weight of the labels; the teacher gets the rest  [default: {DEFAULT_ALPHA:g}]",
)
@click.option("--tensorboard", is_flag=True, help="Write TensorBoard logs to RUN/tensorboard.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory (only a run or an empty folder).")
@click.option(
    "--quiet",
    is_flag=True,
    help="One plain line per epoch instead of progress bars (the default when stdout is not a terminal: a log file).",
)
@examples(
    "edgecls train --data digits --out runs/digits",
    "edgecls train --data photos/ --out runs/photos --image-size 96 --epochs 40 > train.log",
    "edgecls train --init-from runs/v1 --data photos/ --data captures/ --out runs/v2",
)
def train(**o):
    """Train a CNN on a class-per-folder dataset; write the model, metadata, metrics and plots to --out.

    A dataset whose preprocessed images take more than 256 MB is streamed from disk each epoch instead of
    held in memory; EDGECLS_IN_MEMORY_MB sets that limit (0 always streams).
    """
    from edgecls.core.augment import AugmentSpec
    from edgecls.core.datasets import BUILTIN_DATASETS
    from edgecls.core.metrics import format_report
    from edgecls.train import TrainConfig
    from edgecls.train import train as run_training

    _refuse_parents_model_options(o)
    model_options = {
        k: v
        for k, v in {
            "widths": _parse_widths(o["widths"]),
            "dense": o["dense"],
            "pooling": o["pooling"],
            "batch_norm": o["batch_norm"],
            "dropout": o["dropout"],
            "l2": o["l2"],
            "alpha": o["alpha"],
            "weights": o["weights"],
        }.items()
        if v is not None
    }
    data = o["data"][0] if len(o["data"]) == 1 else tuple(o["data"])
    builtin = next((BUILTIN_DATASETS[d] for d in o["data"] if d in BUILTIN_DATASETS), None)  # any --data's
    flip = o["flip"] if o["flip"] is not None else bool(builtin and builtin.defaults.get("flip"))
    augment = (
        AugmentSpec(o["rotation"], o["shift"], o["shear"], o["zoom"], flip, o["brightness"])
        if o["augment"]
        else AugmentSpec.off()
    )
    if not o["teacher"] and (o["temperature"] is not None or o["distill_alpha"] is not None):
        raise EdgeclsError("--temperature and --distill-alpha are distillation settings: give --teacher RUN too")
    cfg = TrainConfig(
        data=data,
        out=o["out"],
        model=o["model"],
        model_options=model_options,
        image_size=o["image_size"],
        color=o["color"],
        resize=o["resize"],
        normalize=o["normalize"],
        epochs=o["epochs"],
        batch_size=o["batch_size"],
        optimizer=o["optimizer"],
        learning_rate=o["learning_rate"],
        momentum=o["momentum"],
        patience=o["patience"],
        class_weight=o["class_weight"],
        head=o["head"],
        seed=o["seed"],
        val_fraction=o["val_fraction"],
        test_fraction=o["test_fraction"],
        augment=augment,
        fine_tune_layers=o["fine_tune_layers"],
        fine_tune_epochs=o["fine_tune_epochs"],
        strategy=o["strategy"],
        tensorboard=o["tensorboard"],
        overwrite=o["overwrite"],
        verbose=2 if o["quiet"] or not sys.stdout.isatty() else "auto",  # no bars or escape codes in a log file
        teacher=o["teacher"],
        temperature=DEFAULT_TEMPERATURE if o["temperature"] is None else o["temperature"],
        distill_alpha=DEFAULT_ALPHA if o["distill_alpha"] is None else o["distill_alpha"],
        init_from=o["init_from"],
    )
    result = run_training(cfg)
    if not result.chief:
        click.echo(f"worker done in {result.seconds:.1f}s; the chief (task 0) writes the run")
        return
    click.echo(format_report(result.metrics))
    click.echo(f"test_accuracy {result.metrics['test_accuracy']:.4f} in {result.seconds:.1f}s -> {result.run_dir}")
