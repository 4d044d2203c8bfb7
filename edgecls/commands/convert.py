"""`edgecls convert`: prune, quantize, export and verify a run into a bundle."""

from __future__ import annotations

import click

from edgecls.commands._errors import OneLineErrors
from edgecls.commands._options import examples
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.formats import ARTIFACT_FORMATS, TFLITE_INT8

QAT_MODES = ("remedy", "always", "never")


@click.command(cls=OneLineErrors)
@click.argument("run", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Bundle directory to create.")
@click.option(
    "--formats",
    default="all",
    show_default=True,
    help=f"Comma-separated: {', '.join(ARTIFACT_FORMATS)}, or all.",
)
@click.option("--prune", help="structured=RATIO (remove filters) or sparsity=RATIO (zero weights), then fine-tune.")
@click.option(
    "--prune-epochs", type=click.IntRange(1), default=8, show_default=True, help="Fine-tuning epochs after pruning."
)
@click.option(
    "--max-prune-drop", type=float, default=1.0, show_default=True, help="Accuracy points pruning may lose (0 or more)."
)
@click.option(
    "--calibration-size",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Training images in the int8 representative set.",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
    help="ONNX int8 calibration (TFLite always uses min/max).",
)
@click.option(
    "--max-drop",
    type=float,
    default=1.0,
    show_default=True,
    help="Accuracy points an artifact may lose against the Keras model before remedies are tried.",
)
@click.option(
    "--qat",
    type=click.Choice(QAT_MODES),
    default="remedy",
    show_default=True,
    is_flag=False,
    flag_value="always",
    help=f"{TFLITE_INT8.name} by quantization-aware training: remedy (the last one tried when post-training int8 "
    "fails the accuracy gate), always (no post-training attempt; a bare --qat), never.",
)
@click.option("--no-qat", is_flag=True, help="The same as --qat never.")
@click.option(
    "--qat-epochs",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Epochs of quantization-aware fine-tuning on the run's training split.",
)
@click.option(
    "--allow-partial-test",
    is_flag=True,
    help="Verify even when the test split lost images or classes since training (or an old run's dataset "
    "changed); what was missing is recorded in the manifest and verification.txt.",
)
@click.option("--tar", is_flag=True, help="Also write BUNDLE.tar (replacing only an archive edgecls wrote).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle (only a bundle or an empty folder).")
@click.option(
    "--check-images",
    type=click.IntRange(0),
    default=6,
    show_default=True,
    help="Held-out test images, classified right by every artifact, kept in the bundle for the smoke test "
    "`edgecls flash` runs on the device (0: none).",
)
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Seeds the calibration draw, pruning and QAT fine-tuning.",
)
@examples(
    "edgecls convert runs/digits --out bundles/digits",
    f"edgecls convert runs/digits --out bundles/digits-small --formats {TFLITE_INT8.name} --prune structured=0.5",
)
def convert(
    run,
    out,
    formats,
    prune,
    prune_epochs,
    max_prune_drop,
    calibration_size,
    calibration_method,
    max_drop,
    qat,
    no_qat,
    qat_epochs,
    allow_partial_test,
    tar,
    overwrite,
    check_images,
    seed,
):
    """Prune, quantize and export a trained run to a verified model bundle (TFLite and ONNX)."""
    if no_qat:
        if qat not in ("remedy", "never"):
            raise EdgeclsError(f"--no-qat contradicts --qat {qat}: give one of them")
        qat = "never"
    from edgecls.converters.pipeline import check_max_drop
    from edgecls.core.outputs import bundle_guard
    from edgecls.core.rundir import open_run

    check_max_drop(max_drop)  # click's float takes nan, inf and negatives: each would change what the gate means
    check_max_drop(max_prune_drop, "--max-prune-drop")
    from edgecls.runtime.atomic import check_output

    # Before anything heavy is imported or loaded: only a bundle of ours (or an empty folder) may be
    # replaced, and never the run being converted or its dataset.
    check_output(out, overwrite, **bundle_guard(open_run(run)))
    if tar:
        from edgecls.converters.output import check_tar_output

        check_tar_output(out, overwrite)

    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions
    from edgecls.converters.pipeline import convert as run_convert

    options = ConvertOptions(
        formats=parse_formats(formats),
        prune=prune,
        prune_epochs=prune_epochs,
        max_prune_drop=max_prune_drop,
        calibration_size=calibration_size,
        calibration_method=calibration_method,
        max_drop=max_drop,
        overwrite=overwrite,
        tar=tar,
        check_images=check_images,
        seed=seed,
        qat=qat,
        qat_epochs=qat_epochs,
        allow_partial_test=allow_partial_test,
        temp_in_stage=True,  # this process does nothing else: TF's own temp files go with the stage if killed
    )
    result = run_convert(run, out, options)
    click.echo(result.test_split)
    click.echo(result.table)
    click.echo(f"bundle written to {result.bundle} in {result.seconds:.1f}s")
