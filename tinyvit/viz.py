"""Figures, and the tools that look inside a trained ViT.

Section 4.5 of the paper, "Inspecting the Vision Transformer", looks at
three things; this module computes and draws each of them:

* **Attention maps** (Fig. 6, Appendix D.8). Each head of each layer has an
  attention matrix ``A`` of shape ``(N+1, N+1)``: row ``i`` is the softmax
  that says how much token ``i`` takes from every token (Eq. 6). The class
  token's row over the ``N`` patches, laid out on the patch grid, shows
  where that head looks: ``cls_attention``. *Attention rollout* (Abnar &
  Zuidema 2020) follows the attention through all the layers at once:
  ``rollout``, ``attention_rollout``.
* **Mean attention distance** (Fig. 7, right; Appendix D.7): how far, in
  pixels, each head looks on average: ``mean_attention_distance``.
* **What the embeddings learned** (Fig. 7, left and centre): principal
  components of the patch-embedding filters ``E``
  (``embedding_filter_components``) and the cosine similarity of the
  position embeddings (``position_similarity``).

The computations take NumPy or CuPy arrays (or tensors) and run on the
module of the array they are given (``backend.xp_of``); arrays become
NumPy only to be drawn. Everything draws with matplotlib's file-only
``Agg`` backend (no screen needed) and writes PNG files atomically: a
half-written figure never replaces a good one.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from . import backend, files  # noqa: E402
from .resample import interpolate  # noqa: E402
from .tensor import Tensor, no_grad  # noqa: E402


def save_figure(fig, path, dpi=130) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically (``tinyvit.files``); close it."""
    try:
        return files.atomic_write(
            path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
        )
    finally:
        plt.close(fig)


def draw_training_curves(fig, history, label_smoothing=0.0):
    """Loss and accuracy per epoch, train and test, into ``fig``; returns the two axes.

    The training numbers are means over the epoch's augmented batches as the
    model changed, with the training loss (label-smoothed, when
    ``label_smoothing`` > 0); the test numbers are plain cross-entropy and
    accuracy at the end of each epoch. Label smoothing puts a floor under the
    training loss well above 0, so a test loss below the training loss does
    not mean the test set is easier: the two are different quantities, and
    the figure says so.
    """
    if not history:
        raise ValueError("no epochs to draw: the history is empty")
    epochs = [r["epoch"] for r in history]
    loss_ax, acc_ax = fig.subplots(1, 2)
    smoothed = f" (label smoothing {label_smoothing:g})" if label_smoothing else ""
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", ms=3,
                 label=f"train: training loss{smoothed}")  # fmt: skip
    loss_ax.plot(epochs, [r["test_loss"] for r in history], "o-", ms=3,
                 label="test: plain cross-entropy")  # fmt: skip
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    best = max(history, key=lambda r: r["test_acc"])
    best_label = f"test (best {100 * best['test_acc']:.1f}%, epoch {best['epoch']})"
    acc_ax.plot(epochs, [100 * r["train_acc"] for r in history], "o-", ms=3,
                label="train (augmented batches)")  # fmt: skip
    acc_ax.plot(epochs, [100 * r["test_acc"] for r in history], "o-", ms=3,
                label=best_label)  # fmt: skip
    acc_ax.plot([best["epoch"]], [100 * best["test_acc"]], "o", ms=7, mfc="none", color="C1")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title("accuracy")
    first, last = min(epochs), max(epochs)
    every = max(1, math.ceil((last - first + 1) / 10))  # at most about ten ticks
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.set_xticks(range(first, last + 1, every))  # whole epochs only
        ax.set_xlim(first - 0.5, last + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    if label_smoothing:
        fig.supxlabel(
            "The training loss is label-smoothed (it cannot reach 0) and averaged over "
            "augmented batches while the model learns; the test loss is plain cross-entropy\n"
            "at the end of each epoch. They measure different things: compare the curves' "
            "shapes, not their levels.",
            fontsize=8, color="0.3",
        )  # fmt: skip
    return loss_ax, acc_ax


def plot_training_curves(history, path, title="Training on CIFAR-10", label_smoothing=0.0):
    """``draw_training_curves`` from the trainer's history records, saved to ``path``."""
    fig = plt.figure(figsize=(10, 4.2), layout="constrained")
    draw_training_curves(fig, history, label_smoothing)
    fig.suptitle(title)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------
# Checking what we are given
# ---------------------------------------------------------------------------


def _array(x):
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
            f"(N + 1 with N = g*g): {tokens - 1} is not a square"
        )
    return side


