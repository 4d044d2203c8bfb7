"""A Keras 3 model from what people save: a .keras file, a Keras 2 .h5 (Teachable Machine's), a SavedModel.

Keras 3 reads most Keras 2 .h5 files; Teachable Machine's DepthwiseConv2D carries `groups=1`, which Keras 3
refuses (a known incompatibility), so that argument is dropped on the way in. An .h5 Keras 3 still cannot
read (nested models saved by tf_keras) is loaded by legacy tf_keras and taken through a SavedModel, like a
SavedModel folder: one `SavedModelLayer` inside a Keras 3 model (opaque: no pruning or QAT on it).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from edgecls.importer.detect import SAVEDMODEL, Source
from edgecls.runtime.errors import EdgeclsError


def load_model(source: Source, work: Path, note) -> tuple:
    """(Keras 3 model, opaque): opaque when the model is a SavedModel inside one layer. `note(line)` for the user."""
    import keras

    if source.kind == SAVEDMODEL:
        note("a SavedModel is taken as one opaque layer: no pruning or QAT remedies on it")
        return _wrap_savedmodel(source.model), True
    try:
        return keras.models.load_model(source.model, compile=False, custom_objects=_keras2_objects()), False
    except Exception as exc:  # Keras raises many types for what it cannot read
        if source.kind == "keras":
            raise _keras3_load_error(source.model, exc) from exc
        first = exc  # a Keras 2 .h5 (nested models saved by tf_keras: 'Could not locate class Functional'): tf_keras
    saved = work / "tf_keras_savedmodel"
    _tf_keras_to_savedmodel(source.model, saved, first)
    note("Keras 3 cannot read this Keras 2 .h5 directly: loaded by tf_keras (no pruning or QAT remedies on it)")
    return _wrap_savedmodel(saved), True


def _keras3_load_error(path: Path, exc: Exception) -> EdgeclsError:
    """One line for a .keras file Keras 3 cannot read: a custom class, a Lambda, or something else."""
    missing = re.search(r"Could not locate (?:class|function) '([^']+)'", str(exc))
    if missing:
        return EdgeclsError(
            f"cannot load {path}: it uses the custom layer or function {missing[1]}, which this Python "
            "does not know: custom layers must be registered (keras.saving.register_keras_serializable) in the "
            "code that loads them, or re-save the model without them"
        )
    if "deserialization of a `Lambda` layer" in str(exc):
        return EdgeclsError(
            f"cannot load {path}: it holds a Lambda layer, Python code edgecls does not run from a model "
            "file: re-save the model with the Lambda replaced by a registered custom layer or removed"
        )
    return EdgeclsError(f"cannot load {path}: {_first_line(exc)} (is it a Keras 3 .keras file?)")


def _keras2_objects() -> dict:
    import keras

    class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
        """Keras 2's DepthwiseConv2D as Teachable Machine saves it: `groups=1` means nothing here."""

        def __init__(self, *args, groups=None, **kwargs):
            super().__init__(*args, **kwargs)

    # Saved again (the work run's model.keras), it must read as Keras's own layer: its config is the same.
    DepthwiseConv2D.__module__ = "keras.layers"
    return {"DepthwiseConv2D": DepthwiseConv2D}


def _tf_keras_to_savedmodel(path: Path, saved: Path, first: Exception) -> None:
    try:
        import tf_keras
    except ImportError:
        raise EdgeclsError(
            f"cannot load {path} with Keras 3 ({_first_line(first)}): pip install tf_keras to read Keras 2 files"
        ) from first
    try:
        model = tf_keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise EdgeclsError(f"cannot load {path}: {_first_line(exc)} (neither Keras 3 nor tf_keras reads it)") from exc
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)  # tf_keras warns "Compiled the loaded model..." on saving any uncompiled model
    try:
        model.save(saved, save_format="tf")
    finally:
        tf_log.setLevel(level)


def _wrap_savedmodel(folder: Path):
    import keras

    layer = savedmodel_layer()(str(Path(folder).resolve()), call_endpoint=_endpoint(folder))
    specs = _serving_inputs(layer)
    if len(specs) != 1:
        raise EdgeclsError(f"the SavedModel {folder} takes {len(specs)} inputs: edgecls imports one-image models")
    inputs = keras.Input(tuple(specs[0].shape[1:]), batch_size=None, dtype=specs[0].dtype.name)
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise EdgeclsError(f"the SavedModel {folder} has {len(outputs)} outputs: edgecls imports one-output models")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)


def _endpoint(folder: Path) -> str:
    """serving_default, else the SavedModel's only signature; several others are listed."""
    import tensorflow as tf

    names = sorted(tf.saved_model.load(str(folder)).signatures)
    if "serving_default" in names or not names:
        return "serving_default"
    if len(names) > 1:
        raise EdgeclsError(
            f"the SavedModel {folder} has no serving_default signature and several others ({', '.join(names)}): "
            "export it with the image classifier as its serving_default signature"
        )
    return names[0]


def _serving_inputs(layer) -> list:
    import tensorflow as tf

    function = layer.call_endpoint_fn
    return [s for s in tf.nest.flatten(function.structured_input_signature) if isinstance(s, tf.TensorSpec)]


_LAYER = []


def savedmodel_layer():
    """A TFSMLayer that a .keras file of ours may name (Keras refuses TFSMLayer on load by default: it runs
    external code; ours names the SavedModel the import itself wrote or was given)."""
    if _LAYER:
        return _LAYER[0]
    import keras

    @keras.saving.register_keras_serializable("edgecls")
    class SavedModelLayer(keras.layers.TFSMLayer):
        @classmethod
        def from_config(cls, config):
            return cls(**config)

    _LAYER.append(SavedModelLayer)
    return SavedModelLayer


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
