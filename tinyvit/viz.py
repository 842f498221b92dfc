"""Figures: training and fine-tuning curves, attention over images, and the paper's Figure 7.

What the figures show is computed in ``tinyvit.inspection`` (Section 4.5 of
the paper: attention maps and rollout, Fig. 6 and Appendix D.8; mean
attention distance and what the embeddings learned, Fig. 7); this module
draws it. Those functions stay importable from here too
(``viz.attention_rollout``, ``viz.mean_attention_distance``, ...), so that a
lesson needs one import to look inside a model and show what it finds.

Arrays become NumPy only to be drawn. Everything draws with matplotlib's
file-only ``Agg`` backend (no screen needed) and writes PNG files
atomically: a half-written figure never replaces a good one.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from . import backend, files  # noqa: E402
from .inspection import (  # noqa: E402
    FUSIONS,
    array_of,
    attend,
    attention_rollout,
    check_layers,
    cls_attention,
    discard_lowest,
    embedding_filter_components,
    fuse_heads,
    grid_shape,
    grid_side,
    mean_attention_distance,
    patch_distances,
    position_similarity,
    readout_row,
    rollout,
    uniform_attention_distance,
)
from .resample import interpolate  # noqa: E402

__all__ = [
    # looking inside (tinyvit.inspection)
    "FUSIONS",
    "attend",
    "attention_rollout",
    "cls_attention",
    "discard_lowest",
    "embedding_filter_components",
    "fuse_heads",
    "grid_shape",
    "grid_side",
    "mean_attention_distance",
    "patch_distances",
    "position_similarity",
    "readout_row",
    "rollout",
    "uniform_attention_distance",
    # drawing
    "ATTENTION_CMAP",
    "FLAT_PEAK",
    "FULL_CONTRAST_PEAK",
    "READERS",
    "REFERENCE_STYLES",
    "SELF_COLOR",
    "attention_heat",
    "draw_attention_distance",
    "draw_embedding_filters",
    "draw_finetune_curves",
    "draw_position_similarity",
    "draw_training_curves",
    "peak_over_mean",
    "plot_attention_distance",
    "plot_attention_grid",
    "plot_attention_overlays",
    "plot_embedding_filters",
    "plot_figure7",
    "plot_finetune_curves",
    "plot_position_similarity",
    "plot_training_curves",
    "plt",
    "save_figure",
]


def save_figure(fig, path, dpi=130) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically (``tinyvit.files``); close it."""
    try:
        return files.atomic_write(
            path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
        )
    finally:
        plt.close(fig)


def _train_conditions(patch_dropout=0.0, augment="none"):
    """How the training batches differ from the test's: ``["PatchDropout 0.5",
    "flip augmentation"]``, or nothing for plain batches of whole images."""
    conditions = []
    if patch_dropout:
        conditions.append(f"PatchDropout {patch_dropout:g}")
    if augment not in (None, "none"):
        conditions.append(f"{augment} augmentation")
    return conditions


def _training_curves_note(label_smoothing, patch_dropout, augment):
    """The figure's footnote: why the training and test numbers are not on one scale."""
    notes = []
    if label_smoothing:
        notes.append(
            "The training loss is label-smoothed (it cannot reach 0) and averaged over the "
            "epoch's batches while the model learns; the test loss is plain cross-entropy at "
            "the end of each epoch."
        )
    conditions = _train_conditions(patch_dropout, augment)
    if patch_dropout:
        conditions[0] += f" ({patch_dropout:.0%} of the patch tokens dropped)"
    if conditions:
        notes.append(
            f"The training accuracy is counted with {' and '.join(conditions)}; the test "
            "accuracy on whole, plain test images: a test accuracy above the training accuracy "
            "is expected, not a bug."
        )
    if not notes:
        return None
    notes.append("Compare the curves' shapes, not their levels.")
    return "\n".join(textwrap.wrap(" ".join(notes), 170))


