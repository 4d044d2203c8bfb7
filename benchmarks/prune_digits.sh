#!/usr/bin/env bash
# Issue 15 point 13: on digits, `--prune structured=0.5 --prune-epochs 2` keeps test accuracy within
# 1 point of the unpruned model. Writes benchmarks/results/prune_digits.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-$(mktemp -d)}
results=benchmarks/results
mkdir -p "$results"
export TF_CPP_MIN_LOG_LEVEL=2

[ -f "$work/digits/model.keras" ] || edgecls train --data digits --out "$work/digits" --seed 0 --quiet | tail -1
{
  echo "# edgecls convert RUN --out B --prune structured=0.5 --prune-epochs 2 --formats tflite-int8 --seed S"
  echo "# $(date -u +%F), $(uname -m), $(nproc) cores, run: edgecls train --data digits --seed 0"
  echo "# before issue 15 point 13 (main f79a001, no refit, no BN recalibration), seeds 0-3:"
  echo "#   accuracy 0.9944 -> 0.9721, 0.9554, 0.9749, 0.9694 (seed 0: the 1-point gate failed at -2.23)"
  for seed in 0 1 2 3; do
    rm -rf "$work/digits-pruned-$seed"  # this script's own output from an earlier run
    edgecls convert "$work/digits" --out "$work/digits-pruned-$seed" --prune structured=0.5 --prune-epochs 2 \
      --formats tflite-int8 --seed "$seed" --max-prune-drop 100 2>"$work/prune-$seed.log" >"$work/table-$seed.txt"
    echo "seed $seed: $(grep '^pruned' "$work/prune-$seed.log")"
  done
  echo
  echo "# seed 0 bundle"
  grep -v -e '^Epoch ' -e '^[0-9]*/[0-9]* - ' "$work/table-0.txt"  # fine-tuning's per-epoch lines
  python -c "import json, sys; p = json.load(open(sys.argv[1]))['pruning']; print({k: p[k] for k in ('params_before', 'params_after', 'macs_before', 'macs_after', 'accuracy_before', 'accuracy_after', 'refit_images', 'batchnorm_recalibrated')})" \
    "$work/digits-pruned-0/manifest.json"
  echo
  python -m benchmarks.prune_ablation "$work/digits" 2>/dev/null
} | tee "$results/prune_digits.txt"
