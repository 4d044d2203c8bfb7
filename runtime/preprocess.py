"""The one preprocessing function, shared by training and serving.

decode -> RGB -> resize (stretch | center-crop | letterbox) -> normalize -> dtype.

Training (edgecls) and the device runtime both call `preprocess`, and its parameters travel
in the model's metadata and the bundle's manifest, so the same file gives the same tensor.
Only OpenCV and numpy are used here.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgecls.runtime.errors import EdgeclsError, ImageDecodeError, MissingDependencyError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RESIZE_MODES = ("stretch", "center-crop", "letterbox")
COLORS = ("rgb", "bgr", "gray")
INTERPOLATIONS = ("box-linear", "auto", "area", "linear", "cubic", "nearest")
# What specs written before "box-linear" existed meant by a missing interpolation.
LEGACY_INTERPOLATION = "auto"
DTYPES = ("float32", "uint8")
# The model's tensor layout: NHWC (every edgecls-trained model, and every bundle before import existed) or NCHW
# (PyTorch/timm exports). `pixels` and `preprocess` always give HWC; the transpose is the runtime's business.
LAYOUTS = ("NHWC", "NCHW")
# Named input normalizations, (mean, std) per channel in 0..255 pixel units: training's --normalize, import's
# --normalize and a model registry entry's default all mean these. imagenet: torchvision's and Keras
# EfficientNet's mean/std.
NORMALIZATIONS = {
    "scale": ((0.0,), (255.0,)),  # 0..1
    "symmetric": ((127.5,), (127.5,)),  # -1..1
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("opencv-python-headless", "runtime", "needed to decode images") from exc
    return cv2


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the model's input tensor (HWC, one image).

    `layout` is the model's: "NCHW" takes the same HWC tensor transposed to CHW (`tensor_shape`).
    Normalization is `(pixel - mean) / std` per channel, pixels in 0..255.
    `PreprocessSpec.scaled(...)` builds it from the `pixel * scale + offset` form.

    interpolation: "box-linear" (the default for new models) averages whole-pixel boxes by the
    largest integer factor, then resizes the remaining < 2x linearly, as Pillow's `reducing_gap`
    does: the same anti-aliasing as OpenCV's INTER_AREA, which for a non-integer factor (a
    480x480 crop to 224x224) is its slow generic path, 7x slower. "auto" (INTER_AREA when
    shrinking, INTER_LINEAR when enlarging) is what older bundles were trained with and keeps
    its exact meaning.
    """

    height: int
    width: int
    color: str = "rgb"
    resize: str = "stretch"
    interpolation: str = "box-linear"
    mean: tuple = (0.0,)
    std: tuple = (255.0,)
    dtype: str = "float32"
    pad_value: int = 0
    layout: str = field(default="NHWC")

    def __post_init__(self):
        if self.height < 1 or self.width < 1:
            raise EdgeclsError(f"image size must be positive, got {self.height}x{self.width}")
        if isinstance(self.layout, str):
            object.__setattr__(self, "layout", self.layout.upper())
        for name, value, allowed in (
            ("color", self.color, COLORS),
            ("resize", self.resize, RESIZE_MODES),
            ("interpolation", self.interpolation, INTERPOLATIONS),
            ("dtype", self.dtype, DTYPES),
            ("layout", self.layout, LAYOUTS),
        ):
            if value not in allowed:
                raise EdgeclsError(f"unknown preprocessing {name} {value!r}: use one of {', '.join(allowed)}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise EdgeclsError(f"preprocessing {name} needs 1 or {self.channels} values, got {len(values)}")
            bad = [v for v in values if not math.isfinite(v)]
            if bad:  # a NaN would reach the manifest as bare NaN (not JSON) and every prediction
                raise EdgeclsError(f"preprocessing {name} must be finite numbers, got {bad[0]}: give real values")
        if any(s == 0 for s in self.std):
            raise EdgeclsError("preprocessing std must not be 0")

    @classmethod
    def scaled(cls, height: int, width: int, scale: float = 1 / 255, offset: float = 0.0, **kw) -> PreprocessSpec:
        """Spec for `pixel * scale + offset` (e.g. scale=1/127.5, offset=-1 for MobileNet)."""
        return cls(height, width, mean=(-offset / scale + 0.0,), std=(1.0 / scale,), **kw)  # + 0.0: no -0.0

    @classmethod
    def normalized(cls, height: int, width: int, normalization: str, **kw) -> PreprocessSpec:
        """Spec for a named normalization of `NORMALIZATIONS` (imagenet needs 3 channels)."""
        if normalization not in NORMALIZATIONS:
            raise EdgeclsError(f"unknown normalization {normalization!r}: use one of {', '.join(NORMALIZATIONS)}")
        mean, std = NORMALIZATIONS[normalization]
        if len(mean) > 1 and kw.get("color") == "gray":
            raise EdgeclsError(f"the {normalization} normalization is per colour channel: use --color rgb")
        return cls(height, width, mean=mean, std=std, **kw)

    def normalization(self) -> str | None:
        """The name in `NORMALIZATIONS` that gives this spec's mean and std, or None."""
        for name, (mean, std) in NORMALIZATIONS.items():
            if _same(self.mean, mean, self.channels) and _same(self.std, std, self.channels):
                return name
        return None

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @property
    def shape(self) -> tuple:
        """(H, W, C): what `pixels` and `preprocess` give for one image."""
        return (self.height, self.width, self.channels)

    @property
    def tensor_shape(self) -> tuple:
        """The model's input for one image: (H, W, C), or (C, H, W) for an NCHW model."""
        return (self.channels, self.height, self.width) if self.layout == "NCHW" else self.shape

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known.setdefault("interpolation", LEGACY_INTERPOLATION)
        return cls(**known)


def _same(values: tuple, named: tuple, channels: int) -> bool:
    """Per-channel values equal, a single value standing for every channel."""
    expand = lambda v: tuple(v) * channels if len(v) == 1 else tuple(v)  # noqa: E731
    return len(expand(values)) == len(expand(named)) and all(
        abs(a - b) < 1e-6 for a, b in zip(expand(values), expand(named))
    )


# Pillow's DecompressionBombError threshold: a 1 MB PNG can declare 20000x20000 pixels, and decoding
# it took 2.3 GB of RSS (an OOM kill on a Pi) before any resize could help. EDGECLS_MAX_IMAGE_PIXELS
# raises it for real giant photos (a 200 MP phone shot is 16320x12240).
MAX_IMAGE_PIXELS = 178_956_970
MAX_PIXELS_ENV = "EDGECLS_MAX_IMAGE_PIXELS"
MAX_SIDE = 1 << 20  # OpenCV's CV_IO_MAX_IMAGE_WIDTH/HEIGHT: imdecode raises above it


def _declared_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP or WebP header without decoding; None if unknown."""
    head = buf[:64].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head.startswith(b"BM") and len(head) >= 26:
        return abs(int.from_bytes(head[18:22], "little", signed=True)), abs(
            int.from_bytes(head[22:26], "little", signed=True)
        )
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8X":
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if head[:2] == b"\xff\xd8":
        data, pos = memoryview(np.ascontiguousarray(buf, dtype=np.uint8)).cast("B"), 2
        while (marker := _JPEG_MARKER.search(data, pos)) is not None and len(data) >= marker.end() + 7:
            code, start = marker.group(1)[0], marker.end()
            if code in _JPEG_SOF:
                return int.from_bytes(data[start + 5 : start + 7], "big"), int.from_bytes(
                    data[start + 3 : start + 5], "big"
                )
            if code in (_SOI, _EOI, 0xDA):  # the frame header comes before any scan
                return None
            pos = start + int.from_bytes(data[start : start + 2], "big")
    return None


def _check_pixel_count(buf: np.ndarray, name: str) -> None:
    size = _declared_size(buf)
    try:
        limit = int(os.environ.get(MAX_PIXELS_ENV) or MAX_IMAGE_PIXELS)
    except ValueError:
        raise EdgeclsError(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r} is not a whole number of pixels") from None
    if size is not None and size[0] * size[1] > limit:
        raise ImageDecodeError(
            f"cannot decode image {name}: it declares {size[0]}x{size[1]} pixels, more than the limit of {limit} "
            f"(a decompression bomb, or a giant photo: shrink it, or raise {MAX_PIXELS_ENV})"
        )
    if size is not None and max(size) > MAX_SIDE:
        raise ImageDecodeError(
            f"cannot decode image {name}: it declares {size[0]}x{size[1]} pixels, and OpenCV decodes "
            f"at most {MAX_SIDE:,} pixels per side (crop or resize it)"
        )


def decode_image(data: bytes | np.ndarray, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array (H, W, 3).

    Grayscale becomes 3 channels, alpha is dropped (as PIL's convert("RGB") does), 16-bit is
    scaled to 8-bit, and EXIF orientation is applied. Images that declare more than
    MAX_IMAGE_PIXELS are refused before decoding.
    """
    cv2 = _cv2()
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    _check_pixel_count(buf, name)
    image = None
    if buf.size:
        try:
            image = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
        except cv2.error:  # e.g. a side over its limit in a header we do not parse: it raises, not returns None
            image = None
    if image is None:
        raise ImageDecodeError(f"cannot decode image {name}: the file is corrupt, truncated or not an image")
    _check_jpeg_end(buf, name)
    return to_rgb8(image, order="bgr", name=name)


def check_encoded(data: bytes | np.ndarray, name: str = "<bytes>") -> None:
    """Raise ImageDecodeError for what `decode_image` refuses without decoding a pixel: more pixels
    declared than the limit, a JPEG cut off before its end marker. (Training checks a large
    dataset's files this way before streaming it.)"""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    _check_pixel_count(buf, name)
    _check_jpeg_end(buf, name)


def _check_jpeg_end(buf: np.ndarray, name: str) -> None:
    if _is_truncated_jpeg(buf):
        raise ImageDecodeError(f"cannot decode image {name}: the JPEG is truncated (no end-of-image marker)")


# A marker: 0xFF then a code that is not a stuffed 0x00, TEM, RSTn or another 0xFF (fill bytes
# before a marker end in the 0xFF this matches). Those skipped codes carry no length; everything
# else but SOI and EOI is followed by a two-byte length. One 0xFF, never a run: `\xff\xff*` re-scans
# a run of 0xFF at every start, so a decodable JPEG padded with 40 KB of 0xFF took 26 s (quadratic).
_JPEG_MARKER = re.compile(rb"\xff([^\x00\x01\xd0-\xd7\xff])")
_SOI, _EOI = 0xD8, 0xD9
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers: baseline, progressive, lossless...


def _is_truncated_jpeg(buf: np.ndarray) -> bool:
    """True if a JPEG's data ends before its end-of-image marker.

    libjpeg returns a half-grey image for a cut-off file with only a warning on stderr, so the
    structure is walked: segments are skipped by their lengths (an EXIF thumbnail's own EOI is
    inside one), scan data by its markers (0xFF is always stuffed there), up to the EOI. What
    follows the EOI is never looked at: motion photos append a whole MP4 to a valid JPEG.
    """
    if buf.size < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return False
    data = memoryview(np.ascontiguousarray(buf, dtype=np.uint8)).cast("B")
    pos = 2
    while (marker := _JPEG_MARKER.search(data, pos)) is not None:
        if marker.group(1)[0] == _EOI:
            return False
        if marker.group(1)[0] == _SOI:  # another image starts: this one was cut off (libjpeg decodes on, garbled)
            return True
        start = marker.end()
        length = int.from_bytes(data[start : start + 2], "big")
        if length < 2 or start + length > len(data):
            return True
        pos = start + length
    return True


def to_rgb8(image: np.ndarray, order: str = "bgr", name: str = "<array>") -> np.ndarray:
    """Normalize any OpenCV-style image (gray, BGR, BGRA, 8/16-bit) to RGB uint8 (H, W, 3)."""
    cv2 = _cv2()
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported pixel type {image.dtype} in {name}: use 8- or 16-bit images")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageDecodeError(f"unsupported image layout {image.shape} in {name}")
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 4:
        code = cv2.COLOR_BGRA2RGB if order == "bgr" else cv2.COLOR_RGBA2RGB
        return cv2.cvtColor(image, code)
    if order == "bgr":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (any path, unicode included) as RGB uint8 (H, W, 3)."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"cannot read image {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    return decode_image(data, name=str(path))


def _interpolation(cv2, mode: str, src_hw: Sequence[int], dst_hw: Sequence[int]) -> int:
    if mode == "auto":
        shrinking = dst_hw[0] * dst_hw[1] < src_hw[0] * src_hw[1]
        return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return {
        "area": cv2.INTER_AREA,
        "linear": cv2.INTER_LINEAR,
        "cubic": cv2.INTER_CUBIC,
        "nearest": cv2.INTER_NEAREST,
    }[mode]


def _resize_to(cv2, image: np.ndarray, th: int, tw: int, mode: str) -> np.ndarray:
    h, w = image.shape[:2]
    if mode != "box-linear":
        return cv2.resize(image, (tw, th), interpolation=_interpolation(cv2, mode, (h, w), (th, tw)))
    kh, kw = max(1, h // th), max(1, w // tw)
    if kh > 1 or kw > 1:
        # Whole-factor boxes take OpenCV's fast integer INTER_AREA path; the < k leftover rows and
        # columns are trimmed evenly from both sides so the factor is exact.
        h2, w2 = h - h % kh, w - w % kw
        top, left = (h - h2) // 2, (w - w2) // 2
        image = cv2.resize(image[top : top + h2, left : left + w2], (w2 // kw, h2 // kh), interpolation=cv2.INTER_AREA)
        if image.shape[:2] == (th, tw):
            return image
    return cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR)


def resize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize an (H, W, C) image to the spec's size with its resize mode."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    th, tw = spec.height, spec.width
    mode = spec.interpolation
    if spec.resize == "stretch":
        return _resize_to(cv2, image, th, tw, mode)
    if spec.resize == "center-crop":
        # Crop the target's aspect ratio in source pixels, then resize once: scaling the whole image
        # first turns a 1x65000 strip into 224 x 14.5 million pixels (~10 GB) before cropping.
        if th * w >= tw * h:  # wider than the target: keep the full height
            ch, cw = h, min(w, max(1, (2 * tw * h + th) // (2 * th)))
        else:
            ch, cw = min(h, max(1, (2 * th * w + tw) // (2 * tw))), w
        top, left = (h - ch) // 2, (w - cw) // 2
        return _resize_to(cv2, image[top : top + ch, left : left + cw], th, tw, mode)
    # letterbox: fit inside, pad the rest
    scale = min(th / h, tw / w)
    nh, nw = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
    scaled = _resize_to(cv2, image, nh, nw, mode)
    top, left = (th - nh) // 2, (tw - nw) // 2
    return cv2.copyMakeBorder(
        scaled, top, th - nh - top, left, tw - nw - left, cv2.BORDER_CONSTANT, value=(spec.pad_value,) * 3
    )


def pixels(image: np.ndarray, spec: PreprocessSpec, order: str = "rgb") -> np.ndarray:
    """One uint8 image -> the spec's size and colour, still uint8 (H, W, C): everything but normalization."""
    cv2 = _cv2()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        image = to_rgb8(image, order=order)
        order = "rgb"
    if spec.color == "gray":  # before resizing: grey is a weighted sum, not a per-channel operation
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if order == "rgb" else cv2.COLOR_BGR2GRAY)
    image = resize(np.ascontiguousarray(image), spec)
    if image.ndim == 2:
        return image[..., None]
    if spec.color != order:
        # Resizing treats channels independently, so swapping after it gives the same tensor on a
        # 224x224 image instead of a 640x480 frame (a reversed-axis copy of a frame costs ~1.5 ms).
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def normalize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 pixels -> the model's float input: (pixel - mean) / std per channel, in float32."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(spec.std, dtype=np.float32)
    return ((image.astype(np.float32) - mean) * inv_std).astype(np.float32, copy=False)


def preprocess(image: np.ndarray, spec: PreprocessSpec, order: str = "rgb") -> np.ndarray:
    """Turn one uint8 image into the model's input tensor (H, W, C) as the spec says.

    `order` names the channel order of `image`: "rgb" for `load_image`/`decode_image` output,
    "bgr" for frames straight from OpenCV capture.
    """
    image = pixels(image, spec, order)
    if spec.dtype == "uint8":
        return np.ascontiguousarray(image, dtype=np.uint8)
    return normalize(image, spec)


def preprocess_file(path: str | os.PathLike, spec: PreprocessSpec) -> np.ndarray:
    """`load_image` then `preprocess`: the exact path every training and serving file takes."""
    return preprocess(load_image(path), spec, order="rgb")
