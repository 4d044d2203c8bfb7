"""Built-in datasets, written once as class-per-folder PNGs so the folder path is always the one used.

- digits: the UCI handwritten digits that scikit-learn ships (1,797 8x8 grey images), no download.
- shapes: generated coloured shapes on textured backgrounds (see `edgecls.core.datasets.shapes`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgecls.runtime.atomic import staged_dir
from edgecls.runtime.errors import MissingDependencyError


@dataclass(frozen=True)
class Builtin:
    name: str
    version: int
    write: Callable  # (folder: Path) -> None
    defaults: dict  # training defaults that suit this data (overridable from the CLI)
    description: str


def cache_root() -> Path:
    return Path(os.environ.get("EDGECLS_DATA", Path.home() / ".cache" / "edgecls" / "datasets"))


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", image)
    assert ok, path
    path.write_bytes(buf.tobytes())


def write_digits(folder: Path) -> None:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingDependencyError("scikit-learn", "train", "the digits dataset ships with it") from exc
    digits = load_digits()
    for index, (image, target) in enumerate(zip(digits.images, digits.target)):
        pixels = np.round(image * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        class_dir = folder / str(int(target))
        class_dir.mkdir(exist_ok=True)
        _write_png(class_dir / f"{index:04d}.png", pixels)


def write_shapes(folder: Path) -> None:
    from edgecls.core.datasets.shapes import render_dataset

    for label, index, image_bgr in render_dataset(per_class=500, size=64, seed=1234):
        class_dir = folder / label
        class_dir.mkdir(exist_ok=True)
        _write_png(class_dir / f"{index:04d}.png", image_bgr)


BUILTIN_DATASETS = {
    "digits": Builtin(
        "digits",
        1,
        write_digits,
        defaults={"image_size": 24, "color": "gray", "epochs": 30, "flip": False, "widths": (16, 32, 64)},
        description="UCI handwritten digits shipped with scikit-learn (10 classes, 1,797 images)",
    ),
    "shapes": Builtin(
        "shapes",
        2,
        write_shapes,
        defaults={"image_size": 48, "color": "rgb", "epochs": 50, "flip": True},
        description="generated shapes on textured backgrounds (5 classes, 2,500 images)",
    ),
}


def materialize(name: str, root: Path | None = None) -> Path:
    """Write a built-in dataset as folders (once) and return its path."""
    builtin = BUILTIN_DATASETS[name]
    folder = (root or cache_root()) / f"{name}-v{builtin.version}"
    if not folder.is_dir():
        try:
            with staged_dir(folder) as tmp:
                builtin.write(tmp)
        except FileExistsError:
            pass  # another process wrote it first; its copy is complete (it was renamed into place)
    return folder


def is_builtin_name(data: str) -> bool:
    """A bare built-in name (`digits`), as opposed to a path (`./digits`, `data/digits`, `digits/`)."""
    return data in BUILTIN_DATASETS


def resolve_dataset(data: str) -> tuple:
    """Map `--data` to (folder, builtin or None).

    A bare built-in name always means the built-in dataset, even when a folder of that name sits in
    the current directory (often the run itself: `--out digits`); write a path (`./digits`) for the
    folder. Anything else is a path to a class-per-folder directory.
    """
    data = str(data)
    if is_builtin_name(data):
        if Path(data).exists():
            print(
                f"note: --data {data} is the built-in dataset; write ./{data} for the folder of that name",
                file=sys.stderr,
                flush=True,
            )
        return materialize(data), BUILTIN_DATASETS[data]
    return Path(data), None
