"""RandAugment (Cubuk et al. 2020): each image gets ``num_ops`` random ops of one strength.

The ViT training recipes that followed the paper (DeiT; Steiner et al.
2021, "How to train your ViT?") regularize small-data training with
RandAugment: every round, each image draws one of fourteen operations
(``tinyvit.data.image_ops``) and applies it at a strength set by one global
``magnitude``. ``RAND_AUGMENT_OPS`` is the table of the fourteen: for each,
its family and its argument at a magnitude, with torchvision's ranges,
written once. Both ways of running RandAugment read their arguments from it:

* one op at a time, ``RAND_AUGMENT_OPS[name](images, m, signs, fill)``: the
  definition;
* a whole round in three passes (``rand_augment``), one per family of ops:
  the geometric ones are one affine resampling (an image that drew another
  op gets the identity map), the blends one blend (factor 1 for the
  others), the lookup-table ops one table lookup (the identity table for
  the others). Each image gets the same pixels as if its op ran on it
  alone, and a GPU runs three passes a round instead of one per op.

A round's draws are a ``RandAugmentRound`` of per-image arrays, computed on
the host and moved in one copy (``tinyvit.data.plans``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import checks
from ..backend import device_of, xp_of
from . import image_ops, plans

FAMILIES = ("none", "geometric", "blend", "table")  # how a round applies an op: see above


@dataclass(frozen=True)
class RandAugmentOp:
    """One of RandAugment's operations: its family, its argument at a magnitude, its op.

    ``argument(m, signs, height, width)`` is the op's argument at magnitude
    fraction ``m`` in ``[0, 1]``, for images of that size, per image where
    ``signs`` (+1 or -1 per image) turns it both ways; ``None`` for an op
    that takes none. ``op`` is the image operation. A geometric op has its
    per-image affine ``maps``, a lookup-table op with an argument its
    ``lut``, each as a function of the argument.
    """

    name: str
    family: str
    op: Callable
    argument: Callable | None = None
    maps: Callable | None = None
    lut: Callable | None = None

    def __post_init__(self):
        checks.one_of(f"RandAugmentOp {self.name!r}: family", self.family, FAMILIES)

    def __call__(self, images, m, signs, fill=128):
        """The op on ``images`` at magnitude fraction ``m``, with ``signs`` ``(B,)``."""
        if self.argument is None:
            return self.op(images)
        value = self.argument(m, signs, *images.shape[2:])
        if self.family == "geometric":
            return self.op(images, value, fill)
        return self.op(images, value)


def _signed(scale):
    """The argument ``scale * m * sign``: torchvision's ``linspace(0, scale)``, both ways."""
    return lambda m, s, h, w: scale * m * s


def _blend_factor(m, s, h, w):
    """A blend's factor: ``1 +- 0.9 m``, from 0.1 to 1.9."""
    return 1 + 0.9 * m * s


def _shift_x(m, s, h, w):
    """A horizontal shift of up to 150/331 of the image's width (torchvision's range)."""
    return 150 / 331 * w * m * s


def _shift_y(m, s, h, w):
    """A vertical shift of up to 150/331 of the image's height."""
    return 150 / 331 * h * m * s


def _posterize_bits(m, s, h, w):
    """Bits kept by posterize: 8 at magnitude 0, down to 4."""
    return 8 - int(round(4 * m))


def _solarize_threshold(m, s, h, w):
    """Solarize's threshold: 255 at magnitude 0 (nothing inverted), down to 0."""
    return 255.0 * (1 - m)


# The fourteen ops: name, family, image op, argument at magnitude fraction m, maps or lut.
RAND_AUGMENT_OPS = {
    op.name: op
    for op in (
        RandAugmentOp("identity", "none", image_ops.identity),
        RandAugmentOp(
            "shear_x", "geometric", image_ops.shear_x, _signed(0.3), image_ops.shear_x_maps
        ),
        RandAugmentOp(
            "shear_y", "geometric", image_ops.shear_y, _signed(0.3), image_ops.shear_y_maps
        ),
        RandAugmentOp(
            "translate_x", "geometric", image_ops.translate_x, _shift_x, image_ops.translate_x_maps
        ),
        RandAugmentOp(
            "translate_y", "geometric", image_ops.translate_y, _shift_y, image_ops.translate_y_maps
        ),
        RandAugmentOp(
            "rotate", "geometric", image_ops.rotate, _signed(30.0), image_ops.rotation_maps
        ),
        RandAugmentOp("brightness", "blend", image_ops.brightness, _blend_factor),
        RandAugmentOp("color", "blend", image_ops.color, _blend_factor),
        RandAugmentOp("contrast", "blend", image_ops.contrast, _blend_factor),
        RandAugmentOp("sharpness", "blend", image_ops.sharpness, _blend_factor),
        RandAugmentOp(
            "posterize", "table", image_ops.posterize, _posterize_bits, lut=image_ops.posterize_lut
        ),
        RandAugmentOp(
            "solarize", "table", image_ops.solarize, _solarize_threshold,
            lut=image_ops.solarize_lut,
        ),  # fmt: skip
        RandAugmentOp("autocontrast", "table", image_ops.autocontrast),
        RandAugmentOp("equalize", "table", image_ops.equalize),
    )
}


