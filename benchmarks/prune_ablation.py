"""Structured pruning before any fine-tuning: what the refit (fold) and the BN recalibration each recover.

    python -m benchmarks.prune_ablation RUN [--ratio 0.5]

Prints the run's test accuracy unpruned, then pruned with the weights only sliced, sliced + BN
recalibration, refitted (removed channels folded into the next layer), refitted + recalibration
(what `convert --prune structured=R` does before fine-tuning).
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from edgecls.converters.calibration import representative_set
    from edgecls.converters.prune import _stats_size, recalibrate_batchnorm, structured_prune
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run

    run = open_run(args.run)
    model = run.load_model()
    splits = load_run_splits(run, ("train", "test"))
    test = splits["test"]
    stats = representative_set(splits["train"].x, _stats_size(model), args.seed)

    def accuracy(m) -> float:
        return float((m.predict(test.x, batch_size=64, verbose=0).argmax(1) == test.y).mean())

    print(f"{'structured=' + str(args.ratio) + ', 0 fine-tuning epochs':<44} test accuracy ({len(test.y)} images)")
    print(f"{'unpruned':<44} {accuracy(model):.4f}")
    for label, sample, recalibrate in (
        ("sliced (before issue 15)", None, False),
        ("sliced + BN recalibration", None, True),
        ("refit (fold)", stats, False),
        ("refit + BN recalibration (convert's start)", stats, True),
    ):
        pruned, _ = structured_prune(model, args.ratio, sample)
        if recalibrate:
            recalibrate_batchnorm(pruned, stats)
        print(f"{label:<44} {accuracy(pruned):.4f}")


if __name__ == "__main__":
    main()
