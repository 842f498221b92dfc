cd /work/main
run() { name=$1; shift; .venv/bin/python -m tinyvit.train --data-dir ../shared/data --out /tmp/grid2/$name --warmup-epochs 0.5 --no-progress "$@" 2>&1 | grep -E "^epoch" | sed "s/^/$name /"; }
run A_p8d192_e6 --patch-size 8 --dim 192 --depth 6 --heads 3 --mlp-dim 384 --lr 1e-3 --epochs 6
run B_p4d96_e3 --patch-size 4 --dim 96 --depth 6 --heads 3 --mlp-dim 192 --lr 1e-3 --epochs 3
run C_p8d256_e4 --patch-size 8 --dim 256 --depth 6 --heads 4 --mlp-dim 512 --lr 1e-3 --epochs 4
