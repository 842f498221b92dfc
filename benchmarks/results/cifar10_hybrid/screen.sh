#!/usr/bin/env bash
# Issue 27's screening runs: the hybrid recipe and one change at a time, 10 minutes each
# on an otherwise idle machine (python -m tinyvit.train's own time budget), one after
# another. Usage: benchmarks/results/cifar10_hybrid/screen.sh [NAME ...] from the
# repository root, with ../shared/data beside it; logs and metrics under
# benchmarks/results/cifar10_hybrid/screen/NAME/.
set -u
cd "$(dirname "$0")/../../.." || exit 1
here=benchmarks/results/cifar10_hybrid/screen
declare -A runs=(
  [base]=""
  [stem32]="--stem-channels 32,64"
  [stem32_pd50]="--stem-channels 32,64 --patch-dropout 0.5"
  [pd50]="--patch-dropout 0.5"
  [stem32_depth4]="--stem-channels 32,64 --depth 4"
  [batch256]="--batch-size 256 --lr 2e-3"
  [stem48_depth3]="--stem-channels 48,96 --dim 96 --mlp-dim 192 --heads 2 --depth 3"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(base stem32 stem32_pd50)
for name in "${names[@]}"; do
  mkdir -p "$here/$name"
  # shellcheck disable=SC2086
  python -m tinyvit.train --recipe hybrid --time-budget 10m --data-dir ../shared/data \
    --out "/tmp/screen/$name" --overwrite --no-progress ${runs[$name]} \
    > "$here/$name/run.log" 2>&1
  cp "/tmp/screen/$name/metrics.jsonl" "$here/$name/" 2>/dev/null
  tail -2 "$here/$name/run.log"
done
