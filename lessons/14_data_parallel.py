# %% [markdown]
# # Lesson 14: data parallelism, one run on several processes
#
# Lesson 6 trains on one process. When one process is not enough (a machine
# with more cores than one process keeps busy, several machines, a node with
# eight GPUs) the simplest way on is *data parallelism*: every process keeps
# the whole model, takes an equal part of every batch, and the processes
# agree on one gradient before each step. tinyvit does it with one command:
#
#     mpiexec -n 2 python -m tinyvit.train          # pip install -e ".[mpi]"
#
# This lesson shows why it is the same training run as one process's
# (section 1), how the processes agree on the gradient and what that costs
# (section 2, the all-reduce), what tinyvit sends (section 3), and what it
# gains on your machine (section 4): one process with two threads against
# two processes with one thread each.
#
# Run: ``python lessons/14_data_parallel.py [--out DIR] [--quick]`` (no data
# needed; section 4 launches ``mpiexec`` when it is installed and says so
# when it is not).

# %%
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import tinyvit
from tinyvit import backend, distributed, manual_seed
from tinyvit import functional as F
from tinyvit.lesson import lesson_arguments
from tinyvit.tensor import Tensor
from tinyvit.train import parallel
from tinyvit.vit import create
from tinyvit.viz import plt, save_figure

args = lesson_arguments("14_data_parallel", "Data parallelism: one run on several processes.")
if args.device == "cuda":
    print("note: this lesson runs on the CPU (section 4 measures CPU processes)")

# %% [markdown]
# ## 1. The mean of the parts' gradients is the whole batch's gradient
#
# The training loss of a batch of ``B`` images is the mean of the images'
# losses, ``L = (1/B) sum_i l_i``, and its gradient is the mean of theirs.
# Cut the batch into ``N`` equal parts of ``B/N`` images; part ``k``'s mean
# loss is ``L_k = (N/B) sum_{i in k} l_i``, and
#
#     (1/N) sum_k grad L_k = (1/N) sum_k (N/B) sum_{i in k} grad l_i
#                          = (1/B) sum_i grad l_i = grad L.
#
# So ``N`` processes that each compute the gradient of their part's mean
# loss, then average the ``N`` gradients, hold the whole batch's gradient:
# the step one process would take. Three things must hold for it:
#
# * **equal parts** (else the mean of the means weighs the images unevenly);
# * **an image's loss depends on that image alone**: true of a ViT, whose
#   LayerNorm normalizes each token by itself (a BatchNorm, which mixes the
#   batch's statistics, would break it);
# * **the same random draws**: dropout and PatchDropout masks, flips, crops.
#   An image must get the masks it would get in the whole batch, not ones
#   its process draws for a batch of its own. tinyvit draws the whole
#   batch's masks on every process and keeps its part's rows
#   (``backend.batch_shard``; the data's draws likewise, ``data.batches(shard=)``).
#
# Checked numerically: a small ViT with PatchDropout and dropout, a batch
# of 16, its gradient taken whole and in 2 and 4 parts.

# %%
B = 16
rng = np.random.default_rng(0)
images = rng.standard_normal((B, 3, 32, 32))
labels = rng.integers(0, 10, B)


def gradient(model, rows=slice(None), part=(0, 1)):
    """The gradient of the mean loss of ``images[rows]`` as one flat array, its masks
    drawn as part ``part = (k, N)`` of the batch (``(0, 1)``: a batch of its own)."""
    manual_seed(5)  # one step's seed: the same draws every time
    for p in model.parameters():
        p.grad = None
    x = Tensor(images[rows].astype(model.cls_token.dtype))
    with backend.batch_shard(*part):
        loss = F.cross_entropy(model(x), labels[rows])
    loss.backward()
    return np.concatenate([p.grad.ravel() for p in model.parameters()])


def parts_mean(model, n, shared_draws=True):
    """The mean of the gradients of ``n`` equal parts of the batch."""
    k = B // n
    grads = [
        gradient(model, slice(i * k, (i + 1) * k), (i, n) if shared_draws else (0, 1))
        for i in range(n)
    ]
    return sum(grads) / n


differences = {}
for dtype in (np.float64, np.float32):
    manual_seed(0)
    model = create("vit_cifar_tiny", patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64,
                   patch_dropout=0.5, dropout=0.1).to(dtype)  # fmt: skip
    whole = gradient(model)
    for n in (2, 4):
        relative = np.abs(parts_mean(model, n) - whole).max() / np.abs(whole).max()
        differences[f"{n} parts\n{np.dtype(dtype).name}"] = relative
        print(f"{np.dtype(dtype).name}, {n} parts: largest difference from the whole batch's "
              f"gradient {relative:.1e} (of its largest entry)")  # fmt: skip
