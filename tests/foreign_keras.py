"""Foreign Keras models made offline, as people bring them to `edgecls import`.

Keras applications with random weights briefly trained on a small generated shapes set (so the accuracy
gate means something): MobileNetV3-Small with its own Rescaling layer as .keras, MobileNetV2 as a Keras 3
.h5, a Teachable-Machine-shaped folder written by legacy tf_keras (a Sequential of a MobileNet feature
Sequential and a Dense head Sequential, keras_model.h5 + `0 Cat`-style labels.txt) and a SavedModel folder.
Each builder writes into the folder it is given; tests cache them per session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 64
LABELS = ["circle", "cross", "square", "star", "triangle"]


def shapes_folder(folder: Path, per_class: int = 30, seed: int = 7) -> Path:
    """A class-per-folder set of generated shapes (edgecls's own `shapes` renderer), PNG at SIZE px."""
    import cv2

    from edgecls.core.datasets.shapes import SHAPES, render_dataset

    assert list(SHAPES) == LABELS, SHAPES
    for label, index, image_bgr in render_dataset(per_class=per_class, size=SIZE, seed=seed):
        (folder / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / label / f"{index:03d}.png"), image_bgr)
    return folder


def _pixels(folder: Path) -> tuple:
    """(RGB float pixels 0..255, class indices) of a shapes folder."""
    import cv2

    xs, ys = [], []
    for i, label in enumerate(LABELS):
        for path in sorted((folder / label).glob("*.png")):
            xs.append(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype("float32"))
            ys.append(i)
    return np.stack(xs), np.asarray(ys)


def _every_layer(model) -> list:
    """Layers of nested models too (Teachable Machine's MobileNet sits two Sequentials deep)."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_every_layer(layer))
    return found


def _train(model, x, y, epochs: int = 6) -> None:
    for layer in _every_layer(model):
        if hasattr(layer, "momentum") and "Normalization" in type(layer).__name__:
            layer.momentum = 0.8  # the applications' 0.999 leaves inference statistics unset after a few steps
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, shuffle=True)


def mobilenetv3_keras(folder: Path, data: Path) -> Path:
    """MobileNetV3-Small with include_preprocessing=True (a Rescaling layer to read), saved as .keras."""
    import keras

    keras.utils.set_random_seed(1)
    model = keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3),
        alpha=0.75,
        minimalistic=True,
        weights=None,
        classes=len(LABELS),
        include_preprocessing=True,
        dropout_rate=0.0,
    )
    x, y = _pixels(data)
    _train(model, x, y)
    path = folder / "mobilenetv3.keras"
    model.save(path)
    return path


def mobilenetv2_h5(folder: Path, data: Path) -> Path:
    """MobileNetV2 (alpha 0.35, inputs -1..1, no preprocessing layer) saved by Keras 3 as .h5."""
    import keras

    keras.utils.set_random_seed(2)
    model = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, weights=None, classes=len(LABELS))
    x, y = _pixels(data)
    _train(model, x / 127.5 - 1, y)
    path = folder / "mobilenetv2.h5"
    model.save(path)
    return path


def teachable_folder(folder: Path, data: Path) -> Path:
    """keras_model.h5 (Keras 2, by tf_keras, shaped like Teachable Machine's export) + labels.txt `0 circle`."""
    import tf_keras

    tf_keras.utils.set_random_seed(3)
    base = tf_keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    features = tf_keras.Sequential([tf_keras.layers.InputLayer(input_shape=(SIZE, SIZE, 3)), base], name="sequential_1")
    head = tf_keras.Sequential(
        [
            tf_keras.layers.Dense(32, activation="relu", input_shape=(base.output_shape[-1],)),
            tf_keras.layers.Dense(len(LABELS), activation="softmax"),
        ],
        name="sequential_3",
    )
    model = tf_keras.Sequential([features, head])
    x, y = _pixels(data)
    _train(model, x / 127.5 - 1, y)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "keras_model.h5")
    (folder / "labels.txt").write_text("".join(f"{i} {label}\n" for i, label in enumerate(LABELS)))
    return folder


def savedmodel_folder(folder: Path, keras_file: Path) -> Path:
    """The .keras model exported as a SavedModel (serving_default takes 0..255 pixels: its Rescaling is inside)."""
    import keras

    keras.models.load_model(keras_file, compile=False).export(str(folder), format="tf_saved_model")
    return folder


def rank2_keras(folder: Path) -> Path:
    """A model whose input is a feature vector, not an image."""
    import keras

    inputs = keras.Input((10,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    path = folder / "vector.keras"
    model.save(path)
    return path


def agreement(source_probs: np.ndarray, ours: np.ndarray) -> float:
    return float((np.asarray(source_probs).argmax(1) == np.asarray(ours).argmax(1)).mean())
