"""What `--overwrite` may replace for each product, as keyword arguments for runtime.atomic.

`check_output(out, overwrite, **guard)` before any work and `staged_dir(out, overwrite, **guard)`
for the write: a run replaces only a run, a bundle only a bundle (or an empty folder), and neither
may be, contain or lie inside the data it was made from.
"""

from __future__ import annotations

from pathlib import Path

from edgecls import rundir
from runtime.bundle import MANIFEST


def run_guard(dataset_root) -> dict:
    """For `train --out`: the dataset folder is protected (a run inside it would become a class)."""
    return {"marker": rundir.METADATA_FILE, "protect": {"the dataset": Path(dataset_root)}}


def bundle_guard(run) -> dict:
    """For `convert --out`: the run directory and, when it records a folder, the run's dataset."""
    protect = {"the run directory": Path(run.path)}
    dataset = run.metadata.get("dataset", {})
    if dataset.get("source") and not dataset.get("builtin"):
        protect["the run's dataset"] = Path(dataset["source"])
    return {"marker": MANIFEST, "protect": protect}
