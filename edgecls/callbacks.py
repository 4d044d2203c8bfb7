"""Keras callbacks shared by both training engines (`model.fit` and the multi-worker loop).

The run keeps the weights with the best monitored loss over the whole training, head phase and
fine-tuning phase together: a fresh EarlyStopping per phase would only know its own phase, so
fine-tuning that made things worse would be what gets saved.
"""

from __future__ import annotations

import math
import sys
import time


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


def keep_best(monitor: str):
    """A callback remembering the weights at the best `monitor` value across every `fit` it joins.

    `restore()` puts those weights back; `best_epoch` (0-based, counted over all phases) and
    `best` say which epoch they came from.
    """

    class KeepBest(_keras_callback_base()):
        def __init__(self):
            super().__init__()
            self.monitor, self.best, self.best_epoch, self.weights = monitor, math.inf, None, None

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(self.monitor)
            if value is not None and float(value) < self.best:
                self.best, self.best_epoch = float(value), int(epoch)
                self.weights = self.model.get_weights()

        def restore(self) -> None:
            if self.weights is not None:
                self.model.set_weights(self.weights)

    return KeepBest()


def _number(value: float) -> str:
    """As Keras' progress shows a metric: 4 decimals, or 4 significant digits when that would show 0.0000."""
    return f"{value:.4f}" if abs(value) > 1e-3 or value == 0 else f"{value:.4e}"


def epoch_lines(stream=None):
    """A callback printing one plain line per epoch (for logs in files: no progress bar, no escape codes).

    `epoch 3/30 - 0.4s - loss 0.1234 - accuracy 0.9512 - val_loss ...`, on stdout by default, where
    Keras' own progress goes.
    """

    class EpochLines(_keras_callback_base()):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            total = (self.params or {}).get("epochs", "?")
            seconds = time.monotonic() - getattr(self, "started", time.monotonic())
            values = " - ".join(f"{k} {_number(float(v))}" for k, v in (logs or {}).items())
            print(f"epoch {epoch + 1}/{total} - {seconds:.1f}s - {values}", file=stream or sys.stdout, flush=True)

    return EpochLines()


def training_callbacks(patience: int, monitor: str, best, tensorboard_dir=None, graph: bool = True) -> list:
    """LR schedule, early stopping (within the phase) and the shared best-weights keeper."""
    import keras

    cbs = [
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.5, patience=max(2, patience // 2), min_lr=1e-5, verbose=0
        ),
        best,
    ]
    if patience:
        # Restoring is `best`'s job: it sees every phase, this callback only its own.
        cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, restore_best_weights=False))
    if tensorboard_dir is not None:
        cbs.append(keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir), write_graph=graph))
    return cbs
