# %% [markdown]
# # Lesson 4: self-attention by hand
#
# Inside every encoder block of the ViT (Eq. 2) each token looks at all the
# others and takes a weighted average of what it finds. That is multi-head
# self-attention, MSA, which the paper spells out in Appendix A:
#
#     Eq. 5   [q, k, v] = z U_qkv                 U_qkv in R^(D x 3 D_h)
#     Eq. 6   A = softmax(q k^T / sqrt(D_h))       A in R^(N x N)
#     Eq. 7   SA(z) = A v
#     Eq. 8   MSA(z) = [SA_1(z); SA_2(z); ...; SA_k(z)] U_msa      U_msa in R^(k D_h x D)
#
# with ``k`` heads of width ``D_h = D / k``, each with its own ``U_qkv``.
# This lesson computes the four equations with nothing but matrix products,
# reshapes and a softmax written with ``exp``, on a short sequence of
# tokens; then it checks that tinyvit's ``nn.Attention`` (one fused op with
# a hand-written backward) gives the same outputs *and* the same gradients.
# Last, why the ``sqrt(D_h)`` is there.
#
# Run: ``python lessons/04_self_attention.py [--out DIR] [--quick] [--device cuda]``
# (no data needed).

# %%
import math
import time

import numpy as np

from tinyvit import Tensor, backend, composed, manual_seed, nn
from tinyvit import functional as F
from tinyvit.lesson import lesson_arguments
from tinyvit.viz import plt, save_figure

args = lesson_arguments("04_self_attention", "Multi-head self-attention by hand.")
xp = backend.module_for(args.device)

# %% [markdown]
# ## 1. A layer and a sequence
#
# A batch of ``B = 2`` sequences of ``N = 7`` tokens (a class token and six
# patches, say) of width ``D = 16``, and an attention layer with ``k = 4``
# heads of ``D_h = 4``. The comparison runs in float64 so that "the same"
# can mean "equal to 1e-15" rather than "equal to float32 rounding".
#
# A freshly initialized ViT draws its weights with a standard deviation of
# 0.02, so small that every attention row is almost uniform: nothing to
# see. Here the weights are drawn with a standard deviation of
# ``1 / sqrt(D)`` and the tokens are unit-variance, like the output of a
# LayerNorm, which gives each head a visibly different pattern to look at.

# %%
B, N, D, heads = 2, 7, 16, 4
head_dim = D // heads  # D_h
tokens = ["cls"] + [f"p{i}" for i in range(1, N)]
manual_seed(0)
rng = np.random.default_rng(0)

attention = nn.Attention(D, heads).to(args.device, np.float64)
for linear in (attention.qkv, attention.proj):
    out_features, in_features = linear.weight.shape
    linear.weight.data = xp.asarray(rng.standard_normal((out_features, in_features)) / math.sqrt(D))
    linear.bias.data = xp.asarray(rng.standard_normal(out_features) * 0.1)
z = Tensor(xp.asarray(rng.standard_normal((B, N, D))), requires_grad=True)  # (B, N, D)
print(f"z: (B, N, D) = {z.shape};  {heads} heads of D_h = {head_dim};  {z.dtype}")
print(f"U_qkv, as nn.Linear stores it (out, in): {attention.qkv.weight.shape}")
print(f"U_msa, as nn.Linear stores it (out, in): {attention.proj.weight.shape}")

# %% [markdown]
# ## 2. Eq. 5-8, one line each
#
# The ``k`` matrices ``U_qkv`` of the paper (one per head, ``D x 3 D_h``)
# are stored side by side as one ``(3D, D)`` weight, ``nn.Linear``'s
# ``(out, in)`` layout, so one matrix product computes queries, keys and
# values for every head at once. Its output is ``[q | k | v]``, each ``D``
# wide; within each, head ``h`` owns columns ``h D_h`` to ``(h + 1) D_h``.
# Splitting the heads is a reshape and a transpose that puts the head axis
# before the token axis, so that the matrix products below run over every
# (sequence, head) pair at once.
#
# Everything here is ``Tensor`` arithmetic (``composed.softmax`` is softmax
# written with ``exp``, ``max`` and a division), so autograd can
# differentiate it by chaining the primitives' backwards.


