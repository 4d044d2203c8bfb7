"""TFLite export with TensorFlow's own converter: fp32, fp16 (weights), full-integer int8; and the
attempts `convert` makes for each (the formats table registers them)."""

from __future__ import annotations

import numpy as np

from edgecls.converters.export import calibration_notes, without_notes
from edgecls.runtime.atomic import write_bytes
from edgecls.runtime.formats import FP16, FP32, INT8


def float_attempts(context, fmt) -> list:
    """fp32 and fp16: one conversion, no calibration, so nothing to remedy."""
    return [("", without_notes(lambda out: write_bytes(out, to_tflite(context.model, fmt.precision))))]


def int8_attempts(context, fmt) -> list:
    """Post-training int8 on the asked calibration set, then on four times as many images (when the
    training split has more), then quantization-aware training; `--qat always` tries QAT alone, `never` never."""
    n, more = context.calibration_count(), context.calibration_count(4)

    def post_training(factor=1):
        def build(out):
            data = context.calibration(factor)
            write_bytes(out, to_tflite(context.model, fmt.precision, data))
            return calibration_notes(data)

        return build

    epochs = context.options.qat_epochs
    qat = (
        [(f"quantization-aware training ({epochs} epoch{'s' if epochs != 1 else ''})", _quantization_aware(context))]
        if context.qat is not None and context.options.qat != "never"
        else []
    )
    if context.options.qat == "always":
        return qat
    return (
        [(f"per-channel, {n} calibration images", post_training())]
        + ([(f"more calibration data ({more} images)", post_training(4))] if more > n else [])
        + qat
    )


def _quantization_aware(context):
    def build(out) -> dict:
        result = context.qat()
        write_bytes(out, result.tflite)
        return result.notes

    return build


def to_tflite(model, precision: str, representative: np.ndarray | None = None) -> bytes:
    """Convert a Keras 3 model to a .tflite flatbuffer.

    int8 is full-integer: weights and activations int8, and int8 input and output tensors
    whose scale/zero-point the runtime reads from the model. `representative` is the
    calibration set (already preprocessed float tensors, NHWC).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == FP16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == INT8:
        if representative is None or not len(representative):
            raise ValueError("int8 conversion needs a representative dataset")

        def samples():
            for i in range(len(representative)):
                yield [representative[i : i + 1].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif precision != FP32:
        raise ValueError(f"unknown TFLite precision {precision!r}")
    return converter.convert()