def _check_attention(attention, what="attention"):
    """One layer's attention probabilities, ``(B, heads, T, T)`` with ``T = g*g + 1``."""
    attention = _array(attention)
    shape = tuple(getattr(attention, "shape", ()))
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(
            f"{what} must have shape (B, heads, T, T), the probabilities of one layer "
            f"(model.attention_maps()[l]); got {_describe(attention)}"
        )
    grid_side(shape[2])
    return attention


def _check_layers(attentions):
    """A list of per-layer attention arrays, first layer first, with one B and one T."""
    if not isinstance(attentions, (list, tuple)):
        hint = " (wrap one layer's array in a list)" if hasattr(attentions, "shape") else ""
        raise TypeError(
            "expected a list of per-layer attention arrays (B, heads, T, T), first layer "
            f"first, as model.attention_maps() returns; got {_describe(attentions)}{hint}"
        )
    if not attentions:
        raise ValueError("expected at least one layer's attention, got an empty list")
    layers = [_check_attention(a, f"attention of layer {i}") for i, a in enumerate(attentions)]
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
    """Run ``model`` on a batch of normalised images; return ``(logits, attentions)``.

    ``attentions`` is the list of every block's ``(B, heads, N+1, N+1)``
    attention probabilities, first block first (``ViT.keep_attention`` and
    ``ViT.attention_maps``). No graph is built; the model's own
    keep-attention setting is left as it was.
    """
    kept = [block.attn.keep_attention for block in model.blocks]
    model.keep_attention(True)
    try:
        with no_grad():
            logits = model(images).data  # (B, classes)
        attentions = model.attention_maps()  # L x (B, heads, N+1, N+1)
    finally:
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


def cls_attention(attention, pool="cls"):
    """Per-head attention of the token the classifier reads, over the patches, on the grid.

    ``attention`` is one layer's ``(B, heads, N+1, N+1)`` probabilities.
    With ``pool="cls"`` (the paper's ViT) it is the class token's row: how
    much the class token takes from each patch; with ``pool="mean"`` the
    patch tokens' average row (``readout_row``). Returns ``(B, heads, g, g)``
    with ``N = g*g``, patches row by row as ``vit.patchify`` cuts them.
    """
    attention = _check_attention(attention)
    B, heads, T, _ = attention.shape
    g = grid_side(T)
    return readout_row(attention, pool).reshape(B, heads, g, g)  # (B, heads, g, g)


# ---------------------------------------------------------------------------
# Attention rollout (Abnar & Zuidema 2020; Fig. 6, Appendix D.8)
# ---------------------------------------------------------------------------

FUSIONS = ("mean", "max", "min")


def fuse_heads(attention, fusion="mean"):
    """One ``(B, T, T)`` matrix per image from a layer's ``(B, heads, T, T)`` heads.

    ``"mean"`` averages the heads (the rollout paper's choice); ``"max"``
    keeps, for each pair of tokens, the strongest head's weight; ``"min"``
    the weakest's: a link survives only if every head makes it.
    """
    attention = _check_attention(attention)
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
    fused = _array(fused)
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


def rollout(attentions, fusion="mean", discard_ratio=0.0):
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
    layers = _check_layers(attentions)
    if fusion not in FUSIONS:
        raise ValueError(f"head fusion must be one of {FUSIONS}, not {fusion!r}")
    xp = backend.xp_of(layers[0])
    T = layers[0].shape[2]
    result = None
    for attention in layers:
        fused = fuse_heads(attention, fusion)  # (B, T, T)
        if discard_ratio:
            fused = discard_lowest(fused, discard_ratio)
        hat = fused + xp.eye(T, dtype=fused.dtype)  # A + I: the residual path
        hat /= hat.sum(axis=-1, keepdims=True)  # rows sum to 1 again
        result = hat if result is None else hat @ result  # (B, T, T): Â_l ... Â_1
    return result


def attention_rollout(attentions, fusion="mean", discard_ratio=0.0, pool="cls"):
    """The rollout map of each image: the classifier's row of ``R`` over the patches.

    Returns ``(B, g, g)``: how much of each input patch has flowed, by the
    last layer, into what the classifier reads (Eq. 4): the class token
    (``pool="cls"``, row 0 of ``R``), or the average of the patch tokens
    (``pool="mean"``, their rows averaged; ``readout_row``). The values are
    as they come (they sum to 1 minus what went to the class token); scale
    them for display.
    """
    result = rollout(attentions, fusion, discard_ratio)  # (B, T, T)
    B, T, _ = result.shape
    g = grid_side(T)
    return readout_row(result, pool).reshape(B, g, g)  # (B, g, g)