# %%
def msa_by_hand(z, U_qkv, b_qkv, U_msa, b_msa, heads):
    """Eq. 5-8 from primitives. Returns the output (B, N, D) and A (B, heads, N, N)."""
    B, N, D = z.shape
    head_dim = D // heads
    qkv = z @ U_qkv.T + b_qkv  # (B, N, 3D)                                    Eq. 5
    q, k, v = qkv[:, :, :D], qkv[:, :, D : 2 * D], qkv[:, :, 2 * D :]  # each (B, N, D)

    def split_heads(t):  # (B, N, D) -> (B, N, heads, D_h) -> (B, heads, N, D_h)
        return t.reshape(B, N, heads, head_dim).transpose(0, 2, 1, 3)

    q, k, v = split_heads(q), split_heads(k), split_heads(v)  # each (B, heads, N, D_h)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(head_dim)  # (B, heads, N, N)
    A = composed.softmax(scores, axis=-1)  # (B, heads, N, N), rows sum to 1         Eq. 6
    sa = A @ v  # (B, heads, N, D_h): each head's SA(z)                              Eq. 7
    joined = sa.transpose(0, 2, 1, 3).reshape(B, N, D)  # (B, N, heads * D_h): [SA_1; ...; SA_k]
    return joined @ U_msa.T + b_msa, A  # (B, N, D)                                   Eq. 8


params = (attention.qkv.weight, attention.qkv.bias, attention.proj.weight, attention.proj.bias)
out_hand, A_hand = msa_by_hand(z, *params, heads)
attention.keep_attention = True
out_fused = attention(z)  # nn.Attention: fused qkv, F.self_attention, proj
A_fused = attention.attention  # (B, heads, N, N), kept for looking at

out_gap = float(abs(out_hand.data - out_fused.data).max())
A_gap = float(abs(A_hand.data - A_fused).max())
print(f"\nMSA(z): (B, N, D) = {out_hand.shape};  A: (B, heads, N, N) = {A_hand.shape}")
print(f"max |by hand - nn.Attention|: output {out_gap:.1e}, attention weights {A_gap:.1e}")
assert out_gap < 1e-12 and A_gap < 1e-12

# The same through the functional ops: the fused self_attention on the packed qkv, and
# scaled_dot_product_attention on q, k, v already split into heads.
qkv = F.linear(z, attention.qkv.weight, attention.qkv.bias)  # (B, N, 3D)
sa_packed = F.self_attention(qkv, heads)  # (B, N, D): heads side by side
split = qkv.reshape(B, N, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)  # (3, B, heads, N, D_h)
q, k, v = split[0], split[1], split[2]  # each (B, heads, N, D_h)
sa_split = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D_h)
joined = sa_split.transpose(0, 2, 1, 3).reshape(B, N, D)  # (B, N, D)
print(
    f"max |self_attention - scaled_dot_product_attention|: "
    f"{float(abs(sa_packed.data - joined.data).max()):.1e}"
)

# %% [markdown]
# ## 3. Rows of A sum to one
#
# Softmax turns each row of scores into positive weights that add up to 1,
# so ``SA(z) = A v`` gives every token a weighted *average* of the value
# vectors: a convex combination, so each coordinate of the result lies
# between the smallest and the largest of the values' coordinates. Row
# ``i`` of ``A`` says where token ``i`` looks. Nothing in it depends on the
# order of the tokens: permute them and ``A`` is permuted, rows and columns
# alike. That is why the model needs the position embedding of lesson 3.

# %%
row_sums = backend.to_numpy(A_hand.data.sum(axis=-1))  # (B, heads, N)
print(f"\nrow sums of A: min {row_sums.min():.15f}, max {row_sums.max():.15f}")
order = backend.to_device(rng.permutation(N), z.device)  # indices live where z does
_, A_permuted = msa_by_hand(z[:, order], *params, heads)
same = float(abs(A_permuted.data - A_hand.data[:, :, order][:, :, :, order]).max())
print(f"tokens permuted: A permuted the same way (max difference {same:.1e})")

# %% [markdown]
# The figure draws ``A`` of the first sequence, one panel per head: row
# ``i`` is where token ``i`` (the query) puts its attention, each row adds
# up to 1. The heads look at different things; Eq. 8 concatenates what
# they found and mixes it with ``U_msa``.

