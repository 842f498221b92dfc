"""Training throughput on the CPU: tinyvit against PyTorch eager, side by side, in one run.

For each configuration, one training step (forward, cross-entropy with label
smoothing, backward, gradient clipping, AdamW step) of each contestant, with
the same model shape, batch and thread count:

* ``tinyvit``: this tree, kernels on (the default);
* ``tinyvit-reference``: this tree with ``TINYVIT_KERNELS=reference``, every
  op on ``functional.py``'s plain code;
* ``baseline`` (with ``--baseline DIR``): the tinyvit of another checkout,
  for instance the commit before a change (``git worktree add /tmp/old HEAD~3``);
* ``torch``: a PyTorch ViT with timm's layout (skipped without torch);
* ``numpy-gemm-bound``: the model's matrix products alone, forward and
  backward: no NumPy engine can be faster than this.

Each contestant lives in a process of its own, and the parent asks them for
one step in turn, round after round, so that all of them see the same
machine at the same moments; the median over the rounds after a warm-up is
reported. The peak memory of each is the growth of its resident set from
before its first step to its high-water mark. tinyvit's includes what its
first step loads, whatever the model: the kernels' machine code and
numba's threads; ``first_step_loading_mb`` is that, measured apart as the
first step of a two-image model in a fresh process (with the kernels and
on the reference ops).

The first step of each contestant is reported apart from the steady ones
(``first_step_s``): tinyvit's includes loading its compiled loops from
numba's cache of this machine. Before the rounds, one more tinyvit process
takes a first step with an empty cache (``NUMBA_CACHE_DIR`` a fresh folder):
``first_step_cold_cache_s`` includes compiling every loop, which a machine
does once.

    python benchmarks/bench_cpu.py                          # all configurations
    python benchmarks/bench_cpu.py --configs vit_cifar_tiny --steps 5
    python benchmarks/bench_cpu.py --baseline /tmp/old      # old and new in one run

Run it on an otherwise idle machine: a second busy process slows OpenBLAS's
threaded products by up to 10x.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The configurations of the benchmark: a plain pre-norm ViT (D 192, 6 layers,
# 3 heads, MLP 768, patch 4), the CPU run's default, and the ViT-Lite-7/4-like
# one. All on 32 x 32 images, 10 classes.
BENCHMARKS = {
    "vit_d192_6x3_mlp768": dict(
        image_size=32, patch_size=4, num_classes=10, dim=192, depth=6, heads=3, mlp_dim=768
    ),
    "vit_cifar_tiny": dict(
        image_size=32, patch_size=4, num_classes=10, dim=96, depth=6, heads=3, mlp_dim=192
    ),
    "vit_lite_7_4": dict(
        image_size=32, patch_size=4, num_classes=10, dim=256, depth=7, heads=4, mlp_dim=512
    ),
}

# ---------------------------------------------------------------------------
# the contestants: each builds a step function (in its own process)
# ---------------------------------------------------------------------------


def configure_tinyvit_process():
    """The process settings tinyvit's entry points apply (``kernels.configure_process``).

    A ``--baseline`` checkout from before that call quieted OpenBLAS when
    imported and kept freed memory through ``kernels.cpu_runtime`` (older
    still: ``backend``); it gets what its own trainer applied.
    """
    import tinyvit

    kernels = getattr(tinyvit, "kernels", None)
    if kernels is not None and hasattr(kernels, "configure_process"):
        kernels.configure_process()
        return
    try:
        from tinyvit.kernels.cpu_runtime import keep_freed_memory
    except ImportError:
        from tinyvit.backend import keep_freed_memory
    keep_freed_memory()


def tinyvit_step(config, batch, seed=0):
    import tinyvit
    import tinyvit.functional as F
    from tinyvit.optim import AdamW, clip_grad_norm

    configure_tinyvit_process()  # as the trainer runs
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

    return step


def torch_vit(torch, config):
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


def torch_step(config, batch, seed=0):
    import torch

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(seed)
    model = torch_vit(torch, config)
    named = list(model.named_parameters())  # decay as tinyvit's AdamW does: not on biases,
    decays = [p.ndim > 1 and n not in ("pos_embed", "cls_token") for n, p in named]  # norms...
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for (_, p), d in zip(named, decays) if d], "weight_decay": 0.05},
            {"params": [p for (_, p), d in zip(named, decays) if not d], "weight_decay": 0.0},
        ],
        lr=1e-4,
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

    return step


def gemm_bound_step(config, batch, seed=0):
    """The matrix products of one training step alone: the NumPy bound."""
    from tinyvit.kernels.cpu_runtime import quiet_blas_threads

    quiet_blas_threads()  # as tinyvit runs them
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


BUILDERS = {
    "tinyvit": tinyvit_step,
    "tinyvit-reference": tinyvit_step,
    "baseline": tinyvit_step,
    "torch": torch_step,
    "numpy-gemm-bound": gemm_bound_step,
}


def _rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
    return float("nan")


def serve(name, config_name, batch, warmup):
    """A contestant's process: build, warm up, then run a step per line read from stdin."""
    step = BUILDERS[name](BENCHMARKS[config_name], batch)
    where = ""
    if name.startswith(("tinyvit", "baseline")):
        import tinyvit

        where = str(Path(tinyvit.__file__).parent)
    before = _rss_mb("VmRSS")
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    print(json.dumps({"ready": True, "package": where, "first_step_s": first}), flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            start = time.perf_counter()
            step()
            print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
        elif line.strip() == "peak":
            print(json.dumps({"peak_mb": _rss_mb("VmHWM") - before}), flush=True)


# ---------------------------------------------------------------------------
# the parent: start the contestants, ask for steps in turn
# ---------------------------------------------------------------------------


class Contestant:
    def __init__(self, name, config_name, batch, warmup, env):
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", name, config_name, str(batch), str(warmup)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = self.ask(None)
        self.package, self.first_step_s = ready["package"], ready["first_step_s"]

    def ask(self, command):
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"contestant {self.name} stopped (exit {self.process.wait()})")
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def environments(args):
    """The environment of each contestant's process."""
    base = {k: v for k, v in os.environ.items() if k not in ("TINYVIT_KERNELS", "PYTHONPATH")}
    base.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # what configure_process sets, for all
    envs = {"tinyvit": base, "tinyvit-reference": {**base, "TINYVIT_KERNELS": "reference"}}
    if args.baseline:
        envs["baseline"] = {**base, "PYTHONPATH": str(Path(args.baseline).resolve())}
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is not installed: no PyTorch column")
    else:
        envs["torch"] = base
    envs["numpy-gemm-bound"] = base
    return envs


