# %% [markdown]
# # Lesson 11: one loop, one pass over memory
#
# Every layer of tinyvit exists twice. ``tinyvit/functional.py`` writes each
# op the way its derivation reads: LayerNorm's backward is the closed form of
# its docstring, GELU's derivative is ``Phi(x) + x phi(x)``, attention is
# Eq. 6-7 on whole arrays. That is the reference, the code to learn from.
# ``tinyvit/kernels/cpu.py`` writes the same maths once more, as loops that
# numba compiles to machine code, and those run by default; the tests hold
# the two equal, values and gradients. This lesson measures, on your machine,
# why the loops are faster. None of it is about the maths: it is about
# memory, the vector units of a core, and the cores.
#
# Run: ``python lessons/11_kernels.py [--out DIR] [--quick]`` (the kernels
# are CPU kernels; on the GPU the reference ops run as whole-array CuPy calls,
# and a GPU's own fused kernels are the same idea: one thread per element).

# %%
import math
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import tinyvit.functional as F
from tinyvit import Tensor, kernels
from tinyvit.kernels import cpu, cpu_runtime
from tinyvit.lesson import lesson_arguments
from tinyvit.special import erf, normal_cdf
from tinyvit.viz import save_figure

args = lesson_arguments("11_kernels", "One loop, one pass over memory.")
if args.device == "cuda":
    print("note: this lesson measures the CPU kernels; it runs on the CPU")
print(kernels.describe("cpu"))
if cpu is None:
    print("numba is not installed (pip install numba): the loops below are skipped")

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


start = time.perf_counter()
kernel_results = values_and_gradients(F.layer_norm)
print(f"first call of the kernel: {time.perf_counter() - start:.2f} s (numba loads its loops)")
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
# ## 3. From passes to one loop
#
# Three ways to spend fewer passes, measured on the same GELU forward.
#
# * **Cache-sized blocks** (what tinyvit did before numba): run all of the
#   expression on one block of ``x`` before the next, so that each operation
#   after the first finds its block in the core's cache. Still a pass per
#   operation, but over the cache instead of memory.
# * **A loop numba compiles.** Write the maths for *one* element, and let the
#   loop run it for every element: each ``x[i]`` is read once, every step of
#   the expression happens in registers, and ``y[i]`` is written once. One
#   pass. Here is the loop, the plainest one, with the C library's ``erf``:
#
#   ```python
#   @njit(parallel=True)
#   def gelu_plain(x, y):
#       for i in prange(x.size):   # prange: the iterations shared among the cores
#           y[i] = 0.5 * x[i] * (1.0 + math.erf(x[i] / math.sqrt(2.0)))
#   ```
#
# * **A loop the core can vectorize.** A core does the same arithmetic on 8
#   or 16 floats at once (SIMD), but only if every step of the loop body is
#   arithmetic it has vector instructions for. ``math.erf`` is a call into the
#   C library, one element at a time, and it stops the vectorizer. The
#   kernel's loop (``cpu.gelu_loop``) computes ``Phi`` from a fitted
#   polynomial (section 4), and writes even ``e^t`` out as arithmetic
#   (``cpu.exp_nonpositive``: a Taylor series and the bits of ``2^k``), so
#   the whole body vectorizes. It also writes GELU's derivative, for the
#   backward, and still wins.
#
# Each loop runs on one thread, then on every core (``numba.set_num_threads``).

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


def gelu_in_blocks(elements):
    for start in range(0, flat.size, elements):
        out[start : start + elements] = gelu_reference_forward(flat[start : start + elements])


sizes = [1 << k for k in range(12, int(math.log2(flat.size)) + 1, 2 if args.quick else 1)]
in_blocks = [best_time(lambda e=e: gelu_in_blocks(e)) for e in sizes]
loops = {}  # name -> (seconds on one thread, seconds on every core)
cores = os.cpu_count() or 1
if cpu is not None:
    import numba
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def gelu_plain(x, y):
        for i in prange(x.size):
            y[i] = 0.5 * x[i] * (1.0 + math.erf(x[i] / math.sqrt(2.0)))

    cores = numba.get_num_threads()
    slope = np.empty_like(flat)  # the kernel's loop writes the derivative too
    for name, loop in (
        ("numba, math.erf", lambda: gelu_plain(flat, out)),
        ("numba, vectorized", lambda: cpu.gelu_loop(flat, out, slope)),
    ):
        loop()  # the first call compiles (or loads from numba's cache)
        numba.set_num_threads(1)
        alone = best_time(loop)
        numba.set_num_threads(cores)
        loops[name] = (alone, best_time(loop))

