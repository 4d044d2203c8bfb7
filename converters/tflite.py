"""TFLite export with TensorFlow's own converter: fp32, fp16 (weights), full-integer int8."""

from __future__ import annotations

import numpy as np


def to_tflite(model, precision: str, representative: np.ndarray | None = None) -> bytes:
    """Convert a Keras 3 model to a .tflite flatbuffer.

    int8 is full-integer: weights and activations int8, and int8 input and output tensors
    whose scale/zero-point the runtime reads from the model. `representative` is the
    calibration set (already preprocessed float tensors, NHWC).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
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
    elif precision != "fp32":
        raise ValueError(f"unknown TFLite precision {precision!r}")
    return converter.convert()