# %%
A_show = backend.to_numpy(A_hand.data[0])  # (heads, N, N)
fig, axes = plt.subplots(1, heads, figsize=(3.2 * heads + 1, 3.6), constrained_layout=True)
for h, ax in enumerate(axes):
    shown = ax.imshow(A_show[h], cmap="viridis", vmin=0, vmax=1)
    for i in range(N):
        for j in range(N):
            color = "black" if A_show[h, i, j] > 0.6 else "white"
            ax.text(
                j, i, f"{A_show[h, i, j]:.2f}", ha="center", va="center", fontsize=6.5, color=color
            )
    ax.set_xticks(range(N), tokens, fontsize=8)
    ax.set_yticks(range(N), tokens, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_title(f"head {h + 1}")
axes[0].set_ylabel("query (attending)")
fig.colorbar(shown, ax=axes, label="attention weight (each row sums to 1)", shrink=0.9, pad=0.01)
fig.suptitle(
    "A = softmax(q k\u1d40 / \u221aD_h) of each head, for one sequence of 7 tokens", y=1.06
)
print("wrote", save_figure(fig, args.out / "attention_heads.png"))

# %% [markdown]
# ## 4. Gradients: autograd through the primitives against the fused backward
#
# ``msa_by_hand`` built a graph of some twenty-five small ops, and ``backward()``
# chains their derivatives. ``nn.Attention`` runs the whole of Eq. 6-7 as
# one op whose backward was derived on paper (see the docstring of
# ``functional.scaled_dot_product_attention``): with ``g`` the gradient of
# the output, ``dV = A^T g``, ``dA = g V^T``, the softmax backward
# ``dS = A * (dA - rowsum(dA * A))``, then ``dQ = dS K / sqrt(D_h)`` and
# ``dK = dS^T Q / sqrt(D_h)``. The loss is ``sum(MSA(z) * R)`` with a
# random ``R``, so that every output counts with its own weight (lesson 2).

# %%
R = xp.asarray(rng.standard_normal((B, N, D)))
wrt = {"z": z, "U_qkv": params[0], "b_qkv": params[1], "U_msa": params[2], "b_msa": params[3]}


def gradients(forward):
    for t in wrt.values():
        t.grad = None
    (forward() * R).sum().backward()
    return {name: backend.to_numpy(t.grad).copy() for name, t in wrt.items()}


by_autograd = gradients(lambda: msa_by_hand(z, *params, heads)[0])
by_fused = gradients(lambda: attention(z))
print()
for name in wrt:
    gap = np.abs(by_autograd[name] - by_fused[name]).max()
    size = np.abs(by_fused[name]).max()
    print(
        f"d loss / d {name:<6} {str(by_fused[name].shape):>9}: largest entry {size:6.3f}, "
        f"max |autograd - fused| {gap:.1e}"
    )
    assert gap < 1e-12 * max(1.0, size), (name, gap)

# %% [markdown]
# Same gradients; the difference is cost. The composed version keeps every
# intermediate array for its backward (``scores``, the exponentials, their
# sums, the quotient) and runs one Python-level op per node. A rough timing
# on a ViT-sized input, in float32 (one forward and backward each):

# %%
batch, length, width, k = (8, 65, 96, 3) if args.quick else (32, 65, 192, 3)
layer = nn.Attention(width, k).to(args.device)
x = Tensor(
    xp.asarray(rng.standard_normal((batch, length, width)), dtype=np.float32), requires_grad=True
)
R32 = xp.asarray(rng.standard_normal((batch, length, width)), dtype=np.float32)
layer_params = (layer.qkv.weight, layer.qkv.bias, layer.proj.weight, layer.proj.bias)
candidates = {
    "by hand (composed)": lambda: msa_by_hand(x, *layer_params, k)[0],
    "nn.Attention (fused)": lambda: layer(x),
}
for name, forward in candidates.items():
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        (forward() * R32).sum().backward()
        backend.to_numpy(x.grad[0, 0])  # on a GPU, wait for the work to finish
        x.grad = None
        best = min(best, time.perf_counter() - start)
    print(f"{name:<22} (B, N, D) = {(batch, length, width)}: {1000 * best:6.1f} ms")

# %% [markdown]
# ## 5. Why divide by ``sqrt(D_h)``
#
# If the entries of ``q`` and ``k`` have variance 1, their dot product is a
# sum of ``D_h`` such products and has variance ``D_h``: its typical size
# grows like ``sqrt(D_h)``. Fed to a softmax unscaled, large scores make
# the largest one win almost everything: the row becomes nearly one-hot.
# That is bad for learning, because the softmax's Jacobian,
# ``diag(a) - a a^T``, goes to zero when ``a`` is one-hot: no gradient
# reaches ``q`` and ``k`` (Vaswani et al. 2017, Section 3.2.1). Dividing by
# ``sqrt(D_h)`` brings the scores back to variance 1 for every head width.
#
# The figure samples random queries and keys of unit variance. On the
# left, one query's attention over 16 keys at ``D_h = 64`` (the head width
# of ViT-B and ViT-L); in the middle and on the right, as ``D_h`` grows,
# the average largest weight in a row and the average size of the
# softmax's Jacobian, with and without the scaling.

# %%
keys, trials = 16, (200 if args.quick else 2000)
widths = 2 ** np.arange(0, 11)  # D_h = 1 ... 1024


def softmax_rows(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def saturation(width, scaled):
    """Mean largest weight and mean Frobenius norm of diag(a) - a a^T, over random rows."""
    q = rng.standard_normal((trials, 1, width))  # (trials, 1, D_h)
    kk = rng.standard_normal((trials, keys, width))  # (trials, keys, D_h)
    scores = (q * kk).sum(-1) / (math.sqrt(width) if scaled else 1.0)  # (trials, keys)
    a = softmax_rows(scores)
    jacobian = a[:, :, None] * np.eye(keys) - a[:, :, None] * a[:, None, :]  # (trials, keys, keys)
    return a.max(-1).mean(), np.sqrt((jacobian**2).sum(axis=(1, 2))).mean()


curves = {scaled: np.array([saturation(w, scaled) for w in widths]) for scaled in (False, True)}
for scaled, name in ((False, "q k^T"), (True, "q k^T / sqrt(D_h)")):
    peak, jac = curves[scaled][list(widths).index(64)]
    print(f"D_h = 64, softmax({name}): mean largest weight {peak:.2f}, mean |Jacobian| {jac:.3f}")

example_q = rng.standard_normal(64)
example_k = rng.standard_normal((keys, 64))
rows = {
    "unscaled: softmax(q k\u1d40)": softmax_rows(example_k @ example_q),
    "scaled: softmax(q k\u1d40 / \u221aD_h)": softmax_rows(example_k @ example_q / 8.0),
}

fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 3.9), constrained_layout=True)
offsets = (-0.2, 0.2)
for (name, row), offset, color in zip(rows.items(), offsets, ("C3", "C0")):
    left.bar(np.arange(keys) + offset, row, width=0.4, color=color, label=name)
