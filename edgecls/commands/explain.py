"""`edgecls explain`: Grad-CAM heatmaps of a trained run's Keras model over images."""

from __future__ import annotations

import click

from edgecls.commands._options import examples


@click.command()
@click.argument("run", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Folder to create: one PNG per image, contact_sheet.png, explanations.json.",
)
@click.option("--class", "class_label", help="Explain this label instead of each image's predicted class.")
@click.option(
    "--layer",
    help="Convolutional layer to read (default: the last one whose grid has at least 5 cells a side; "
    "SUBMODEL/NAME inside a nested model).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing explanation folder (only one of ours, or an empty folder)."
)
@examples(
    "edgecls explain runs/flowers photos/odd-ones/ --out explain/",
    "edgecls explain runs/flowers tulip.jpg --out why-not-daisy/ --class daisy",
)
def explain(run, paths, out, class_label, layer, overwrite):
    """Grad-CAM: each image (files or folders) beside a heat map of where the model looked, captioned
    "true → predicted (score)"; the true class is the image's folder name when that is a label.

    The layer is the last convolution whose grid keeps at least 5 cells a side (--layer picks another).
    """
    from edgecls.explain import explain_run

    result = explain_run(run, paths, out, class_label=class_label, layer=layer, overwrite=overwrite)
    for item in result.explanations:
        click.echo(f"{item.image}\t{item.label}\t{item.score:.4f}\t{result.out / item.png}")
    sheets = f" and {', '.join(result.sheets)}" if result.sheets else ""
    click.echo(f"{len(result.explanations)} explanation(s) of layer {result.layer}{sheets} written to {result.out}")