def draw_training_curves(fig, history, label_smoothing=0.0, patch_dropout=0.0, augment="none"):
    """Loss and accuracy per epoch, train and test, into ``fig``; returns the two axes.

    The training numbers are means over the epoch's batches as the model
    changed, with the training loss (label-smoothed, when
    ``label_smoothing`` > 0), on images altered by ``augment`` and with a
    share ``patch_dropout`` of the patch tokens dropped; the test numbers are
    plain cross-entropy and accuracy on whole test images at the end of each
    epoch that was tested (records without ``test_acc`` were not). Label
    smoothing puts a floor under the training loss well above 0, and
    PatchDropout and augmentation make the training images harder than the
    test's, so a test accuracy above the training accuracy does not
    mean the test set is easier: the two are different quantities, the
    training curve's label says how it was measured, and a footnote says
    why. A final test with flips (``test_acc_tta`` and ``test_loss_tta`` in
    the last record) is its own labeled point at the last epoch.
    """
    if not history:
        raise ValueError("no epochs to draw: the history is empty")
    epochs = [r["epoch"] for r in history]
    tested = [r for r in history if "test_acc" in r]  # the trainer tests the first epoch
    if not tested:
        raise ValueError("no tested epoch to draw: no record of the history has test_acc")
    loss_ax, acc_ax = fig.subplots(1, 2)
    smoothed = f" (label smoothing {label_smoothing:g})" if label_smoothing else ""
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", ms=3,
                 label=f"train: training loss{smoothed}")  # fmt: skip
    loss_ax.plot([r["epoch"] for r in tested], [r["test_loss"] for r in tested], "o-", ms=3,
                 label="test: plain cross-entropy")  # fmt: skip
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    best = max(tested, key=lambda r: r["test_acc"])
    best_label = f"test (best {100 * best['test_acc']:.1f}%, epoch {best['epoch']})"
    conditions = _train_conditions(patch_dropout, augment)
    train_label = "train" + (f" ({', '.join(conditions)})" if conditions else "")
    acc_ax.plot(epochs, [100 * r["train_acc"] for r in history], "o-", ms=3,
                label=train_label)  # fmt: skip
    acc_ax.plot([r["epoch"] for r in tested], [100 * r["test_acc"] for r in tested], "o-", ms=3,
                label=best_label)  # fmt: skip
    acc_ax.plot([best["epoch"]], [100 * best["test_acc"]], "o", ms=7, mfc="none", color="C1")
    last = history[-1]
    if "test_acc_tta" in last:  # the finished model, tested on each image and its mirror
        acc_ax.plot([last["epoch"]], [100 * last["test_acc_tta"]], "D", ms=6, color="C2",
                    label=f"final test with flips: {100 * last['test_acc_tta']:.1f}%")  # fmt: skip
    if "test_loss_tta" in last:
        loss_ax.plot([last["epoch"]], [last["test_loss_tta"]], "D", ms=6, color="C2",
                     label=f"final test with flips: {last['test_loss_tta']:.3f}")  # fmt: skip
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title("accuracy")
    first, final = min(epochs), max(epochs)
    every = max(1, math.ceil((final - first + 1) / 10))  # at most about ten ticks
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.set_xticks(range(first, final + 1, every))  # whole epochs only
        ax.set_xlim(first - 0.5, final + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    note = _training_curves_note(label_smoothing, patch_dropout, augment)
    if note:
        fig.supxlabel(note, fontsize=8, color="0.3")
    return loss_ax, acc_ax


def plot_training_curves(
    history, path, title="Training on CIFAR-10", label_smoothing=0.0, patch_dropout=0.0,
    augment="none",
):  # fmt: skip
    """``draw_training_curves`` from the trainer's history records, saved to ``path``."""
    fig = plt.figure(figsize=(10, 4.4), layout="constrained")
    draw_training_curves(fig, history, label_smoothing, patch_dropout, augment)
    fig.suptitle(title)
    return save_figure(fig, path)


REFERENCE_STYLES = (("0.3", "--", 1.0), ("0.6", ":", 1.5), ("0.8", "-", 1.0))


def draw_finetune_curves(fig, runs, references, accuracy_label, loss_label, note=None):
    """Runs step by step, test accuracy beside training loss, into ``fig``; returns the axes.

    ``runs`` maps a label to a history (records with ``step``, ``test_acc``
    and ``train_loss``, as ``tinyvit.finetune.finetune`` returns them);
    ``references`` maps a label to an accuracy in [0, 1], drawn as a
    horizontal line across the accuracy panel (the model before any
    fine-tuning, chance). One legend for both panels sits below them, where
    it covers neither a curve nor a reference line; ``note`` (a caveat such
    as "too few steps to show ...") heads it, in red.
    """
    if not runs:
        raise ValueError("no runs to draw: runs is empty")
    acc_ax, loss_ax = fig.subplots(1, 2)
    for k, (label, history) in enumerate(runs.items()):
        if not history:
            raise ValueError(f"run {label!r} has no records to draw")
        seen = [r["step"] for r in history]
        color = ("C0", "C3", "C2", "C1", "C4")[k % 5]
        acc_ax.plot(seen, [100 * r["test_acc"] for r in history], "o-", ms=3, color=color,
                    label=label)  # fmt: skip
        loss_ax.plot(seen, [r["train_loss"] for r in history], "o-", ms=3, color=color)
    for k, (label, accuracy) in enumerate(references.items()):
        gray, style, width = REFERENCE_STYLES[k % len(REFERENCE_STYLES)]
        acc_ax.axhline(100 * accuracy, color=gray, ls=style, lw=width, label=label)
    acc_ax.set_ylabel(accuracy_label)
    acc_ax.set_title("test accuracy")
    loss_ax.set_ylabel(loss_label)
    loss_ax.set_title("training loss")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = acc_ax.get_legend_handles_labels()
    legend = fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False,
                        fontsize=8, title=note, title_fontsize=9)  # fmt: skip
    legend.get_title().set_color("tab:red")  # the caveat, right under the panels
    return acc_ax, loss_ax