relative = np.abs(parts_mean(model, 2, shared_draws=False) - whole).max() / np.abs(whole).max()
differences["2 parts,\ntheir own\nmasks"] = relative
print(f"2 parts drawing masks of their own: {relative:.1e}: another step altogether")

# %% [markdown]
# In float64 the two agree to the last digits, in float32 to its rounding
# (the sums run in another order): the same step. With masks drawn by each
# part for itself, the gradient is that of other masks, as far from the
# whole batch's as one step's noise; a run would then depend on how many
# processes trained it.

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
names = list(differences)
ax.bar(range(len(names)), list(differences.values()),
       color=["#4c72b0"] * 2 + ["#55a868"] * 2 + ["#c44e52"])  # fmt: skip
ax.set_xticks(range(len(names)), names)
ax.set_yscale("log")
ax.set_ylabel("largest |difference| / largest |gradient|")
ax.set_title("The mean of the parts' gradients against the whole batch's")
for dtype, eps in (("float64", np.finfo(np.float64).eps), ("float32", np.finfo(np.float32).eps)):
    ax.axhline(eps, color="gray", lw=0.8, ls=":")
    ax.text(len(names) - 0.5, eps, f" {dtype} epsilon", va="center", fontsize=8)
print("wrote", save_figure(fig, args.out / "shard_gradients.png"))

# %% [markdown]
# ## 2. The all-reduce, and what it costs
#
# An *all-reduce* takes one buffer from each of ``N`` processes and leaves
# their sum on every one of them. Done naively, every process sends its
# buffer of ``P`` numbers to rank 0, which adds them up and sends the sum
# back: rank 0 receives and sends ``(N - 1) P`` numbers, and its link is
# the bottleneck, longer with every process added.
#
# A *ring* shares the work. The processes stand in a circle and cut their
# buffers into ``N`` chunks. In ``N - 1`` steps of *reduce-scatter* each
# passes one chunk to its right-hand neighbour, which adds it to its own;
# afterwards each process holds one chunk summed over everyone. In ``N - 1``
# steps of *all-gather* the finished chunks travel once more round the
# ring. Each process sends ``2 (N - 1)`` chunks of ``P / N`` numbers:
# ``2 (N - 1) / N`` of its buffer, under twice the buffer however many
# processes there are. MPI libraries and NCCL pick among such algorithms
# (rings, trees, recursive halving) by the buffer's size; the ring is the
# one whose cost is easiest to see. Here it is, run on arrays:

# %%


def ring_all_reduce(buffers):
    """Sum the processes' ``buffers`` as a ring does; the sums each process ends with and
    the numbers each one sent."""
    n = len(buffers)
    chunks = [np.array_split(b.astype(np.float64), n) for b in buffers]  # chunks[process][c]
    sent = [0] * n
    for s in range(n - 1):  # reduce-scatter: p sends chunk p - s; p + 1 adds it to its own
        passing = [(p, (p - s) % n, chunks[p][(p - s) % n].copy()) for p in range(n)]
        for p, c, chunk in passing:
            chunks[(p + 1) % n][c] += chunk
            sent[p] += chunk.size
    # now process p holds chunk p + 1 summed over all of them
    for s in range(n - 1):  # all-gather: p sends chunk p + 1 - s; p + 1 keeps it
        passing = [(p, (p + 1 - s) % n, chunks[p][(p + 1 - s) % n].copy()) for p in range(n)]
        for p, c, chunk in passing:
            chunks[(p + 1) % n][c] = chunk
            sent[p] += chunk.size
    return [np.concatenate(c) for c in chunks], sent


P = 600
for n in (2, 3, 4, 8):
    buffers = [rng.standard_normal(P) for _ in range(n)]
    sums, sent = ring_all_reduce(buffers)
    assert all(np.allclose(s, sum(buffers)) for s in sums)
    print(f"{n} processes: every one holds the sum; each sent {max(sent)} numbers = "
          f"{max(sent) / P:.2f} of its buffer (2 (N - 1) / N = {2 * (n - 1) / n:.2f})")  # fmt: skip

# %%
counts = np.arange(2, 17)
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.plot(counts, 2 * (counts - 1) / counts, "o-", label="ring: each process sends 2(N-1)/N")
ax.plot(counts, counts - 1, "s--", label="to rank 0 and back: rank 0 sends N-1")
ax.set_xlabel("processes N")
ax.set_ylabel("buffers sent by the busiest process")
ax.set_yscale("log")
ax.legend()
model = create("vit_cifar_tiny", pool="mean", patch_dropout=0.5, num_classes=10)
size = model.num_parameters()
ax.set_title(f"An all-reduce's traffic (the README's model: {size:,} gradients, "
             f"{4 * size / 1e6:.1f} MB)", fontsize=10)  # fmt: skip
print("wrote", save_figure(fig, args.out / "ring_allreduce.png"))

