"""Per-layer forward + backward time: tinyvit's kernel, its reference op, the op composed
from primitives, another checkout, PyTorch eager, and one pass over the layer's memory.

The shapes are those of one encoder block of the benchmark's D 192 ViT (batch
128, 65 tokens, width 192, 3 heads, MLP 768) in float32, plus the loss on the
logits and one AdamW step over the whole model's parameters. For each layer
the median of several timed repetitions after a warm-up, tinyvit's variants
interleaved so that they see the same machine state. Columns:

* ``kernel``: the op's CPU kernel (``tinyvit/kernels/cpu.py``; none for
  ``linear``, whose reference runs by default);
* ``reference``: its plain body (``op.reference``, what
  ``TINYVIT_KERNELS=reference`` runs); ``composed``: built from primitives;
* ``baseline`` (``--baseline DIR``): what another tinyvit checkout runs by
  default, for instance the commit before a change;
* ``torch``: PyTorch eager (optional);
* ``one pass``: NumPy copying the bytes a fused forward and backward must
  read and write once (inputs and output forward, upstream, inputs and
  gradients backward), on one thread: what "one pass over memory" costs;
* ``first call``: the kernel's first forward and backward in a fresh
  process, with numba's cache of this machine (``warm``), and with an empty
  cache (``cold``: numba compiles the loops, once per machine).

The baseline, PyTorch and the first calls run in processes of their own,
before the rest (PyTorch's threads keep spinning after each op and would
slow whatever ran next in the same process). "torch/tinyvit" compares
PyTorch with what runs by default, the kernel or else the reference.

    python benchmarks/bench_layers.py [--repeat 7] [--baseline DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tinyvit
import tinyvit.functional as F
from tinyvit import Tensor, composed, kernels

try:
    import torch
except ImportError:
    torch = None
else:
    torch.set_num_threads(os.cpu_count())

B, N, D, HEADS, MLP, CLASSES = 128, 65, 192, 3, 768, 10
MODEL = dict(image_size=32, patch_size=4, num_classes=CLASSES, dim=D, depth=6, heads=HEADS,
             mlp_dim=MLP)  # fmt: skip


def labels(logits):
    return np.arange(len(logits)) % CLASSES


def cases():
    """(name, shapes, what runs by default, kernel or None, reference, composed or None,
    torch function or None)."""
    TF = torch.nn.functional if torch is not None else None
    dh = D // HEADS

    def pair(op, wrap=lambda f: f):  # the op, its kernel (None where the reference runs), reference
        kernel = kernels.available("cpu").get(op.__name__)
        return wrap(op), (wrap(kernel) if kernel is not None else None), wrap(op.reference)

    sdpa = F.scaled_dot_product_attention
    cross_entropy = F.cross_entropy
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
        (
            "cross_entropy",
            [(B, CLASSES)],
            *pair(cross_entropy, lambda op: lambda x: op(x, labels(x), label_smoothing=0.1)),
            None,
            TF and (lambda x: TF.cross_entropy(x, torch.tensor(labels(x)), label_smoothing=0.1)),
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


def adamw_step():
    """One AdamW step over the D 192 model's parameter buffer (tinyvit's optimizer)."""
    from tinyvit.optim import AdamW

    tinyvit.manual_seed(0)
    model = tinyvit.ViT(**MODEL)
    optimizer = AdamW(model, lr=1e-3, weight_decay=0.05)
    for p in model.parameters():
        p.grad[...] = 1e-3
    return optimizer.step


def torch_adamw_step():
    """One step of PyTorch's AdamW over the same model written in PyTorch (bench_cpu's)."""
    from bench_cpu import torch_vit

    model = torch_vit(torch, MODEL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    return optimizer.step


def median_ms(repeat, fn, *args):
    """Median milliseconds of ``fn(*args)`` over ``repeat`` calls after two warm-up calls."""
    samples = []
    for _ in range(repeat + 2):
        start = time.perf_counter()
        fn(*args)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples[2:]) * 1e3


# ---------------------------------------------------------------------------
# the child processes: PyTorch, another checkout, first calls
# ---------------------------------------------------------------------------


def torch_times(repeat):
    """Median milliseconds of each layer in PyTorch."""
    times = {}
    for name, shapes, _, _, reference, _, theirs in cases():
        arrays, upstream = case_arrays(shapes, reference)
        times[name] = median_ms(repeat, time_torch, theirs, arrays, upstream)
    times["adamw step"] = median_ms(repeat, torch_adamw_step())
    return times


def default_times(repeat):
    """Median milliseconds of what this process's tinyvit runs by default (``F.op``)."""
    times = {}
    for name, shapes, default, _, reference, _, _ in cases():
        arrays, upstream = case_arrays(shapes, reference)
        times[name] = median_ms(repeat, time_tinyvit, default, arrays, upstream)
    times["adamw step"] = median_ms(repeat, adamw_step())
    return times


