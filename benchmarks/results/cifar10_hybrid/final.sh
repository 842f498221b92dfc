#!/usr/bin/env bash
# Issue 27's finalists: the README's main command with the hybrid recipe (and a finalist's
# flags) over the full 30-minute budget, on an otherwise idle machine, its wall time from
# /usr/bin/time (loading the data included). With PROCESSES=N, one run shared by N processes
# under mpiexec (pip install -e ".[mpi]"), each on its share of the cores (the trainer sets
# their threads; until commit 14bf44a this script set them to 1). Usage, from the repository
# root with ../shared/data beside it:
#   [PROCESSES=2] benchmarks/results/cifar10_hybrid/final.sh NAME [FLAGS ...]
# The log, metrics and curves go to benchmarks/results/cifar10_hybrid/final/NAME/, the run
# itself to runs/hybrid_NAME (ship_model.py takes its model from there).
set -u
cd "$(dirname "$0")/../../.." || exit 1
name=$1
shift
here=benchmarks/results/cifar10_hybrid/final/$name
mkdir -p "$here" runs
launcher=()
if [ -n "${PROCESSES:-}" ]; then
  launcher=(mpiexec -n "$PROCESSES")
fi
/usr/bin/time -f "%e s wall" "${launcher[@]}" python -m tinyvit.train --recipe hybrid \
  --data-dir ../shared/data --out "runs/hybrid_$name" --no-progress "$@" > "$here/run.log" 2>&1
cp "runs/hybrid_$name/metrics.jsonl" "runs/hybrid_$name/curves.png" "$here/" 2>/dev/null
tail -3 "$here/run.log"
