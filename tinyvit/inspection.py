"""Looking inside a trained ViT: the numbers behind the paper's Section 4.5.

Section 4.5, "Inspecting the Vision Transformer", looks at three things;
this module computes each of them, arrays in and arrays out
(``tinyvit.viz`` draws them):

* **Attention maps** (Fig. 6, Appendix D.8). Each head of each layer has an
  attention matrix ``A`` of shape ``(N+1, N+1)``: row ``i`` is the softmax
  that says how much token ``i`` takes from every token (Eq. 6). The class
  token's row over the ``N`` patches, laid out on the patch grid, shows
  where that head looks: ``cls_attention``. *Attention rollout* (Abnar &
  Zuidema 2020) follows the attention through all the layers at once:
  ``rollout``, ``attention_rollout``.
* **Mean attention distance** (Fig. 7, right; Appendix D.7): how far, in
  pixels, each head looks on average: ``mean_attention_distance``.
* **What the embeddings learned** (Fig. 7, left and center): principal
  components of the patch-embedding filters ``E``
  (``embedding_filter_components``) and the cosine similarity of the
  position embeddings (``position_similarity``).

Every function takes NumPy or CuPy arrays (or tensors) and runs on the
module of the array it is given (``backend.xp_of``), so a model on the GPU
is inspected on the GPU. The patches make a square grid unless ``grid=(rows,
cols)`` says otherwise (``model.patch_embed.grid_size``, for a model of
rectangular images).
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .tensor import Tensor, no_grad

# ---------------------------------------------------------------------------
# Checking what we are given
# ---------------------------------------------------------------------------


def array_of(x):
    """The array inside a tensor, or the array itself."""
    return x.data if isinstance(x, Tensor) else x


def _describe(x) -> str:
    shape = getattr(x, "shape", None)
    if shape is None:
        return f"a {type(x).__name__}"
    return f"an array of shape {tuple(shape)}"


def grid_side(tokens: int) -> int:
    """The side ``g`` of the patch grid of ``N + 1 = g*g + 1`` tokens (class token first)."""
    side = math.isqrt(max(tokens - 1, 0))
    if tokens < 2 or side * side != tokens - 1:
        raise ValueError(
            f"{tokens} tokens are not a class token plus a square grid of patches "
            f"(N + 1 with N = g*g): {tokens - 1} is not a square (grid=(rows, cols) "
            "names a rectangular grid)"
        )
    return side


def grid_shape(tokens: int, grid=None) -> tuple[int, int]:
    """The ``(rows, cols)`` of the patches of ``N + 1`` tokens (class token first): ``grid``
    (a side or a pair) checked against ``N``, or, when it is None, a square grid."""
    if grid is None:
        side = grid_side(tokens)
        return side, side
    rows, cols = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if rows * cols != tokens - 1:
        raise ValueError(
            f"{tokens} tokens are not a class token plus a grid of {rows} x {cols} patches "
            f"({rows * cols} + 1)"
        )
    return rows, cols


def _check_attention(attention, what="attention", grid=None):
    """One layer's attention probabilities, ``(B, heads, T, T)`` with ``T = rows*cols + 1``."""
    attention = array_of(attention)
    shape = tuple(getattr(attention, "shape", ()))
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(
            f"{what} must have shape (B, heads, T, T), the probabilities of one layer "
            f"(model.attention_maps()[l]); got {_describe(attention)}"
        )
    grid_shape(shape[2], grid)
    return attention


def check_layers(attentions, grid=None):
    """A list of per-layer attention arrays, first layer first, with one B and one T."""
    if not isinstance(attentions, (list, tuple)):
        hint = " (wrap one layer's array in a list)" if hasattr(attentions, "shape") else ""
        raise TypeError(
            "expected a list of per-layer attention arrays (B, heads, T, T), first layer "
            f"first, as model.attention_maps() returns; got {_describe(attentions)}{hint}"
        )
    if not attentions:
        raise ValueError("expected at least one layer's attention, got an empty list")
    layers = [
        _check_attention(a, f"attention of layer {i}", grid) for i, a in enumerate(attentions)
    ]
    first = layers[0].shape
    for i, a in enumerate(layers):
        if (a.shape[0], a.shape[2]) != (first[0], first[2]):
            raise ValueError(
                f"all layers must share the batch and the tokens: layer 0 has shape {first}, "
                f"layer {i} has shape {tuple(a.shape)}"
            )
    backend.xp_of(*layers, names=[f"layer {i}" for i in range(len(layers))])
    return layers


