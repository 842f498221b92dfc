#!/usr/bin/env bash
# The README's main command as it was timed for train.log (commit e57d23e): both cores, the
# machine otherwise idle, the data from ../shared, the wall time from /usr/bin/time.
# Run from the repository root. Then ship_model.py copies the model to lessons/models/.
set -euo pipefail
mkdir -p runs
/usr/bin/time -f "%e s wall" python -m tinyvit.train --data-dir ../shared/data --out runs/cifar10 \
  --no-progress > runs/cifar10.log 2>&1
