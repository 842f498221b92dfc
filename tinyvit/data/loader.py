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

With data parallelism (``tinyvit.distributed``) each process takes one
part of every batch (``shard=(i, n)``): it draws the whole batch's order
and plan, as one process would, and keeps part ``i`` of its rows
(``BatchPlan.rows``), so the parts together are, image for image, the batch
one process trains on, however many processes share it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import backend, checks
from . import plans
from .augment import AUGMENTS, AugmentPlan, apply_augmentation, draw_augmentation
from .cifar10 import MEAN, STD
from .mixing import CutMixPlan, MixupPlan, draw_mixing
from .transforms import CropPlan, normalize


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

    def rows(self, part: slice) -> tuple[BatchPlan, np.ndarray]:
        """``(plan, rows)``: the plan of the batch's rows ``part`` alone, and which of the
        batch's rows it needs (``part``'s, then, with mixing, their partners').

        Each row's draws are its own (a crop, a flip, a RandAugment op), so
        the part's plan is the batch's, each per-row array cut to the rows;
        which ops run at all stays the batch's decision. With mixing a row
        blends with a partner, which may lie outside the part: the partners
        come along as extra rows, and only the part's own (the first ``k``)
        are kept after mixing.
        """
        n = len(self.labels)
        own = np.arange(n)[part]  # (k,)
        mixing, rows = self.mixing, own
        if mixing is not None:
            rows = np.concatenate([own, mixing.perm[own]])  # (2k,): each row, then its partner
            k = len(own)
            perm = np.concatenate([np.arange(k, 2 * k), np.arange(k)])  # row i mixes with k + i
            mixing = dataclasses.replace(mixing, perm=perm)
        labels, augmentation = _cut((self.labels, self.augmentation), rows, n)
        return BatchPlan(labels, augmentation, mixing), rows


def _cut(value, rows, n):
    """``value`` with every per-row array (first axis ``n``) cut to ``rows``, inside
    dataclasses and tuples; a crop plan's own row numbers counted afresh."""
    if isinstance(value, np.ndarray):
        return value[rows] if value.ndim and value.shape[0] == n else value
    if isinstance(value, tuple):
        return tuple(_cut(item, rows, n) for item in value)
    if not dataclasses.is_dataclass(value):
        return value
    cut = {f.name: _cut(getattr(value, f.name), rows, n) for f in dataclasses.fields(value)}
    if isinstance(value, CropPlan):
        cut["rows"] = np.arange(len(rows))  # (k,): the window of row i is cut from image i
    return dataclasses.replace(value, **cut)


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
    shard: tuple[int, int] | None = None,
    mean=MEAN,
    std=STD,
):
    """Yield ``(images, targets)`` for one epoch: normalized images ``(B, 3, H, W)`` on ``device``.

    Targets are int64 labels ``(B,)``, or probabilities ``(B, num_classes)``
    when ``mixup_alpha`` or ``cutmix_alpha`` (their Beta alphas) is above 0;
    with both, each batch uses one of them, 50/50. ``augment`` is one of
    ``AUGMENTS``, with ``num_ops`` and ``magnitude`` for RandAugment.
    ``start=k`` resumes exactly where batch k of the same epoch would have
    been. For evaluation use ``shuffle=False, augment="none", drop_last=False``.
    ``shard=(i, n)``: only part ``i`` of ``n`` equal parts of each batch of
    ``batch_size`` (a multiple of ``n``), drawn as the whole batch would be.
    ``mean`` and ``std`` normalize (default: CIFAR-10's; a model's own are in its
    ``preprocessing``).
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
    part = _part(shard, batch_size, drop_last)
    order = epoch_order(n, seed, epoch, shuffle)
    y = np.asarray(y, dtype=np.int64)

    def generate():
        for i in range(start, count):
            index = order[i * batch_size : (i + 1) * batch_size]
            rng = batch_rng(seed, epoch, i)
            shape = (len(index), *x.shape[1:])  # the whole batch's, whatever the part
            augmentation = draw_augmentation(
                rng, shape, augment, num_ops=num_ops, magnitude=magnitude
            )
            mixing = draw_mixing(rng, shape, mixup_alpha, cutmix_alpha)
            plan = BatchPlan(y[index], augmentation, mixing)
            rows = slice(None)
            if part is not None:
                plan, rows = plan.rows(part)
            images = backend.to_device(x[index[rows]], device)  # (B, C, H, W) uint8: one copy
            plan = plans.to_device(plan, device)  # copy 2
            images = apply_augmentation(images, plan.augmentation)
            images = normalize(images, mean, std, dtype=dtype)  # (B, C, H, W) float
            if plan.mixing is None:
                yield images, plan.labels
            else:
                images, targets = plan.mixing.apply(images, plan.labels, num_classes)
                kept = slice(None) if part is None else slice(0, part.stop - part.start)
                yield images[kept], targets[kept]

    return generate()


def _part(shard, batch_size: int, drop_last: bool) -> slice | None:
    """The rows of every batch that part ``i`` of ``shard=(i, n)`` keeps; None for all."""
    if shard is None:
        return None
    index, parts = shard
    if not 0 <= index < parts:
        raise ValueError(f"batches: shard {shard} is not part i of n parts with 0 <= i < n")
    if batch_size % parts or not drop_last:
        raise ValueError(
            f"batches: a batch of {batch_size} does not split into {parts} equal parts (shard "
            "needs a batch size that is a multiple of the parts, and drop_last=True)"
        )
    size = batch_size // parts
    return slice(index * size, (index + 1) * size)


__all__ = ["BatchPlan", "batch_rng", "batches", "epoch_order", "num_batches"]
