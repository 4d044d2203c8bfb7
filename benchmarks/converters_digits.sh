#!/usr/bin/env bash
# The converters' must-show on digits: train, convert (all formats), convert with structured pruning,
# time every artifact with one thread, and MobileNetV2 int8 vs fp32. Results land in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-$(mktemp -d)}
results=benchmarks/results
mkdir -p "$results"
export TF_CPP_MIN_LOG_LEVEL=2

edgecls train --data digits --out "$work/digits" --seed 0 --quiet --overwrite | tail -2
edgecls convert "$work/digits" --out "$work/digits-bundle" --overwrite | tee "$results/digits_convert.txt"
edgecls convert "$work/digits" --out "$work/digits-pruned" --prune structured=0.5 --overwrite 2>"$work/prune.log" \
  | tee "$results/digits_convert_pruned.txt"
grep '^pruned' "$work/prune.log" | tee -a "$results/digits_convert_pruned.txt"
python benchmarks/latency.py "$work/digits-bundle" "$work/digits-pruned" --runs 2000 --out "$results/digits_latency.json"
python -m benchmarks.mobilenetv2_int8
cp "$work/digits-bundle/manifest.json" "$results/digits_manifest.json"
cp "$work/digits-pruned/manifest.json" "$results/digits_pruned_manifest.json"