# ---------------------------------------------------------------------------
# Attention maps: what the class token looks at (Fig. 6)
# ---------------------------------------------------------------------------


def attend(model, images):
    """Run ``model`` on a batch of normalized images; return ``(logits, attentions)``.

    ``attentions`` is the list of every block's ``(B, heads, N+1, N+1)``
    attention probabilities, first block first (``ViT.keep_attention`` and
    ``ViT.attention_maps``). The model runs in evaluation mode (no dropout,
    every patch token) without a graph; its mode and keep-attention setting
    are left as they were.
    """
    kept, was_training = [block.attn.keep_attention for block in model.blocks], model.training
    model.keep_attention(True).eval()
    try:
        with no_grad():
            logits = model(images).data  # (B, classes)
        attentions = model.attention_maps()  # L x (B, heads, N+1, N+1)
    finally:
        model.train(was_training)
        for block, keep in zip(model.blocks, kept):
            block.attn.keep_attention = keep
            if not keep:
                block.attn.attention = None
    return logits, attentions


def readout_row(matrix, pool="cls"):
    """The row of a ``(..., T, T)`` token-to-token matrix that the classifier reads, over
    the patches: ``(..., N)``.

    ``pool="cls"``: row 0 (the class token's query), its entries 1..N. The
    class token's own entry is left out, so the row sums to at most 1.
    ``pool="mean"`` (``ViT(pool="mean")``, which classifies the average of
    the patch tokens): the average of the patch tokens' rows over the patches,
    what that average takes from each patch.
    """
    if pool == "cls":
        return matrix[..., 0, 1:]
    if pool == "mean":
        return matrix[..., 1:, 1:].mean(axis=-2)
    raise ValueError(f"pool must be 'cls' or 'mean', not {pool!r}")


def cls_attention(attention, pool="cls", grid=None):
    """Per-head attention of the token the classifier reads, over the patches, on the grid.

    ``attention`` is one layer's ``(B, heads, N+1, N+1)`` probabilities.
    With ``pool="cls"`` (the paper's ViT) it is the class token's row: how
    much the class token takes from each patch; with ``pool="mean"`` the
    patch tokens' average row (``readout_row``). Returns ``(B, heads, g, g)``
    with ``N = g*g`` (``(B, heads, rows, cols)`` for a rectangular ``grid``),
    patches row by row as ``vit.patchify`` cuts them.
    """
    attention = _check_attention(attention, grid=grid)
    B, heads, T, _ = attention.shape
    rows, cols = grid_shape(T, grid)
    return readout_row(attention, pool).reshape(B, heads, rows, cols)  # (B, heads, g, g)


# ---------------------------------------------------------------------------
# Attention rollout (Abnar & Zuidema 2020; Fig. 6, Appendix D.8)
# ---------------------------------------------------------------------------

FUSIONS = ("mean", "max", "min")


def fuse_heads(attention, fusion="mean", grid=None):
    """One ``(B, T, T)`` matrix per image from a layer's ``(B, heads, T, T)`` heads.

    ``"mean"`` averages the heads (the rollout paper's choice); ``"max"``
    keeps, for each pair of tokens, the strongest head's weight; ``"min"``
    the weakest's: a link survives only if every head makes it.
    """
    attention = _check_attention(attention, grid=grid)
    if fusion == "mean":
        return attention.mean(axis=1)  # (B, T, T)
    if fusion == "max":
        return attention.max(axis=1)
    if fusion == "min":
        return attention.min(axis=1)
    raise ValueError(f"head fusion must be one of {FUSIONS}, not {fusion!r}")


def discard_lowest(fused, ratio):
    """Zero the lowest ``ratio`` of each ``(T, T)`` matrix's entries, per image.

    The class token's column (what every token takes from the class token,
    the CLS->CLS entry included) is never discarded and does not count:
    ``floor(ratio * T*(T-1))`` of the other entries are zeroed, the smallest
    first. The class token gathers the image for the classifier, and its
    column carries what it has gathered to the other tokens; cutting it
    would break the very path the rollout is meant to follow. The input is
    not changed.
    """
    fused = array_of(fused)
    shape = tuple(getattr(fused, "shape", ()))
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(
            f"discard_lowest expects fused attention (B, T, T), got {_describe(fused)}"
        )
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), not {ratio}")
    xp = backend.xp_of(fused)
    B, T, _ = fused.shape
    out = fused.copy()
    rest = out[:, :, 1:].reshape(B, T * (T - 1))  # (B, T*(T-1)): all but the CLS column
    k = math.floor(ratio * rest.shape[1] + 1e-9)
    if k:
        lowest = xp.argsort(rest, axis=1)[:, :k]  # (B, k): where the k smallest are
        rest[xp.arange(B)[:, None], lowest] = 0
        out[:, :, 1:] = rest.reshape(B, T, T - 1)
    return out


