"""The whole frame, split into its stages: decode -> preprocess + quantize -> invoke -> top-k.

The frame goes through the public runtime calls a deployment makes (`load_image`, `Classifier.classify`),
so a faster preprocessing path behind them shows up here by itself. To split `classify` without copying
it, the backend's `run` is wrapped in a probe that notes when the engine starts and stops: what comes
before is preprocessing and input quantization, what comes after is dequantization, probabilities and top-k.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

STAGES = ("decode", "preprocess", "invoke", "postprocess")


class _RunProbe:
    """Wraps backend.run on one instance; records (start, end) of the engine call."""

    def __init__(self, backend):
        self.backend, self.inner = backend, backend.run
        self.own = "run" in vars(backend)  # a run set on the instance itself goes back as it was
        self.start = self.end = 0.0

    def __call__(self, batch):
        self.start = time.perf_counter()
        out = self.inner(batch)
        self.end = time.perf_counter()
        return out

    def __enter__(self):
        self.backend.run = self
        return self

    def __exit__(self, *exc):
        if self.own:
            self.backend.run = self.inner
        else:
            del self.backend.run  # back to the class's own method


def frame_stages(
    classify, backend, image_path: Path, runs: int, budget_s: float | None, warmup: int = 5, min_runs: int = 10
) -> dict:
    """{stage: [ms per frame]} plus "frame" (the whole frame, decode included), "total" (decode excluded)
    and "overhead" (preprocess + postprocess, the part of the frame that is neither decode nor the engine).

    `classify(image)` is the deployable per-frame call on an RGB uint8 image; `backend` the object whose
    `run` it ends up calling. `load_image` decodes the file (page cache warm after the first frame).
    """
    from edgecls.runtime.preprocess import load_image

    samples = {k: [] for k in (*STAGES, "frame", "total", "overhead")}
    deadline = None
    with _RunProbe(backend) as probe:
        for i in range(warmup + runs):
            if i == warmup and budget_s:
                deadline = time.perf_counter() + budget_s
            t0 = time.perf_counter()
            image = load_image(image_path)
            t1 = time.perf_counter()
            probe.start = probe.end = 0.0
            classify(image)
            t2 = time.perf_counter()
            if not probe.start:
                raise RuntimeError("the classifier never called its backend: the frame probe cannot split the stages")
            if i < warmup:
                continue
            ms = {
                "decode": t1 - t0,
                "preprocess": probe.start - t1,
                "invoke": probe.end - probe.start,
                "postprocess": t2 - probe.end,
                "frame": t2 - t0,
                "total": t2 - t1,
            }
            ms["overhead"] = ms["preprocess"] + ms["postprocess"]
            for key, value in ms.items():
                samples[key].append(value * 1000)
            if deadline is not None and i + 1 - warmup >= min_runs and time.perf_counter() >= deadline:
                break
    return samples


def synthetic_frame(path: Path, height: int = 480, width: int = 640, gray: bool = False, seed: int = 0) -> Path:
    """A camera-sized JPEG with photo-like content (gradients, shapes, sensor noise), written with OpenCV.

    Flat or random images decode at unrepresentative speeds (a JPEG of noise is several times larger).
    """
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [96 + 80 * np.sin(xx / 97.0), 110 + 70 * np.cos(yy / 71.0), 128 + 60 * np.sin((xx + yy) / 150.0)], -1
    )
    for _ in range(12):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, centre, int(rng.integers(15, 90)), colour, -1, cv2.LINE_AA)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    if gray:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("OpenCV could not encode the synthetic frame")
    path.write_bytes(buf.tobytes())
    return path
