"""Mixup and CutMix: training on blends of two images, with targets blended alike.

Both regularize the training of a ViT on little data (DeiT's recipe uses
both, with RandAugment). Each image of a batch
is paired with another (a random permutation of the batch), and a weight
``lam ~ Beta(alpha, alpha)`` says how much of each:

* **Mixup** (Zhang et al. 2018) blends the pixels, ``lam x + (1 - lam)
  x[perm]``;
* **CutMix** (Yun et al. 2019) pastes a box of the partner, covering about
  ``1 - lam`` of the image, and weighs by the area the box really covers.

The targets become probabilities ``(B, K)``: the one-hot labels mixed with
the same weight and the same partners. The draws are made first, on the
host (``MixupPlan``, ``CutMixPlan``), and applied on the images' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backend import device_of, xp_of
from . import plans


def one_hot(labels, num_classes: int, dtype=np.float32):
    """Integer labels ``(B,)`` to rows of a ``(B, num_classes)`` identity matrix."""
    xp = xp_of(labels)
    return xp.eye(num_classes, dtype=dtype)[labels]


def _as_targets(labels, num_classes: int, dtype):
    """Integer labels ``(B,)`` as one-hot rows, or probabilities ``(B, K)`` as they are."""
    return labels.astype(dtype) if labels.ndim == 2 else one_hot(labels, num_classes, dtype)


def _float_type(images):
    """The scalar type for mixing weights: the images' own float type, else float32."""
    return images.dtype.type if images.dtype.kind == "f" else np.float32


def _mixed_targets(labels, perm, lam, num_classes, real):
    """``lam t + (1 - lam) t[perm]`` of the targets ``t`` of ``labels``: ``(B, K)``."""
    targets = _as_targets(labels, num_classes, real)  # (B, K)
    return targets * real(lam) + targets[perm] * real(1 - lam)


@dataclass(frozen=True)
class MixupPlan:
    """Mixup's draws for a batch: the weight ``lam`` and each image's partner ``perm`` (B,)."""

    lam: float
    perm: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, alpha: float) -> MixupPlan:
        lam = float(rng.beta(alpha, alpha))
        return cls(lam, rng.permutation(n))

    def apply(self, images, labels, num_classes: int):
        """``(mixed images, targets (B, num_classes))``; the plan on the images' device."""
        if images.dtype.kind != "f":
            raise TypeError(f"mixup needs float images (normalize first), not {images.dtype}")
        real = _float_type(images)
        mixed = images * real(self.lam) + images[self.perm] * real(1 - self.lam)  # (B, C, H, W)
        return mixed, _mixed_targets(labels, self.perm, self.lam, num_classes, real)


@dataclass(frozen=True)
class CutMixPlan:
    """CutMix's draws for a batch: the box ``(y0, y1, x0, x1)`` and each image's partner."""

    box: tuple
    perm: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, shape, alpha: float) -> CutMixPlan:
        """A box of side ``sqrt(1 - lam)`` of the image's, centered anywhere, clipped at the
        borders."""
        b, _, h, w = shape
        lam = float(rng.beta(alpha, alpha))
        perm = rng.permutation(b)  # each image's partner
        cut = math.sqrt(1.0 - lam)  # the box's side, as a fraction of the image's
        cut_h, cut_w = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))  # the box's center
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        return cls((y0, y1, x0, x1), perm)

    def apply(self, images, labels, num_classes: int):
        """``(images with the box pasted, targets (B, num_classes))``; uint8 or float images."""
        _, _, h, w = images.shape
        y0, y1, x0, x1 = self.box
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area that is still the image's own
        out = images.copy()
        out[:, :, y0:y1, x0:x1] = images[self.perm, :, y0:y1, x0:x1]
        return out, _mixed_targets(labels, self.perm, lam, num_classes, _float_type(images))


def mixup(images, labels, alpha: float, rng: np.random.Generator, num_classes: int = 10):
    """Mixup (Zhang et al. 2018): ``lam x + (1 - lam) x[perm]`` with ``lam ~ Beta(alpha, alpha)``.

    ``images`` are floats (normalized); ``labels`` are integers ``(B,)`` or
    probabilities ``(B, K)``. The targets come back as probabilities
    ``(B, num_classes)`` mixed with the same lam and the same partners.
    """
    plan = plans.to_device(MixupPlan.draw(rng, images.shape[0], alpha), device_of(images))
    return plan.apply(images, labels, num_classes)


def cutmix(images, labels, alpha: float, rng: np.random.Generator, num_classes: int = 10):
    """CutMix (Yun et al. 2019): paste a box from another image of the batch.

    The box covers about ``1 - lam`` of the image (``lam ~ Beta(alpha,
    alpha)``), centered anywhere and clipped at the borders; the targets mix
    by the area the box really covers. Works on uint8 or float images.
    """
    plan = plans.to_device(CutMixPlan.draw(rng, images.shape, alpha), device_of(images))
    return plan.apply(images, labels, num_classes)


def draw_mixing(rng, shape, mixup_alpha: float, cutmix_alpha: float):
    """Mixup's or CutMix's draws as asked (one of them, 50/50, when both alphas are above 0),
    or None when both are 0."""
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_mixup = rng.random() < 0.5
    elif mixup_alpha > 0 or cutmix_alpha > 0:
        use_mixup = mixup_alpha > 0
    else:
        return None
    if use_mixup:
        return MixupPlan.draw(rng, shape[0], mixup_alpha)
    return CutMixPlan.draw(rng, shape, cutmix_alpha)


__all__ = ["CutMixPlan", "MixupPlan", "cutmix", "draw_mixing", "mixup", "one_hot"]
