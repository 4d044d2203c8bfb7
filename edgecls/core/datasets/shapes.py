"""Generated coloured shapes at random positions, sizes, rotations and colours on noisy, textured
backgrounds. Deterministic for a seed; also usable to make camera-like test videos."""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "cross", "square", "star", "triangle")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if kind == "square":
        radii, n = [r] * 4, 4
    elif kind == "triangle":
        radii, n = [r] * 3, 3
    elif kind == "star":
        radii, n = [r if i % 2 == 0 else r * 0.42 for i in range(10)], 10
    elif kind == "cross":
        # 12 corners of a plus sign with arm half-width w
        w = r * 0.33
        pts = [
            (w, r),
            (w, w),
            (r, w),
            (r, -w),
            (w, -w),
            (w, -r),
            (-w, -r),
            (-w, -w),
            (-r, -w),
            (-r, w),
            (-w, w),
            (-w, r),
        ]
        c, s = np.cos(angle), np.sin(angle)
        return np.array([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts])
    else:
        raise ValueError(kind)
    thetas = angle + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + np.array(radii) * np.cos(thetas), cy + np.array(radii) * np.sin(thetas)], axis=1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2

    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 215, size=3)
    slope = rng.uniform(-60, 60, size=(2, 3))
    image = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    image = image + rng.normal(0, rng.uniform(4, 16), size=(size, size, 3))
    image = image.clip(0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 4)):  # clutter: thin random lines
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(image, tuple(int(v) for v in p1), tuple(int(v) for v in p2), color, 1, cv2.LINE_AA)
    return image


def render_shape(kind: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One BGR uint8 image with a single shape of `kind`."""
    import cv2

    image = _background(rng, size)
    r = rng.uniform(0.22, 0.42) * size
    cx, cy = rng.uniform(r, size - r, 2)
    angle = rng.uniform(0, 2 * np.pi)
    bg = image[int(cy), int(cx)].astype(float)
    while True:  # a colour that stands out from the background under the shape
        color = rng.integers(0, 256, 3)
        if np.abs(color - bg).sum() > 180:
            break
    color = tuple(int(v) for v in color)
    if kind == "circle":
        cv2.circle(image, (int(cx * 16), int(cy * 16)), int(r * 16), color, -1, cv2.LINE_AA, shift=4)
    else:
        pts = np.round(_polygon(kind, cx, cy, r, angle) * 16).astype(np.int32)
        cv2.fillPoly(image, [pts], color, cv2.LINE_AA, shift=4)
    noise = rng.normal(0, 3, image.shape)
    return (image + noise).clip(0, 255).astype(np.uint8)


def render_dataset(per_class: int = 300, size: int = 64, seed: int = 0):
    """Yield (label, index, bgr_image) for `per_class` images of each shape."""
    rng = np.random.default_rng(seed)
    for kind in SHAPES:
        for index in range(per_class):
            yield kind, index, render_shape(kind, rng, size)