# ---------------------------------------------------------------------------
# Mean attention distance (Fig. 7, right)
# ---------------------------------------------------------------------------


def patch_distances(grid, patch_size, xp=np, dtype=np.float32):
    """``(N, N)`` distances in pixels between the centres of the patches of a ``grid x grid``."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    centres = np.stack([rows, cols], axis=1) * float(patch_size)  # (N, 2), pixels
    d = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1))  # (N, N)
    return xp.asarray(d, dtype=dtype)


def uniform_attention_distance(grid, patch_size) -> float:
    """The mean attention distance of a head that spreads its attention evenly over all patches."""
    return float(patch_distances(grid, patch_size, dtype=np.float64).mean())


def mean_attention_distance(attentions, patch_size):
    """How far each head looks, in pixels: ``(L, heads)``, averaged over images and queries.

    For layer ``l``, head ``h``: the mean over images and over query patches
    ``i`` of ``sum_j A_ij * ||pos_i - pos_j||``, where ``pos`` is a patch's
    position in pixels (the paper's "attention distance", the analogue of a
    CNN's receptive field). Patch tokens only: the class token's row and
    column are dropped, and each remaining row is renormalised to sum to 1.
    So the number answers "of what this query takes from the patches, how
    far away is it on average?", and a head that parks most of its attention
    on the class token is not mistaken for a local one. Uniform attention
    gives ``uniform_attention_distance`` (16.5 px on a 32 x 32 image with
    4-pixel patches).
    """
    layers = _check_layers(attentions)
    xp = backend.xp_of(layers[0])
    g = grid_side(layers[0].shape[2])
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
# What the embeddings learned (Fig. 7, left and centre)
# ---------------------------------------------------------------------------


def embedding_filter_components(weight, count=28):
    """Principal components of the patch-embedding filters, as ``(count, P, P, C)`` images.

    ``weight`` is the patch projection ``E`` in its convolution shape
    ``(D, C, P, P)`` (``model.patch_embed.proj.weight``): ``D`` filters of
    ``P*P*C`` numbers. The filters are centred (their mean filter
    subtracted) and their principal directions found with an SVD; each
    component is turned into a ``P x P`` image with channels last and
    rescaled to [0, 1] on its own (its sign is arbitrary: it is chosen so
    that the largest entry is positive). Returns the images and each
    component's share of the filters' variance. At most ``min(D - 1, P*P*C)``
    components exist.
    """
    weight = _array(weight)
    if getattr(weight, "ndim", 0) != 4:
        raise ValueError(
            f"weight must be the patch projection in convolution shape (D, C, P, P) "
            f"(model.patch_embed.proj.weight); got {_describe(weight)}"
        )
    xp = backend.xp_of(weight)
    D, C, P, _ = weight.shape
    flat = weight.reshape(D, C * P * P)  # (D, C*P*P): one filter per row
    centred = flat - flat.mean(axis=0, keepdims=True)
    _, s, vt = xp.linalg.svd(centred, full_matrices=False)  # vt: (k, C*P*P)
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


def position_similarity(pos_embed, num_prefix_tokens=1):
    """Cosine similarity of every patch's position embedding with every other: ``(g, g, g, g)``.

    ``pos_embed`` is ``E_pos`` of Eq. 1, ``(1, N+1, D)`` or ``(N+1, D)``; the
    first ``num_prefix_tokens`` rows (the class token's) are dropped.
    ``out[r, c]`` is the ``g x g`` map of how similar position ``(r, c)`` is
    to each position of the grid.
    """
    pos_embed = _array(pos_embed)
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
    g = grid_side(patches.shape[0] + 1)
    norms = xp.sqrt((patches * patches).sum(axis=1, keepdims=True))  # (N, 1)
    unit = patches / xp.maximum(norms, np.finfo(patches.dtype).tiny)
    return (unit @ unit.T).reshape(g, g, g, g)  # (g, g, g, g)


# ---------------------------------------------------------------------------
# Drawing attention over images
# ---------------------------------------------------------------------------


def _rgb(image):
    """A ``(C, H, W)`` image (uint8, or float in [0, 1]) as ``(H, W, C)`` floats in [0, 1]."""
    image = backend.to_numpy(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (C, H, W) with 1 or 3 channels, got {image.shape}")
    image = image.transpose(1, 2, 0).astype(np.float32)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image / 255.0 if image.max() > 1.0 else image


def _stretch(m):
    """A map rescaled to [0, 1] (a constant map becomes zeros)."""
    m = np.asarray(m, dtype=np.float64)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


ATTENTION_CMAP = "inferno"
READERS = {"cls": "the class token", "mean": "the patch tokens' average"}
FULL_CONTRAST_PEAK = 2.0  # a map whose peak is twice its mean gets the colour map's full range
FLAT_PEAK = 1.25  # below this peak-over-mean a map is called flat in its corner


def peak_over_mean(m) -> float:
    """A map's largest value over its mean: 1.0 for a flat map, ``g * g`` for one patch."""
    m = np.asarray(m, dtype=np.float64)
    return float(m.max() / max(m.mean(), np.finfo(np.float64).tiny))


def attention_heat(m):
    """A map's colours in [0, 1]: its own range stretched to the full colour map when its
    peak is at least ``FULL_CONTRAST_PEAK`` times its mean, and proportionally less
    around the middle colour when it is flatter (a flat map is one even colour), so
    that a nearly uniform map does not show its noise as structure."""
    contrast = min(1.0, (peak_over_mean(m) - 1.0) / (FULL_CONTRAST_PEAK - 1.0))
    return 0.5 + contrast * (_stretch(m) - 0.5)


def plot_attention_overlays(
    images,
    columns,
    path,
    row_labels=None,
    row_colours=None,
    title=None,
    note=None,
    smooth=False,
) -> Path:
    """A grid of images with attention maps laid over them.

    ``images`` are ``(B, C, H, W)`` (uint8, as CIFAR-10 stores them);
    ``columns`` maps a column title to ``(B, g, g)`` maps (anything that
    ``cls_attention`` or ``attention_rollout`` returns). Row ``b`` shows image
    ``b`` as it is, then each column's map ``b`` over a grey copy of it. Each
    map is rescaled to its own range (dark: least attention, bright: most),
    so the colours compare places within a map, not maps with each other;
    a map whose peak is less than twice its mean gets proportionally less
    contrast (``attention_heat``), so that a nearly flat map is not drawn as
    strong structure. Each patch is drawn as one block of colour, the one
    number the model has for it; ``smooth=True`` blends neighbouring patches
    instead. The number in a map's corner is its peak over its mean: 1.0x is
    a flat map (and says so below 1.25x), 16x on a 4 x 4 grid puts everything
    on one patch.
    """
    images = backend.to_numpy(_array(images))
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {_describe(images)}")
    B, _, H, W = images.shape
    maps = {name: backend.to_numpy(_array(m)) for name, m in columns.items()}
    for name, m in maps.items():
        if m.ndim != 3 or m.shape[0] != B or m.shape[1] != m.shape[2]:
            raise ValueError(
                f"column {name!r}: expected ({B}, g, g) maps for {B} images, got {m.shape}"
            )
    ncols = 1 + len(maps)
    fig, axes = plt.subplots(
        B,
        ncols,
        figsize=(1.4 * ncols + 1.8, 1.4 * B + 0.8),
        squeeze=False,
        layout="compressed",
    )
    for b in range(B):
        rgb = _rgb(images[b])
        grey = rgb.mean(axis=2)
        axes[b, 0].imshow(rgb, interpolation="nearest")
        for c, m in enumerate(maps.values(), start=1):
            mode = "bilinear" if smooth or H % m.shape[-1] else "nearest"  # nearest: patch blocks
            heat = interpolate(attention_heat(m[b]), (H, W), mode)  # (H, W) in [0, 1]
            axes[b, c].imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[b, c].imshow(
                heat, cmap=ATTENTION_CMAP, vmin=0, vmax=1, alpha=0.65, interpolation="nearest"
            )
            peak = peak_over_mean(m[b])
            axes[b, c].text(
                0.97,
                0.03,
                f"{peak:.1f}x" + (" flat" if peak < FLAT_PEAK else ""),
                transform=axes[b, c].transAxes,
                ha="right",
                va="bottom",
                fontsize=7,
                color="white",
                bbox=dict(boxstyle="round,pad=0.15", fc="black", alpha=0.55, lw=0),
            )
        if row_labels is not None:
            colour = row_colours[b] if row_colours is not None else "black"
            axes[b, 0].set_ylabel(
                row_labels[b],
                fontsize=8.5,
                color=colour,
                rotation=0,
                ha="right",
                va="center",
                labelpad=4,
            )
    for c, name in enumerate(["image", *maps]):
        axes[0, c].set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    mappable = plt.cm.ScalarMappable(cmap=ATTENTION_CMAP, norm=plt.Normalize(0, 1))
    bar = fig.colorbar(mappable, ax=axes, shrink=min(1.0, 3.5 / B), ticks=[0, 1], aspect=25)
    bar.ax.set_yticklabels(["least", "most"])
    bar.set_label(
        "attention (each map to its own range; flatter than 2x, less contrast)", fontsize=8
    )
    if title:
        fig.suptitle(title, fontsize=11)
    note = (note + "\n" if note else "") + (
        "corner numbers: a map's largest value over its mean (1.0x: attention spread evenly)"
    )
    fig.supxlabel(note, fontsize=8, color="0.3")
    return save_figure(fig, path)


def plot_attention_grid(
    images,
    attentions,
    labels,
    predictions,
    classes,
    path,
    layer=-1,
    fusion="mean",
    discard_ratio=0.0,
    title=None,
    pool="cls",
) -> Path:
    """Per image: the image, its attention rollout, and the classifier's map for each head.

    ``attentions`` is ``model.attention_maps()`` for these ``images``;
    ``layer`` picks the layer whose heads are shown (default: the last);
    ``pool`` is the model's (``model.pool``): the maps follow the class
    token, or the average of the patch tokens. Rows are labelled with the
    true and the predicted class, green when they agree and red when they
    do not.
    """
    layers = _check_layers(attentions)
    depth = len(layers)
    index = layer % depth if -depth <= layer < depth else None
    if index is None:
        raise ValueError(f"layer {layer} does not exist: the model has {depth} layers")
    heads = cls_attention(layers[index], pool)  # (B, heads, g, g)
    columns = {"rollout\n(all layers)": attention_rollout(layers, fusion, discard_ratio, pool)}
    for h in range(heads.shape[1]):
        columns[f"layer {index + 1}\nhead {h + 1}"] = heads[:, h]
    labels, predictions = backend.to_numpy(labels), backend.to_numpy(predictions)
    row_labels = [f"true: {classes[t]}\npred: {classes[p]}" for t, p in zip(labels, predictions)]
    colours = ["tab:green" if t == p else "tab:red" for t, p in zip(labels, predictions)]
    note = (
        f"rollout: heads fused by {fusion}"
        + (f", lowest {discard_ratio:.0%} of links discarded" if discard_ratio else "")
        + f"; head columns: {READERS[pool]}'s attention over the patches in layer {index + 1}"
    )
    return plot_attention_overlays(images, columns, path, row_labels, colours, title, note)


# ---------------------------------------------------------------------------
# Drawing Figure 7
# ---------------------------------------------------------------------------


def _mosaic(tiles, columns, gap=1, fill=np.nan):
    """Lay ``(n, h, w[, c])`` tiles out row by row, ``columns`` to a row, with gaps."""
    tiles = np.asarray(tiles)
    n, h, w = tiles.shape[:3]
    rows = -(-n // columns)
    shape = (rows * (h + gap) - gap, columns * (w + gap) - gap, *tiles.shape[3:])
    out = np.full(shape, fill, dtype=np.float64)
    for k in range(n):
        r, c = divmod(k, columns)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[k]
    return out


def _weight_of(model_or_weight):
    if hasattr(model_or_weight, "patch_embed"):
        return model_or_weight.patch_embed.proj.weight
    return model_or_weight


def draw_embedding_filters(fig, weight, count=28, columns=7):
    """Fig. 7 left, into ``fig`` (a Figure or SubFigure)."""
    images, share = embedding_filter_components(_weight_of(weight), count)
    images, share = backend.to_numpy(images), backend.to_numpy(share)
    count, P = images.shape[0], images.shape[1]
    ax = fig.add_subplot()
    ax.imshow(_mosaic(images, min(columns, count), fill=1.0), interpolation="nearest")
    for k in range(count):
        r, c = divmod(k, min(columns, count))
        ax.text(
            c * (P + 1) + P / 2 - 0.5,
            r * (P + 1) - 0.6,
            str(k + 1),
            ha="center",
            va="bottom",
            fontsize=6,
            color="0.35",
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_frame_on(False)
    ax.set_title(
        f"RGB embedding filters:\nfirst {count} principal components\n"
        f"({P}x{P} pixels each; together {100 * share.sum():.0f}% of the variance)",
        fontsize=9,
        pad=10,
    )
    return ax


def draw_position_similarity(fig, pos_embed, num_prefix_tokens=1):
    """Fig. 7 centre, into ``fig``: one tile per patch position, with a colour bar."""
    if hasattr(pos_embed, "pos_embed"):
        pos_embed = pos_embed.pos_embed
    sim = backend.to_numpy(position_similarity(pos_embed, num_prefix_tokens))  # (g, g, g, g)
    g = sim.shape[0]
    ax = fig.add_subplot()
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # white gaps between tiles
    im = ax.imshow(
        _mosaic(sim.reshape(g * g, g, g), g),
        cmap=cmap,
        vmin=-1,
        vmax=1,
        interpolation="nearest",
    )
    centres = np.arange(g) * (g + 1) + (g - 1) / 2
    step = 1 if g <= 10 else max(1, g // 7)
    ticks = list(range(0, g, step))
    ax.set_xticks(centres[ticks], [str(t + 1) for t in ticks], fontsize=8)
    ax.set_yticks(centres[ticks], [str(t + 1) for t in ticks], fontsize=8)
    ax.tick_params(length=0)
    ax.set_frame_on(False)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(
        "Position embedding similarity\n(tile = one patch's similarity with all)", fontsize=9
    )
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("cosine similarity", fontsize=8)
    return ax


def draw_attention_distance(fig, distances, patch_size, grid):
    """Fig. 7 right, into ``fig``: one dot per head, layer by layer, with the uniform reference."""
    distances = backend.to_numpy(_array(distances))
    if distances.ndim != 2:
        raise ValueError(
            f"distances must be (layers, heads) (mean_attention_distance), got {distances.shape}"
        )
    L, heads = distances.shape
    ax = fig.add_subplot()
    layers = np.arange(1, L + 1)
    spread = min(0.5, 0.08 * (heads - 1))  # the heads of a layer side by side
    for h in range(heads):
        ax.scatter(
            layers + spread * (h / max(heads - 1, 1) - 0.5),
            distances[:, h],
            s=22,
            color=plt.cm.tab10(h % 10),
            label=f"head {h + 1}",
            zorder=3,
        )
    uniform = uniform_attention_distance(grid, patch_size)
    ax.axhline(uniform, color="0.4", ls="--", lw=1, label=f"uniform attention ({uniform:.1f} px)")
    ax.set_xlim(0.5, L + 0.5)
    ax.set_ylim(0, max(uniform, float(distances.max())) * 1.2)
    ax.set_xticks(layers)
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_title(f"How far each head looks\n({grid}x{grid} patches of {patch_size} px)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="lower right", ncol=1 + heads // 7)
    return ax


def plot_embedding_filters(weight, path, count=28, columns=7) -> Path:
    """Fig. 7 left as its own figure (``weight``: the model, or its ``(D, C, P, P)`` filters)."""
    size = (0.75 * min(columns, count) + 0.6, 0.75 * -(-count // columns) + 1.2)
    fig = plt.figure(figsize=size, layout="constrained")
    draw_embedding_filters(fig, weight, count, columns)
    return save_figure(fig, path)


def plot_position_similarity(pos_embed, path, num_prefix_tokens=1) -> Path:
    """Fig. 7 centre as its own figure (``pos_embed``: the model, or its ``E_pos``)."""
    fig = plt.figure(figsize=(5.6, 4.8), layout="constrained")
    draw_position_similarity(fig, pos_embed, num_prefix_tokens)
    return save_figure(fig, path)


def plot_attention_distance(distances, path, patch_size, grid) -> Path:
    """Fig. 7 right as its own figure, from ``mean_attention_distance``'s ``(L, heads)``."""
    fig = plt.figure(figsize=(5.2, 4.2), layout="constrained")
    draw_attention_distance(fig, distances, patch_size, grid)
    return save_figure(fig, path)


def plot_figure7(model, distances, path, title=None) -> Path:
    """The paper's Figure 7, three panels side by side, for a tinyvit ``ViT``."""
    fig = plt.figure(figsize=(16, 5.2), layout="constrained")
    left, centre, right = fig.subfigures(1, 3, width_ratios=[1.0, 1.15, 1.1])
    draw_embedding_filters(left, model)
    draw_position_similarity(centre, model)
    draw_attention_distance(right, distances, model.patch_embed.patch_size, model.patch_embed.grid)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)
