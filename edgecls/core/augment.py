"""Augmentation as the seeds' ImageDataGenerator did it, with Keras 3 preprocessing layers.

The layers run in the tf.data pipeline during training only; they are never part of the
model that gets saved and exported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec

# (low, high, high included) per factor: the ranges Keras' layers accept for +-value
# (RandomTranslation, RandomShear and RandomBrightness take [0, 1]; RandomZoom needs the zoom-in
# bound -value above -1). Rotation is in degrees: 180 already covers every angle.
RANGES = {
    "rotation": (0.0, 180.0, True),
    "shift": (0.0, 1.0, True),
    "shear": (0.0, 1.0, True),
    "zoom": (0.0, 1.0, False),
    "brightness": (0.0, 1.0, True),
}


@dataclass(frozen=True)
class AugmentSpec:
    rotation: float = 10.0  # degrees, +-
    shift: float = 0.1  # fraction of width/height, +-
    shear: float = 0.1  # shear factor, +-
    zoom: float = 0.1  # fraction, +-
    flip: bool = False  # horizontal flip
    brightness: float = 0.1  # fraction of the value range, +-

    @classmethod
    def off(cls) -> AugmentSpec:
        return cls(0.0, 0.0, 0.0, 0.0, False, 0.0)

    @property
    def enabled(self) -> bool:
        return any((self.rotation, self.shift, self.shear, self.zoom, self.flip, self.brightness))

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise EdgeclsError for a factor the augmentation layers would refuse (or misuse)."""
        for name, (low, high, closed) in RANGES.items():
            value = getattr(self, name)
            try:
                ok = math.isfinite(value) and low <= value and (value <= high if closed else value < high)
            except TypeError:
                ok = False
            if not ok:
                upper = f"{high:g}" if closed else f"{high:g} (not included)"
                raise EdgeclsError(
                    f"{name} {value!r} is out of range: use {low:g} to {upper} (--{name}; 0 turns it off)"
                )


def value_range(spec: PreprocessSpec) -> tuple:
    """The range pixels 0..255 take after normalization (what RandomBrightness must clip to)."""
    lows = [(0 - m) / s for m, s in zip(spec.mean * 3, spec.std * 3)]
    highs = [(255 - m) / s for m, s in zip(spec.mean * 3, spec.std * 3)]
    return (min(min(lows), min(highs)), max(max(lows), max(highs)))


def build_augmenter(aug: AugmentSpec, spec: PreprocessSpec, seed: int):
    """A keras.Sequential of augmentation layers, or None if nothing is enabled."""
    if not aug.enabled:
        return None
    import keras
    from keras import layers

    chain = []
    if aug.flip:
        chain.append(layers.RandomFlip("horizontal", seed=seed))
    if aug.rotation:
        chain.append(layers.RandomRotation(aug.rotation / 360.0, fill_mode="nearest", seed=seed + 1))
    if aug.shift:
        chain.append(layers.RandomTranslation(aug.shift, aug.shift, fill_mode="nearest", seed=seed + 2))
    if aug.shear:
        chain.append(layers.RandomShear(aug.shear, aug.shear, fill_mode="nearest", seed=seed + 3))
    if aug.zoom:
        chain.append(layers.RandomZoom(aug.zoom, aug.zoom, fill_mode="nearest", seed=seed + 4))
    if aug.brightness:
        chain.append(layers.RandomBrightness(aug.brightness, value_range=value_range(spec), seed=seed + 5))
    return keras.Sequential(chain, name="augmentation")
