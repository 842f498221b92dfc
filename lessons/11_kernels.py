# %% [markdown]
# # Lesson 11: fast kernels beside the reference
#
# Every layer of tinyvit exists twice. ``tinyvit/functional.py`` writes each
# op the way its derivation reads: LayerNorm's backward is the closed form of
# its docstring, GELU's derivative is ``Phi(x) + x phi(x)``, attention is
# Eq. 6-7 on whole arrays. That is the reference, the code to learn from.
# ``tinyvit/kernels/cpu.py`` computes the same things faster on a CPU, and is
# what runs by default; the tests hold the two equal, values and gradients.
# This lesson measures, on your machine, why the kernels are faster. None of
# it is about the maths: it is about memory, caches and cores.
#
# Run: ``python lessons/11_kernels.py [--out DIR] [--quick]`` (the kernels
# are CPU kernels; on the GPU the reference ops run as whole-array CuPy calls).

# %%
import math
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import tinyvit.functional as F
from tinyvit import Tensor, kernels
from tinyvit.kernels import cpu_runtime
from tinyvit.kernels.fast_math import TANH_CDF_ERROR_BOUND, normal_cdf_tanh
from tinyvit.lesson import lesson_arguments
from tinyvit.special import erf
from tinyvit.viz import save_figure

args = lesson_arguments("11_kernels", "Fast kernels beside the reference ops.")
if args.device == "cuda":
    print("note: this lesson measures the CPU kernels; it runs on the CPU")
print(kernels.describe("cpu"))

# One encoder block of a D 192 ViT at batch 128: 65 tokens, MLP 768.
B = 16 if args.quick else 128
N, D, HEADS, MLP = 65, 192, 3, 768
REPEAT = 3 if args.quick else 7
rng = np.random.default_rng(0)


def best_time(fn, repeat=REPEAT):
    """The fastest of ``repeat`` runs, in seconds: the time the machine needs when undisturbed."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# %% [markdown]
# ## 1. Two layers, one truth
#
# ``F.layer_norm`` runs the kernel when one exists for the input's device;
# ``F.layer_norm.reference`` is always the plain body, and
# ``tinyvit.kernels.using("reference")`` (or ``TINYVIT_KERNELS=reference`` in
# the environment) sends every op there. First, the promise: on the same
# input, the same values and the same gradients.

# %%
x = Tensor(rng.standard_normal((B, N, D)).astype(np.float32), requires_grad=True)
w = Tensor(1 + 0.1 * rng.standard_normal(D).astype(np.float32), requires_grad=True)
b = Tensor(0.1 * rng.standard_normal(D).astype(np.float32), requires_grad=True)
upstream = rng.standard_normal((B, N, D)).astype(np.float32)


def values_and_gradients(op):
    for t in (x, w, b):
        t.grad = None
    y = op(x, w, b)
    y.backward(upstream)
    return [y.data, x.grad, w.grad, b.grad]


kernel_results = values_and_gradients(F.layer_norm)
with kernels.using("reference"):
    reference_results = values_and_gradients(F.layer_norm)
for name, a, r in zip(("y", "dL/dx", "dL/dw", "dL/db"), kernel_results, reference_results):
    scale = np.abs(r).max()
    print(f"layer_norm {name:<6} largest difference {np.abs(a - r).max() / scale:.1e} (relative)")

# %% [markdown]
# ## 2. Passes over memory
#
# NumPy evaluates ``0.5 * x * (1 + erf(x / sqrt 2))`` one operation at a
# time, and each operation reads its inputs from memory and writes a fresh
# output: a *pass* over the data. The activation of the MLP is
# ``B x 65 x 768`` float32 numbers (25 MB at batch 128), far larger than any
# cache, so each pass costs about what one pass of a trivial operation costs.
# Dividing the GELU's time by that of ``y = x + 1`` counts the passes.

# %%
h = rng.standard_normal((B, N, MLP)).astype(np.float32)
flat = h.reshape(-1)
out = np.empty_like(flat)
one_pass = best_time(lambda: np.add(flat, 1.0, out=out))


def gelu_reference_forward(a):
    return 0.5 * a * (1.0 + erf(a * (1.0 / math.sqrt(2.0))))


reference_seconds = best_time(lambda: gelu_reference_forward(flat))
print(
    f"\nactivation: {flat.nbytes / 1e6:.1f} MB; one pass {one_pass * 1e3:.2f} ms; "
    f"reference GELU forward {reference_seconds * 1e3:.2f} ms = about "
    f"{reference_seconds / one_pass:.0f} passes"
)

# %% [markdown]
# ## 3. Cache-sized blocks, then a thread per core
#
# Cut the array into blocks and run *all* of the GELU's operations on one
# block before moving to the next. If a block and its temporaries fit in the
# core's cache (L2: the size is read from the system below), every
# operation after the first reads from cache instead of memory. The same code,
# only applied block by block; then the blocks shared among threads (NumPy
# lets go of Python's lock inside its loops, so threads really run at once).

# %%


def cache_size(level=2):
    """This CPU's cache of ``level`` in bytes (Linux), or None."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(root)):
            with open(f"{root}/{index}/level") as f:
                if int(f.read()) != level:
                    continue
            with open(f"{root}/{index}/size") as f:
                text = f.read().strip()
            return int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]]
    except (OSError, ValueError, KeyError):
        return None
    return None


