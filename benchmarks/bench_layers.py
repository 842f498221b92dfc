"""Per-layer forward + backward time: tinyvit's kernel, its reference op, the op composed
from primitives, and PyTorch eager.

The shapes are those of one encoder block of the benchmark's D 192 ViT (batch
128, 65 tokens, width 192, 3 heads, MLP 768) in float32. For each layer the
median of several timed repetitions after a warm-up, tinyvit's variants
interleaved so that they see the same machine state. PyTorch runs in a
process of its own, before them: its threads keep spinning after each op and
would slow whatever ran next in the same process. "kernel" is the op's CPU
kernel (none for ``linear``, whose reference runs by default), "reference"
its plain body (``op.reference``, what ``TINYVIT_KERNELS=reference`` runs);
"torch/tinyvit" compares PyTorch with what runs by default, the kernel or
else the reference. PyTorch is optional.

    python benchmarks/bench_layers.py [--repeat 7] [--json benchmarks/results/layers_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import tinyvit.functional as F
from tinyvit import Tensor, composed, kernels

try:
    import torch
except ImportError:
    torch = None
else:
    torch.set_num_threads(os.cpu_count())

B, N, D, HEADS, MLP, CLASSES = 128, 65, 192, 3, 768, 10


def cases():
    """(name, shapes, kernel or None, reference, composed or None, torch function or None)."""
    TF = torch.nn.functional if torch is not None else None
    dh = D // HEADS

    def pair(op, wrap=lambda f: f):  # (kernel or None where the reference runs, reference)
        has_kernel = op.__name__ in kernels.available("cpu")
        return (wrap(op) if has_kernel else None), wrap(op.reference)

    sdpa = F.scaled_dot_product_attention
    return [
        ("linear qkv", [(B, N, D), (3 * D, D), (3 * D,)], *pair(F.linear), None, TF and TF.linear),
        (
            "attention",
            [(B, HEADS, N, dh)] * 3,
            *pair(sdpa),
            None,
            TF and TF.scaled_dot_product_attention,
        ),
        (
            "softmax",
            [(B, HEADS, N, N)],
            *pair(F.softmax),
            composed.softmax,
            TF and (lambda x: TF.softmax(x, dim=-1)),
        ),
        (
            "layer_norm",
            [(B, N, D), (D,), (D,)],
            *pair(F.layer_norm),
            composed.layer_norm,
            TF and (lambda x, w, b: TF.layer_norm(x, (D,), w, b, eps=1e-6)),
        ),
        ("gelu exact", [(B, N, MLP)], *pair(F.gelu), composed.gelu, TF and TF.gelu),
        (
            "gelu tanh",
            [(B, N, MLP)],
            *pair(F.gelu, lambda op: lambda x: op(x, "tanh")),
            lambda x: composed.gelu(x, "tanh"),
            TF and (lambda x: TF.gelu(x, approximate="tanh")),
        ),
    ]


def time_tinyvit(fn, arrays, upstream):
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    start = time.perf_counter()
    fn(*tensors).backward(upstream)
    return time.perf_counter() - start


def time_torch(fn, arrays, upstream):
    tensors = [torch.from_numpy(a).requires_grad_() for a in arrays]
    start = time.perf_counter()
    fn(*tensors).backward(torch.from_numpy(upstream))
    return time.perf_counter() - start


def case_arrays(shapes, op):
    """The inputs and the upstream gradient of one case, the same in every process."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    out_shape = op(*[Tensor(a) for a in arrays]).shape
    return arrays, rng.standard_normal(out_shape).astype(np.float32)


def torch_times(repeat):
    """Median milliseconds of each layer in PyTorch (in its own process)."""
    times = {}
    for name, shapes, _, reference, _, theirs in cases():
        arrays, upstream = case_arrays(shapes, reference)
        samples = [time_torch(theirs, arrays, upstream) for _ in range(repeat + 2)][2:]
        times[name] = statistics.median(samples) * 1e3
    return times


def cpu_model() -> str:
    """The CPU's name, as ``lscpu`` prints it."""
    from bench_cpu import cpu_model as name

    return name()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/layers_cpu.json"))
    parser.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kernels.configure_process()  # as tinyvit's entry points run, in both processes
    if args.torch_child:
        print(json.dumps(torch_times(args.repeat)))
        return
    theirs_ms = {}
    if torch is not None:
        child = [sys.executable, __file__, "--torch-child", "--repeat", str(args.repeat)]
        output = subprocess.run(child, capture_output=True, text=True, check=True).stdout
        theirs_ms = json.loads(output.strip().splitlines()[-1])
    results = []
    columns = ("kernel", "reference", "composed", "torch")
    header = f"{'layer':<12}" + "".join(f"{c + ' ms':>14}" for c in columns)
    print(header + f"{'torch/tinyvit':>14}" + "\n" + "-" * (len(header) + 14))
    for name, shapes, kernel, reference, plain, _ in cases():
        arrays, upstream = case_arrays(shapes, reference)
        variants = {"kernel": kernel, "reference": reference, "composed": plain}
        samples = {k: [] for k, fn in variants.items() if fn is not None}
        for round_ in range(args.repeat + 2):  # two warm-up rounds
            for key in samples:
                elapsed = time_tinyvit(variants[key], arrays, upstream)
                if round_ >= 2:
                    samples[key].append(elapsed)
        median = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        if name in theirs_ms:
            median["torch"] = theirs_ms[name]
        row = {"layer": name, "shapes": shapes, **{f"{k}_ms": v for k, v in median.items()}}
        if "torch" in median:  # against what runs by default: the kernel, else the reference
            row["torch_over_tinyvit"] = median["torch"] / median.get("kernel", median["reference"])
        results.append(row)
        cells = "".join(
            f"{median[key]:>14.2f}" if key in median else f"{'-':>14}" for key in columns
        )
        ratio = row.get("torch_over_tinyvit")
        ratio = f"{ratio:>14.2f}" if ratio is not None else f"{'-':>14}"
        print(f"{name:<12}{cells}{ratio}")
    meta = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "repeat": args.repeat,
        "dtype": "float32",
        "kernels": kernels.describe("cpu"),
        "note": "forward + backward, median milliseconds; torch/tinyvit > 1: tinyvit is faster",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