# %% [markdown]
# ## 3. What tinyvit sends
#
# The optimizer keeps every gradient in one contiguous buffer
# (``optim.FlatParameters``), so the all-reduce is one call on one array,
# not one per parameter. ``loop.train_step`` calls it between ``backward()``
# and the clipping, so that the clipping, the finiteness check and the AdamW
# step all see the averaged gradient, identical on every process, and every
# process takes the same step: the weights never drift apart. Three more
# numbers travel in the same message: the loss, the right answers (for the
# epoch's line) and whether a process was asked to stop (Ctrl-C and SIGTERM
# reach every process, but not at the same step; the flag makes them stop
# after the same one). ``distributed.Communicator.reduce_step`` is that
# message; here, one process alone, it passes everything through:

# %%
comm = distributed.world()
print(f"this process: {comm.describe()}; a batch of 128 is split as "
      f"{parallel.shard_of(comm, 128) or 'one part'}")  # fmt: skip
grad = np.ones(size, dtype=np.float32)
sums = comm.reduce_step(grad, np.float32(2.3), np.int64(40), stop=False)
print(f"alone: loss {float(sums.loss):.1f}, {int(sums.correct)} right, stop {sums.stop}, the "
      f"gradients untouched ({grad.min():.0f} .. {grad.max():.0f}); under mpiexec one message "
      f"of {size:,} gradients + 3 = {size + 3:,} numbers ({4 * (size + 3) / 1e6:.2f} MB) "
      "a step")  # fmt: skip

# %% [markdown]
# Under ``mpiexec`` (MPI, on CPUs) the message is summed on the host; on
# GPUs (``--device cuda``, one process per GPU) NCCL sums it on the devices
# and only the stop flag goes through MPI. Rank 0 alone writes the
# checkpoints and prints; the test images are split among the processes,
# their counts added up. A process that fails says so in one line and ends
# the job; one that stops answering is named by the others after a
# deadline (``TINYVIT_MPI_TIMEOUT``). The last checkpoint stays whole, and
# ``--resume`` goes on, with any number of processes.
#
# ## 4. What it gains on your machine
#
# On one machine, processes compete with threads: one tinyvit process
# already runs its kernels and OpenBLAS's matrix products on every core.
# ``benchmarks/bench_mpi.py`` measures images per second of the same
# training steps with one thread, one process on every core, and one
# process per core (``NUMBA_NUM_THREADS`` sets the threads of tinyvit's
# kernels, ``OPENBLAS_NUM_THREADS`` those of the matrix products; under
# ``mpiexec`` give each process its share of the cores). Processes need no
# locks and keep every core busy through the parts of a step that one
# process runs on one thread (the Python between operations, the small
# ones); they pay for a copy of the model each, and for the all-reduce.
# Which wins depends on the machine and the model: measure.

# %%
bench = Path(tinyvit.__file__).resolve().parents[1] / "benchmarks" / "bench_mpi.py"
measured = None
if not bench.is_file():
    print(f"no {bench}: section 4 needs tinyvit's repository (a clone, pip install -e .)")
else:
    with tempfile.TemporaryDirectory() as folder:
        result_file = Path(folder) / "mpi.json"
        flags = ["--quick"] if args.quick else []
        run = subprocess.run([sys.executable, str(bench), *flags, "--json", str(result_file)],
                             capture_output=True, text=True, timeout=3600)  # fmt: skip
        print(run.stdout.strip() or run.stderr.strip()[-2000:])
        if run.returncode == 0:
            measured = json.loads(result_file.read_text())
if args.quick:
    print("--quick: a few steps of a tiny model; the numbers say little")

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
if measured:
    rows = measured["results"]
    labels = [f"{r['processes']} process{'es' * (r['processes'] > 1)}\n"
              f"x {r['threads']} thread{'s' * (r['threads'] > 1)}" for r in rows]  # fmt: skip
    speeds = [r["images_per_s"] for r in rows]
    ax.bar(range(len(rows)), speeds, color="#4c72b0")
    ax.set_xticks(range(len(rows)), labels)
    for i, speed in enumerate(speeds):
        ax.text(i, speed, f"{speed:.0f}", ha="center", va="bottom")
    ax.set_ylabel("training images / s")
    ax.set_title(f"{measured['machine']}\n{measured['recipe']} recipe, batch "
                 f"{measured['batch_size']}", fontsize=9)  # fmt: skip
    if all(r["processes"] == 1 for r in rows):
        ax.text(0.5, 0.9, 'several processes need MPI: pip install -e ".[mpi]"',
                transform=ax.transAxes, ha="center")  # fmt: skip
else:
    ax.text(0.5, 0.5, "not measured (see the output above)", ha="center", va="center")
    ax.set_axis_off()
print("wrote", save_figure(fig, args.out / "scaling.png"))
print(f"cores here: {os.cpu_count()}")
