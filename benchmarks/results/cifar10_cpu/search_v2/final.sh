#!/usr/bin/env bash
# A half-hour run on both cores, the machine otherwise idle: NAME, then trainer flags.
# Run from the repository root. f_mean_pd50 (commit 700666e) was
#   final.sh f_mean_pd50 --pool mean --patch-dropout 0.5
# and became the default recipe; ../train.log is `python -m tinyvit.train` itself.
set -euo pipefail
name=$1; shift
mkdir -p runs/search_v2
/usr/bin/time -f "%e s wall" python -m tinyvit.train --data-dir ../shared/data \
  --out "runs/search_v2/$name" --no-progress --time-budget 30m --tta flip "$@" \
  > "runs/search_v2/$name.log" 2>&1
