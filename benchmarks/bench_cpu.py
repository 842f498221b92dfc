"""Training throughput on the CPU: tinyvit against PyTorch eager, side by side.

For each configuration, one training step (forward, cross-entropy with label
smoothing, backward, gradient clipping, AdamW step) of tinyvit and of a
PyTorch ViT with the same weights, batch and thread count, interleaved step
by step so that both see the same machine; the median over several steps
after a warm-up, and the ratio. Beside them, the NumPy bound: the model's
matrix products alone (forward and backward), timed, which no NumPy engine
can beat. Peak memory of each is measured in a fresh process: the growth of
the resident set from before the first step to its high-water mark.

    python benchmarks/bench_cpu.py                      # all configurations
    python benchmarks/bench_cpu.py --configs vit_cifar_tiny --steps 5

PyTorch is optional; without it the ratio is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import tinyvit
import tinyvit.functional as F
from tinyvit import kernels
from tinyvit.optim import AdamW, clip_grad_norm
from tinyvit.vit import CONFIGS

try:
    import torch
except ImportError:
    torch = None

# The configurations of the benchmark: the plain pre-norm ViT of the CPU-speed
# issue (D 192, 6 layers, 3 heads, MLP 768, patch 4), the CPU lesson's
# default, and the ViT-Lite-7/4-like one. All on 32 x 32 images, 10 classes.
BENCHMARKS = {
    "vit_d192_6x3_mlp768": dict(
        image_size=32, patch_size=4, num_classes=10, dim=192, depth=6, heads=3, mlp_dim=768
    ),
    "vit_cifar_tiny": CONFIGS["vit_cifar_tiny"],
    "vit_lite_7_4": CONFIGS["vit_lite_7_4"],
}


# ---------------------------------------------------------------------------
# the two contestants
# ---------------------------------------------------------------------------


def tinyvit_step_fn(config, batch, seed=0):
    tinyvit.manual_seed(seed)
    model = tinyvit.ViT(**config)
    optimizer = AdamW(model, lr=1e-4, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    size = config["image_size"]
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, config["num_classes"], batch)

    def step():
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()

    return model, step


def torch_vit(config):
    """A ViT as a PyTorch user writes it (timm's layout: fused qkv with bias, exact GELU,
    LayerNorm eps 1e-6, ``F.scaled_dot_product_attention``)."""
    nn, TF = torch.nn, torch.nn.functional
    D, H = config["dim"], config["heads"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(D, eps=1e-6)
            self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
            self.norm2 = nn.LayerNorm(D, eps=1e-6)
            self.fc1, self.fc2 = nn.Linear(D, config["mlp_dim"]), nn.Linear(config["mlp_dim"], D)

        def forward(self, x):
            B, N, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
            a = TF.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
            x = x + self.proj(a)
            return x + self.fc2(TF.gelu(self.fc1(self.norm2(x))))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            P, n = config["patch_size"], (config["image_size"] // config["patch_size"]) ** 2
            self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
            self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, D))
            self.patch = nn.Conv2d(3, D, P, stride=P)
            self.blocks = nn.ModuleList(Block() for _ in range(config["depth"]))
            self.norm = nn.LayerNorm(D, eps=1e-6)
            self.head = nn.Linear(D, config["num_classes"])

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x)[:, 0])

    return ViT()


def torch_step_fn(config, batch, seed=0):
    torch.manual_seed(seed)
    model = torch_vit(config)
    named = list(model.named_parameters())  # decay as tinyvit's AdamW does: not on biases,
    decay = [p for n, p in named if p.ndim > 1 and n not in ("pos_embed", "cls_token")]  # norms,
    rest = [p for n, p in named if not (p.ndim > 1 and n not in ("pos_embed", "cls_token"))]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=1e-4
    )
    rng = np.random.default_rng(seed)
    size = config["image_size"]
    x = torch.from_numpy(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, config["num_classes"], batch))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return model, step


def gemm_bound_step(config, batch, seed=0):
    """The matrix products of one training step alone: the NumPy bound."""
    rng = np.random.default_rng(seed)
    D, M, H = config["dim"], config["mlp_dim"], config["heads"]
    P, size = config["patch_size"], config["image_size"]
    N = (size // P) ** 2 + 1

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, h, t3 = r(batch * N, D), r(batch * N, M), r(batch * N, 3 * D)
    w_qkv, w_proj, w_fc1, w_fc2 = r(3 * D, D), r(D, D), r(M, D), r(D, M)
    q, a = r(batch, H, N, D // H), r(batch, H, N, N)
    patches, w_patch = r(batch * (N - 1), 3 * P * P), r(D, 3 * P * P)

    def block():
        for inp, w, out in ((x, w_qkv, t3), (x, w_proj, x), (x, w_fc1, h), (h, w_fc2, x)):
            inp @ w.T  # forward
            out @ w  # backward: input gradient
            out.T @ inp  # backward: weight gradient
        q @ q.swapaxes(-1, -2)  # scores
        a @ q  # weighted values
        a.swapaxes(-1, -2) @ q  # dV
        a @ q  # dA via g V^T (same shape of work)
        a @ q  # dQ
        a.swapaxes(-1, -2) @ q  # dK

    def step():
        patches @ w_patch.T
        (patches @ w_patch.T).T @ patches
        for _ in range(config["depth"]):
            block()

    return step


# ---------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------


def median_time(step, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(steps: dict, warmup, repeats):
    """Median seconds per step of each contestant, run in turns."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def _rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(framework, name, batch, steps):
    """In a fresh process: resident-set growth from before the first step to its peak."""
    config = BENCHMARKS[name]
    if framework == "tinyvit":
        kernels.cpu_runtime.keep_freed_memory()  # as the trainer runs
        _, step = tinyvit_step_fn(config, batch)
    else:
        torch.set_num_threads(os.cpu_count())
        _, step = torch_step_fn(config, batch)
    before = _rss_mb("VmRSS")
    for _ in range(steps):
        step()
    print(json.dumps({"peak_mb": _rss_mb("VmHWM") - before}))


