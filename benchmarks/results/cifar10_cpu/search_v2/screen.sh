#!/usr/bin/env bash
# One screening run of issue 15's search: NAME, then trainer flags. Single-threaded, so
# that two runs share the 2-core machine side by side (their images/s compare only with
# each other). Run from the repository root; the runs were made at commit aa24118:
#   screen.sh s10_cls         --epochs 10 --ema 0.999
#   screen.sh s10_mean        --epochs 10 --ema 0.999 --pool mean
#   screen.sh s10_mean_sincos --epochs 10 --pool mean --pos-embed sincos   (stopped at epoch 5)
#   screen.sh s10_mean_pd25   --epochs 10 --pool mean --patch-dropout 0.25
#   screen.sh s10_mean_pd50   --epochs 10 --pool mean --patch-dropout 0.5
set -euo pipefail
name=$1; shift
export TINYVIT_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p runs/search_v2
/usr/bin/time -f "%e s wall" python -m tinyvit.train --data-dir ../shared/data \
  --out "runs/search_v2/$name" --no-progress --tta flip "$@" > "runs/search_v2/$name.log" 2>&1
