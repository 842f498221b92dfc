cd /work/main
while pgrep -f grid4.sh > /dev/null; do sleep 5; done
run() { name=$1; shift; /usr/bin/time -v .venv/bin/python -m tinyvit.train --data-dir ../shared/data --out /work/exp/$name --no-progress "$@" > /work/exp/$name.log 2>&1; }
run F1_p8d192_e19_flip --patch-size 8 --dim 192 --depth 6 --heads 3 --mlp-dim 384 --lr 1e-3 --epochs 19 --warmup-epochs 1 --augment flip
run F2_p4d96_e10_flip --patch-size 4 --dim 96 --depth 6 --heads 3 --mlp-dim 192 --lr 1e-3 --epochs 10 --warmup-epochs 1 --augment flip