def plot_finetune_curves(runs, references, path, title, accuracy_label, loss_label,
                         note=None) -> Path:  # fmt: skip
    """``draw_finetune_curves`` in a figure of its own, titled, saved to ``path``."""
    fig = plt.figure(figsize=(11, 5), layout="constrained")
    draw_finetune_curves(fig, runs, references, accuracy_label, loss_label, note)
    fig.suptitle(title)
    return save_figure(fig, path)


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
FULL_CONTRAST_PEAK = 2.0  # a map whose peak is twice its mean gets the color map's full range
FLAT_PEAK = 1.25  # below this peak-over-mean a map is flat: drawn gray, 'flat' in its corner


def peak_over_mean(m) -> float:
    """A map's largest value over its mean: 1.0 for a flat map, ``g * g`` for one patch."""
    m = np.asarray(m, dtype=np.float64)
    return float(m.max() / max(m.mean(), np.finfo(np.float64).tiny))


def attention_heat(m):
    """A map's colors in [0, 1], from the color map's low end: its own range stretched
    to the full color map when its peak is at least ``FULL_CONTRAST_PEAK`` times its
    mean, and to proportionally less of it when the map is flatter. A nearly uniform
    map stays dark (nothing stands out) instead of showing its noise as structure, or
    one even middle color as strong attention everywhere."""
    contrast = min(1.0, max(0.0, (peak_over_mean(m) - 1.0) / (FULL_CONTRAST_PEAK - 1.0)))
    return contrast * _stretch(m)


def _host(x) -> np.ndarray:
    """A tensor's or an array's values as a NumPy array, to draw."""
    return backend.to_numpy(array_of(x))


