"""Datasets: a class-per-folder directory, or a built-in one written out as such a directory."""

from edgecls.core.datasets.builtin import BUILTIN_DATASETS, resolve_dataset
from edgecls.core.datasets.folder import FolderDataset, Sample, scan_folder

__all__ = ["FolderDataset", "Sample", "scan_folder", "BUILTIN_DATASETS", "resolve_dataset"]
