#!/usr/bin/env bash
# Issue 27's screening run of the hybrid recipe as one run shared by two processes (bench_mpi
# measured 2 x 1 thread at 1.34x the images/s of 1 process x 2 threads for the plain ViT on the
# Intel Xeon): the same 10 minutes as screen.sh's runs. Each process takes its share of the
# cores (the trainer sets the threads; until commit 14bf44a this script set them). Usage:
# benchmarks/results/cifar10_hybrid/screen_mpi.sh NAME [FLAGS ...] from the repository root,
# after pip install -e ".[mpi]"; log and metrics under benchmarks/results/cifar10_hybrid/screen/NAME/.
set -u
cd "$(dirname "$0")/../../.." || exit 1
name=$1
shift
here=benchmarks/results/cifar10_hybrid/screen/$name
mkdir -p "$here"
mpiexec -n 2 \
  python -m tinyvit.train --recipe hybrid --time-budget 10m --data-dir ../shared/data \
  --out "/tmp/screen/$name" --overwrite --no-progress "$@" > "$here/run.log" 2>&1
cp "/tmp/screen/$name/metrics.jsonl" "$here/" 2>/dev/null
tail -2 "$here/run.log"
