"""`edgecls quickstart`: the whole chain on built-in data, no network and no camera (edgecls/quickstart.py)."""

from __future__ import annotations

import contextlib
import os
import sys

import click

from edgecls.commands._errors import OneLineErrors
from edgecls.commands._options import examples


@click.command(cls=OneLineErrors, short_help="Start here: the whole chain on built-in data, in a few minutes.")
@click.option(
    "--out",
    default="quickstart",
    show_default=True,
    type=click.Path(),
    help="Folder to create: the run, bundle, bench results, a flashed device folder, pictures, summary.",
)
@click.option(
    "--data",
    type=click.Choice(["digits", "shapes"]),
    default="digits",
    show_default=True,
    help="Built-in dataset: handwritten digits (8x8 grey) or generated shapes (colour).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Fewer epochs, 4 Grad-CAM images, no Keras baseline, shorter timings and daemon run: "
    "about three quarters of the time (training and conversion dominate).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    show_default=True,
    help="Seeds the split, training and draws.",
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier quickstart folder (only one of ours).")
@examples(
    "edgecls quickstart --out quickstart",
    "edgecls quickstart --out quickstart --quick",
)
def quickstart(out, data, quick, seed, overwrite):
    """Train, convert, bench, flash to a local folder and run the daemon on a video of held-out images, in minutes.

    Prints the accuracy of the Keras model and of each artifact, their latency on this machine, and where
    the model, the pictures (training curves, confusion matrix, latency and accuracy charts, Grad-CAM,
    the daemon's preview) and the details were written. Progress goes to stderr, the summary to stdout.
    """
    from edgecls.quickstart import QuickstartOptions
    from edgecls.quickstart import quickstart as run_quickstart

    with _stdout_to_stderr():  # Keras prints its epoch lines on stdout: here they are progress
        result = run_quickstart(QuickstartOptions(out=out, data=data, quick=quick, overwrite=overwrite, seed=seed))
    click.echo(result.summary)


@contextlib.contextmanager
def _stdout_to_stderr():
    """fd 1 points at Python's stderr for the block, so stdout carries the summary alone.

    At the descriptor, not `redirect_stdout`: the converters' `quiet()` silences fd 1 while they print
    their signatures, and must go on silencing them here.
    """
    try:
        target = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stand-in stderr (click's test runner): leave stdout alone
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(target, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
