"""`edgecls tune`: hyperparameter search (keras-tuner) whose best trial is a normal run directory."""

from __future__ import annotations

import click

from edgecls.commands._errors import OneLineErrors
from edgecls.commands._options import examples_block
from edgecls.models import DEFAULT_MODEL, pretrained_models, tunable_models

# The help names models by their roles in the registry: the default one, built from scratch (its widths and
# depth searched), and the one that starts from a pretrained backbone (its alpha or fine-tuning depth searched).
SCRATCH, PRETRAINED = DEFAULT_MODEL, pretrained_models()[0]


@click.command(
    cls=OneLineErrors,
    help=f"Search learning rate, widths, dropout, L2 and batch size (alpha or fine-tuning depth for {PRETRAINED})."
    + examples_block(
        "edgecls tune --data digits --out runs/digits-tuned --trials 10",
        "edgecls tune --data flowers --out runs/flowers-tuned --trials 20 --search bayesian --max-epochs 10",
    ),
)
@click.option("--data", required=True, help="Class-per-folder directory, or a built-in dataset: digits, shapes.")
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Run directory to create: the best trial, with tuning/ (trials.csv, trials.json, trials.png).",
)
@click.option(
    "--model",
    type=click.Choice(tunable_models()),
    default=DEFAULT_MODEL,
    show_default=True,
    help=f"What is searched: {SCRATCH}, learning rate, widths and depth, dropout, L2, batch size; {PRETRAINED}, alpha "
    "and fine-tuning depth.",
)
@click.option("--trials", type=click.IntRange(1), default=10, show_default=True, help="Number of trials.")
@click.option(
    "--search",
    type=click.Choice(["random", "bayesian", "hyperband"]),
    default="random",
    show_default=True,
    help="keras-tuner's search: random, Bayesian optimization or Hyperband.",
)
@click.option(
    "--max-epochs",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Epochs per trial (Hyperband: for its last round; early stopping still applies).",
)
@click.option(
    "--objective",
    type=click.Choice(["val_accuracy", "val_loss"]),
    default="val_accuracy",
    show_default=True,
    help="What the trials are ranked by, on the validation split.",
)
@click.option("--image-size", type=click.IntRange(8, 1024), help="Square input size (default: per dataset, else 64).")
@click.option(
    "--color", type=click.Choice(["rgb", "bgr", "gray"]), help="Input colour (default: per dataset, else rgb)."
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False),
    help=f"{PRETRAINED}: pretrained backbone weights; the fine-tuning depth is searched instead of alpha.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    help=f"{PRETRAINED} with --weights: the width the weights file was made for.",
)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Early stopping patience per trial (0: off).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 2),
    default=0,
    show_default=True,
    help="Seeds the split (the same for every trial), the training and the search.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of each class the trials are ranked on (when the folder has no val/).",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of each class held out for the best run's test (when the folder has no test/).",
)
@click.option(
    "--augment/--no-augment",
    default=True,
    show_default=True,
    help="Train trials with `edgecls train`'s default augmentation.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory (only a run or an empty folder).")
@click.option("--quiet", is_flag=True, help="No per-epoch lines from the trials.")
def tune(**o):
    """Run a search (its help, given to click.command above, names a model from the registry)."""
    from edgecls.tune import TuneConfig
    from edgecls.tune import tune as run_tune

    cfg = TuneConfig(
        data=o["data"],
        out=o["out"],
        model=o["model"],
        trials=o["trials"],
        search=o["search"],
        max_epochs=o["max_epochs"],
        objective=o["objective"],
        image_size=o["image_size"],
        color=o["color"],
        weights=o["weights"],
        alpha=o["alpha"],
        patience=o["patience"],
        seed=o["seed"],
        val_fraction=o["val_fraction"],
        test_fraction=o["test_fraction"],
        augment=o["augment"],
        overwrite=o["overwrite"],
        verbose=0 if o["quiet"] else 2,
    )
    result = run_tune(cfg)
    for row in result.trials:
        score = "-" if row["score"] is None else f"{row['score']:.4f}"
        hps = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row["hyperparameters"].items()
            if not k.startswith("tuner/")
        )
        click.echo(f"trial {row['trial']}\t{row['status']}\t{cfg.objective} {score}\t{hps}")
    best = result.best
    click.echo(
        f"best: trial {best['trial']} ({cfg.objective} {best['score']:.4f}, test_accuracy {best['test_accuracy']:.4f}) "
        f"in {result.seconds:.1f}s -> {result.run_dir} (convert it: edgecls convert {result.run_dir} --out BUNDLE)"
    )
