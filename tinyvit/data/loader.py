"""Batches for training and testing: a seeded order, drawn plans, one copy each way.

``batches`` turns a data set of uint8 images into an epoch of network
inputs on the device of the run: shuffled, augmented (``tinyvit.data.augment``),
normalized, and mixed (``tinyvit.data.mixing``) when asked.

    for images, targets in batches(x_train, y_train, 128, seed=0, epoch=3):
        ...   # images (128, 3, 32, 32) float32, targets (128,) int64

Everything random is seeded: the epoch's order by ``(seed, epoch)``
(``epoch_order``), batch ``i``'s draws by ``(seed, epoch, i)``
(``batch_rng``). So a seed gives the same batches on either device, and a
run resumed at batch ``k`` of an epoch (``start=k``) sees exactly the
batches it would have seen. A batch's draws are one ``BatchPlan``, made on
the host; its labels and every drawn parameter travel to the device in one
copy, the images in another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend, checks
from . import plans
from .augment import AUGMENTS, AugmentPlan, apply_augmentation, draw_augmentation
from .mixing import CutMixPlan, MixupPlan, draw_mixing
from .transforms import normalize


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """How many batches ``n`` examples make (a last partial one counts unless dropped)."""
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order in which an epoch visits ``n`` examples: a permutation seeded by
    ``(seed, epoch)``, or ``0 .. n-1`` without shuffling."""
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def batch_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of batch ``index``'s draws in ``epoch``: seeded by ``(seed, epoch, index)``,
    so any batch can be drawn again without drawing the ones before it."""
    return np.random.default_rng([seed, epoch, index])


@dataclass(frozen=True)
class BatchPlan:
    """Everything one batch needs besides its images: its labels ``(B,)`` int64, its
    augmentation and its mixing (None: none), all drawn on the host."""

    labels: np.ndarray
    augmentation: AugmentPlan
    mixing: MixupPlan | CutMixPlan | None = None


def batches(
    x,
    y,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    augment: str = "basic",
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    num_classes: int = 10,
    device: str = "cpu",
    dtype=np.float32,
    drop_last: bool = True,
    start: int = 0,
    num_ops: int = 2,
    magnitude: float = 9,
):
    """Yield ``(images, targets)`` for one epoch: normalized images ``(B, 3, H, W)`` on ``device``.

    Targets are int64 labels ``(B,)``, or probabilities ``(B, num_classes)``
    when ``mixup_alpha`` or ``cutmix_alpha`` (their Beta alphas) is above 0;
    with both, each batch uses one of them, 50/50. ``augment`` is one of
    ``AUGMENTS``, with ``num_ops`` and ``magnitude`` for RandAugment.
    ``start=k`` resumes exactly where batch k of the same epoch would have
    been. For evaluation use ``shuffle=False, augment="none", drop_last=False``.
    """
    checks.uint8_images(x, "batches: x")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)} labels")
    checks.one_of("batches: augment", augment, AUGMENTS)
    checks.POSITIVE_INT.check("batches: batch_size", batch_size)
    count = num_batches(n, batch_size, drop_last)
    if not 0 <= start <= count:
        raise ValueError(f"start={start} is outside the epoch's {count} batches")
    backend.check_device_name(device)
    order = epoch_order(n, seed, epoch, shuffle)
    y = np.asarray(y, dtype=np.int64)

    def generate():
        for i in range(start, count):
            index = order[i * batch_size : (i + 1) * batch_size]
            rng = batch_rng(seed, epoch, i)
            images = backend.to_device(x[index], device)  # (B, C, H, W) uint8: one copy
            augmentation = draw_augmentation(
                rng, images.shape, augment, num_ops=num_ops, magnitude=magnitude
            )
            mixing = draw_mixing(rng, images.shape, mixup_alpha, cutmix_alpha)
            plan = plans.to_device(BatchPlan(y[index], augmentation, mixing), device)  # copy 2
            images = apply_augmentation(images, plan.augmentation)
            images = normalize(images, dtype=dtype)  # (B, C, H, W) float
            if plan.mixing is None:
                yield images, plan.labels
            else:
                yield plan.mixing.apply(images, plan.labels, num_classes)

    return generate()


__all__ = ["BatchPlan", "batch_rng", "batches", "epoch_order", "num_batches"]
