"""The run a training starts from (`edgecls train --init-from RUN`): its weights, its settings, its test split.

A model started from a parent keeps the parent's input and preprocessing (its weights mean nothing for
another), keeps its classes in its order (a class cannot be removed: its images would vanish from the test),
and grows its head for added classes: the old classes' weights are kept and only the new ones start from
scratch. The parent's recorded test split stays the test split, so parent and child are compared on the
same images (`edgecls compare PARENT CHILD`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecls.core.datasets.merged import FixedTest
from edgecls.core.progress import progress
from edgecls.core.rundir import Run, open_run
from edgecls.runtime.bundle import MANIFEST, sha256_file
from edgecls.runtime.errors import DataError, EdgeclsError

HEAD_LAYER = "predictions"  # edgecls.models names every architecture's classifier Dense so


def open_parent(path, workers: int = 4) -> tuple:
    """(Run, FixedTest): the parent run and its recorded test split, every file still there unchanged."""
    from edgecls.core.rundata import require_splits, run_dataset

    if (Path(path) / MANIFEST).is_file() or Path(path).suffix == ".tar":
        raise EdgeclsError(
            f"--init-from {path} is a bundle: give the run directory it was converted from (its weights are Keras's)"
        )
    run = open_run(path)
    dataset = run_dataset(run, workers, ["test"])
    require_splits(run, dataset, ["test"])
    samples = dataset.splits.get("test") or []
    used = run.metadata.get("dataset", {}).get("counts", {}).get("test", 0)
    if not samples:
        raise DataError(f"{run.path} has no test split to keep as the benchmark: train it with --test-fraction above 0")
    if len(samples) < used:
        raise DataError(
            f"{used - len(samples)} of the {used} test images of {run.path} are gone or changed in {dataset.root}: "
            "they are the fixed benchmark the new run is compared on, so restore them (or train from scratch)"
        )
    images = [(str(s.path), run.labels[s.label]) for s in samples]
    return run, FixedTest(run.path, run.labels, images, Path(dataset.root))


def check_out_apart(path, out) -> None:
    """--out equal to or inside --init-from would replace (or be deleted with) the parent it starts from."""
    parent, child = Path(path).resolve(), Path(out).resolve()
    if child == parent or parent in child.parents:
        raise EdgeclsError(
            f"--out {out} is {'its parent' if child == parent else 'inside its parent'} --init-from {path}: "
            "the parent stays as it is (its test split is the benchmark); write the new run elsewhere, e.g. runs/v2"
        )


def parent_record(run: Run) -> dict:
    """What metadata.json records of the parent: where it was, and which model (sha256) the weights came from."""
    return {"path": str(run.path.resolve()), "model_sha256": sha256_file(run.model_path), "labels": run.labels}


def check_same_input(run: Run, **given) -> None:
    """Options that would change the parent's input (--image-size, --color, ...) are refused, naming the parent's."""
    spec = run.preprocess
    have = {
        "image_size": spec.height if spec.height == spec.width else None,
        "color": spec.color,
        "resize": spec.resize,
        "normalize": spec.normalization(),
    }
    for name, value in given.items():
        if value is not None and have.get(name) is not None and value != have[name]:
            flag = "--" + name.replace("_", "-")
            raise EdgeclsError(
                f"{flag} {value} differs from {run.path}'s {have[name]}: a model started with --init-from keeps "
                "its parent's input and preprocessing (leave it out, or train from scratch)"
            )


def start_model(run: Run, labels: list, activation: str):
    """The parent's model, its head grown to `labels` (the parent's first, in order) when classes were added."""
    model = run.load_model()
    old = run.labels
    _check_model_file(run, model)
    if labels[: len(old)] != old:
        raise EdgeclsError(f"the classes {labels} do not start with {run.path}'s {old}: this is a bug, report it")
    if labels == old:
        return model
    added = labels[len(old) :]
    progress(
        f"growing the head from {len(old)} to {len(labels)} classes: {', '.join(added)} added (new rows "
        f"initialised), the {len(old)} old classes' weights kept"
    )
    return _grown(model, len(labels), activation, run.path)


def _check_model_file(run: Run, model) -> None:
    """A model.keras replaced by another model (other input or classes) is refused before any epoch runs."""
    shape, units = tuple(model.input_shape[1:]), model.output_shape[-1]
    want = (tuple(run.preprocess.shape), 1 if run.metadata.get("head") == "sigmoid" else len(run.labels))
    if (shape, units) != want:
        raise EdgeclsError(
            f"{run.model_path} takes input {shape} with {units} outputs but {run.path}'s metadata.json says "
            f"{want[0]} and {want[1]} (classes {', '.join(run.labels)}): the model file was replaced; put the "
            "run's own model.keras back, or train from scratch"
        )


def _grown(model, n_classes: int, activation: str, where):
    names = [layer.name for layer in model.layers]
    if HEAD_LAYER not in names:
        raise EdgeclsError(
            f"{where}'s model has no Dense layer named {HEAD_LAYER!r} to grow: add classes by training from scratch"
        )
    config = model.get_config()
    for layer in config["layers"]:
        if layer["config"].get("name") == HEAD_LAYER:
            layer["config"]["units"] = n_classes
            layer["config"]["activation"] = activation
    grown = model.__class__.from_config(config)
    for layer in grown.layers:
        old_layer = model.get_layer(layer.name)
        if layer.name == HEAD_LAYER:
            layer.set_weights(_grown_head(old_layer, layer))
        else:
            layer.set_weights(old_layer.get_weights())
            layer.trainable = old_layer.trainable
    return grown


def _grown_head(old_layer, new_layer) -> list:
    """The new head's kernel and bias: the old classes' columns copied, the new ones as initialised.

    A two-class sigmoid head (one unit, p = sigmoid(z)) becomes softmax over [0, z], which gives the same
    two probabilities, so even that parent's decisions survive the growth."""
    kernel, bias = (np.array(w) for w in new_layer.get_weights())
    old_kernel, old_bias = old_layer.get_weights()
    if old_kernel.shape[1] == 1:
        kernel[:, 0], bias[0] = 0.0, 0.0
        kernel[:, 1], bias[1] = old_kernel[:, 0], old_bias[0]
        n = 2
    else:
        n = old_kernel.shape[1]
        kernel[:, :n], bias[:n] = old_kernel, old_bias
    bias[n:] = 0.0
    return [kernel, bias]