def gelu_in_blocks(elements, threads):
    def block(s):
        out[s] = gelu_reference_forward(flat[s])

    blocks = cpu_runtime.row_blocks(flat, elements)
    if threads == 1:
        for s in blocks:
            block(s)
    else:
        cpu_runtime.parallel(block, blocks)


sizes = [1 << k for k in range(12, int(math.log2(flat.size)) + 1, 2 if args.quick else 1)]
one_thread = [best_time(lambda e=e: gelu_in_blocks(e, 1)) for e in sizes]
cores = cpu_runtime.num_threads()
all_threads = [best_time(lambda e=e: gelu_in_blocks(e, cores)) for e in sizes]
best = int(np.argmin(all_threads))
print(
    f"\nGELU forward: whole array {reference_seconds * 1e3:.2f} ms; best block "
    f"{sizes[int(np.argmin(one_thread))] * 4 // 1024} KB on one thread "
    f"{min(one_thread) * 1e3:.2f} ms; on {cores} threads {all_threads[best] * 1e3:.2f} ms"
)

fig, ax = plt.subplots(figsize=(7, 4))
kb = [4 * e / 1024 for e in sizes]  # float32: 4 bytes an element
ax.plot(kb, [1e3 * t for t in one_thread], "o-", label="blocks, 1 thread")
ax.plot(kb, [1e3 * t for t in all_threads], "s-", label=f"blocks, {cores} threads")
ax.axhline(1e3 * reference_seconds, color="0.4", ls="--", lw=1, label="whole array at once")
l2 = cache_size(2)
if l2:
    ax.axvline(l2 / 1024, color="C3", ls=":", lw=1)
    ax.text(l2 / 1024, ax.get_ylim()[1] * 0.95, " L2 cache", color="C3", fontsize=8, va="top")
ax.set_xscale("log", base=2)
ax.set_xlabel("block size (KB of the input array)")
ax.set_ylabel("GELU forward (ms)")
ax.set_title(f"Same operations, cut into blocks ({flat.nbytes / 1e6:.0f} MB activation)")
ax.legend(fontsize=8)
print("wrote", save_figure(fig, args.out / "blocks_and_threads.png"))

# %% [markdown]
# ## 4. Cheaper arithmetic, with a stated error
#
# float32 keeps about seven digits. The package's ``erf`` is accurate to
# 1e-9 and costs about twenty passes; the kernel computes the Gaussian CDF in
# float32 as ``(1 + tanh(x B(x^2))) / 2``, the tanh GELU's form with a longer
# polynomial slope ``B``, fitted so that it stays within 1.5e-7 of the true
# CDF (``kernels/fast_math.py``). Here is that error over the inputs a GELU
# sees, against the float64 truth.

# %%
grid = np.linspace(-8, 8, 4001 if args.quick else 40001).astype(np.float32)
truth = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in grid])
by_polynomial = normal_cdf_tanh(grid).astype(np.float64)
by_erf = (0.5 * (1 + erf(grid * np.float32(1 / math.sqrt(2))))).astype(np.float64)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(grid, np.abs(by_erf - truth), lw=0.6, label="reference: float32 erf")
ax.plot(grid, np.abs(by_polynomial - truth), lw=0.6, label="kernel: tanh polynomial", alpha=0.8)
ax.axhline(TANH_CDF_ERROR_BOUND, color="C3", ls="--", lw=1, label="stated bound 1.5e-7")
ax.set_yscale("log")
ax.set_ylim(1e-11, 1e-6)
ax.set_xlabel("x")
ax.set_ylabel("|error of Phi(x)|")
ax.set_title("The float32 Gaussian CDF two ways")
ax.legend(fontsize=8, loc="lower right")
print("wrote", save_figure(fig, args.out / "float32_cdf_error.png"))
print(
    f"largest error: reference {np.abs(by_erf - truth).max():.1e}, "
    f"kernel {np.abs(by_polynomial - truth).max():.1e}"
)

