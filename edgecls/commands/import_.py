"""`edgecls import`: a model trained elsewhere (Keras, SavedModel, Teachable Machine, TFLite, ONNX) to a bundle."""

from __future__ import annotations

import click

from edgecls.commands._errors import OneLineErrors
from edgecls.runtime.errors import EdgeclsError


def _numbers(value: str | None, option: str) -> tuple | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise EdgeclsError(f"{option} {value!r} is not numbers: give R,G,B in 0..255 pixel units") from None
    if len(numbers) not in (1, 3):
        raise EdgeclsError(f"{option} {value!r} has {len(numbers)} values: give one, or three (R,G,B)")
    return numbers


def _size(value: str | None) -> tuple | None:
    """`224` or `WxH` -> (height, width)."""
    if value is None:
        return None
    parts = value.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise EdgeclsError(f"--size {value!r} is not N or WxH (e.g. --size 224 or --size 320x240)")
    width, height = (int(parts[0]), int(parts[-1]))
    return height, width


@click.command("import", cls=OneLineErrors)
@click.argument("model", type=click.Path())
@click.option("--labels", "labels_file", type=click.Path(), help="Labels file: one label a line, or INDEX LABEL lines.")
@click.option("--out", required=True, type=click.Path(), help="Bundle directory to create.")
@click.option(
    "--data", type=click.Path(), help="Class-per-folder images (folder names = labels): verify, calibrate int8."
)
@click.option("--size", help="Input size N or WxH, when the model does not fix it.")
@click.option("--color", type=click.Choice(["rgb", "bgr", "gray"]), help="Channel order the model takes.")
@click.option("--layout", type=click.Choice(["nhwc", "nchw"]), help="Input layout the model takes.")
@click.option("--mean", help="Per-channel mean R,G,B in 0..255 pixel units (with --std).")
@click.option("--std", help="Per-channel std R,G,B in 0..255 pixel units (with --mean).")
@click.option(
    "--normalize",
    type=click.Choice(["scale", "symmetric", "imagenet", "none"]),
    help="Named normalization: scale 0..1, symmetric -1..1, imagenet mean/std, none (0..255).",
)
@click.option("--resize", type=click.Choice(["stretch", "center-crop", "letterbox"]), help="How images reach the size.")
@click.option(
    "--output", type=click.Choice(["probs", "logits"]), help="What the model outputs (logits: softmax added)."
)
@click.option("--input", "input_name", help="Input tensor name, for a model with several inputs.")
@click.option("--output-name", help="Output tensor name, for a model with several outputs.")
@click.option("--max-drop", type=float, default=1.0, show_default=True, help="Accuracy points an artifact may lose.")
@click.option("--formats", default="all", show_default=True, help="Comma-separated formats (Keras sources), or all.")
@click.option("--tar", is_flag=True, help="Also write BUNDLE.tar.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle (only a bundle or an empty folder).")
@click.option(
    "--check-images", type=click.IntRange(0), default=6, show_default=True, help="Images kept for the smoke test."
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seeds the --data split.")
def import_(model, labels_file, out, data, size, color, layout, mean, std, normalize, resize, output, **rest):
    """Import a model trained elsewhere into a verified bundle (predict, bench, flash and run take it).

    MODEL: a .keras or Keras .h5 file, a SavedModel or Teachable Machine folder, a .tflite or an .onnx file.
    Preprocessing the model does not state is given by the options; --data (one folder of images per label)
    verifies every artifact against the source model and calibrates int8.

    \b
    Examples:
      edgecls import converted_keras/ --out cats_bundle --data photos/
      edgecls import model.keras --labels labels.txt --out bundle --data photos/
      edgecls import model.onnx --labels labels.txt --out bundle --normalize imagenet --output logits
    """
    from pathlib import Path

    from edgecls.converters.options import check_max_drop
    from edgecls.core.progress import progress
    from edgecls.importer.api import import_model
    from edgecls.importer.request import Declared, ImportRequest

    check_max_drop(rest["max_drop"])
    declared = Declared(
        size=_size(size),
        color=color,
        layout=layout,
        mean=_numbers(mean, "--mean"),
        std=_numbers(std, "--std"),
        normalize=normalize,
        resize=resize,
        output=output,
    )
    if not out.strip():
        raise EdgeclsError("--out is empty: name the bundle folder to write")
    request = ImportRequest(
        model=Path(model),
        out=Path(out),
        labels_file=Path(labels_file) if labels_file else None,
        data=Path(data) if data else None,
        declared=declared,
        input_name=rest["input_name"],
        output_name=rest["output_name"],
        max_drop=rest["max_drop"],
        overwrite=rest["overwrite"],
        tar=rest["tar"],
        formats=rest["formats"],
        check_images=rest["check_images"],
        seed=rest["seed"],
    )
    result = import_model(request, progress=progress)
    click.echo(result.table)
    click.echo(f"bundle written to {result.bundle}")