print(f"\nGELU forward, {flat.nbytes / 1e6:.1f} MB: whole array {reference_seconds * 1e3:.2f} ms")
print(
    f"  NumPy in blocks, one thread: best {min(in_blocks) * 1e3:.2f} ms "
    f"(blocks of {sizes[int(np.argmin(in_blocks))] * 4 // 1024} KB)"
)
for name, (alone, together) in loops.items():
    print(f"  {name}: {alone * 1e3:.2f} ms on one thread, {together * 1e3:.2f} ms on {cores}")
print(f"  one pass (y = x + 1): {one_pass * 1e3:.2f} ms")

fig, ax = plt.subplots(figsize=(7, 4))
kb = [4 * e / 1024 for e in sizes]  # float32: 4 bytes an element
ax.plot(kb, [1e3 * t for t in in_blocks], "o-", label="NumPy in blocks, 1 thread")
ax.axhline(1e3 * reference_seconds, color="0.4", ls="--", lw=1, label="NumPy, whole array")
for (name, (alone, together)), color in zip(loops.items(), ("C1", "C2")):
    ax.axhline(1e3 * alone, color=color, ls=":", lw=1.2, label=f"{name}, 1 thread")
    ax.axhline(1e3 * together, color=color, lw=1.2, label=f"{name}, {cores} threads")
ax.axhline(1e3 * one_pass, color="k", lw=0.8, label="one pass: y = x + 1")
l2 = cache_size(2)
if l2:
    ax.axvline(l2 / 1024, color="C3", ls=":", lw=1)
    ax.text(l2 / 1024, ax.get_ylim()[1] * 0.95, " L2 cache", color="C3", fontsize=8, va="top")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("block size (KB of the input array)")
ax.set_ylabel("GELU forward (ms)")
ax.set_title(f"Passes over memory, blocks, loops ({flat.nbytes / 1e6:.0f} MB activation)")
ax.legend(fontsize=7)
print("wrote", save_figure(fig, args.out / "blocks_and_threads.png"))

# %% [markdown]
# ## 4. Arithmetic written out, with a stated error
#
# float32 keeps about seven digits. The loop's ``Phi`` divides out the
# Gaussian, ``Phi(-|x|) = e^(-x^2/2) R(s) / (1 + p a)``, and what is left,
# ``R``, is smooth in the reference's variable ``s`` (``special.py``). In
# float64 ``R`` is the reference's own erf fit, and the loop equals the
# reference to rounding; in float32 it is a polynomial of degree 9 fitted to
# ``R`` (``cpu.fit_gauss_tail_coefficients``), one exponential instead of
# two, within ``cpu.NORMAL_CDF_FLOAT32_ERROR`` of the true CDF (the tests
# check both). Here is that error over the inputs a GELU sees, against the
# float64 truth, beside the reference's float32 erf.

# %%
grid = np.linspace(-8, 8, 4001 if args.quick else 40001).astype(np.float32)
truth = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in grid])
by_reference = normal_cdf(grid).astype(np.float64)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(grid, np.abs(by_reference - truth), lw=0.6, label="reference: float32 erf, NumPy")
if cpu is not None:

    @njit
    def loop_cdf(x, y):
        for i in range(x.size):
            y[i] = cpu.normal_cdf_and_gauss(x[i])[0]

    by_loop = np.empty_like(grid)
    loop_cdf(grid, by_loop)
    loop_error = np.abs(by_loop.astype(np.float64) - truth)
    ax.plot(grid, loop_error, lw=0.6, label="kernel: the float32 fit in a loop", alpha=0.8)
    ax.axhline(cpu.NORMAL_CDF_FLOAT32_ERROR, color="C3", ls="--", lw=1, label="stated bound")
    print(f"largest error of Phi: kernel {loop_error.max():.1e}", end=", ")
