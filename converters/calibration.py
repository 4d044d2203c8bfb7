"""The representative (calibration) set for int8: drawn from the run's training data."""

from __future__ import annotations

import hashlib

import numpy as np

from runtime.errors import EdgeclsError


def representative_set(x_train: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """A seeded random sample of `size` training tensors (all of them if fewer)."""
    if size < 1:
        raise EdgeclsError("calibration size must be at least 1")
    rng = np.random.default_rng(seed)
    index = np.sort(rng.permutation(len(x_train))[: min(size, len(x_train))])
    return x_train[index]


def check_shape(calibration: np.ndarray, input_shape) -> None:
    expected = tuple(input_shape)
    if calibration.ndim != 4 or tuple(calibration.shape[1:]) != expected:
        raise EdgeclsError(
            f"representative set has shape {tuple(calibration.shape[1:])}, the model takes {expected}: "
            f"it must be preprocessed with the run's own preprocessing"
        )


def fingerprint(calibration: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(calibration.shape).encode())
    h.update(np.ascontiguousarray(calibration, dtype=np.float32).tobytes())
    return h.hexdigest()