def first_step_cold_cache(config_name, args, env):
    """tinyvit's first step in a process whose numba cache is empty: compiling included."""
    with tempfile.TemporaryDirectory() as empty:
        cold = Contestant("tinyvit", config_name, args.batch, 1, {**env, "NUMBA_CACHE_DIR": empty})
        cold.close()
    return cold.first_step_s


TINY = dict(image_size=8, patch_size=4, num_classes=2, dim=8, depth=1, heads=1, mlp_dim=8)


def first_step_growth_mb():
    """What the first ``tinyvit_step`` of a two-image ``TINY`` ViT adds to this process's
    resident set (the model and its optimizer built before)."""
    step = tinyvit_step(TINY, 2)
    before = _rss_mb("VmRSS")
    step()
    return _rss_mb("VmRSS") - before


def loading_mb(envs):
    """``first_step_growth_mb`` in a fresh process, for tinyvit with its kernels and on its
    reference ops: what any tinyvit process's first step loads whatever the model (the
    kernels' machine code from numba's cache, and numba's threads); part of every tinyvit
    peak below."""
    grown = {}
    for name in ("tinyvit", "tinyvit-reference"):
        run = subprocess.run([sys.executable, __file__, "--loading"], env=envs[name],
                             capture_output=True, text=True, check=True)  # fmt: skip
        grown[name] = json.loads(run.stdout.splitlines()[-1])
    return grown


