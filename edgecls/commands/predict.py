"""`edgecls predict`: classify image files and folders with a bundle (no TensorFlow)."""

from __future__ import annotations

import json

import click

from edgecls.commands._options import examples
from edgecls.runtime.errors import EdgeclsError


def _image_paths(paths) -> list:
    """Files as given; folders searched recursively for images, in sorted order."""
    from pathlib import Path

    from edgecls.runtime.preprocess import IMAGE_SUFFIXES

    found = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists():
            found.append(p)
        else:
            raise EdgeclsError(f"{p} does not exist: pass image files or folders")
    if not found:
        raise EdgeclsError(f"no images found in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


@click.command()
@click.argument("bundle", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True, help="Classes listed per image.")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per image (path, top1, score, topk, latency_ms)."
)
@click.option(
    "--artifact", help="Artifact to run (e.g. tflite-int8); default: the device profile's first runnable one."
)
@click.option("--device", "device", help="Device profile name or JSON file (see `edgecls devices`).")
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="Inference threads (default: the profile's, else every CPU but one; OpenVINO its own).",
)
@examples(
    "edgecls predict bundles/digits photo.jpg",
    "edgecls predict bundles/digits photos/ --json --top-k 3",
)
def predict(bundle, paths, top_k, as_json, artifact, device, threads):
    """Classify image files and folders (recursively) with a bundle; no TensorFlow needed."""
    from edgecls.devices import load_profile
    from edgecls.runtime.bundle import load_bundle
    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.errors import ImageDecodeError

    images = _image_paths(paths)
    loaded = load_bundle(bundle)
    loaded.verify_files()  # labels.txt and the check images too, as flash does: not only the artifact
    classifier = Classifier(loaded, artifact=artifact, profile=load_profile(device), threads=threads, top_k=top_k)
    failed = 0
    for path in images:
        try:
            prediction = classifier.classify_file(path)
        except ImageDecodeError as exc:
            if as_json:  # its record whatever the file count: stdout's shape does not depend on it
                click.echo(json.dumps({"path": str(path), "error": str(exc)}))
            if len(images) == 1:
                raise  # its own one error line: there is nothing else to report
            failed += 1
            if not as_json:
                click.echo(f"skipped: {exc}", err=True)  # the one `error:` line is the count below
            continue
        if as_json:
            click.echo(json.dumps({"path": str(path), **prediction.to_dict()}))
        else:
            others = ", ".join(f"{l} {s:.3f}" for l, s in prediction.topk[1:])
            click.echo(
                f"{path}\t{prediction.label}\t{prediction.score:.4f}\t{prediction.latency_ms:.1f} ms"
                + (f"\t({others})" if others else "")
            )
    if failed == len(images):
        raise EdgeclsError(f"none of the {failed} images could be read (skipped above); nothing was classified")
    if failed:
        raise EdgeclsError(
            f"{failed} of {len(images)} images could not be read (skipped above); the others are classified"
        )
