"""A Keras source (.keras, Keras 2 .h5, Teachable Machine folder, SavedModel) through the full `convert` path."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from edgecls.importer import workrun
from edgecls.importer.detect import TEACHABLE, Source
from edgecls.importer.foreign_bundle import MAX_SIDE, probe_output
from edgecls.importer.keras_layers import fold_input_layers, normalizing_layers
from edgecls.importer.keras_load import load_model
from edgecls.importer.labels import read_labels
from edgecls.importer.request import ImportRequest, ImportResult, ModelHints, resolve_spec
from edgecls.runtime.atomic import host_tag, remove_stale_stages
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.formats import INT8

TEACHABLE_LINE = "Teachable Machine export: center-crop, pixels scaled to -1..1 (its known preprocessing)"


def import_keras(request: ImportRequest, source: Source, progress) -> ImportResult:
    lines = []

    def note(line: str) -> None:
        lines.append(line)
        progress(line)

    out = Path(request.out).absolute()
    work = _work_folder(out)
    try:
        progress(f"loading {source.model} ({source.framework})")
        model, opaque = load_model(source, work, note)
        model = _fixed_size(_single_image_model(model, request), request.declared.size)
        model, hints = _hints(model, opaque, note)
        labels = read_labels(_labels_file(request, source), _output_count(model))
        declared = request.declared
        if source.kind == TEACHABLE:
            declared = _teachable(declared, note)
        if not opaque:
            _check_not_normalized_twice(model, declared)
        spec, _ = resolve_spec(hints, declared, note)
        if max(spec.height, spec.width) > MAX_SIDE:
            raise EdgeclsError(
                f"input size {spec.height}x{spec.width} is over {MAX_SIDE} pixels a side: "
                "give the model's real size with --size N or --size WxH"
            )
        output = declared.output or _output(model, spec, note)
        model, head = _probabilities(model, output)
        run = _work_run(request, work, model, spec, labels, head, source.framework, note)
        chosen = _from(replace(hints, output=output), request.declared, source)
        return _convert(request, source, run, out, opaque, chosen, lines, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _work_folder(out: Path) -> Path:
    """A work folder beside --out named like converters' stages, so one a killed import left is collected."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_stages(out.parent)
    prefix = f".{out.name}-import.{os.getpid()}@{host_tag()}."
    return Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=out.parent))


def _single_image_model(model, request: ImportRequest):
    """The model as a functional one with its one image input and one output (--output-name picks it)."""
    import keras

    if request.input_name is not None:
        raise EdgeclsError("--input is for ONNX and TFLite models: a Keras model's image input is its only input")
    if len(model.inputs) != 1:
        raise EdgeclsError(
            f"the model takes {len(model.inputs)} inputs but edgecls imports models whose only input is the image: "
            "export a model whose only input is the image"
        )
    names = [t._keras_history.operation.name for t in model.outputs]
    if request.output_name is not None:
        if request.output_name not in names:
            raise EdgeclsError(
                f"the model has no output named {request.output_name!r}: its outputs are {', '.join(names)}"
            )
        return keras.Model(model.inputs[0], model.outputs[names.index(request.output_name)])
    if len(names) != 1:
        raise EdgeclsError(
            f"the model has {len(names)} outputs ({', '.join(names)}): name the class scores with --output-name NAME"
        )
    shape = tuple(model.input_shape)
    if len(shape) != 4:
        raise EdgeclsError(
            f"the model's input is not an image (rank {len(shape)}, shape {shape}): "
            "edgecls imports models that take a batch of images (N, H, W, C)"
        )
    return model


def _fixed_size(model, size: tuple | None):
    """A model with a dynamic height/width rebuilt on an input of --size (the converters need a fixed one)."""
    import keras

    _, height, width, channels = model.input_shape
    if height and width:
        return model
    if size is None:
        raise EdgeclsError("the model's input size is not fixed: give it with --size N or --size WxH")
    if max(size) > MAX_SIDE:
        raise EdgeclsError(
            f"input size {size[0]}x{size[1]} is over {MAX_SIDE} pixels a side: give the model's real size with --size"
        )
    if channels is None:
        raise EdgeclsError("the model's input channels are not fixed: edgecls imports RGB or gray image models")
    inputs = keras.Input((int(size[0]), int(size[1]), int(channels)), dtype=model.inputs[0].dtype)
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer)


def _check_not_normalized_twice(model, declared) -> None:
    """A Rescaling/Normalization left inside (not right after the input) normalizes what edgecls gives it."""
    inside = normalizing_layers(model)
    if not inside:
        return
    if declared.normalize is None:
        changes = declared.mean not in (None, (0.0,)) or declared.std not in (None, (1.0,))
    else:
        changes = declared.normalize != "none"
    if changes:
        option = f"--normalize {declared.normalize}" if declared.normalize else "--mean/--std"
        raise EdgeclsError(
            f"the model normalizes its input itself (its {inside[0]} layer, which edgecls cannot read off): "
            f"{option} would normalize it twice: give --normalize none"
        )


def _hints(model, opaque: bool, note) -> tuple:
    """(model without its input preprocessing layers, ModelHints read off the model)."""
    mean = std = None
    if not opaque:
        model, mean, std = fold_input_layers(model)
        if mean is not None:
            note(f"read from the model's own preprocessing layers: mean {_shown(mean)}, std {_shown(std)} (removed)")
    _, height, width, channels = model.input_shape
    size = (int(height), int(width)) if height and width else None
    said = {"mean": "the model's Rescaling/Normalization layers", "std": "the model's Rescaling/Normalization layers"}
    return model, ModelHints(
        size=size,
        channels=int(channels) if channels else None,
        layout="nhwc",
        mean=mean,
        std=std,
        said_by=said | {"size": "the model's input shape"},
    )


