cd /work/main
run() { name=$1; shift; .venv/bin/python -m tinyvit.train --data-dir ../shared/data --out /tmp/grid4/$name --warmup-epochs 0.3 --patch-size 8 --dim 192 --depth 6 --heads 3 --mlp-dim 384 --lr 1e-3 --epochs 3 --no-progress "$@" 2>&1 | grep -E "^epoch   3" | sed "s/^/$name /"; }
run R5_flip --augment flip
run R6_noaug_bs256_lr2e-3 --augment none --batch-size 256 --lr 2e-3
run R7_noaug_lr2e-3 --augment none --lr 2e-3
