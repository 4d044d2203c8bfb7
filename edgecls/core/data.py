"""The training input pipeline: files -> edgecls.runtime.preprocess -> tf.data, in memory or streamed.

Every image goes through `edgecls.runtime.preprocess.preprocess`, the function the device runs, so
training and serving see identical tensors for the same file.

A split whose preprocessed tensors fit under the in-memory limit is decoded once into one array
(`LoadedSplit`). Above it (`EDGECLS_IN_MEMORY_MB`, default 256 MB of float32 tensors for all splits
together; 0 always streams) it is a `StreamedSplit`: only its file list is held, and each epoch
decodes the files again in parallel threads (OpenCV releases the GIL) in the same seeded order,
feeding tf.data a few batches ahead. Why no on-disk cache of decoded tensors: measured on 2 cores
(benchmarks/train_memory.py), decoding and preprocessing cost about 1 ms of CPU per image (the shapes
set to 224x224) against 80-90 ms for a MobileNetV2 training step, and a streamed epoch took the CPU time of
an in-memory one; a cache would save under 2 % for gigabytes of disk and an invalidation scheme.
Small sets stay in memory because there a whole epoch is one cheap slice of an array (0.3 s of CPU
against 1.7 s streamed for 1,750 images). Files that cannot be images are found before training
by a header check; a file that passes it but fails to decode, or whose bytes changed since they were
hashed, weighs 0 (a blank image) when an epoch meets it, is counted at the end of that epoch and left
out of evaluation and the run's records.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edgecls.core.progress import counted, progress
from edgecls.runtime.errors import DataError, EdgeclsError, ImageDecodeError
from edgecls.runtime.preprocess import PreprocessSpec, check_encoded, decode_image, preprocess

IN_MEMORY_ENV = "EDGECLS_IN_MEMORY_MB"
IN_MEMORY_MB = 256.0


@dataclass
class LoadedSplit:
    x: np.ndarray
    y: np.ndarray
    paths: list
    skipped: list = field(default_factory=list)  # (path, reason)
    digests: list = field(default_factory=list)  # sha256 per loaded file, in order


def _reason(exc: ImageDecodeError) -> str:
    return str(exc).split(": ", 1)[-1]


def _load_one(path, spec: PreprocessSpec):
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return None, None, f"unreadable ({exc.strerror or exc})"
    digest = hashlib.sha256(data.tobytes()).hexdigest()
    try:
        tensor = preprocess(decode_image(data, name=str(path)), spec, order="rgb")
    except ImageDecodeError as exc:
        return None, digest, _reason(exc)
    return tensor, digest, None


def _warn_skipped(skipped: list, name: str, when: str = "") -> None:
    if skipped:
        first = f"{skipped[0][0]}: {skipped[0][1]}"
        print(
            f"warning: skipped {len(skipped)} unreadable image(s) in {name or 'data'}{when} (first: {first})",
            file=sys.stderr,
            flush=True,
        )


def load_split(samples: list, spec: PreprocessSpec, workers: int = 4, name: str = "") -> LoadedSplit:
    """Decode and preprocess every sample (in threads: OpenCV releases the GIL); skip bad files."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            counted(pool.map(lambda s: _load_one(s.path, spec), samples), len(samples), f"decoding {name or 'data'}")
        )
    xs, ys, paths, digests, skipped = [], [], [], [], []
    for sample, (tensor, digest, problem) in zip(samples, results):
        if problem:
            skipped.append((str(sample.path), problem))
            continue
        xs.append(tensor)
        ys.append(sample.label)
        paths.append(str(sample.path))
        digests.append(digest)
    _warn_skipped(skipped, name)
    if not xs:
        raise DataError(
            f"no readable images in the {name or 'data'} split: every file failed to decode "
            f"({skipped[0][1] if skipped else 'no files'})"
        )
    return LoadedSplit(np.stack(xs), np.asarray(ys, dtype=np.int64), paths, skipped, digests)


# --- streaming ----------------------------------------------------------------------------------------

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM")


