"""What `--overwrite` may replace for each product, as keyword arguments for edgecls.runtime.atomic.

`check_output(out, overwrite, **guard)` before any work and `staged_dir(out, overwrite, **guard)`
for the write: a run replaces only a run, a bundle only a bundle (or an empty folder), and neither
may be, contain or lie inside the data it was made from. A run or bundle that also holds files
edgecls never writes there (someone's photos) is not replaced either: the replacement would delete them.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgecls.core import rundir
from edgecls.runtime.bundle import LABELS, MANIFEST

# Everything `train` and `evaluate` write into a run directory.
RUN_CONTENTS = frozenset(
    {
        rundir.MODEL_FILE,
        rundir.METADATA_FILE,
        rundir.METRICS_FILE,
        rundir.SPLIT_FILE,
        rundir.HISTORY_FILE,
        rundir.CURVES_PNG,
        rundir.CONFUSION_PNG,
        "tensorboard",
        "tuning",
    }
)


def bundle_contents(folder: Path) -> set:
    """A bundle holds its manifest, the files it lists and its artifacts; nothing else."""
    names = {MANIFEST, LABELS, "verification.txt"}
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
        names |= set(manifest.get("files") or {})
        names |= {a.get("file") for a in manifest.get("artifacts") or [] if isinstance(a, dict)}
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return {n for n in names if isinstance(n, str)}


def run_guard(dataset_root) -> dict:
    """For `train --out`: the dataset folder is protected (a run inside it would become a class)."""
    return {"marker": rundir.METADATA_FILE, "protect": {"the dataset": Path(dataset_root)}, "contents": RUN_CONTENTS}


def bundle_guard(run) -> dict:
    """For `convert --out`: the run directory and the run's dataset (a built-in one: the whole cache)."""
    from edgecls.core.datasets.builtin import cache_root

    protect = {"the run directory": Path(run.path)}
    dataset = run.metadata.get("dataset", {})
    if dataset.get("builtin"):
        protect["the built-in dataset cache"] = cache_root()
    elif dataset.get("source"):
        protect["the run's dataset"] = Path(dataset["source"])
    return {"marker": MANIFEST, "protect": protect, "contents": bundle_contents}