def rollout(attentions, fusion="mean", discard_ratio=0.0, grid=None):
    """The rolled-out attention ``R = Â_L ... Â_1``, ``(B, T, T)``.

    Every block adds its attention's output to a residual copy of its input
    (Eq. 2), so a token's next state is half "what it took from the others"
    and half "itself". Rollout models that for each layer ``l`` as

        Â_l = (A_l + I) / rowsum(A_l + I)

    where ``A_l`` is the layer's heads fused into one matrix (``fusion``;
    ``discard_ratio`` first zeroes its weakest links, see
    ``discard_lowest``), and chains the layers by matrix products. Entry
    ``R[i, j]`` is then how much of input token ``j`` ends up in token ``i``
    at the top. ``attentions`` is the list ``model.attention_maps()``.
    """
    layers = check_layers(attentions, grid)
    if fusion not in FUSIONS:
        raise ValueError(f"head fusion must be one of {FUSIONS}, not {fusion!r}")
    xp = backend.xp_of(layers[0])
    T = layers[0].shape[2]
    result = None
    for attention in layers:
        fused = fuse_heads(attention, fusion, grid)  # (B, T, T)
        if discard_ratio:
            fused = discard_lowest(fused, discard_ratio)
        hat = fused + xp.eye(T, dtype=fused.dtype)  # A + I: the residual path
        hat /= hat.sum(axis=-1, keepdims=True)  # rows sum to 1 again
        result = hat if result is None else hat @ result  # (B, T, T): Â_l ... Â_1
    return result


def attention_rollout(attentions, fusion="mean", discard_ratio=0.0, pool="cls", grid=None):
    """The rollout map of each image: the classifier's row of ``R`` over the patches.

    Returns ``(B, g, g)`` (``(B, rows, cols)`` for a rectangular ``grid``):
    how much of each input patch has flowed, by the last layer, into what the
    classifier reads (Eq. 4): the class token (``pool="cls"``, row 0 of
    ``R``), or the average of the patch tokens (``pool="mean"``, their rows
    averaged; ``readout_row``). The values are as they come (they sum to 1
    minus what went to the class token); scale them for display.
    """
    result = rollout(attentions, fusion, discard_ratio, grid)  # (B, T, T)
    B, T, _ = result.shape
    rows, cols = grid_shape(T, grid)
    return readout_row(result, pool).reshape(B, rows, cols)  # (B, g, g)


# ---------------------------------------------------------------------------
# Mean attention distance (Fig. 7, right)
# ---------------------------------------------------------------------------


def patch_distances(grid, patch_size, xp=np, dtype=np.float32):
    """``(N, N)`` distances in pixels between the centers of the patches of a ``grid x grid``
    (``grid``: a side, or ``(rows, cols)``)."""
    n_rows, n_cols = (grid, grid) if isinstance(grid, int) else grid
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    centers = np.stack([rows, cols], axis=1) * float(patch_size)  # (N, 2), pixels
    d = np.sqrt(((centers[:, None, :] - centers[None, :, :]) ** 2).sum(axis=-1))  # (N, N)
    return xp.asarray(d, dtype=dtype)


def uniform_attention_distance(grid, patch_size) -> float:
    """The mean attention distance of a head that spreads its attention evenly over all patches."""
    return float(patch_distances(grid, patch_size, dtype=np.float64).mean())