# %% [markdown]
# ## 5. Every kernel against its reference
#
# Forward and backward of each layer of the block, the reference op and its
# kernel, with the largest difference between their gradients. Softmax and
# LayerNorm also sum short rows as a product with a vector of ones (BLAS sums
# a 65-number row several times faster than ``sum(axis=-1)``); GELU keeps its
# derivative from the forward pass, where every piece of it was at hand;
# attention keeps each block's ``(heads, N, N)`` matrix in cache from its
# scores to its use. ``linear`` has no kernel: its work is matrix products,
# which its reference already hands to BLAS whole, and BLAS blocks them for
# the cache itself.

# %%
d = D // HEADS
layers = {
    "layer_norm": (F.layer_norm, [(B, N, D), (D,), (D,)]),
    "gelu": (F.gelu, [(B, N, MLP)]),
    "softmax": (F.softmax, [(B, HEADS, N, N)]),
    "self_attention": (lambda t: F.self_attention(t, HEADS), [(B, N, 3 * D)]),
}


def forward_backward(op, arrays, grad):
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    op(*tensors).backward(grad)
    return tensors[0].grad


rows = []
for name, (op, shapes) in layers.items():
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grad = rng.standard_normal(op(*[Tensor(a) for a in arrays]).shape).astype(np.float32)
    kernel_grad = forward_backward(op, arrays, grad)
    kernel_seconds = best_time(lambda op=op, a=arrays, g=grad: forward_backward(op, a, g))
    with kernels.using("reference"):
        reference_grad = forward_backward(op, arrays, grad)
        ref_seconds = best_time(lambda op=op, a=arrays, g=grad: forward_backward(op, a, g))
    difference = np.abs(kernel_grad - reference_grad).max() / np.abs(reference_grad).max()
    rows.append((name, ref_seconds, kernel_seconds, difference))

print(f"\n{'layer':<16}{'reference ms':>14}{'kernel ms':>11}{'speed-up':>10}{'grad diff':>11}")
for name, ref_s, ker_s, diff in rows:
    print(f"{name:<16}{ref_s * 1e3:>14.2f}{ker_s * 1e3:>11.2f}{ref_s / ker_s:>9.1f}x{diff:>11.1e}")

fig, ax = plt.subplots(figsize=(7, 3.5))
positions = np.arange(len(rows))
ax.barh(positions + 0.2, [1e3 * r[1] for r in rows], 0.4, label="reference (functional.py)")
ax.barh(positions - 0.2, [1e3 * r[2] for r in rows], 0.4, label="kernel (kernels/cpu.py)")
ax.set_yticks(positions, [r[0] for r in rows])
ax.invert_yaxis()
ax.set_xlabel("forward + backward (ms)")
ax.set_title(f"One encoder block's layers at batch {B}, {cores} threads")
ax.legend(fontsize=8)
print("wrote", save_figure(fig, args.out / "reference_vs_kernel.png"))

# %% [markdown]
# ## 6. Other people's threads
#
# The matrix products run in OpenBLAS, which has threads of its own. After a
# product they do not sleep at once: by default they spin for about 2^28
# cycles, a tenth of a second, waiting for the next product, and while they
# spin they can hold the cores our blocks need. On one machine of this
# project (an Intel Sapphire Rapids) a GELU right after a product ran 1.5
# times slower; on another (an AMD EPYC) the operating system handed the
# cores back at once and nothing changed. tinyvit asks them to sleep at once,
# which costs the products nothing. It is a setting of the whole process, so
# importing tinyvit leaves it alone: ``tinyvit.kernels.configure_process()``
# applies it, with the allocator's (keep freed memory for the next step), and
# every entry point calls it once at its start (the trainer, ``python -m
# tinyvit``, this lesson's command line, the benchmarks); a training script of
# your own should too. Here is your machine: a GELU right after a matrix
# product, with OpenBLAS's threads told to spin as they do by default, then
# told to sleep.

# %%
if cpu_runtime.blas_thread_timeout() is not None and cores > 1:
    a = rng.standard_normal((B * N, D)).astype(np.float32)
    weight = rng.standard_normal((MLP, D)).astype(np.float32)
    gelu = kernels.available("cpu")["gelu"]

    def product_then_gelu():
        a @ weight.T  # the product; OpenBLAS's threads are now idle
        start = time.perf_counter()
        gelu(h)
        return time.perf_counter() - start

    spinning = cpu_runtime.set_blas_thread_timeout(28) and min(
        product_then_gelu() for _ in range(REPEAT)
    )
    cpu_runtime.quiet_blas_threads()
    quiet = min(product_then_gelu() for _ in range(REPEAT))
    if spinning:
        print(
            f"\nGELU after a matrix product: {spinning * 1e3:.2f} ms while OpenBLAS's threads "
            f"spin, {quiet * 1e3:.2f} ms once they sleep"
        )
else:
    print("\n(this NumPy does not use OpenBLAS, or the machine has one core: nothing to show)")