print(f"reference {np.abs(by_reference - truth).max():.1e}")
ax.set_yscale("log")
ax.set_ylim(1e-11, 1e-6)
ax.set_xlabel("x")
ax.set_ylabel("|error of Phi(x)|")
ax.set_title("The float32 Gaussian CDF, whole arrays and one loop")
ax.legend(fontsize=8, loc="lower right")
print("wrote", save_figure(fig, args.out / "float32_cdf_error.png"))

# %% [markdown]
# ## 5. Every kernel against its reference
#
# Forward and backward of each layer of the block, the reference op and its
# kernel, with the largest difference between their gradients. LayerNorm's
# loop keeps each row's mean and ``1/sqrt(var + eps)`` and makes ``xhat``
# again in the backward instead of storing it; GELU's keeps its derivative
# from the forward pass, where every piece of it was at hand; softmax takes
# all the rows' maxima first (a running maximum is a chain of steps that
# wait for each other, and the CPU overlaps many rows' chains). The
# attention's products, and ``linear``'s, stay with NumPy: BLAS already runs
# them near the machine's peak (``linear``'s bias is added, and its gradient
# summed, by loops on every core).

# %%
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
# One trap, found the hard way: a loop that writes over its own input. numba
# cannot know whether two arrays share memory, so its vectorized loop first
# checks, at run time, that the output does not overlap what it reads; where
# it does, it runs the loop's scalar version instead. The attention's softmax
# reads the scores from a scratch array and writes the attention matrix
# (``kernels/attention_cpu.py``); here is the same loop both ways, on one
# thread.

# %%
if cpu is not None:
    scores = rng.standard_normal((B * HEADS * N, N)).astype(np.float32)
    apart, scale = np.empty_like(scores), np.float32(1 / math.sqrt(D // HEADS))
    out_of_place = best_time(lambda: cpu.softmax_rows(scores, apart, scale))
    in_place = best_time(lambda: cpu.softmax_rows(apart, apart, scale))  # overwrites apart
    print(f"softmax of {scores.shape[0]:,} rows on one thread: into another array "
          f"{out_of_place * 1e3:.2f} ms, in place {in_place * 1e3:.2f} ms "
          f"({in_place / out_of_place:.1f}x slower)")  # fmt: skip

# %% [markdown]
# ## 6. Other people's threads
#
# Two kinds of thread take turns on the cores all through a training step:
# OpenBLAS's run the matrix products, numba's run the loops. After its work
# each kind keeps spinning for a while, waiting for more, and on a machine
# with few cores a spinning thread holds the core the other needs next.
# OpenBLAS spins for about 2^28 cycles by default; numba's OpenMP threads
# spin too. On one machine of this project (an Intel Sapphire Rapids) a GELU
# right after a product ran 1.5 times slower while OpenBLAS's threads spun;
# on another (an AMD EPYC) the operating system handed the cores back at
# once. tinyvit asks both kinds to sleep at once, which costs the products
# nothing. These are settings of the whole process, so importing tinyvit
# leaves them alone: ``tinyvit.kernels.configure_process()`` applies them,
# with the allocator's (keep freed memory for the next step), and every
# entry point calls it once at its start (the trainer, ``python -m
# tinyvit``, this lesson's command line, the benchmarks); a training script
# of your own should too, before its first kernel. Here is your machine: a
# GELU right after a matrix product, with OpenBLAS's threads told to spin
# as they do by default, then told to sleep.

# %%
if cpu_runtime.blas_thread_timeout() is not None and cores > 1:
    a = rng.standard_normal((B * N, D)).astype(np.float32)
    weight = rng.standard_normal((MLP, D)).astype(np.float32)
    gelu = F.gelu

    def product_then_gelu():
        a @ weight.T  # the product; OpenBLAS's threads are now idle
        start = time.perf_counter()
        gelu(Tensor(h))
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
