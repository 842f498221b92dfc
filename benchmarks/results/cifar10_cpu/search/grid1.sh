cd /work/main
run() { name=$1; shift; .venv/bin/python -m tinyvit.train --data-dir ../shared/data --out /tmp/grid/$name --epochs 3 --train-limit 10000 --test-limit 2000 --warmup-epochs 0.5 --no-progress "$@" 2>&1 | grep -E "epoch   3" | sed "s/^/$name /"; }
run p4d128_lr1e-3 --patch-size 4 --dim 128 --depth 6 --heads 4 --mlp-dim 256 --lr 1e-3
run p4d128_lr2e-3 --patch-size 4 --dim 128 --depth 6 --heads 4 --mlp-dim 256 --lr 2e-3
run p4d96_lr1e-3 --patch-size 4 --dim 96 --depth 6 --heads 3 --mlp-dim 192 --lr 1e-3
run p8d192_lr1e-3 --patch-size 8 --dim 192 --depth 6 --heads 3 --mlp-dim 384 --lr 1e-3
run p8d192_lr5e-4_ls0 --patch-size 8 --dim 192 --depth 6 --heads 3 --mlp-dim 384 --lr 5e-4 --label-smoothing 0
run p4d128_lr1e-3_noaug --patch-size 4 --dim 128 --depth 6 --heads 4 --mlp-dim 256 --lr 1e-3 --augment none