def _output(model, spec, note) -> str:
    """probs or logits: a linear last layer says logits; else the outputs on a few inputs tell (a nested head,
    a Dropout last or a SavedModel hides the activation)."""
    import keras

    last = model.layers[-1]
    if type(last) in (keras.layers.Dense, keras.layers.Conv2D) and last.activation.__name__ == "linear":
        note("output: logits (the model's last layer is linear), softmax applied by edgecls")
        return "logits"
    found = []
    output = probe_output(lambda x: model.predict(x, verbose=0), spec, None, found)
    note(found[-1])
    return output


def _labels_file(request: ImportRequest, source: Source):
    path = request.labels_file or source.labels
    if path is None:
        raise EdgeclsError(f"{source.model} carries no labels: give them with --labels FILE (one label a line)")
    return path


def _output_count(model) -> int:
    units = int(model.output_shape[-1])
    if len(model.output_shape) != 2:
        raise EdgeclsError(f"the model's output has shape {model.output_shape}: edgecls imports (N, classes) outputs")
    return 2 if units == 1 else units  # a one-unit sigmoid model takes two labels


def _teachable(declared, note):
    note(TEACHABLE_LINE)
    given = declared.normalize is not None or declared.mean is not None or declared.std is not None
    normalize = declared.normalize or (None if given else "symmetric")
    return replace(declared, resize=declared.resize or "center-crop", normalize=normalize)


def _probabilities(model, output: str) -> tuple:
    """(a model whose output is probabilities, head): logits get the softmax (or sigmoid) the runtime expects."""
    import keras

    one = int(model.output_shape[-1]) == 1
    if output == "logits":
        activation = keras.layers.Activation("sigmoid" if one else "softmax", name="edgecls_probabilities")
        model = keras.Model(model.inputs, activation(model.outputs[0]))
    return model, ("sigmoid" if one else "softmax")


def _work_run(request, work: Path, model, spec, labels: list, head: str, framework: str, note) -> Path:
    if request.data is not None:
        splits = workrun.split_data(Path(request.data), labels, request.seed)
        root = Path(request.data)
        note(
            f"--data {root}: {len(splits['train'])} images calibrate int8, {len(splits['test'])} verify every "
            f"artifact against the source model (seed {request.seed})"
        )
    else:
        root = work / "generated"
        splits = workrun.generate(root, model, spec, labels, request.seed)
        note(
            f"no --data: the float artifacts are compared with the source model on {workrun.GENERATED} "
            "generated images, not on real data, and not gated: near-ties flip on such images (verified_on_data: false)"
        )
    run = work / "run"
    workrun.write_run(
        run, model, spec, labels, splits, root, {"head": head, "framework": framework, "seed": request.seed}
    )
    return run


def _from(hints: ModelHints, declared, source: Source) -> dict:
    """Where each preprocessing field came from: the model, an option, or the default."""
    fields = {"size": hints.size, "layout": hints.layout, "mean": hints.mean, "std": hints.std, "output": hints.output}
    given = {"size", "layout", "mean", "std", "output", "color", "resize"}
    chosen = {}
    for name in sorted(given):
        value = getattr(declared, name, None)
        if name in ("mean", "std") and declared.normalize is not None:
            value = declared.normalize
        chosen[name] = "option" if value is not None else "model" if fields.get(name) is not None else "default"
    if source.kind == TEACHABLE:
        chosen.update({k: "model" for k in ("mean", "std", "resize") if chosen[k] == "default"})
    return chosen


def _convert(request, source: Source, run: Path, out: Path, opaque: bool, chosen: dict, lines: list, progress):
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert
    from edgecls.runtime.bundle import sha256_file

    formats = parse_formats(request.formats)
    if request.data is None:
        skipped = [f.name for f in formats if f.precision == INT8]
        formats = [f for f in formats if f.precision != INT8]
        if skipped:
            line = f"int8 skipped: no --data to calibrate on ({', '.join(skipped)}; give --data DIR of class folders)"
            lines.append(line)
            progress(line)
    if not formats:
        raise EdgeclsError("no formats left to make: int8 needs --data DIR to calibrate on")
    model_file = source.model
    record = {
        "kind": "import",
        "framework": source.framework,
        "file": model_file.name,
        "sha256": sha256_file(model_file) if model_file.is_file() else None,
        "verified_on_data": request.data is not None,
        "data": str(Path(request.data).resolve()) if request.data is not None else None,
        "preprocessing_from": chosen,
    }
    options = ConvertOptions(
        formats=formats,
        # Generated images sit near decision boundaries, where fp16 rounding flips ties: no gate without real data.
        max_drop=request.max_drop if request.data is not None else 100.0,
        overwrite=request.overwrite,
        tar=request.tar,
        check_images=request.check_images if request.data is not None else 0,
        seed=request.seed,
        qat="never" if opaque else "remedy",
        calibration_size=200,
        import_source=record,
    )
    result = convert(run, out, options)
    return ImportResult(result.bundle, result.manifest, result.table, lines + [result.test_split])


def _shown(values) -> str:
    return ",".join(f"{v:g}" for v in values)
