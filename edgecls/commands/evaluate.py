"""`edgecls evaluate`: metrics of a trained run on its own or another dataset."""

from __future__ import annotations

import json

import click

from edgecls.commands._options import examples


@click.command()
@click.argument("run", type=click.Path())
@click.option(
    "--data",
    help="Evaluate on this folder (or built-in name) instead of the run's own dataset; its class "
    "folders must be among the model's labels. A bare built-in name (digits) is the built-in "
    "set; write ./digits for a folder of that name.",
)
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train", "all"]),
    help="Which images. Default: the run's own recorded test split, or every image of --data "
    "(test/val/train draw the split with the run's seed and fractions).",
)
@click.option(
    "--save/--no-save",
    default=None,
    help="Write metrics.json and confusion_matrix.png into RUN. Default: only when re-evaluating the "
    "run's own test split, so other data never replaces the run's figures unless asked.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@examples(
    "edgecls evaluate runs/digits",
    "edgecls evaluate runs/flowers --data other/",
)
def evaluate(run, data, split, save, as_json):
    """Accuracy, per-class precision/recall/F1 and confusion matrix of a trained run.

    The run's own data is evaluated on the exact split it recorded at training (RUN/split.json):
    files added to the folder since are ignored, files gone or changed are dropped with a warning.
    """
    from edgecls.core.metrics import format_report
    from edgecls.evaluate import evaluate_run

    metrics = evaluate_run(run, data=data, split=split, save=save)
    click.echo(json.dumps(metrics, indent=2) if as_json else format_report(metrics))
