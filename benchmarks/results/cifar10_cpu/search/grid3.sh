cd /work/main
while pgrep -f grid2.sh > /dev/null; do sleep 10; done
run() { name=$1; shift; .venv/bin/python -m tinyvit.train --data-dir ../shared/data --out /tmp/grid3/$name --warmup-epochs 0.3 --patch-size 8 --dim 192 --depth 6 --heads 3 --mlp-dim 384 --lr 1e-3 --epochs 3 --no-progress "$@" 2>&1 | grep -E "^epoch   3" | sed "s/^/$name /"; }
run R0_base
run R1_mean --pool mean
run R2_bs64 --batch-size 64
run R3_ls0 --label-smoothing 0
run R4_noaug --augment none
