"""The `edgecls` command: a thin layer over the Python API.

User-facing failures (EdgeclsError) print one line and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import os

import click

from runtime.errors import EdgeclsError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeclsError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except OSError as exc:  # disk full, permission denied, ...: the environment, not a bug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgecls")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log which backend, providers and artifact are used.")
@click.pass_context
def cli(ctx, debug, verbose):
    """Train image classifiers, convert them for edge devices, and run them without TensorFlow."""
    import logging

    ctx.obj = {"debug": debug}
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    runtime_log = logging.getLogger("edgecls")
    runtime_log.addHandler(handler)
    runtime_log.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    runtime_log.propagate = False
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's C++ start-up chatter out


def _model_help() -> str:
    from edgecls.models import list_models

    return f"Architecture: {', '.join(list_models())}."


def _parse_widths(value: str | None):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("use comma-separated integers, e.g. 32,64,128")


@cli.command()
@click.option("--data", required=True, help="Class-per-folder directory, or a built-in dataset: digits, shapes.")
@click.option("--out", "out", required=True, type=click.Path(), help="Run directory to create.")
@click.option("--model", default="simple", show_default=True, help=_model_help())
@click.option("--image-size", type=click.IntRange(8, 1024), help="Square input size (default: per dataset, else 64).")
@click.option("--color", type=click.Choice(["rgb", "bgr", "gray"]), help="Input colour (default: per dataset, else rgb).")
@click.option("--resize", type=click.Choice(["stretch", "center-crop", "letterbox"]), default="stretch", show_default=True)
@click.option("--normalize", type=click.Choice(["scale", "symmetric"]), help="0..1 or -1..1 (default: by model).")
@click.option("--epochs", type=click.IntRange(1), help="Maximum epochs (default: per dataset, else 30).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--lr", "learning_rate", type=float, default=1e-3, show_default=True, help="Learning rate.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--patience", type=click.IntRange(0), default=8, show_default=True, help="Early stopping patience (0: off).")
@click.option("--class-weight", type=click.Choice(["auto", "balanced", "none"]), default="auto", show_default=True,
              help="auto weights classes only when the folders are imbalanced.")
@click.option("--head", type=click.Choice(["auto", "sigmoid", "softmax"]), default="auto", show_default=True,
              help="auto: sigmoid for two classes, softmax otherwise.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--test-fraction", type=float, default=0.2, show_default=True)
@click.option("--widths", help="simple: filters per block, e.g. 32,64,128.")
@click.option("--dense", type=click.IntRange(0), help="simple: hidden Dense units before the head.")
@click.option("--pooling", type=click.Choice(["global", "flatten"]), help="simple: how the head sees the features.")
@click.option("--dropout", type=click.FloatRange(0, 0.95), help="Dropout before the head.")
@click.option("--l2", type=click.FloatRange(0), help="L2 weight decay.")
@click.option("--alpha", type=float, help="mobilenetv2: width multiplier.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="mobilenetv2: local backbone weights file (transfer learning).")
@click.option("--fine-tune-layers", type=click.IntRange(0), default=0, show_default=True, help="Unfreeze this many top backbone layers after the head is trained.")
@click.option("--fine-tune-epochs", type=click.IntRange(0), default=0, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True, help="Random rotation, shift, shear, zoom, brightness.")
@click.option("--rotation", type=float, default=10.0, show_default=True, help="Augmentation: max rotation in degrees.")
@click.option("--shift", type=float, default=0.1, show_default=True, help="Augmentation: max shift as a fraction.")
@click.option("--shear", type=float, default=0.1, show_default=True, help="Augmentation: max shear factor.")
@click.option("--zoom", type=float, default=0.1, show_default=True, help="Augmentation: max zoom as a fraction.")
@click.option("--brightness", type=float, default=0.1, show_default=True, help="Augmentation: max brightness change.")
@click.option("--flip/--no-flip", default=None, help="Augmentation: horizontal flip (default: per dataset, else off).")
@click.option("--strategy", type=click.Choice(["none", "mirrored", "multiworker"]), default="none", show_default=True,
              help="tf.distribute strategy: mirrored (GPUs on one host) or multiworker (reads TF_CONFIG).")
@click.option("--tensorboard", is_flag=True, help="Write TensorBoard logs to RUN/tensorboard.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--quiet", is_flag=True, help="One line per epoch instead of progress bars.")
def train(**o):
    """Train a CNN on a class-per-folder dataset; write the model, metadata, metrics and plots to --out."""
    from edgecls.augment import AugmentSpec
    from edgecls.datasets import BUILTIN_DATASETS
    from edgecls.metrics import format_report
    from edgecls.train import TrainConfig, train as run_training

    model_options = {k: v for k, v in {
        "widths": _parse_widths(o["widths"]), "dense": o["dense"], "pooling": o["pooling"], "dropout": o["dropout"],
        "l2": o["l2"], "alpha": o["alpha"], "weights": o["weights"],
    }.items() if v is not None}
    builtin = BUILTIN_DATASETS.get(o["data"])
    flip = o["flip"] if o["flip"] is not None else bool(builtin and builtin.defaults.get("flip"))
    augment = AugmentSpec(o["rotation"], o["shift"], o["shear"], o["zoom"], flip, o["brightness"]) if o["augment"] else AugmentSpec.off()
    cfg = TrainConfig(
        data=o["data"], out=o["out"], model=o["model"], model_options=model_options, image_size=o["image_size"],
        color=o["color"], resize=o["resize"], normalize=o["normalize"], epochs=o["epochs"], batch_size=o["batch_size"],
        optimizer=o["optimizer"], learning_rate=o["learning_rate"], momentum=o["momentum"], patience=o["patience"],
        class_weight=o["class_weight"], head=o["head"], seed=o["seed"], val_fraction=o["val_fraction"],
        test_fraction=o["test_fraction"], augment=augment, fine_tune_layers=o["fine_tune_layers"],
        fine_tune_epochs=o["fine_tune_epochs"], strategy=o["strategy"], tensorboard=o["tensorboard"],
        overwrite=o["overwrite"], verbose=2 if o["quiet"] else "auto",
    )
    result = run_training(cfg)
    click.echo(format_report(result.metrics))
    click.echo(f"test_accuracy {result.metrics['test_accuracy']:.4f} in {result.seconds:.1f}s -> {result.run_dir}")


@cli.command()
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


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Bundle directory to create.")
@click.option("--formats", default="all", show_default=True,
              help="Comma-separated: tflite-fp32, tflite-fp16, tflite-int8, onnx-fp32, onnx-int8, or all.")
@click.option("--prune", help="structured=RATIO (remove filters) or sparsity=RATIO (zero weights), then fine-tune.")
@click.option("--prune-epochs", type=click.IntRange(1), default=8, show_default=True, help="Fine-tuning epochs after pruning.")
@click.option("--max-prune-drop", type=float, default=1.0, show_default=True, help="Accuracy points pruning may lose.")
@click.option("--calibration-size", type=click.IntRange(1), default=200, show_default=True,
              help="Training images in the int8 representative set.")
@click.option("--calibration-method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="ONNX int8 calibration (TFLite always uses min/max).")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Accuracy points an artifact may lose against the Keras model before remedies are tried.")
@click.option("--tar", is_flag=True, help="Also write BUNDLE.tar.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
@click.option("--seed", type=int, default=0, show_default=True)
def convert(run, out, formats, prune, prune_epochs, max_prune_drop, calibration_size, calibration_method, max_drop, tar, overwrite, seed):
    """Prune, quantize and export a trained run to a verified model bundle (TFLite and ONNX)."""
    from converters.formats import parse_formats
    from converters.pipeline import ConvertOptions, convert as run_convert

    options = ConvertOptions(
        formats=parse_formats(formats), prune=prune, prune_epochs=prune_epochs, max_prune_drop=max_prune_drop,
        calibration_size=calibration_size, calibration_method=calibration_method, max_drop=max_drop,
        overwrite=overwrite, tar=tar, seed=seed,
    )
    result = run_convert(run, out, options)
    click.echo(result.table)
    click.echo(f"bundle written to {result.bundle} in {result.seconds:.1f}s")


def _image_paths(paths) -> list:
    """Files as given; folders searched recursively for images, in sorted order."""
    from pathlib import Path

    from runtime.preprocess import IMAGE_SUFFIXES

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


@cli.command()
@click.argument("bundle", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image (path, top1, score, topk, latency_ms).")
@click.option("--artifact", help="Artifact to run (e.g. tflite-int8); default: the device profile's first runnable one.")
@click.option("--device", "device", help="Device profile name or JSON file (see `edgecls devices`).")
@click.option("--threads", type=click.IntRange(1), help="Inference threads (default: the profile's, else the backend's).")
def predict(bundle, paths, top_k, as_json, artifact, device, threads):
    """Classify image files and folders (recursively) with a bundle; no TensorFlow needed."""
    from devices import load_profile
    from runtime.classifier import Classifier
    from runtime.errors import ImageDecodeError

    images = _image_paths(paths)
    classifier = Classifier(bundle, artifact=artifact, profile=load_profile(device), threads=threads, top_k=top_k)
    failed = 0
    for path in images:
        try:
            prediction = classifier.classify_file(path)
        except ImageDecodeError as exc:
            failed += 1
            if as_json:
                click.echo(json.dumps({"path": str(path), "error": str(exc)}))
            else:
                click.echo(f"error: {exc}", err=True)
            continue
        if as_json:
            click.echo(json.dumps({"path": str(path), **prediction.to_dict()}))
        else:
            others = ", ".join(f"{l} {s:.3f}" for l, s in prediction.topk[1:])
            click.echo(f"{path}\t{prediction.label}\t{prediction.score:.4f}\t{prediction.latency_ms:.1f} ms" + (f"\t({others})" if others else ""))
    if failed:
        raise EdgeclsError(f"{failed} of {len(images)} image(s) could not be read")


@cli.command()
@click.argument("bundle", type=click.Path())
@click.option("--source", help="Camera index, /dev/videoN, csi://N, rtsp:// or http(s):// URL, GStreamer pipeline, "
              "video file, image or folder (default: the device profile's camera).")
@click.option("--device", "device", help="Device profile name or JSON file.")
@click.option("--artifact", help="Artifact to run (default: the device profile's first runnable one).")
@click.option("--threads", type=click.IntRange(1))
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--loop", is_flag=True, help="Repeat a video file or folder.")
@click.option("--every-frame", "--as-fast-as-possible", "every_frame", is_flag=True,
              help="Read every frame of a file as fast as inference goes (offline), instead of at its own frame rate.")
@click.option("--max-frames", type=click.IntRange(1), help="Stop after this many classified frames.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for a frame before reporting a stall.")
def run(bundle, source, device, artifact, threads, top_k, loop, every_frame, max_frames, timeout):
    """Classify frames from a camera, stream, video or folder; one JSON line per frame.

    Each line has the frame index, its age when classified, the top-k and the running drop count.
    Stalls of a live source are reported and reading resumes when it comes back. Ctrl-C stops.
    """
    from devices import load_profile
    from runtime.classifier import Classifier
    from runtime.sources import Source, SourceEnded, SourceTimeout

    profile = load_profile(device)
    classifier = Classifier(bundle, artifact=artifact, profile=profile, threads=threads, top_k=top_k)
    done = 0
    with Source(source or profile.camera, loop=loop, every_frame=every_frame, timeout_s=timeout, profile=profile) as src:
        while max_frames is None or done < max_frames:
            try:
                frame = src.read()
            except SourceEnded:
                break
            except SourceTimeout as exc:
                click.echo(json.dumps({"event": "stall", "detail": str(exc), "state": src.stats.state}), err=True)
                continue
            prediction = classifier.classify(frame.image, order="bgr")
            record = {"frame": frame.index, **({"name": frame.name} if frame.name else {}),
                      "age_ms": round(frame.age_ms, 1), **prediction.to_dict(), "dropped": src.stats.dropped}
            click.echo(json.dumps(record))
            done += 1
    stats = src.stats
    click.echo(json.dumps({"event": "stopped", "frames": done, "captured": stats.frames, "dropped": stats.dropped,
                           "outages": stats.outages, "reconnects": stats.reconnects, "state": stats.state}), err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def devices(as_json):
    """List the device profiles and which inference backends are installed here."""
    from dataclasses import asdict

    from devices import list_profiles, load_profile
    from runtime.backends import available_backends

    profiles = [load_profile(n) for n in list_profiles()]
    backends = available_backends()
    if as_json:
        click.echo(json.dumps({"profiles": [asdict(p) for p in profiles], "backends": backends}, indent=2))
        return
    for p in profiles:
        click.echo(f"{p.name:<18} {p.description}")
    click.echo("backends here: " + ", ".join(f"{n} ({'installed' if ok else 'missing'})" for n, ok in backends.items()))


def main(argv=None):
    cli.main(args=argv, prog_name="edgecls")


if __name__ == "__main__":
    main()
