"""`edgecls compare`: two models on the same images, per-class deltas, McNemar's exact test and a verdict."""

from __future__ import annotations

import click

from edgecls.commands._errors import OneLineErrors
from edgecls.commands._options import examples

NOT_BETTER = 3  # --require-better's "no": apart from an error's 1 (and click's usage errors' 2)


@click.command(cls=OneLineErrors)
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option(
    "--data",
    help="Held-out class-per-folder images (or a built-in name) both models are run on. Default: the test split "
    "both runs recorded (B trained with --init-from A keeps A's).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Significance level of McNemar's exact test.",
)
@click.option(
    "--require-better",
    is_flag=True,
    help="Exit 3 unless B is better than A at --alpha (for CI); an error exits 1, as in every edgecls command.",
)
@click.option("--sheet", type=click.Path(), help="Write the images where A and B disagree as a contact sheet PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON (the verdict included).")
@click.option("--bench-a", type=click.Path(), help="A's `edgecls bench --json` file: p50 latency beside B's.")
@click.option("--bench-b", type=click.Path(), help="B's `edgecls bench --json` file.")
@examples(
    "edgecls compare runs/v1 runs/v2",
    "edgecls compare bundles/v1 bundles/v2 --data held-out/ --sheet disagreements.png --require-better",
    "edgecls compare bundles/v1 bundles/v2 --data held-out/ --bench-a v1.json --bench-b v2.json --json",
)
def compare(a, b, data, alpha, require_better, sheet, as_json, bench_a, bench_b):
    """Is B better than A? Both run on the same images: accuracy, per-class deltas, the disagreements, and
    McNemar's exact test on the paired predictions, ending in a verdict line.

    A and B are run directories (Keras) or bundles (the device's runtime). Exit status: 0; with
    --require-better 3 when B is not significantly better; 1 for an error (bad input, a model that does not load).
    """
    from edgecls.compare import compare as run_compare
    from edgecls.compare import report, to_json
    from edgecls.compare.sheet import check_sheet_path, write_sheet

    if sheet:
        check_sheet_path(sheet)
    if (bench_a is None) != (bench_b is None):
        from edgecls.runtime.errors import EdgeclsError

        raise EdgeclsError("latency needs both bench JSONs: give --bench-a A.json and --bench-b B.json")
    result = run_compare(a, b, data=data, alpha=alpha, bench_a=bench_a, bench_b=bench_b)
    if sheet:
        tiles = write_sheet(result, sheet)
        click.echo(f"contact sheet: {tiles} disagreement(s) -> {sheet}", err=as_json)
    click.echo(to_json(result) if as_json else report(result))
    if require_better and result.better != "B":
        click.echo(f"--require-better: B is not better than A at alpha {alpha:g}", err=True)
        click.get_current_context().exit(NOT_BETTER)