left.set_xlabel("key")
left.set_ylabel("attention weight")
left.set_title("One query's attention over 16 keys (D_h = 64)")
left.legend(frameon=False, fontsize=8)
for scaled, color, name in ((False, "C3", "unscaled"), (True, "C0", "scaled by 1/\u221aD_h")):
    middle.semilogx(widths, curves[scaled][:, 0], "o-", color=color, label=name, base=2)
    right.semilogx(widths, curves[scaled][:, 1], "o-", color=color, label=name, base=2)
middle.axhline(1 / keys, color="0.6", ls=":", lw=1)
middle.text(1, 1 / keys + 0.02, "uniform: 1/16", color="0.4", fontsize=8)
middle.set_ylim(0, 1.05)
middle.set_ylabel("mean largest weight in a row")
middle.set_title("Unscaled rows become one-hot")
right.set_ylim(bottom=0)
right.set_ylabel("mean \u2016diag(a) \u2212 a a\u1d40\u2016 (Frobenius)")
right.set_title("... and the softmax's gradient vanishes")
for ax in (middle, right):
    ax.set_xlabel("head width D_h")
    ax.axvline(64, color="0.7", lw=1, zorder=0)
    ax.text(
        70,
        0.02,
        "ViT-B and\nViT-L: D_h = 64",
        color="0.4",
        fontsize=7,
        transform=ax.get_xaxis_transform(),
    )
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
print("wrote", save_figure(fig, args.out / "softmax_scaling.png"))