def _known_header(head: bytes) -> bool:
    """PNG, JPEG, BMP or WebP: the formats whose size and structure the header check reads."""
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def check_file(path, digest: str | None = None) -> tuple:
    """(sha256, problem) from a header check: the declared size against the pixel limits, a JPEG's
    structure up to its end marker. Reads the whole file only when it must (no digest yet, or a
    JPEG); `digest` is kept when given. A format the check does not parse (a GIF or TIFF, whatever
    its extension says) is decoded once, so the files a run uses do not depend on its size."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            known = _known_header(head)
            whole = digest is None or head.startswith(b"\xff\xd8") or not known
            data = head + f.read() if whole else head
    except OSError as exc:
        return digest, f"unreadable ({exc.strerror or exc})"
    if digest is None:
        digest = hashlib.sha256(data).hexdigest()
    try:
        if known:
            check_encoded(data, str(path))  # `data` is the head alone unless a JPEG (whose end is checked)
        else:
            decode_image(data, str(path))
    except ImageDecodeError as exc:
        return digest, _reason(exc)
    return digest, None


class StreamedSplit:
    """A split read from disk when it is used: its file list in memory, its pixels batch by batch.

    `samples` carry their sha256 (`scan` fills in the missing ones while it checks the headers).
    `paths`, `y`, `digests` and `skipped` read like a `LoadedSplit`'s: the files training used and
    those it could not. A file that fails to decode is added to `skipped` when a pass meets it, so
    they are complete once every file was decoded once (`check_unseen`).
    """

    def __init__(
        self, samples: list, spec: PreprocessSpec, name: str = "", workers: int = 4, problems: dict | None = None
    ):
        self.samples, self.spec, self.name, self.workers = list(samples), spec, name, workers
        self.labels = np.asarray([s.label for s in samples], dtype=np.int64)  # every file's, readable or not
        self._problems = dict(problems or {})  # index -> reason
        self._decoded = np.zeros(len(samples), dtype=bool)
        self._reported = set(self._problems)
        self._lock = threading.Lock()

    @classmethod
    def scan(cls, samples: list, spec: PreprocessSpec, workers: int = 4, name: str = "") -> StreamedSplit:
        """Hash the files not hashed yet and check every header; warn (one line) about the bad ones."""
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = list(
                counted(
                    pool.map(lambda s: check_file(s.path, s.digest), samples),
                    len(samples),
                    f"checking {name or 'data'}",
                )
            )
        samples = [
            type(s)(s.path, s.label, digest) if s.digest is None else s for s, (digest, _) in zip(samples, found)
        ]
        problems = {i: problem for i, (_, problem) in enumerate(found) if problem}
        split = cls(samples, spec, name, workers, problems)
        _warn_skipped(split.skipped, name)
        if len(problems) == len(samples):
            raise DataError(
                f"no readable images in the {name or 'data'} split: every file failed the header check "
                f"({split.skipped[0][1] if problems else 'no files'})"
            )
        return split

    def __len__(self) -> int:
        return len(self.samples) - len(self._problems)

    def readable(self) -> np.ndarray:
        """Indices of the files not known to be bad (yet)."""
        with self._lock:
            return np.asarray([i for i in range(len(self.samples)) if i not in self._problems], dtype=np.int64)

    def tensor(self, i: int) -> np.ndarray | None:
        """File `i` through edgecls.runtime.preprocess, or None (and recorded in `skipped`) if it will not decode
        or its bytes are no longer the ones hashed (split.json's, or the scan's): each pass hashes what it
        decodes, so a file replaced by another valid picture between two passes (Keras, then an artifact)
        is dropped like one that stopped decoding, never judged as a different image."""
        sample = self.samples[i]
        try:
            data = np.fromfile(sample.path, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            return self._bad(i, f"unreadable ({getattr(exc, 'strerror', None) or exc})")
        if sample.digest is not None and hashlib.sha256(data.tobytes()).hexdigest() != sample.digest:
            return self._bad(i, "changed since it was hashed (its sha256 differs)")
        try:
            x = preprocess(decode_image(data, name=str(sample.path)), self.spec, order="rgb")
        except ImageDecodeError as exc:
            return self._bad(i, _reason(exc))
        self._decoded[i] = True
        return x

    def _bad(self, i: int, why: str) -> None:
        with self._lock:
            self._problems[i] = why
            self._decoded[i] = True

    @property
    def skipped(self) -> list:
        with self._lock:
            return [(str(self.samples[i].path), why) for i, why in sorted(self._problems.items())]

    def _kept(self) -> list:
        with self._lock:
            return [s for i, s in enumerate(self.samples) if i not in self._problems]

    @property
    def paths(self) -> list:
        return [str(s.path) for s in self._kept()]

    @property
    def y(self) -> np.ndarray:
        return np.asarray([s.label for s in self._kept()], dtype=np.int64)

    @property
    def digests(self) -> list:
        return [s.digest for s in self._kept()]

    def report_new(self, when: str = "") -> None:
        """One warning line for the bad files found since the last report."""
        with self._lock:
            fresh = sorted(set(self._problems) - self._reported)
            self._reported |= set(fresh)
            found = [(str(self.samples[i].path), self._problems[i]) for i in fresh]
        _warn_skipped(found, self.name, when)

    def check_unseen(self) -> None:
        """Decode the files no pass has decoded (another worker's shard), so `skipped` is complete."""
        unseen = [int(i) for i in np.flatnonzero(~self._decoded) if i not in self._problems]
        if unseen:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                for _ in counted(
                    pool.map(self.tensor, unseen), len(unseen), f"checking the rest of {self.name or 'data'}"
                ):
                    pass

    def tf_elements(self, targets: np.ndarray, weights: np.ndarray | None = None):
        """A function for Dataset.map: file index -> (tensor, target, weight).

        `targets` and `weights` are per file (all of them, by index). A file that fails to decode
        gives a blank tensor with weight 0, so the number of batches is known before the epoch.
        """
        import tensorflow as tf

        shape, dtype = self.spec.shape, np.dtype(self.spec.dtype)
        blank = np.zeros(shape, dtype)

        def load(i):
            x = self.tensor(int(i))
            return (blank, np.float32(0)) if x is None else (x, np.float32(1))

        targets = tf.constant(targets)
        weights = tf.constant(np.ones(len(self.samples), np.float32) if weights is None else weights.astype(np.float32))

        def element(i):
            # stateful=False: the same index always gives the same tensor, which op determinism allows in parallel
            x, ok = tf.numpy_function(load, [i], [tf.as_dtype(dtype), tf.float32], stateful=False)
            x.set_shape(shape)
            ok.set_shape(())
            return x, tf.gather(targets, i), tf.gather(weights, i) * ok

        return element


def in_memory_limit(mb: float | None = None) -> float:
    """Bytes of preprocessed tensors that stay in memory: `mb`, else EDGECLS_IN_MEMORY_MB, else 256 MB."""
    if mb is None:
        raw = os.environ.get(IN_MEMORY_ENV)
        try:
            mb = float(raw) if raw else IN_MEMORY_MB
        except ValueError:
            raise EdgeclsError(
                f"{IN_MEMORY_ENV}={raw!r} is not a number of megabytes (0 streams every dataset)"
            ) from None
    if mb != mb or mb < 0:  # nan, or negative
        raise EdgeclsError(
            f"the in-memory limit of {mb:g} MB ({IN_MEMORY_ENV}) is not 0 or more: use 0 (always stream) "
            f"or a number of megabytes"
        )
    return mb * 2**20


def tensor_bytes(spec: PreprocessSpec) -> int:
    return int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize


def open_splits(
    splits: dict, spec: PreprocessSpec, workers: int = 4, limit_mb: float | None = None, decoded_before: bool = False
) -> dict:
    """Every non-empty split, in memory if all of them fit under the limit together, else streamed.

    `decoded_before`: the files are a run's recorded split, unchanged (same sha256) since training
    decoded them, so the header check is skipped.
    """
    splits = {name: samples for name, samples in splits.items() if samples}
    total = sum(len(s) for s in splits.values()) * tensor_bytes(spec)
    limit = in_memory_limit(limit_mb)
    if total <= limit:
        return {name: load_split(samples, spec, workers, name) for name, samples in splits.items()}
    progress(
        f"streaming {sum(len(s) for s in splits.values()):,} images from disk "
        f"({total / 2**30:.2f} GB as tensors, above the {limit / 2**20:g} MB in-memory limit, {IN_MEMORY_ENV})"
    )
    if decoded_before:
        return {name: StreamedSplit(samples, spec, name, workers) for name, samples in splits.items()}
    return {name: StreamedSplit.scan(samples, spec, workers, name) for name, samples in splits.items()}


def check_all_decoded(splits: dict) -> None:
    """Before a run records its files: every streamed file decoded once, so skipped files are known
    (and the ones found since the last epoch's report, in evaluation say, reported)."""
    for split in splits.values():
        if isinstance(split, StreamedSplit):
            split.check_unseen()
            split.report_new()


def fingerprint(labels: list, splits: dict) -> str:
    """sha256 over labels and (split, label, file content hash), independent of absolute paths."""
    h = hashlib.sha256()
    h.update("\n".join(labels).encode())
    for name in sorted(splits):
        for digest, label in sorted(zip(splits[name].digests, splits[name].y.tolist())):
            h.update(f"{name}:{label}:{digest}\n".encode())
    return h.hexdigest()


def make_tf_dataset(
    split, batch_size: int, shuffle: bool, seed: int, augment=None, labels_for=None, class_weight: dict | None = None
):
    """A tf.data pipeline over a split; augmentation (if any) runs here, not in the model.

    In memory: (x, target) pairs; pass class weights to `fit`. Streamed: (x, target, weight),
    `class_weight` folded into the weight (Keras takes one or the other), and a file that fails to
    decode weighs 0. File indices get the seeded shuffle the in-memory tensors get: the same order.
    """
    import tensorflow as tf

    if isinstance(split, StreamedSplit):
        targets = labels_for(split.labels) if labels_for else split.labels
        weights = None
        if class_weight:
            weights = np.asarray([class_weight.get(int(label), 1.0) for label in split.labels], np.float32)
        indices = split.readable()
        ds = tf.data.Dataset.from_tensor_slices(indices)
        if shuffle:
            ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(split.tf_elements(targets, weights), num_parallel_calls=split.workers, deterministic=True).batch(
            batch_size
        )
        if augment is not None:
            ds = ds.map(lambda x, t, w: (augment(x, training=True), t, w), num_parallel_calls=tf.data.AUTOTUNE)
        return own_threads(ds, split.workers).prefetch(tf.data.AUTOTUNE)
    y = labels_for(split.y) if labels_for else split.y
    ds = tf.data.Dataset.from_tensor_slices((split.x, y))
    if shuffle:
        ds = ds.shuffle(len(split.x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, t: (augment(x, training=True), t), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def own_threads(ds, workers: int):
    """Run a streamed dataset's decoding on threads of its own. On TensorFlow's shared inter-op
    threads (as many as cores) a decode waiting for the GIL held back the training step's ops: on
    2 cores the same epoch took the same CPU time but up to 40 % longer."""
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = max(2, workers)
    return ds.with_options(options)


def iter_batches(split, batch_size: int = 64, workers: int | None = None):
    """(x, y, paths) of the split's readable images, in order, batch by batch.

    A streamed split decodes the next batch in threads while the caller works on this one; files
    that fail to decode are left out (and recorded in the split's `skipped`).
    """
    if not isinstance(split, StreamedSplit):
        for start in range(0, len(split.y), batch_size):
            end = start + batch_size
            yield split.x[start:end], split.y[start:end], split.paths[start:end]
        return
    indices = split.readable()
    chunks = deque(indices[start : start + batch_size] for start in range(0, len(indices), batch_size))
    with ThreadPoolExecutor(max_workers=workers or split.workers) as pool:
        ahead: deque = deque()
        while chunks or ahead:
            while chunks and len(ahead) < 2:  # this batch and the next: memory stays two batches
                chunk = chunks.popleft()
                ahead.append((chunk, [pool.submit(split.tensor, int(i)) for i in chunk]))
            chunk, futures = ahead.popleft()
            kept = [(int(i), f.result()) for i, f in zip(chunk, futures)]
            kept = [(i, x) for i, x in kept if x is not None]
            if kept:
                yield (
                    np.stack([x for _, x in kept]),
                    split.labels[[i for i, _ in kept]],
                    [str(split.samples[i].path) for i, _ in kept],
                )


def predict_split(predict, split, batch_size: int = 32, each=None) -> tuple:
    """(outputs, y) of `predict(batch)` over the split's readable images, batch by batch.

    `each(x, outputs)`, if given, sees every batch too (statistics gathered in the same pass).
    """
    outputs, ys = [], []
    for x, y, _ in iter_batches(split, batch_size):
        outputs.append(np.asarray(predict(x)))
        ys.append(y)
        if each is not None:
            each(x, outputs[-1])
    if not outputs:
        raise DataError(f"no readable images in the {getattr(split, 'name', '') or 'data'} split")
    return np.concatenate(outputs), np.concatenate(ys)