def _overlay_maps(images, columns):
    """``images`` as ``(B, C, H, W)`` NumPy and each column's ``(B, g, g)`` maps, checked."""
    images = _host(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got an array of shape {images.shape}")
    B = images.shape[0]
    maps = {name: _host(m) for name, m in columns.items()}
    for name, m in maps.items():
        if m.ndim != 3 or m.shape[0] != B:
            raise ValueError(
                f"column {name!r}: expected ({B}, rows, cols) maps for {B} images, got {m.shape}"
            )
    return images, maps


def _draw_overlay(ax, gray, m, smooth):
    """One ``(rows, cols)`` map ``m`` over a gray ``(H, W)`` image, its peak over mean in the
    corner.

    A flat map (peak under ``FLAT_PEAK`` times its mean) gets no color at all:
    the image stays gray, dimmed, and the corner says "flat"."""
    H, W = gray.shape
    ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    peak = peak_over_mean(m)
    if peak < FLAT_PEAK:  # nothing stands out: neutral gray, not a color that means "attention"
        ax.imshow(np.full((H, W), 0.5), cmap="gray", vmin=0, vmax=1, alpha=0.6)
    else:
        blocks = not (H % m.shape[-2] or W % m.shape[-1])  # whole pixels per patch
        mode = "nearest" if blocks and not smooth else "bilinear"  # nearest: patch blocks
        heat = interpolate(attention_heat(m), (H, W), mode)  # (H, W) in [0, 1]
        ax.imshow(heat, cmap=ATTENTION_CMAP, vmin=0, vmax=1, alpha=0.65, interpolation="nearest")
    ax.text(
        0.97,
        0.03,
        f"{peak:.1f}x" + (" flat" if peak < FLAT_PEAK else ""),
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="white",
        bbox=dict(boxstyle="round,pad=0.15", fc="black", alpha=0.55, lw=0),
    )


def _attention_colorbar(fig, axes, rows):
    """The color bar of the attention maps, least to most, beside the grid."""
    mappable = plt.cm.ScalarMappable(cmap=ATTENTION_CMAP, norm=plt.Normalize(0, 1))
    bar = fig.colorbar(mappable, ax=axes, shrink=min(1.0, 3.5 / rows), ticks=[0, 1], aspect=25)
    bar.ax.set_yticklabels(["least", "most"])
    bar.set_label("attention (each map to its own range)", fontsize=8)


def plot_attention_overlays(
    images,
    columns,
    path,
    row_labels=None,
    row_colors=None,
    title=None,
    note=None,
    smooth=False,
) -> Path:
    """A grid of images with attention maps laid over them.

    ``images`` are ``(B, C, H, W)`` (uint8, as CIFAR-10 stores them; a
    photo at its own resolution too); ``columns`` maps a column title to
    ``(B, g, g)`` or ``(B, rows, cols)`` maps (anything that
    ``cls_attention`` or ``attention_rollout`` returns). Row ``b`` shows image
    ``b`` as it is, then each column's map ``b`` over a gray copy of it. Each
    map is rescaled to its own range (dark: least attention, bright: most),
    so the colors compare places within a map, not maps with each other;
    a map whose peak is less than twice its mean gets proportionally less
    of the color map, from its dark end (``attention_heat``), so that a
    nearly flat map is not drawn as strong structure, and a flat one (under
    ``FLAT_PEAK``) gets no color: its image stays gray. Each patch is drawn
    as one block of color, the one number the model has for it;
    ``smooth=True`` blends neighboring patches instead. The number in a
    map's corner is its peak over its mean: 1.0x is a flat map (and says so
    below ``FLAT_PEAK``), 16x on a 4 x 4 grid puts everything
    on one patch. ``row_labels`` name the rows, in ``row_colors`` if given.
    """
    images, maps = _overlay_maps(images, columns)
    B = images.shape[0]
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
        gray = rgb.mean(axis=2)
        axes[b, 0].imshow(rgb, interpolation="nearest")
        for c, m in enumerate(maps.values(), start=1):
            _draw_overlay(axes[b, c], gray, m[b], smooth)
        if row_labels is not None:
            color = row_colors[b] if row_colors is not None else "black"
            axes[b, 0].set_ylabel(
                row_labels[b],
                fontsize=8.5,
                color=color,
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
    _attention_colorbar(fig, axes, B)
    if title:
        fig.suptitle(title, fontsize=11)
    note = (note + "\n" if note else "") + (
        "corner numbers: a map's largest value over its mean (1.0x: attention spread evenly);\n"
        f"under {FULL_CONTRAST_PEAK:g}x a map gets less of the color bar, from its dark end; "
        f"under {FLAT_PEAK:g}x it is flat, nothing stands out, and it is drawn gray"
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
    token, or the average of the patch tokens. Rows are labeled with the
    true and the predicted class, green when they agree and red when they
    do not.
    """
    layers = check_layers(attentions)
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
    colors = ["tab:green" if t == p else "tab:red" for t, p in zip(labels, predictions)]
    note = (
        f"rollout: heads fused by {fusion}"
        + (f", lowest {discard_ratio:.0%} of links discarded" if discard_ratio else "")
        + f"; head columns: {READERS[pool]}'s attention over the patches in layer {index + 1}"
    )
    return plot_attention_overlays(images, columns, path, row_labels, colors, title, note)


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
    """The filters that look at pixels: E of a ViT, a hybrid's first convolution."""
    if hasattr(model_or_weight, "patch_embed"):
        embed = model_or_weight.patch_embed
        return embed.filters if hasattr(embed, "filters") else embed.proj.weight
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


SELF_COLOR = "red"  # the outline of each position's own cell in its similarity tile


def draw_position_similarity(fig, pos_embed, num_prefix_tokens=1, grid=None):
    """Fig. 7 center, into ``fig``: one tile per patch position, with a color bar.

    The tile in row ``r``, column ``c`` is patch ``(r, c)``'s cosine similarity
    with every position; its own cell ``(r, c)`` (similarity 1) is outlined,
    so that each tile shows where "itself" is. ``grid``: ``(rows, cols)`` of a
    rectangular grid (a model gives its own).
    """
    if hasattr(pos_embed, "pos_embed"):
        grid = pos_embed.patch_embed.grid_size
        pos_embed = pos_embed.pos_embed
    sim = backend.to_numpy(position_similarity(pos_embed, num_prefix_tokens, grid))
    rows, cols = sim.shape[:2]  # sim: (rows, cols, rows, cols)
    ax = fig.add_subplot()
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # white gaps between tiles
    im = ax.imshow(
        _mosaic(sim.reshape(rows * cols, rows, cols), cols),
        cmap=cmap,
        vmin=-1,
        vmax=1,
        interpolation="nearest",
    )
    for r in range(rows):  # each tile's own position: the tile of patch (r, c), its cell (r, c)
        for c in range(cols):
            ax.add_patch(
                plt.Rectangle(
                    (c * (cols + 1) + c - 0.5, r * (rows + 1) + r - 0.5), 1, 1,
                    fill=False, edgecolor=SELF_COLOR, lw=0.9,
                )
            )  # fmt: skip
    for n, set_ticks in ((cols, ax.set_xticks), (rows, ax.set_yticks)):
        centers = np.arange(n) * (n + 1) + (n - 1) / 2
        ticks = list(range(0, n, 1 if n <= 10 else max(1, n // 7)))
        set_ticks(centers[ticks], [str(t + 1) for t in ticks], fontsize=8)
    ax.tick_params(length=0)
    ax.set_frame_on(False)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(
        "Position embedding similarity\n(tile = one patch's similarity with all;\n"
        f"{SELF_COLOR} square: the patch itself)",
        fontsize=9,
    )
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("cosine similarity", fontsize=8)
    return ax


def draw_attention_distance(fig, distances, patch_size, grid):
    """Fig. 7 right, into ``fig``: one dot per head, layer by layer, with the uniform reference."""
    distances = _host(distances)
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
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    ax.set_title(f"How far each head looks\n({rows}x{cols} patches of {patch_size} px)", fontsize=9)
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
    """Fig. 7 center as its own figure (``pos_embed``: the model, or its ``E_pos``)."""
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
    left, center, right = fig.subfigures(1, 3, width_ratios=[1.0, 1.15, 1.1])
    draw_embedding_filters(left, model)
    draw_position_similarity(center, model)
    draw_attention_distance(right, distances, model.patch_embed.patch_size, model.patch_embed.grid)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)