def measure(config_name, args):
    envs = environments(args)
    cold = first_step_cold_cache(config_name, args, envs["tinyvit"])
    contestants = [Contestant(n, config_name, args.batch, args.warmup, e) for n, e in envs.items()]
    try:
        samples = {c.name: [] for c in contestants}
        for _ in range(args.steps):
            for c in contestants:
                samples[c.name].append(c.ask("step")["seconds"])
        peaks = {c.name: c.ask("peak")["peak_mb"] for c in contestants}
        packages = {c.name: c.package for c in contestants if c.package}
    finally:
        for c in contestants:
            c.close()
    seconds = {name: statistics.median(s) for name, s in samples.items()}
    row = {
        "config": config_name,
        "model": BENCHMARKS[config_name],
        "batch": args.batch,
        "images_per_s": {name: args.batch / s for name, s in seconds.items()},
        "peak_mb": {n: p for n, p in peaks.items() if n != "numpy-gemm-bound"},
        "steady_step_s": seconds,
        "first_step_s": {c.name: c.first_step_s for c in contestants},
        "first_step_cold_cache_s": {"tinyvit": cold},
        "packages": packages,
    }
    if "torch" in seconds:
        row["ratio_over_torch"] = {
            n: seconds["torch"] / s for n, s in seconds.items() if n.startswith(("tinyvit", "base"))
        }
    if "baseline" in seconds:
        row["tinyvit_over_baseline"] = seconds["baseline"] / seconds["tinyvit"]
    return row


def cpu_model() -> str:
    """The CPU as ``lscpu`` names it, with its family and model numbers (a name such as
    "AMD EPYC" alone does not say which generation)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def format_row(row):
    speeds = "  ".join(f"{n} {v:.0f}" for n, v in row["images_per_s"].items())
    text = f"{row['config']:<20} img/s: {speeds}"
    if "ratio_over_torch" in row:
        text += "  | ratio over torch: " + "  ".join(
            f"{n} {v:.2f}" for n, v in row["ratio_over_torch"].items()
        )
    if "tinyvit_over_baseline" in row:
        text += f"  | tinyvit / baseline {row['tinyvit_over_baseline']:.3f}"
    text += "  | peak MB: " + "  ".join(f"{n} {v:.0f}" for n, v in row["peak_mb"].items())
    text += "\n" + " " * 20 + " first step s: " + "  ".join(
        f"{n} {v:.2f}" for n, v in row["first_step_s"].items()
    )
    text += f"  | tinyvit, empty numba cache: {row['first_step_cold_cache_s']['tinyvit']:.2f}"
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--baseline", type=Path, help="another tinyvit checkout to compare with")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/cpu.json"))
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--loading", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loading:
        print(json.dumps(first_step_growth_mb()))
        return
    if args.serve:
        name, config_name, batch, warmup = args.serve
        serve(name, config_name, int(batch), int(warmup))
        return
    if args.baseline and not (args.baseline / "tinyvit" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no tinyvit/__init__.py there")

    loading = loading_mb(environments(args))
    print("a tiny model's first step adds to a fresh process: " + ", ".join(
        f"{name} {mb:.0f} MB" for name, mb in loading.items()), flush=True)  # fmt: skip
    rows = []
    for name in args.configs:
        rows.append(measure(name, args))
        print(format_row(rows[-1]), flush=True)

    import tinyvit

    report = {
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": _version("numba"),
            "torch": _version("torch"),
        },
        "command": "python benchmarks/bench_cpu.py " + " ".join(argv or sys.argv[1:]),
        "kernels": tinyvit.kernels.describe("cpu"),
        "steps": args.steps,
        "warmup": args.warmup,
        "first_step_loading_mb": loading,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")


def _version(name):
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return module.__version__


if __name__ == "__main__":
    main()
