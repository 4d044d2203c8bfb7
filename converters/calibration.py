"""The representative (calibration) set for int8: drawn from the run's training data."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgecls.runtime.errors import EdgeclsError


def _drawn(count: int, size: int, seed: int) -> np.ndarray:
    """Which of `count` training images a set of `size` takes: seeded, in file order."""
    if size < 1:
        raise EdgeclsError("calibration size must be at least 1")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(count)[: min(size, count)])


def representative_set(x_train: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """A seeded random sample of `size` training tensors (all of them if fewer)."""
    return x_train[_drawn(len(x_train), size, seed)]


class CalibrationSampler:
    """Draws representative sets from a train split without holding the split: it decodes only the
    files a set takes. The same images, in the same order, as `representative_set(split.x, ...)`
    on the whole split loaded in memory, so a set's fingerprint does not depend on how it was read,
    when every file of the split decodes, as in a run's recorded split (training leaves out the files
    it could not decode). An undecodable file the draw does not meet stays in the count and can shift
    the draw; decoding them all to know would be the whole pass this class avoids.
    """

    def __init__(self, split, seed: int = 0):
        self.split, self.seed = split, seed

    def __len__(self) -> int:
        return len(self.split.y)

    def draw(self, size: int) -> np.ndarray:
        from edgecls.core.data import StreamedSplit

        if not isinstance(self.split, StreamedSplit):
            return representative_set(self.split.x, size, self.seed)
        while True:
            # Over the files not known to be bad; one that fails to decode now is recorded as bad,
            # and the set is drawn again over the rest (what a whole-split load would have drawn from).
            readable = self.split.readable()
            if not len(readable):
                raise EdgeclsError(f"no readable images in the {self.split.name or 'train'} split to calibrate on")
            chosen = [int(i) for i in readable[_drawn(len(readable), size, self.seed)]]
            with ThreadPoolExecutor(max_workers=self.split.workers) as pool:
                tensors = list(pool.map(self.split.tensor, chosen))
            if all(t is not None for t in tensors):
                return np.stack(tensors)


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
