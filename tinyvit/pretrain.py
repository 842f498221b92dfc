"""Masked patch prediction (Section 4.6): pre-training a ViT without labels.

**Masked patch prediction** (Section 4.6, "Self-supervision", and Appendix
B.1.2) is the paper's BERT-like pre-training without labels. Of an image's
``N`` patch embeddings ``x_p^i E`` (Eq. 1), half are chosen to be
*corrupted*. Of those, 80% are replaced by a learned ``[mask]`` embedding,
10% by the embedding of a random other patch, and 10% are kept as they are;
then the class token and the position embeddings are added as usual and the
sequence runs through the encoder. A linear head on each corrupted patch's
output token predicts that patch's **mean color**, quantized to 3 bits per
channel: ``8 x 8 x 8 = 512`` classes, learned with cross-entropy on the
corrupted patches only. The paper reports 79.9% on ImageNet for a ViT-B/16
pre-trained so on JFT for 1M steps: 2% better than training from scratch,
4% behind supervised pre-training.

* ``patch_color_classes`` computes the targets from the raw uint8 image;
  ``class_colors`` turns classes back into colors (for pictures).
* ``draw_corruption`` draws which patches are corrupted and how, from a
  seeded generator; ``MaskedPatchPrediction`` wraps a ``ViT`` and applies a
  corruption between the patch embedding and the addition of the class token
  and position embeddings. With no corruption its ``encode`` is exactly the
  ViT's ``forward_features``.
* ``pretrain`` is the loop: batches of unlabeled images, and the step every
  loop in tinyvit takes (``tinyvit.loop.train_step``: AdamW, warm-up and
  cosine decay, gradient clipping, a finiteness check).

Fine-tuning the pre-trained model on labels is ``tinyvit.finetune``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from . import backend, checks, data
from . import functional as F
from .backend import xp_of
from .loop import adamw_with_schedule, diverged_loss, train_step
from .nn import Linear, Module, Parameter, trunc_normal
from .tensor import Tensor
from .vit import ViT

# ---------------------------------------------------------------------------
# The targets: each patch's mean color, 3 bits per channel
# ---------------------------------------------------------------------------


def patch_color_classes(images, patch_size, bits=3):
    """The mean color of every patch of uint8 ``(B, 3, H, W)`` images, as a class.

    Each channel's mean over the patch's ``P x P`` pixels (a number in
    ``[0, 255]``) is cut into ``2**bits`` equal bins: ``bin = floor(mean *
    2**bits / 256)``, computed exactly in integers. The class is
    ``(red_bin * 2**bits + green_bin) * 2**bits + blue_bin``, one of
    ``2**(3 * bits)`` (512 for 3 bits). Returns ``(B, N)`` int64, patches in
    the order of ``vit.patchify`` (row by row).
    """
    checks.uint8_images(images, "patch_color_classes: images", on_host=False)
    B, C, H, W = images.shape
    P = patch_size
    if C != 3:
        raise ValueError(
            f"patch_color_classes needs 3 color channels, got {C} (shape {images.shape})"
        )
    if H % P or W % P:
        raise ValueError(f"images of {H}x{W} pixels do not split into {P}x{P} patches")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be between 1 and 8, not {bits}")
    x = images.reshape(B, C, H // P, P, W // P, P)  # (B, C, rows, P, cols, P)
    sums = x.sum(axis=(3, 5), dtype=np.int64)  # (B, C, rows, cols): P*P times the mean
    levels = 1 << bits
    bins = sums * levels // (256 * P * P)  # floor(mean * levels / 256), in integers
    red, green, blue = bins[:, 0], bins[:, 1], bins[:, 2]  # (B, rows, cols) each
    classes = (red * levels + green) * levels + blue
    return classes.reshape(B, -1)  # (B, N)


def class_colors(classes, bits=3):
    """The color at the center of each class's bins: ``(..., 3)`` floats in ``[0, 1]``."""
    classes = np.asarray(backend.to_numpy(classes), dtype=np.int64)
    levels = 1 << bits
    if classes.size and (classes.min() < 0 or classes.max() >= levels**3):
        raise ValueError(f"color classes must lie in [0, {levels**3}) for {bits} bits")
    red, green, blue = classes // (levels * levels), classes // levels % levels, classes % levels
    return (np.stack([red, green, blue], axis=-1) + 0.5) / levels


# ---------------------------------------------------------------------------
# The corruption: which patches, and what replaces them
# ---------------------------------------------------------------------------

UNTOUCHED, MASKED, RANDOM, KEPT = 0, 1, 2, 3  # the kinds of a patch; the last three are corrupted


