"""Reference statistics of each artifact, for drift monitoring on the device (issue 12).

Fed batch by batch with the held-out test split as it goes through an artifact:

    stats = ReferenceStats(labels, spec)
    for x, probs in batches:          # model inputs as preprocess made them, the artifact's probabilities
        stats.update(x, probs)
    manifest.reference[artifact.name] = stats.result()

`result()` is plain data for the manifest: the predicted-class counts, a histogram of top-1
confidence (with its per-image mean and spread), and the brightness of the inputs (histogram, mean
and spread): the daemon decides drift on those means and spreads and shows PSI over the bins,
binned by
`edgecls.runtime.monitor.stats` so the daemon's windows bin the same way. Only counts and sums are kept:
memory does not grow with the split.
"""

from __future__ import annotations

import math

import numpy as np

from edgecls.runtime.monitor.stats import (
    BRIGHTNESS_EDGES,
    CONFIDENCE_EDGES,
    REFERENCE_VERSION,
    bin_index,
    brightness_batch,
    input_pixels,
)


class ReferenceStats:
    def __init__(self, labels, spec):
        self.labels, self.spec = list(labels), spec
        self.classes = [0] * len(self.labels)
        self.confidence = [0] * (len(CONFIDENCE_EDGES) - 1)
        self.brightness = [0] * (len(BRIGHTNESS_EDGES) - 1)
        self._sum = self._sum_sq = 0.0  # brightness
        self._conf_sum = self._conf_sum_sq = 0.0
        self.images = 0

    def update(self, inputs: np.ndarray, probs: np.ndarray) -> ReferenceStats:
        """One batch: inputs (N, H, W, C) as `edgecls.runtime.preprocess.preprocess` made them, probs (N, classes)."""
        probs = np.asarray(probs, dtype=np.float64)
        if len(inputs) != len(probs) or probs.ndim != 2 or probs.shape[1] != len(self.labels):
            raise ValueError(
                f"reference statistics: {len(inputs)} inputs, probabilities of shape {probs.shape}, "
                f"{len(self.labels)} labels"
            )
        predicted = probs.argmax(axis=1)
        top1 = probs[np.arange(len(probs)), predicted]
        for k, confidence in zip(predicted, top1):
            self.classes[int(k)] += 1
            self.confidence[bin_index(float(confidence), CONFIDENCE_EDGES)] += 1
        self._conf_sum += float(top1.sum())
        self._conf_sum_sq += float((top1**2).sum())
        values = brightness_batch(input_pixels(inputs, self.spec))
        for v in values:
            self.brightness[bin_index(float(v), BRIGHTNESS_EDGES)] += 1
        self._sum += float(values.sum())
        self._sum_sq += float((values**2).sum())
        self.images += len(values)
        return self

    def result(self) -> dict:
        mean, std = _moments(self._sum, self._sum_sq, self.images)
        conf_mean, conf_std = _moments(self._conf_sum, self._conf_sum_sq, self.images)
        return {
            "version": REFERENCE_VERSION,
            "images": self.images,
            "classes": list(self.classes),  # predicted-class counts, in label order
            # mean/std of confidence are new since the first release of version 1: a daemon estimates them
            # from the histogram when a reference lacks them, so the version stays 1
            "confidence": {
                "edges": list(CONFIDENCE_EDGES),
                "counts": list(self.confidence),
                "mean": round(conf_mean, 6),
                "std": round(conf_std, 6),
            },
            "brightness": {
                "edges": list(BRIGHTNESS_EDGES),
                "counts": list(self.brightness),
                "mean": round(mean, 4),
                "std": round(std, 4),
            },
        }


def _moments(total: float, total_sq: float, n: int) -> tuple:
    """Mean and (population) standard deviation from a sum and a sum of squares."""
    n = max(1, n)
    mean = total / n
    return mean, math.sqrt(max(0.0, total_sq / n - mean * mean))
