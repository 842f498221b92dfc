"""Per-layer forward + backward time: fused tinyvit, composed tinyvit, PyTorch eager.

The shapes are those of one encoder block of the benchmark's D 192 ViT (batch
128, 65 tokens, width 192, 3 heads, MLP 768) in float32. For each layer the
median of several timed repetitions after a warm-up, the three variants
interleaved so that they see the same machine state. PyTorch is optional.

    python benchmarks/bench_layers.py [--repeat 7] [--json benchmarks/results/layers_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import tinyvit.functional as F
from tinyvit import Tensor, composed

try:
    import torch
except ImportError:
    torch = None

B, N, D, HEADS, MLP, CLASSES = 128, 65, 192, 3, 768, 10


def cases(rng):
    """(name, shapes, tinyvit fused, tinyvit composed or None, torch function)."""
    TF = torch.nn.functional if torch is not None else None
    dh = D // HEADS
    return [
        ("linear qkv", [(B, N, D), (3 * D, D), (3 * D,)], F.linear, None, TF and TF.linear),
        (
            "attention",
            [(B, HEADS, N, dh)] * 3,
            F.scaled_dot_product_attention,
            None,
            TF and TF.scaled_dot_product_attention,
        ),
        (
            "softmax",
            [(B, HEADS, N, N)],
            F.softmax,
            composed.softmax,
            TF and (lambda x: TF.softmax(x, dim=-1)),
        ),
        (
            "layer_norm",
            [(B, N, D), (D,), (D,)],
            F.layer_norm,
            composed.layer_norm,
            TF and (lambda x, w, b: TF.layer_norm(x, (D,), w, b, eps=1e-6)),
        ),
        ("gelu exact", [(B, N, MLP)], F.gelu, composed.gelu, TF and TF.gelu),
        (
            "gelu tanh",
            [(B, N, MLP)],
            lambda x: F.gelu(x, "tanh"),
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/layers_cpu.json"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    results = []
    header = (
        f"{'layer':<12} {'fused ms':>9} {'composed ms':>12} {'torch ms':>9} {'torch/fused':>12}"
    )
    print(header + "\n" + "-" * len(header))
    for name, shapes, fused, plain, reference in cases(rng):
        arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        out_shape = fused(*[Tensor(a) for a in arrays]).shape
        upstream = rng.standard_normal(out_shape).astype(np.float32)
        variants = {"fused": (time_tinyvit, fused), "composed": (time_tinyvit, plain)}
        if torch is not None:
            variants["torch"] = (time_torch, reference)
        samples = {k: [] for k, (_, fn) in variants.items() if fn is not None}
        for round_ in range(args.repeat + 2):  # two warm-up rounds
            for key in samples:
                timer, fn = variants[key]
                elapsed = timer(fn, arrays, upstream)
                if round_ >= 2:
                    samples[key].append(elapsed)
        median = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        row = {"layer": name, "shapes": shapes, **{f"{k}_ms": v for k, v in median.items()}}
        if "torch" in median:
            row["torch_over_fused"] = median["torch"] / median["fused"]
        results.append(row)

        cells = [
            f"{median[key]:>{width}.2f}" if key in median else f"{'-':>{width}}"
            for key, width in (("fused", 9), ("composed", 12), ("torch", 9))
        ]
        ratio = f"{row['torch_over_fused']:>12.2f}" if "torch_over_fused" in row else f"{'-':>12}"
        print(f"{name:<12} {' '.join(cells)} {ratio}")
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "repeat": args.repeat,
        "dtype": "float32",
        "note": "forward + backward, median milliseconds; torch/fused > 1 means tinyvit is faster",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
