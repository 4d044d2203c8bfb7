"""Real .tflite classifiers that edgecls's converter did not make, written offline.

The model: a Keras Conv -> ReLU -> Conv -> ReLU -> GlobalAveragePool -> Dense(softmax) at 32x32 RGB (NHWC), its
convolutions the fixed colour and edge detectors of `tests/foreign_onnx.py` and its Dense layer fitted in NumPy
to the class-per-folder set `data` (so it genuinely separates the classes), converted by TensorFlow's own
TFLiteConverter. It expects symmetric normalization ((pixel - 127.5) / 127.5), except `with_metadata`'s.

- `with_metadata`: fp32, with TFLite Metadata written the way tflite-support's MetadataWriter writes it, but
  offline and without that package: the metadata FlatBuffer is built with the vendored TFLite Support schema
  (`edgecls.importer.metadata_schema_py_generated`, object API: NormalizationOptions mean 127.5, std 63.75 on
  the input (a mean unlike the std, so a reader that swaps them is caught; the model trained to match), a
  TENSOR_AXIS_LABELS associated file `labels.txt` on the output, identifier "M001"), stored in a new model buffer
  named by a `TFLITE_METADATA` metadata entry (LiteRT's model schema, `ai_edge_litert.schema_py_generated`,
  re-packed with identifier "TFL3"), and labels.txt is appended to the file as a zip archive, as tflite-support
  does.
- `without_metadata`: the same fp32 model as the converter wrote it (the options must say everything).
- `uint8_int8`: full-integer int8 with uint8 input and output, fed the raw 0..255 pixels. With `in_model`, a
  Rescaling layer in front normalizes them (input scale 1, zero point 0); without, the input's quantization is
  the normalization (scale 2/255, zero point 128: the classic quantized MobileNet, whose uint8 input q means
  (q - 128) / 127.5).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from tests import foreign_onnx

SIZE = foreign_onnx.SIZE
METADATA_MEAN, METADATA_STD = 127.5, 63.75  # with_metadata's normalization: (pixel - mean) / std


def _keras_model(data: Path, rescaling: bool, mean: float = 127.5, std: float = 127.5):
    """(Keras model, labels, images (N, 32, 32, 3) uint8 RGB); without `rescaling` it takes (pixel - mean) / std."""
    import keras

    w1, b1, w2, b2 = foreign_onnx.conv_weights(np.random.default_rng(0))
    hwio = lambda w: w.transpose(2, 3, 1, 0)  # noqa: E731  (ONNX OIHW -> Keras HWIO)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inputs) if rescaling else inputs
    conv1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")
    conv2 = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")
    features = keras.layers.GlobalAveragePooling2D()(conv2(conv1(x)))
    labels, images, y = foreign_onnx.class_images(data)
    dense = keras.layers.Dense(len(labels), activation="softmax")
    model = keras.Model(inputs, dense(features))
    conv1.set_weights([hwio(w1), b1])
    conv2.set_weights([hwio(w2), b2])
    x_in = images.astype(np.float32) if rescaling else (images.astype(np.float32) - mean) / std
    f = keras.Model(inputs, features).predict(x_in, verbose=0)
    fc_w, fc_b = foreign_onnx.fit_head(f, y, len(labels))
    dense.set_weights([fc_w.T, fc_b])
    return model, labels, images


def _convert(model, samples: np.ndarray | None = None) -> bytes:
    """fp32, or with `samples` (the model's float inputs) full-integer int8 with uint8 input and output."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if samples is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([samples[i : i + 1]] for i in range(len(samples)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def _metadata(labels_name: str, mean: float = METADATA_MEAN, std: float = METADATA_STD) -> bytes:
    import flatbuffers

    from edgecls.importer import metadata_schema_py_generated as m

    norm = m.NormalizationOptionsT()
    norm.mean, norm.std = [mean], [std]
    unit = m.ProcessUnitT()
    unit.optionsType, unit.options = m.ProcessUnitOptions.NormalizationOptions, norm
    image = m.ImagePropertiesT()
    image.colorSpace = m.ColorSpaceType.RGB
    content = m.ContentT()
    content.contentPropertiesType, content.contentProperties = m.ContentProperties.ImageProperties, image
    inp = m.TensorMetadataT()
    inp.name, inp.content, inp.processUnits = "image", content, [unit]
    labels_file = m.AssociatedFileT()
    labels_file.name, labels_file.type = labels_name, m.AssociatedFileType.TENSOR_AXIS_LABELS
    out = m.TensorMetadataT()
    out.name, out.associatedFiles = "probability", [labels_file]
    subgraph = m.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [inp], [out]
    model = m.ModelMetadataT()
    model.name, model.version, model.subgraphMetadata = "shapes classifier", "v1", [subgraph]
    model.minParserVersion = "1.0.0"
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"M001")
    return bytes(builder.Output())


def add_metadata(model_bytes: bytes, metadata: bytes, files: dict) -> bytes:
    """The model with `metadata` in a TFLITE_METADATA buffer and `files` (name -> bytes) in an appended zip."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return bytes(builder.Output()) + packed.getvalue()


def with_metadata(folder: Path, data: Path) -> Path:
    model, labels, _ = _keras_model(data, rescaling=False, mean=METADATA_MEAN, std=METADATA_STD)
    labels_text = ("\n".join(labels) + "\n").encode()
    path = folder / "with_metadata.tflite"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(add_metadata(_convert(model), _metadata("labels.txt"), {"labels.txt": labels_text}))
    return path


def without_metadata(folder: Path, data: Path) -> tuple:
    """(model.tflite, labels.txt)."""
    model, labels, _ = _keras_model(data, rescaling=False)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plain.tflite").write_bytes(_convert(model))
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    return folder / "plain.tflite", folder / "labels.txt"


def uint8_int8(folder: Path, data: Path, in_model: bool = True) -> tuple:
    """(uint8.tflite, labels.txt): full-integer int8, uint8 pixels in (see the module docstring for `in_model`)."""
    model, labels, images = _keras_model(data, rescaling=in_model)
    samples = images.astype(np.float32)
    if not in_model:  # the float model takes (pixel - 127.5) / 127.5, sampled at every pixel value's extremes
        samples = np.concatenate([(samples - 127.5) / 127.5, np.full((1, *samples.shape[1:]), -1.0, np.float32)])
        samples = np.concatenate([samples, np.ones((1, *samples.shape[1:]), np.float32)])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "uint8.tflite").write_bytes(_convert(model, samples))
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    return folder / "uint8.tflite", folder / "labels.txt"


def dynamic_size(path: Path) -> Path:
    """A small fp32 classifier (3 classes) whose input height and width are not fixed: [1, -1, -1, 3]."""
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_convert(model))
    return path
