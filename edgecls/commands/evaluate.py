"""`edgecls evaluate`: metrics of a trained run on its own or another dataset."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("run", type=click.Path())
@click.option("--data", help="Evaluate on this folder (or built-in) instead of the run's own dataset.")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(run, data, split, as_json):
    """Accuracy, per-class precision/recall/F1 and confusion matrix of a trained run."""
    from edgecls.evaluate import evaluate_run
    from edgecls.metrics import format_report

    metrics = evaluate_run(run, data=data, split=split)
    click.echo(json.dumps(metrics, indent=2) if as_json else format_report(metrics))
