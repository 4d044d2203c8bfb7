"""`Classifier`: a bundle in, top-k (label, score) out, for single frames and batches.

Loads the bundle, verifies the chosen artifact's sha256 before loading it, and applies the
manifest's preprocessing with the same function training used.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from edgecls.runtime.backends.registry import BACKENDS, available_backends
from edgecls.runtime.bundle import Artifact, Bundle, BundleError, load_bundle
from edgecls.runtime.errors import EdgeclsError, MissingDependencyError
from edgecls.runtime.formats import DEFAULT_PREFERENCE, backend_options, install_advice
from edgecls.runtime.preprocess import load_image, pixels
from edgecls.runtime.session import ModelSession, apply_table, input_table, quantize

log = logging.getLogger("edgecls.runtime")


@dataclass
class Prediction:
    label: str
    score: float
    topk: list  # [(label, score), ...] best first
    latency_ms: float = 0.0  # preprocessing + inference
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "top1": self.label,
            "score": round(self.score, 6),
            "topk": [{"label": l, "score": round(s, 6)} for l, s in self.topk],
            "latency_ms": round(self.latency_ms, 3),
            **self.extra,
        }


def choose_artifact(bundle: Bundle, wanted: str | None = None, preference=None) -> Artifact:
    """The named artifact, or the first in `preference` order whose backend is installed."""
    if wanted:
        return bundle.artifact(wanted)
    installed = available_backends()
    runnable = {fmt for fmt, classes in BACKENDS.items() if any(installed[c.name] for c in classes)}
    by_name = {a.name: a for a in bundle.manifest.artifacts}
    order = list(preference or DEFAULT_PREFERENCE) + [a.name for a in bundle.manifest.artifacts]
    for name in order:
        art = by_name.get(name)
        if art is not None and art.format in runnable:
            return art
    formats = sorted({a.format for a in bundle.manifest.artifacts})
    raise MissingDependencyError(
        install_advice(formats), "runtime", f"no installed backend runs this bundle's {', '.join(formats)} artifacts"
    )


class Classifier:
    def __init__(self, bundle, artifact: str | None = None, profile=None, threads: int | None = None, top_k: int = 5):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        manifest = self.bundle.manifest
        for_bundle = getattr(profile, "for_bundle", None)  # a profile whose settings depend on the bundle it runs
        profile = for_bundle(self.bundle) if callable(for_bundle) else profile
        self.profile = profile
        self.artifact = choose_artifact(self.bundle, artifact, getattr(profile, "artifacts", None))
        path = self.bundle.verify(self.artifact)
        threads = threads or getattr(profile, "threads", None)
        options = backend_options(self.artifact.format, profile)  # the profile's backend order or providers
        self.session = ModelSession.for_artifact(path, manifest, self.artifact, threads=threads, **options)
        self.spec = manifest.preprocess
        self.labels = manifest.labels
        self.top_k = top_k
        self._check_input_shape()
        self._table = input_table(self.spec, self.session.input_spec)
        log.info("loaded %s (%s) with %s", self.artifact.name, self.artifact.file, self.session.backend.name)

    @property
    def backend_name(self) -> str:
        return self.session.backend.name

    def _check_input_shape(self) -> None:
        model_shape = tuple(self.session.input_spec.shape[1:])
        wanted = self.spec.tensor_shape
        # -1: a dimension the model leaves open (an export with dynamic height and width takes the manifest's size)
        if len(model_shape) != len(wanted) or any(m not in (-1, w) for m, w in zip(model_shape, wanted)):
            raise BundleError(
                f"{self.artifact.file} takes input {model_shape} "
                f"but the manifest's preprocessing gives {self.spec.tensor_shape} ({self.spec.layout}): "
                f"the bundle is inconsistent, convert it again"
            )

    def _topk(self, probs: np.ndarray, k: int) -> list:
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.labels[i], float(probs[i])) for i in order]

    def probabilities(self, tensors: np.ndarray) -> np.ndarray:
        """Preprocessed batch (N, H, W, C), as `preprocess` gives it whatever the model's layout -> (N, classes)."""
        if tensors.shape[1:] != self.spec.shape:
            raise EdgeclsError(f"input batch has shape {tensors.shape[1:]}, the model takes {self.spec.shape}")
        return self.session.predict(tensors)

    def prepare(self, image: np.ndarray, order: str = "rgb") -> np.ndarray:
        """One uint8 image -> the model's input tensor in its own layout and dtype ((H, W, C), or (C, H, W)).

        Equal, bit for bit, to `quantize(preprocess(image, spec))` (transposed to CHW for an NCHW model):
        resize and colour on uint8, then one table lookup for normalization and quantization
        (`edgecls.runtime.session.input_table`), per plane for NCHW.
        """
        return self.prepare_pixels(pixels(image, self.spec, order))

    def prepare_pixels(self, px: np.ndarray) -> np.ndarray:
        """Pixels already at the model's size and colour (`preprocess.pixels` output) -> the input tensor.

        What `prepare` gives for the image they came from, bit for bit, without resizing again: for callers
        that need the pixels themselves too (the daemon measures their brightness for drift monitoring).
        """
        if px.shape != self.spec.shape or px.dtype != np.uint8:
            raise EdgeclsError(
                f"pixels of shape {px.shape} ({px.dtype}): the model's pixels are {self.spec.shape} "
                f"uint8, as edgecls.runtime.preprocess.pixels makes them"
            )
        if self._table is None:  # the model takes raw uint8 pixels
            if self.spec.layout == "NCHW":
                px = np.ascontiguousarray(px.transpose(2, 0, 1))
            return quantize(px[None], self.session.input_spec)[0]
        return apply_table(px, self._table, self.spec.layout)

    def infer(self, prepared: np.ndarray) -> np.ndarray:
        """A batch of `prepare` outputs (N, *spec.tensor_shape) -> probabilities (N, classes)."""
        if prepared.shape[1:] != self.spec.tensor_shape:
            raise EdgeclsError(f"input batch has shape {prepared.shape[1:]}, the model takes {self.spec.tensor_shape}")
        return self.session.run_prepared(prepared)

    def classify(self, image: np.ndarray, order: str = "rgb", top_k: int | None = None) -> Prediction:
        """One uint8 image (RGB by default; order="bgr" for OpenCV frames) -> Prediction."""
        return self.classify_batch([image], order, top_k)[0]

    def classify_batch(self, images, order: str = "rgb", top_k: int | None = None) -> list:
        start = time.perf_counter()
        images = list(images)
        chunks = [
            self.infer(np.stack([self.prepare(im, order) for im in images[i : i + 64]]))
            for i in range(0, len(images), 64)
        ]  # the backend's input is resized to the batch: keep it bounded
        probs = np.concatenate(chunks) if chunks else np.zeros((0, len(self.labels)), np.float32)
        per_image = (time.perf_counter() - start) * 1000 / max(1, len(images))
        k = min(top_k or self.top_k, len(self.labels))
        return [Prediction(*self._topk(p, 1)[0], topk=self._topk(p, k), latency_ms=per_image) for p in probs]

    def classify_file(self, path: str | os.PathLike, top_k: int | None = None) -> Prediction:
        start = time.perf_counter()
        prediction = self.classify(load_image(path), "rgb", top_k)
        prediction.latency_ms = (time.perf_counter() - start) * 1000
        return prediction