def _family(family: str) -> tuple[str, ...]:
    """The names of the ops of ``family``, in the table's order."""
    return tuple(name for name, op in RAND_AUGMENT_OPS.items() if op.family == family)


GEOMETRIC, BLENDS, TABLES = _family("geometric"), _family("blend"), _family("table")


@dataclass(frozen=True)
class RandAugmentRound:
    """One round of RandAugment for a batch of ``B`` images: what each image drew.

    ``drawn`` names the ops at least one image drew (on the host: it says
    which passes run). The rest are per-image arrays, each the identity for
    an image that drew an op of another family: ``matrix`` ``(B, 2, 3)``
    float32 (the geometric op's map), ``factor`` ``(B,)`` float32 (the
    blend's), ``table`` ``(B, 256)`` uint8 (posterize's or solarize's lookup
    table); and masks of the images that drew each op whose degenerate image
    or table comes from the image itself: ``color``, ``contrast``,
    ``sharpness`` ``(B, 1, 1, 1)``, ``autocontrast``, ``equalize`` ``(B, 1, 1)``.
    """

    drawn: frozenset
    matrix: np.ndarray
    factor: np.ndarray
    table: np.ndarray
    color: np.ndarray
    contrast: np.ndarray
    sharpness: np.ndarray
    autocontrast: np.ndarray
    equalize: np.ndarray

    def runs(self, family: str) -> bool:
        """Whether any image drew an op of ``family`` this round."""
        return any(RAND_AUGMENT_OPS[name].family == family for name in self.drawn)


def check_ops(names, magnitude, num_magnitude_bins) -> tuple[str, ...]:
    """The op names to draw from (all of ``RAND_AUGMENT_OPS`` for None), after checking
    them and that ``magnitude`` lies on the scale of ``num_magnitude_bins``."""
    names = tuple(RAND_AUGMENT_OPS) if names is None else tuple(names)
    unknown = [name for name in names if name not in RAND_AUGMENT_OPS]
    if unknown or not names:
        known = tuple(RAND_AUGMENT_OPS)
        raise ValueError(f"unknown RandAugment ops {unknown}: choose from {known}")
    if not 0 <= magnitude <= num_magnitude_bins - 1:
        raise ValueError(f"magnitude {magnitude} is outside 0..{num_magnitude_bins - 1}")
    return names


def draw_rounds(rng, shape, num_ops=2, magnitude=9, num_magnitude_bins=31, names=None):
    """RandAugment's draws for a batch of ``shape``: a tuple of ``num_ops`` rounds."""
    names = check_ops(names, magnitude, num_magnitude_bins)
    m = magnitude / (num_magnitude_bins - 1)
    return tuple(_draw_round(rng, shape, names, m) for _ in range(num_ops))


def _draw_round(rng, shape, names, m) -> RandAugmentRound:
    """One round: each image's op (uniform over ``names``) and sign, then their arrays."""
    n, _, h, w = shape
    choice = rng.integers(0, len(names), size=n)  # (B,) one op per image
    signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)  # (B,)
    chosen = {name: np.flatnonzero(choice == k) for k, name in enumerate(names)}
    chosen = {name: index for name, index in chosen.items() if index.size}
    matrix = np.broadcast_to(np.eye(2, 3), (n, 2, 3)).copy()  # (B, 2, 3)
    factor = np.ones(n, dtype=np.float32)
    table = np.broadcast_to(np.arange(256, dtype=np.uint8), (n, 256)).copy()
    for name, index in chosen.items():
        op = RAND_AUGMENT_OPS[name]
        if op.argument is None:
            continue
        value = op.argument(m, signs[index], h, w)
        if op.family == "geometric":
            matrix[index] = op.maps(value, index.size)
        elif op.family == "blend":
            factor[index] = image_ops.per_image(value, index.size)
        else:
            table[index] = op.lut(value)

    def mask(name, dims):  # (B, 1, ...) bool: the images that drew `name`
        drew = np.zeros(n, dtype=bool)
        drew[chosen.get(name, [])] = True
        return drew.reshape(n, *(1,) * dims)

    return RandAugmentRound(
        drawn=frozenset(chosen), matrix=matrix.astype(np.float32), factor=factor, table=table,
        color=mask("color", 3), contrast=mask("contrast", 3), sharpness=mask("sharpness", 3),
        autocontrast=mask("autocontrast", 2), equalize=mask("equalize", 2),
    )  # fmt: skip


