"""Training throughput of one run shared by processes: images/s with 1, 2 (and 4) processes.

Data parallelism splits each batch among processes (``mpiexec -n P python
-m tinyvit.train``); on one machine it competes with the threads that one
process already runs on every core. So each configuration here is P
processes of T threads each, P x T at most the cores: by default 1 x 1,
1 x all cores, and all cores x 1 (with 4 processes too where there are 4
cores). Every configuration trains the same run, the default run's
model (``recipe("cpu")``: vit_cifar_tiny with the patch tokens' average and
PatchDropout 0.5, AdamW, batch 128, flips) on random CIFAR-shaped images,
through ``Trainer.train_on_batch``: the sharded batch, the step, one
all-reduce of the gradients. The images/s are the whole batch's over the
slowest process's time for the steps after a warm-up.

    python benchmarks/bench_mpi.py                      # the configurations above
    python benchmarks/bench_mpi.py --steps 60 --json benchmarks/results/mpi_cpu.json
    python benchmarks/bench_mpi.py --quick              # a check that it runs (seconds)

Processes run under ``mpiexec`` from the same virtual environment (``pip
install -e ".[mpi]"``); without it only one process is measured. The
threads are set through ``NUMBA_NUM_THREADS`` (tinyvit's kernels),
``OPENBLAS_NUM_THREADS`` (the matrix products) and ``OMP_NUM_THREADS``.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tinyvit.distributed import THREAD_VARIABLES  # each process's threads, set per configuration


def machine() -> str:
    """The CPU as ``bench_cpu`` names it (family and model too), and its cores."""
    from bench_cpu import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores"


def mpiexec() -> str | None:
    """The ``mpiexec`` beside this Python (the mpich wheel's), else the one on the PATH;
    None without mpi4py."""
    try:
        import mpi4py  # noqa: F401  (only whether it is there; MPI is not started here)
    except ImportError:
        return None
    return shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which(
        "mpiexec"
    )


def configurations(cores: int, processes: list[int]) -> list[tuple[int, int]]:
    """``(processes, threads)`` pairs: one thread alone, one process on every core, then
    each count of processes sharing the cores."""
    pairs = [(1, 1), (1, cores)] + [(p, max(1, cores // p)) for p in processes if p > 1]
    return list(dict.fromkeys(pairs))


# ---------------------------------------------------------------- one process of a run


def worker(args) -> None:
    """One process: the run's model and its steps, timed; rank 0 prints one JSON line."""
    from tinyvit import data, distributed, kernels
    from tinyvit.train import Trainer, recipe

    kernels.configure_process()
    comm = distributed.world("cpu")
    rng = np.random.default_rng(0)
    n = args.batch_size * (args.warmup + args.steps)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    dataset = data.CIFAR10(images, labels, images[:64], labels[:64], tuple("abcdefghij"))
    config = recipe(args.recipe, steps=args.warmup + args.steps, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as folder:  # nothing is written: no fit()
        trainer = Trainer(config, dataset, folder, progress=False, comm=comm)
        batches = data.batches(images, labels, args.batch_size, seed=0, augment=config.augment,
                               shard=trainer.shard)  # fmt: skip
        start = None
        for step, (x, y) in enumerate(batches):
            if step == args.warmup:
                comm.sum_numbers(0.0, what="the start")  # every process starts together
                start = time.perf_counter()
            trainer.train_on_batch(x, y)
            trainer.step += 1
        seconds = max(comm.all_gather(time.perf_counter() - start, "the times"))
    if comm.root:
        print(json.dumps(dict(images_per_s=args.steps * args.batch_size / seconds,
                              step_seconds=seconds / args.steps)))  # fmt: skip


# ---------------------------------------------------------------- the configurations


def measure(processes: int, threads: int, args, launcher) -> dict:
    """Launch one configuration (under ``mpiexec`` for several processes); its result."""
    flags = ["--worker", "--recipe", args.recipe, "--batch-size", str(args.batch_size),
             "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
    command = [sys.executable, str(Path(__file__).resolve()), *flags]
    if processes > 1:
        command = [launcher, "-n", str(processes), *command]
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"error: {processes} x {threads}: {result.stderr.strip()[-2000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return dict(processes=processes, threads=threads, **measured)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, nargs="+", default=None,
                   help="the process counts (default: 2, and 4 where there are 4 cores)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="steps before the timing")
    p.add_argument("--batch-size", type=int, default=128, help="the whole batch")
    p.add_argument("--recipe", default="cpu", help="the trainer's recipe (model, augmentation)")
    p.add_argument("--quick", action="store_true", help="a check that it runs: seconds")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.recipe, args.batch_size, args.steps, args.warmup = "quick", 32, 4, 2
    if args.worker:
        return worker(args)
    cores = os.cpu_count() or 1
    launcher = mpiexec()
    processes = args.processes or [2] + ([4] if cores >= 4 else [])
    if launcher is None:
        print('mpiexec or mpi4py not found (pip install -e ".[mpi]"): one process only')
        processes = [1]
    print(f"{machine()}; {args.recipe} recipe, batch {args.batch_size}, {args.steps} steps")
    results = []
    for count, threads in configurations(cores, processes):
        results.append(measure(count, threads, args, launcher))
        r = results[-1]
        print(f"{count} process(es) x {threads} thread(s): {r['images_per_s']:8.1f} img/s "
              f"({1000 * r['step_seconds']:.0f} ms a step)", flush=True)  # fmt: skip
    if args.json:
        record = dict(machine=machine(), python=platform.python_version(),
                      numpy=np.__version__, recipe=args.recipe, batch_size=args.batch_size,
                      steps=args.steps, warmup=args.warmup, results=results)  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