@dataclass
class Corruption:
    """What happens to each of the ``N`` patches of each of ``B`` images (NumPy arrays).

    ``kind`` is ``(B, N)``: ``UNTOUCHED`` (0, not predicted), ``MASKED`` (1,
    the ``[mask]`` embedding), ``RANDOM`` (2, another patch's embedding) or
    ``KEPT`` (3, unchanged but predicted). ``source`` is ``(B, N)``: the flat
    index ``b * N + n`` of the embedding that position takes (its own, except
    for ``RANDOM``).
    """

    kind: np.ndarray
    source: np.ndarray

    @property
    def corrupted(self) -> np.ndarray:
        """``(B, N)`` bool: the patches whose color the model must predict."""
        return self.kind != UNTOUCHED

    @property
    def shape(self) -> tuple:
        return self.kind.shape


def draw_corruption(batch, num_patches, rng, mask_ratio=0.5, replace=(0.8, 0.1, 0.1)):
    """Draw a ``Corruption`` for ``batch`` images of ``num_patches`` patches each.

    ``round(mask_ratio * num_patches)`` patches of every image are corrupted,
    chosen at random; each corrupted patch independently gets the ``[mask]``
    embedding, a random other patch's embedding (from any image of the batch)
    or keeps its own, with the probabilities ``replace`` (80/10/10 in the
    paper). ``rng`` is a ``numpy.random.Generator``: the same seed, the same
    corruption.
    """
    p_mask, p_random, p_kept = (float(p) for p in replace)
    if min(p_mask, p_random, p_kept) < 0 or not math.isclose(p_mask + p_random + p_kept, 1.0):
        raise ValueError(f"replace must be three probabilities that sum to 1, got {replace}")
    if not 0.0 < mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio}")
    if batch < 1 or num_patches < 1:
        raise ValueError(f"need at least one image and one patch, got {batch} x {num_patches}")
    count = max(1, round(mask_ratio * num_patches))
    # The first `count` patches of a random order of each image's patches.
    order = np.argsort(rng.random((batch, num_patches)), axis=1)  # (B, N)
    corrupted = np.zeros((batch, num_patches), dtype=bool)
    np.put_along_axis(corrupted, order[:, :count], True, axis=1)
    u = rng.random((batch, num_patches))
    how = np.where(u < p_mask, MASKED, np.where(u < p_mask + p_random, RANDOM, KEPT))
    kind = np.where(corrupted, how, UNTOUCHED).astype(np.int8)  # (B, N)
    source = np.arange(batch * num_patches).reshape(batch, num_patches)  # (B, N): itself
    swap = kind == RANDOM
    if swap.any():
        if batch * num_patches < 2:
            raise ValueError("a random other patch needs at least two patches in the batch")
        own = source[swap]
        other = rng.integers(0, batch * num_patches - 1, size=own.size)
        source[swap] = other + (other >= own)  # any patch of the batch but itself
    return Corruption(kind=kind, source=source)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class MaskedPatchPrediction(Module):
    """A ``ViT`` with a ``[mask]`` embedding and a mean-color head for pre-training.

    ``MaskedPatchPrediction(vit, bits=3, mask_ratio=0.5, replace=(0.8, 0.1, 0.1))``.
    Parameters: the ViT's own (``vit.*``), ``mask_token`` ``(D,)`` and
    ``head`` (``D -> 2**(3*bits)``). The ViT's classification head is not
    used. Steps of Eq. 1 with a corruption between them:

        patches = x_p E                      (B, N, D)   vit.patch_embed
        patches = corrupt(patches)           (B, N, D)   [mask] / other patch / kept
        z_0 = [x_class; patches] + E_pos     (B, N+1, D)
        tokens = LN(blocks(z_0))             (B, N+1, D)
        logits = head(tokens at the corrupted patches)   (M, 512)
    """

    def __init__(self, vit: ViT, bits=3, mask_ratio=0.5, replace=(0.8, 0.1, 0.1)):
        if not isinstance(vit, ViT):
            raise TypeError(f"MaskedPatchPrediction wraps a ViT, not {type(vit).__name__}")
        if vit.channels != 3:
            raise ValueError(
                f"mean-color targets need RGB images, but the ViT has {vit.channels} channels"
            )
        if vit.patch_dropout:
            raise ValueError(
                f"masked patch prediction predicts every corrupted patch, but the ViT drops "
                f"patch tokens in training (patch_dropout {vit.patch_dropout}); build it "
                "with patch_dropout=0"
            )
        dim = vit.config["dim"]
        self.vit = vit
        self.mask_token = Parameter(trunc_normal((dim,)))  # the learned [mask] embedding
        self.head = Linear(dim, 1 << (3 * bits))
        self.bits, self.mask_ratio, self.replace = bits, mask_ratio, tuple(replace)
        self.to(vit.pos_embed.device, vit.pos_embed.dtype)

    @property
    def num_patches(self) -> int:
        return self.vit.patch_embed.num_patches

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def corrupt(self, batch, rng) -> Corruption:
        """A fresh ``Corruption`` for ``batch`` images, with this model's settings."""
        return draw_corruption(batch, self.num_patches, rng, self.mask_ratio, self.replace)

    def corrupt_embeddings(self, patches: Tensor, corruption: Corruption) -> Tensor:
        """Apply ``corruption`` to ``(B, N, D)`` patch embeddings: ``[mask]``, another
        patch's embedding, or the patch's own, position by position."""
        B, N, D = patches.shape
        if corruption.shape != (B, N):
            raise ValueError(
                f"the corruption is for {corruption.shape[0]} images of {corruption.shape[1]} "
                f"patches, but the batch has {B} images of {N} patches"
            )
        device = patches.device
        kind = backend.to_device(corruption.kind.reshape(-1), device)  # (B*N,)
        flat = patches.reshape(B * N, D)  # (B*N, D)
        if (corruption.kind == RANDOM).any():
            flat = flat[backend.to_device(corruption.source.reshape(-1), device)]  # (B*N, D)
        masked = (kind == MASKED).astype(patches.dtype)[:, None]  # (B*N, 1): 1 where [mask] goes
        # A blend with 0/1 weights: the patch where `masked` is 0, the [mask] embedding where 1.
        flat = flat * (1.0 - masked) + self.mask_token * masked  # (B*N, D)
        return flat.reshape(B, N, D)

    def encode(self, images, corruption: Corruption | None = None) -> Tensor:
        """``(B, C, H, W)`` normalized images to ``(B, N+1, D)`` tokens after the final LN.

        The ViT's ``forward_features`` with ``corruption`` (if any) applied
        to the patch embeddings before the class token and the position
        embeddings are added (``ViT.encode``).
        """
        vit = self.vit
        patches = vit.patch_embed(vit.check_images(images))  # (B, N, D): x_p^i E
        if corruption is not None:
            patches = self.corrupt_embeddings(patches, corruption)  # (B, N, D)
        return vit.encode(patches)  # (B, N+1, D)

    def forward(self, images, corruption: Corruption) -> Tensor:
        """Color logits ``(M, 2**(3*bits))`` of the ``M`` corrupted patches, image by image."""
        tokens = self.encode(images, corruption)  # (B, N+1, D)
        B, n_plus_1, D = tokens.shape
        where = np.flatnonzero(corruption.corrupted.reshape(-1))  # (M,) flat indices b*N + n
        patch_tokens = tokens[:, 1:].reshape(B * (n_plus_1 - 1), D)  # (B*N, D)
        picked = patch_tokens[backend.to_device(where, tokens.device)]  # (M, D)
        return self.head(picked)  # (M, classes)

    def targets(self, raw, corruption: Corruption):
        """The ``(M,)`` color classes of the corrupted patches of uint8 images ``raw``."""
        classes = patch_color_classes(raw, self.vit.patch_embed.patch_size, self.bits)  # (B, N)
        if classes.shape != corruption.shape:
            raise ValueError(
                f"{classes.shape[0]} images of {classes.shape[1]} patches do not match a "
                f"corruption of shape {corruption.shape}"
            )
        xp = xp_of(classes)
        return classes.reshape(-1)[xp.asarray(np.flatnonzero(corruption.corrupted.reshape(-1)))]

    def loss(self, raw, corruption: Corruption) -> Tensor:
        """Mean cross-entropy of the color predictions for the corrupted patches.

        ``raw`` is a uint8 ``(B, 3, H, W)`` batch: the targets come from it,
        and the model's input is it normalized by ``data.normalize``.
        """
        target = self.targets(raw, corruption)  # (M,)
        images = data.normalize(raw, dtype=self.vit.pos_embed.dtype)  # (B, 3, H, W)
        return F.cross_entropy(self.forward(images, corruption), target)


