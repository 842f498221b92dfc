"""Where one training step's time goes: each op's forward and backward, in milliseconds.

The step is ``bench_cpu.py``'s (forward, cross-entropy with label smoothing,
backward, clipping, AdamW) for one of its configurations. Every op records
its result through ``Tensor.from_op``; this script wraps that function for
the length of the run, so that an op's forward time is the time since the
previous op's result (the op itself and any Python between them) and its
backward time is the time of the closure it left behind. What no op
records (the optimizer, clipping, the graph walk) is the step's time less
the sum.

    python benchmarks/profile_step.py                          # D 192, batch 128
    python benchmarks/profile_step.py --config vit_cifar_tiny --steps 10
    python benchmarks/profile_step.py --without linear --steps 12

``--without OP`` measures instead what one kernel buys: whole steps with and
without OP's CPU kernel (its reference runs), by turns in one process, so
that both see the same machine; the median of each.

Run it on an otherwise idle machine, as the other benchmarks.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

from bench_cpu import BENCHMARKS, cpu_model, tinyvit_step

import tinyvit
from tinyvit import tensor


def profile(config, batch, steps, warmup=3):
    """``(seconds a step, {op: [forward s, backward s] a step})``, means over ``steps``."""
    step = tinyvit_step(BENCHMARKS[config], batch)
    for _ in range(warmup):
        step()
    times = collections.defaultdict(lambda: [0.0, 0.0])
    last = [0.0]
    from_op = tensor.Tensor.from_op

    def timed_from_op(data, parents, backward, op=None):
        now = time.perf_counter()
        times[op][0] += now - last[0]

        def timed_backward(g):
            start = time.perf_counter()
            grads = backward(g)
            times[op][1] += time.perf_counter() - start
            return grads

        out = from_op(data, parents, timed_backward, op)
        last[0] = time.perf_counter()
        return out

    tensor.Tensor.from_op = staticmethod(timed_from_op)
    try:
        seconds = []
        for _ in range(steps):
            last[0] = start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
    finally:
        tensor.Tensor.from_op = staticmethod(from_op)
    return sum(seconds) / steps, {op: [t / steps for t in ft] for op, ft in times.items()}


def with_and_without(op, config, batch, steps, warmup=3):
    """Median seconds a step ``{"with": ..., "without": ...}`` of op's CPU kernel."""
    table = tinyvit.kernels.available("cpu")
    if op not in table:
        raise SystemExit(f"error: no CPU kernel named {op!r}; kernels: {sorted(table)}")
    kernel, step = table[op], tinyvit_step(BENCHMARKS[config], batch)
    for _ in range(warmup):
        step()
    seconds = {"with": [], "without": []}
    try:
        for _ in range(steps):
            for variant, times in seconds.items():
                if variant == "with":
                    table[op] = kernel
                else:
                    del table[op]
                step()  # one step to settle after the switch, one timed
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
    finally:
        table[op] = kernel
    return {variant: statistics.median(times) for variant, times in seconds.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="vit_d192_6x3_mlp768", choices=list(BENCHMARKS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--without", metavar="OP", help="a step with and without OP's kernel")
    args = parser.parse_args(argv)
    if args.without:
        times = with_and_without(args.without, args.config, args.batch, args.steps)
        print(f"{args.config} at batch {args.batch}, median of {args.steps} steps each: "
              f"{times['with'] * 1e3:.1f} ms with the {args.without} kernel, "
              f"{times['without'] * 1e3:.1f} ms without "
              f"({times['without'] / times['with']:.3f}x)")  # fmt: skip
        return
    step_s, times = profile(args.config, args.batch, args.steps)
    print(f"{cpu_model()}; {tinyvit.kernels.describe('cpu')}")
    print(f"{args.config} at batch {args.batch}: {step_s * 1e3:.0f} ms a step (mean of "
          f"{args.steps})\n")  # fmt: skip
    print(f"{'op':<30}{'forward ms':>12}{'backward ms':>13}{'share':>8}")
    for op, (forward, backward) in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        share = (forward + backward) / step_s
        print(f"{op or '(unnamed)':<30}{forward * 1e3:>12.1f}{backward * 1e3:>13.1f}{share:>8.0%}")
    rest = step_s - sum(map(sum, times.values()))
    print(f"{'(outside the ops)':<30}{rest * 1e3:>25.1f}{rest / step_s:>8.0%}")


if __name__ == "__main__":
    main()
