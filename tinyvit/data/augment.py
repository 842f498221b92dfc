"""The augmentation policies of a training batch: none, flip, basic, randaugment.

A policy names which augmentations a batch gets, in order:

    "none"          the images as they are (evaluation)
    "flip"          a horizontal flip alone (the mildest, for short runs)
    "basic"         a random crop (padding 4) and a horizontal flip
    "randaugment"   ``rand_augment``, then crop and flip

``draw_augmentation`` makes every random draw of a policy for a batch, in
the order the ops make them, into an ``AugmentPlan`` (host arrays);
``apply_augmentation`` applies the plan once it is on the images' device
(``tinyvit.data.plans``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import checks
from ..backend import device_of
from . import plans
from .randaugment import RandAugmentRound, apply_rounds, draw_rounds
from .transforms import CropPlan, FlipPlan

AUGMENTS = ("none", "flip", "basic", "randaugment")
CROP_PADDING = 4  # the random crop of "basic" and "randaugment"
RAND_AUGMENT_FILL = 128  # gray, about 0 once normalized


@dataclass(frozen=True)
class AugmentPlan:
    """A policy's draws for one batch: RandAugment's rounds, the crop, the flip (each
    empty or None when the policy has no such step)."""

    policy: str
    rounds: tuple[RandAugmentRound, ...] = ()
    crop: CropPlan | None = None
    flip: FlipPlan | None = None


def draw_augmentation(rng, shape, policy: str, *, num_ops: int = 2, magnitude: float = 9):
    """Every random draw of ``policy`` for a batch of ``shape``, in the order the ops make
    them: an ``AugmentPlan`` of host arrays."""
    checks.one_of("augmentation", policy, AUGMENTS)
    n = shape[0]
    rounds = draw_rounds(rng, shape, num_ops, magnitude) if policy == "randaugment" else ()
    crop = CropPlan.draw(rng, n, CROP_PADDING) if policy in ("basic", "randaugment") else None
    flip = FlipPlan.draw(rng, n) if policy != "none" else None
    return AugmentPlan(policy, rounds, crop, flip)


def apply_augmentation(images, plan: AugmentPlan):
    """A drawn augmentation (on the images' device) on uint8 ``images`` ``(B, C, H, W)``."""
    checks.uint8_images(images, f"augmentation {plan.policy!r}", on_host=False)
    if plan.rounds:
        images = apply_rounds(images, plan.rounds, fill=RAND_AUGMENT_FILL)
    if plan.crop is not None:
        images = plan.crop.apply(images)
    if plan.flip is not None:
        images = plan.flip.apply(images)
    return images


def augment_batch(images, rng, policy: str = "basic", *, num_ops: int = 2, magnitude: float = 9):
    """Augment a uint8 batch by one of the ``AUGMENTS`` policies (see the module's docstring).

    Every draw is made first (``draw_augmentation``) and sent to the images'
    device in one copy.
    """
    plan = draw_augmentation(rng, images.shape, policy, num_ops=num_ops, magnitude=magnitude)
    return apply_augmentation(images, plans.to_device(plan, device_of(images)))


__all__ = [
    "AUGMENTS",
    "AugmentPlan",
    "CROP_PADDING",
    "apply_augmentation",
    "augment_batch",
    "draw_augmentation",
]
