"""What a training run is, below both training and the converters: the run directory and its files
(`rundir`, `rundata`), datasets and splits, the input pipeline (`data`, `augment`), metrics, progress lines
and what `--overwrite` may replace (`outputs`). Depends only on `edgecls.runtime`; see docs/architecture.md."""