# ---------------------------------------------------------------------------
# Pictures: what the model is shown, and colors painted on patches
# ---------------------------------------------------------------------------


def _patch_grid(raw, patch_size):
    """uint8 ``(B, C, H, W)`` to NumPy ``(B, rows, cols, P, P, C)`` floats in ``[0, 1]``."""
    raw = backend.to_numpy(raw)
    B, C, H, W = raw.shape
    P = patch_size
    x = raw.reshape(B, C, H // P, P, W // P, P).transpose(0, 2, 4, 3, 5, 1)  # (B, r, c, P, P, C)
    return x.astype(np.float32) / 255.0


def _picture(grid):
    """``(B, rows, cols, P, P, C)`` back to ``(B, H, W, C)`` pictures."""
    B, rows, cols, P, _, C = grid.shape
    return grid.transpose(0, 1, 3, 2, 4, 5).reshape(B, rows * P, cols * P, C)


def corrupted_view(raw, corruption: Corruption, patch_size, gray=0.5):
    """``(B, H, W, 3)`` pictures in ``[0, 1]`` of what the model is shown.

    The corruption acts on embeddings, not pixels; drawn in pixels, a
    ``[mask]`` patch is flat ``gray`` and a ``RANDOM`` patch shows the pixels
    of the patch whose embedding it took.
    """
    grid = _patch_grid(raw, patch_size)  # (B, rows, cols, P, P, C)
    B, rows, cols = grid.shape[:3]
    if corruption.shape != (B, rows * cols):
        raise ValueError(f"a corruption of shape {corruption.shape} for {B} images of "
                         f"{rows * cols} patches")  # fmt: skip
    flat = grid.reshape(B * rows * cols, *grid.shape[3:])[corruption.source.reshape(-1)]
    flat[corruption.kind.reshape(-1) == MASKED] = gray
    return _picture(flat.reshape(grid.shape))


def color_view(raw, classes, where, patch_size, bits=3, fade=0.25):
    """``(B, H, W, 3)`` pictures: patches where ``where`` is True painted in the colors of
    ``classes`` (``(B, N)`` color classes), the others faded towards white."""
    grid = _patch_grid(raw, patch_size)  # (B, rows, cols, P, P, C)
    B, rows, cols = grid.shape[:3]
    where = backend.to_numpy(where).reshape(B, rows, cols)
    paint = class_colors(backend.to_numpy(classes).reshape(B, rows, cols), bits)
    faded = 1.0 - fade * (1.0 - grid)
    painted = np.broadcast_to(paint[:, :, :, None, None, :], grid.shape)
    return _picture(np.where(where[..., None, None, None], painted, faded))


# ---------------------------------------------------------------------------
# The pre-training loop
# ---------------------------------------------------------------------------


def pretrain(
    model: MaskedPatchPrediction,
    images,
    steps,
    *,
    batch_size=128,
    lr=1e-3,
    weight_decay=0.05,
    warmup_steps=None,
    clip=1.0,
    flip=True,
    seed=0,
    device="cpu",
    log_every=50,
    log=print,
):
    """Masked patch prediction on uint8 ``images`` ``(n, 3, H, W)`` for ``steps`` steps.

    No labels: every batch is a random draw of images (reshuffled each pass
    over the data), flipped left-right at random, corrupted afresh. AdamW,
    a linear warm-up (default: a tenth of the steps) and cosine decay,
    gradient clipping at ``clip``. Returns a list of ``{step, loss, seconds}``
    records, one per step; the model is trained in place.
    """
    images = checks.uint8_images(images, "pretrain: images")
    checks.POSITIVE_INT.check("pretrain: steps", steps)
    checks.POSITIVE_INT.check("pretrain: batch_size", batch_size)
    checks.POSITIVE.check("pretrain: lr", lr)
    if batch_size > len(images):
        raise ValueError(f"batch_size {batch_size} is larger than the {len(images)} images")
    warmup = steps // 10 if warmup_steps is None else warmup_steps
    optimizer, schedule = adamw_with_schedule(model, lr, weight_decay, steps, warmup)
    model.train()
    history, started = [], time.perf_counter()
    per_epoch, order = len(images) // batch_size, None
    for step in range(steps):
        epoch, i = divmod(step, per_epoch)
        if i == 0 or order is None:  # a new pass over the images, in a new order
            order = data.epoch_order(len(images), seed, epoch)
        rng = data.batch_rng(seed, epoch, i)
        raw = backend.to_device(images[order[i * batch_size : (i + 1) * batch_size]], device)
        if flip:
            raw = data.horizontal_flip(raw, rng)  # (B, 3, H, W) uint8
        corruption = model.corrupt(len(raw), rng)

        def forward(raw=raw, corruption=corruption):
            return model.loss(raw, corruption), None

        value, _ = train_step(
            model, optimizer, forward, step=step, lr=schedule(step), clip=clip, seed=seed,
            run="pretrain", max_loss=diverged_loss(model.head.out_features),
        )  # fmt: skip
        history.append(dict(step=step + 1, loss=value, seconds=time.perf_counter() - started))
        if log and log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            recent = [r["loss"] for r in history[-log_every:]]
            log(
                f"pretrain step {step + 1:>5}/{steps}  color loss {np.mean(recent):.3f}  "
                f"{history[-1]['seconds']:.0f} s"
            )
    return history


__all__ = [
    "Corruption",
    "KEPT",
    "MASKED",
    "MaskedPatchPrediction",
    "RANDOM",
    "UNTOUCHED",
    "class_colors",
    "color_view",
    "corrupted_view",
    "draw_corruption",
    "patch_color_classes",
    "pretrain",
]