def mean_attention_distance(attentions, patch_size, grid=None):
    """How far each head looks, in pixels: ``(L, heads)``, averaged over images and queries.

    For layer ``l``, head ``h``: the mean over images and over query patches
    ``i`` of ``sum_j A_ij * ||pos_i - pos_j||``, where ``pos`` is a patch's
    position in pixels (the paper's "attention distance", the analogue of a
    CNN's receptive field). Patch tokens only: the class token's row and
    column are dropped, and each remaining row is renormalized to sum to 1.
    So the number answers "of what this query takes from the patches, how
    far away is it on average?", and a head that parks most of its attention
    on the class token is not mistaken for a local one. Uniform attention
    gives ``uniform_attention_distance`` (16.5 px on a 32 x 32 image with
    4-pixel patches).
    """
    layers = check_layers(attentions, grid)
    xp = backend.xp_of(layers[0])
    g = grid_shape(layers[0].shape[2], grid)
    dtype = layers[0].dtype
    d = patch_distances(g, patch_size, xp, dtype)  # (N, N)
    tiny = np.finfo(dtype).tiny
    out = []
    for attention in layers:
        patches = attention[:, :, 1:, 1:]  # (B, heads, N, N): patch queries and keys
        mass = patches.sum(axis=-1)  # (B, heads, N): the part that goes to patches
        per_query = (patches * d).sum(axis=-1) / xp.maximum(mass, tiny)  # (B, heads, N)
        out.append(per_query.mean(axis=(0, 2)))  # (heads,)
    return xp.stack(out)  # (L, heads)


# ---------------------------------------------------------------------------
# What the embeddings learned (Fig. 7, left and center)
# ---------------------------------------------------------------------------


def embedding_filter_components(weight, count=28):
    """Principal components of the patch-embedding filters, as ``(count, P, P, C)`` images.

    ``weight`` is the patch projection ``E`` in its convolution shape
    ``(D, C, P, P)`` (``model.patch_embed.proj.weight``): ``D`` filters of
    ``P*P*C`` numbers. The filters are centered (their mean filter
    subtracted) and their principal directions found with an SVD; each
    component is turned into a ``P x P`` image with channels last and
    rescaled to [0, 1] on its own (its sign is arbitrary: it is chosen so
    that the largest entry is positive). Returns the images and each
    component's share of the filters' variance. At most ``min(D - 1, P*P*C)``
    components exist.
    """
    weight = array_of(weight)
    if getattr(weight, "ndim", 0) != 4:
        raise ValueError(
            f"weight must be the patch projection in convolution shape (D, C, P, P) "
            f"(model.patch_embed.proj.weight); got {_describe(weight)}"
        )
    xp = backend.xp_of(weight)
    D, C, P, _ = weight.shape
    flat = weight.reshape(D, C * P * P)  # (D, C*P*P): one filter per row
    centered = flat - flat.mean(axis=0, keepdims=True)
    _, s, vt = xp.linalg.svd(centered, full_matrices=False)  # vt: (k, C*P*P)
    count = min(count, D - 1, C * P * P)
    comps = vt[:count]  # (count, C*P*P)
    biggest = xp.abs(comps).argmax(axis=1)  # (count,)
    signs = xp.sign(comps[xp.arange(count), biggest])
    comps = comps * signs[:, None]
    images = comps.reshape(count, C, P, P).transpose(0, 2, 3, 1)  # (count, P, P, C)
    low = images.min(axis=(1, 2, 3), keepdims=True)
    high = images.max(axis=(1, 2, 3), keepdims=True)
    images = (images - low) / xp.maximum(high - low, np.finfo(images.dtype).tiny)
    variance = s**2
    return images, (variance / variance.sum())[:count]


def position_similarity(pos_embed, num_prefix_tokens=1, grid=None):
    """Cosine similarity of every patch's position embedding with every other: ``(g, g, g, g)``.

    ``pos_embed`` is ``E_pos`` of Eq. 1, ``(1, N+1, D)`` or ``(N+1, D)``; the
    first ``num_prefix_tokens`` rows (the class token's) are dropped.
    ``out[r, c]`` is the ``g x g`` map of how similar position ``(r, c)`` is
    to each position of the grid (``(rows, cols, rows, cols)`` for a
    rectangular ``grid``).
    """
    pos_embed = array_of(pos_embed)
    ndim = getattr(pos_embed, "ndim", 0)
    if ndim == 3 and pos_embed.shape[0] == 1:
        pos_embed = pos_embed[0]
    elif ndim != 2:
        raise ValueError(
            f"pos_embed must have shape (1, N+1, D) or (N+1, D) (model.pos_embed); "
            f"got {_describe(pos_embed)}"
        )
    xp = backend.xp_of(pos_embed)
    patches = pos_embed[num_prefix_tokens:]  # (N, D)
    rows, cols = grid_shape(patches.shape[0] + 1, grid)
    norms = xp.sqrt((patches * patches).sum(axis=1, keepdims=True))  # (N, 1)
    unit = patches / xp.maximum(norms, np.finfo(patches.dtype).tiny)
    return (unit @ unit.T).reshape(rows, cols, rows, cols)  # (g, g, g, g)