def peak_memory(framework, name, batch, steps=3):
    if not Path("/proc/self/status").exists():
        return None
    result = subprocess.run(
        [sys.executable, __file__, "--memory-child", framework, name, str(batch), str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/cpu.json"))
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        framework, name, batch, steps = args.memory_child
        memory_child(framework, name, int(batch), int(steps))
        return

    kernels.cpu_runtime.keep_freed_memory()  # as the trainer runs
    threads = os.cpu_count()
    if torch is not None:
        torch.set_num_threads(threads)
    rows = []
    for name in args.configs:
        config = BENCHMARKS[name]
        steps = {"tinyvit": tinyvit_step_fn(config, args.batch)[1]}
        if torch is not None:
            steps["torch"] = torch_step_fn(config, args.batch)[1]
        seconds = interleaved(steps, args.warmup, args.steps)
        bound = median_time(gemm_bound_step(config, args.batch), args.steps)
        row = {
            "config": name,
            "model": config,
            "batch": args.batch,
            "tinyvit_images_per_s": args.batch / seconds["tinyvit"],
            "numpy_gemm_bound_images_per_s": args.batch / bound,
        }
        if "torch" in seconds:
            row["torch_images_per_s"] = args.batch / seconds["torch"]
            row["ratio_tinyvit_over_torch"] = seconds["torch"] / seconds["tinyvit"]
        if not args.no_memory:
            row["tinyvit_peak_mb"] = peak_memory("tinyvit", name, args.batch)
            if torch is not None:
                row["torch_peak_mb"] = peak_memory("torch", name, args.batch)
        rows.append(row)
        print(format_row(row), flush=True)

    report = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": threads,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": None if torch is None else torch.__version__,
            "threads": threads,
        },
        "steps": args.steps,
        "warmup": args.warmup,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")


def format_row(row):
    def get(key, fmt):
        return format(row[key], fmt) if row.get(key) is not None else "-"

    return (
        f"{row['config']:<22} tinyvit {get('tinyvit_images_per_s', '.0f'):>5} img/s   "
        f"torch {get('torch_images_per_s', '.0f'):>5} img/s   "
        f"ratio {get('ratio_tinyvit_over_torch', '.2f'):>5}   "
        f"NumPy GEMM bound {get('numpy_gemm_bound_images_per_s', '.0f'):>5} img/s   "
        f"peak MB tinyvit {get('tinyvit_peak_mb', '.0f')} torch {get('torch_peak_mb', '.0f')}"
    )


if __name__ == "__main__":
    main()
