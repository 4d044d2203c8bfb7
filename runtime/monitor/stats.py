"""The statistics drift monitoring compares, defined once for both sides.

`edgecls convert` builds each artifact's reference from the held-out test split
(`converters/reference.py`); the daemon builds the same statistics over its rolling window
(`runtime/monitor/drift.py`). Both bin with these functions, so one image gives the same bins:

- class: the predicted class (argmax of the artifact's probabilities), one bin per label.
- confidence: the top-1 probability, binned by CONFIDENCE_EDGES (finer near 1, where a good
  model puts most images; a drop in confidence shows as mass moving down these bins).
- brightness: the mean of the preprocessed uint8 pixels (0..255, every channel), that is the
  image after resize and colour conversion and before normalization (`edgecls.runtime.preprocess.pixels`),
  binned by BRIGHTNESS_EDGES (16 bins of 16 grey levels). It is an exact integer sum divided by
  the pixel count, so convert (from its normalized tensors, inverted exactly) and the daemon
  (from the frame's pixels) get the same number for the same image.

The edges are written into the manifest with the counts, so a daemon reads a reference by its
own edges even if a later version bins differently.
"""

from __future__ import annotations

import bisect

import numpy as np

REFERENCE_VERSION = 1
CONFIDENCE_EDGES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BRIGHTNESS_EDGES = tuple(float(e) for e in range(0, 257, 16))


def bin_index(value: float, edges) -> int:
    """The bin of `value`: [edges[i], edges[i+1]), the last bin closed; values outside go to the end bins."""
    i = bisect.bisect_right(edges, value) - 1
    return min(max(i, 0), len(edges) - 2)


def brightness(pixels: np.ndarray) -> float:
    """Mean of one image's uint8 pixels (H, W, C): an exact integer sum over the pixel count (~6 us at 224x224x3)."""
    import cv2

    return float(sum(cv2.sumElems(pixels))) / pixels.size


def brightness_batch(pixels: np.ndarray) -> np.ndarray:
    """`brightness` of each image of a uint8 batch (N, H, W, C), bit for bit."""
    flat = pixels.reshape(len(pixels), -1)
    return flat.sum(axis=1, dtype=np.int64).astype(np.float64) / flat.shape[1]


def input_pixels(x: np.ndarray, spec) -> np.ndarray:
    """A batch of model inputs as `edgecls.runtime.preprocess.preprocess` made them -> the uint8 pixels they came from.

    uint8 inputs are the pixels; float inputs are `(pixel - mean) / std` in float32, whose error is far
    below half a grey level, so rounding `x * std + mean` recovers every pixel exactly.
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    return np.clip(np.rint(x.astype(np.float64) * std + mean), 0, 255).astype(np.uint8)