def first_calls():
    """Milliseconds of each kernel's first forward and backward in this process."""
    times = {}
    for name, shapes, _, kernel, reference, _, _ in cases():
        if kernel is not None:
            arrays, upstream = case_arrays(shapes, reference)
            times[name] = time_tinyvit(kernel, arrays, upstream) * 1e3
    step = adamw_step()
    start = time.perf_counter()
    step()
    times["adamw step"] = (time.perf_counter() - start) * 1e3
    return times


def child(flag, repeat, env=None):
    """Run this script with ``flag`` in a fresh process; its last line, as JSON."""
    command = [sys.executable, __file__, flag, "--repeat", str(repeat)]
    environment = {**os.environ, **(env or {})}
    output = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    return json.loads(output.stdout.strip().splitlines()[-1])


def one_pass_ms(arrays, upstream, repeat):
    """NumPy copying what a fused forward + backward reads and writes once: inputs to
    the output, then upstream and inputs to the gradients (one thread)."""
    source = np.concatenate([a.reshape(-1) for a in arrays] + [upstream.reshape(-1)] * 2)
    target = np.empty_like(source)  # as many bytes written as read, roughly
    return median_ms(repeat, np.copyto, target, source)


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------

COLUMNS = ("kernel", "reference", "composed", "baseline", "torch", "one pass", "warm", "cold")


def measure(args, others):
    results = []
    for name, shapes, _, kernel, reference, plain, _ in cases():
        arrays, upstream = case_arrays(shapes, reference)
        variants = {"kernel": kernel, "reference": reference, "composed": plain}
        samples = {k: [] for k, fn in variants.items() if fn is not None}
        for round_ in range(args.repeat + 2):  # two warm-up rounds
            for key in samples:
                elapsed = time_tinyvit(variants[key], arrays, upstream)
                if round_ >= 2:
                    samples[key].append(elapsed)
        median = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        median["one pass"] = one_pass_ms(arrays, upstream, args.repeat)
        results.append(row(name, shapes, median, others))
    with kernels.using("auto"):
        kernel_ms = median_ms(args.repeat, adamw_step())
    with kernels.using("reference"):
        reference_ms = median_ms(args.repeat, adamw_step())
    median = {"kernel": kernel_ms, "reference": reference_ms}
    results.append(row("adamw step", [["parameters of the D 192 model"]], median, others))
    return results


def row(name, shapes, median, others):
    for column, times in others.items():
        if name in times:
            median[column] = times[name]
    result = {"layer": name, "shapes": shapes, **{f"{k}_ms": v for k, v in median.items()}}
    default = median.get("kernel", median["reference"])
    if "torch" in median:  # against what runs by default: the kernel, else the reference
        result["torch_over_tinyvit"] = median["torch"] / default
    if "baseline" in median:
        result["baseline_over_tinyvit"] = median["baseline"] / default
    cells = "".join(f"{median[c]:>13.2f}" if c in median else f"{'-':>13}" for c in COLUMNS)
    ratio = result.get("torch_over_tinyvit")
    print(f"{name:<14}{cells}" + (f"{ratio:>14.2f}" if ratio is not None else f"{'-':>14}"))
    return result


def cpu_model() -> str:
    """The CPU's name, as ``lscpu`` prints it."""
    from bench_cpu import cpu_model as name

    return name()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--baseline", type=Path, help="another tinyvit checkout to compare with")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/layers_cpu.json"))
    for flag in ("--torch-child", "--default-child", "--first-calls-child"):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kernels.configure_process()  # as tinyvit's entry points run, in every process
    if args.torch_child or args.default_child or args.first_calls_child:
        run = torch_times if args.torch_child else default_times
        print(json.dumps(first_calls() if args.first_calls_child else run(args.repeat)))
        return
    if args.baseline and not (args.baseline / "tinyvit" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no tinyvit/__init__.py there")
    others = {}
    if args.baseline:
        path = {"PYTHONPATH": str(args.baseline.resolve())}
        others["baseline"] = child("--default-child", args.repeat, path)
    if torch is not None:
        others["torch"] = child("--torch-child", args.repeat)
    child("--first-calls-child", args.repeat)  # fills this machine's cache, if empty
    others["warm"] = child("--first-calls-child", args.repeat)
    with tempfile.TemporaryDirectory() as empty:
        others["cold"] = child("--first-calls-child", args.repeat, {"NUMBA_CACHE_DIR": empty})
    header = f"{'layer':<14}" + "".join(f"{c + ' ms':>13}" for c in COLUMNS)
    print(header + f"{'torch/tinyvit':>14}" + "\n" + "-" * (len(header) + 14))
    results = measure(args, others)
    meta = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "numba": _numba_version(),
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "baseline": str(args.baseline) if args.baseline else None,
        "repeat": args.repeat,
        "dtype": "float32",
        "kernels": kernels.describe("cpu"),
        "note": "forward + backward, median milliseconds; torch/tinyvit > 1: tinyvit is "
        "faster; warm and cold: the first call in a fresh process, with numba's cache "
        "and without (compiling)",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")


def _numba_version():
    try:
        import numba
    except ImportError:
        return None
    return numba.__version__


if __name__ == "__main__":
    main()
