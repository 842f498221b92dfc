"""Issue 27: one training step's time for hybrid variants, to choose what the screening runs
try (the convolutional stem's width decides much of the step).

A step as bench_cpu.py times it (forward, cross-entropy, backward, clipping, AdamW) at batch
128 on random images, in training mode (PatchDropout on where a variant has it); the median
of 8 steps after 3. Run from the repository root on an otherwise idle machine:

    python benchmarks/results/cifar10_hybrid/step_times.py [VARIANT ...]
"""

import sys
import time

import numpy as np

import tinyvit
import tinyvit.functional as F
from tinyvit import kernels, models
from tinyvit.optim import AdamW, clip_grad_norm

VARIANTS = {  # hybrid_cifar_2x3 with pool="mean" and these changes
    "base": {},
    "stem32": dict(stem_channels=(32, 64)),
    "stem32_pd50": dict(stem_channels=(32, 64), patch_dropout=0.5),
    "base_pd50": dict(patch_dropout=0.5),
    "stem32_d4": dict(stem_channels=(32, 64), depth=4),
    "stem48_d3": dict(stem_channels=(48, 96), dim=96, mlp_dim=192, heads=2, depth=3),
}


def step_seconds(changes, batch=128, warmup=3, steps=8):
    tinyvit.manual_seed(0)
    model = models.build(models.config("hybrid_cifar_2x3", pool="mean", **changes)).train()
    optimizer = AdamW(model, lr=1e-4, weight_decay=0.05)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    times = []
    for i in range(warmup + steps):
        tick = time.perf_counter()
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - tick)
    return sum(p.data.size for p in model.parameters()), float(np.median(times))


def main():
    kernels.configure_process()
    print(kernels.describe())
    for name in sys.argv[1:] or VARIANTS:
        parameters, seconds = step_seconds(VARIANTS[name])
        print(f"{name:12s} {parameters:>9,} parameters  {seconds:.3f} s a step  "
              f"{128 / seconds:4.0f} images/s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