def apply_rounds(images, rounds, fill: int = 128):
    """Drawn rounds (on the images' device) on uint8 ``images``: each round one affine
    resampling, one blend and one table lookup, each skipped when no image drew its family."""
    for r in rounds:
        if r.runs("geometric"):
            images = image_ops.affine(images, r.matrix, fill)
        if r.runs("blend"):
            images = _blend_pass(images, r)
        if r.runs("table"):
            images = _table_pass(images, r)
    return images


def _blend_pass(images, r: RandAugmentRound):
    """Every image blended with its op's degenerate image (black for brightness and for
    images that drew no blend, whose factor is 1)."""
    xp = xp_of(images)
    degenerate = xp.zeros((1, 1, 1, 1), xp.int32)  # brightness blends with black
    if "color" in r.drawn or "contrast" in r.drawn:
        gray = image_ops.gray(images, xp)  # (B, H, W)
        if "color" in r.drawn:
            degenerate = xp.where(r.color, gray[:, None], degenerate)
        if "contrast" in r.drawn:
            degenerate = xp.where(r.contrast, image_ops.mean_gray(gray), degenerate)
    if "sharpness" in r.drawn:
        degenerate = xp.where(r.sharpness, image_ops.smooth(images), degenerate)
    return image_ops.blend(degenerate, images, r.factor)


def _table_pass(images, r: RandAugmentRound):
    """Every channel through its lookup table: the drawn one, or the image's own
    (autocontrast, equalize)."""
    xp = xp_of(images)
    b, c, _, _ = images.shape
    lut = r.table[:, None, :]  # (B, 1, 256): the same table for every channel
    index = image_ops.lut_index(images)  # (B*C, H*W)
    if "autocontrast" in r.drawn:
        lut = xp.where(r.autocontrast, image_ops.autocontrast_lut(images).reshape(b, c, 256), lut)
    if "equalize" in r.drawn:
        lut = xp.where(r.equalize, image_ops.equalize_lut(images, index).reshape(b, c, 256), lut)
    lut = xp.broadcast_to(lut, (b, c, 256)).reshape(b * c, 256)  # (B*C, 256)
    return image_ops.apply_lut(images, lut, index)


def rand_augment(
    images,
    rng: np.random.Generator,
    num_ops: int = 2,
    magnitude: float = 9,
    num_magnitude_bins: int = 31,
    fill: int = 128,
    ops=None,
):
    """RandAugment: ``num_ops`` rounds, each applying one random op to each image.

    Each image draws its own op every round (uniformly from ``ops``, default
    all 14 of ``RAND_AUGMENT_OPS``); every op then runs once on the images
    that drew it.
    The strength is ``magnitude`` on torchvision's scale of
    ``num_magnitude_bins - 1`` steps (9 of 30: rotations of 9 degrees);
    timm and the paper count to 10, which is ``num_magnitude_bins=11``.
    Geometric ops fill uncovered pixels with ``fill`` (128, gray, is about 0
    once normalized).
    """
    checks.uint8_images(images, "rand_augment", on_host=False)
    rounds = draw_rounds(rng, images.shape, num_ops, magnitude, num_magnitude_bins, ops)
    out = apply_rounds(images, plans.to_device(rounds, device_of(images)), fill)
    return images.copy() if out is images else out  # a new array even when no op ran


__all__ = [
    "BLENDS",
    "FAMILIES",
    "GEOMETRIC",
    "RAND_AUGMENT_OPS",
    "RandAugmentOp",
    "RandAugmentRound",
    "TABLES",
    "apply_rounds",
    "draw_rounds",
    "rand_augment",
]
