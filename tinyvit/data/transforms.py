"""From bytes to network inputs: normalization, and the basic augmentation (crop and flip).

``normalize`` turns uint8 images into the network's float inputs, ``(x /
255 - mean) / std`` per channel with CIFAR-10's statistics. The basic
augmentation of the CIFAR-10 recipe since the ResNet paper is a random crop
of the image padded by 4 pixels (``random_crop``) and a left-right flip
(``horizontal_flip``); each draws its parameters first (``CropPlan``,
``FlipPlan``, see ``tinyvit.data.plans``) and applies them to the whole
batch at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..backend import device_of, xp_of
from . import plans
from .cifar10 import MEAN, STD


def normalize(images, mean=MEAN, std=STD, dtype=np.float32):
    """uint8 images ``(B, C, H, W)`` to ``(x / 255 - mean) / std`` per channel, in ``dtype``."""
    xp = xp_of(images)
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"images have {channels} channels, but mean/std have {len(mean)}/{len(std)}"
        )
    scale, shift = _normalization(xp, np.dtype(dtype), tuple(mean), tuple(std))
    out = images.astype(dtype)  # (B, C, H, W)
    out *= scale
    out += shift
    return out


@functools.lru_cache(maxsize=16)
def _normalization(xp, dtype, mean, std):
    """``normalize``'s scale and shift, ``(1, C, 1, 1)`` each, made once per device and dtype
    (on a GPU, not copied over again with every batch)."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    # One multiply and one add: x * 1/(255 std) - mean/std.
    scale = xp.asarray(1.0 / (255.0 * std), dtype=dtype).reshape(1, len(mean), 1, 1)
    shift = xp.asarray(-mean / std, dtype=dtype).reshape(1, len(mean), 1, 1)
    return scale, shift


@dataclass(frozen=True)
class CropPlan:
    """``random_crop``'s draws for a batch: each image's window in the padded image.

    ``top`` and ``left`` ``(B,)`` are the window's corner, ``rows`` ``(B,)``
    is ``0 .. B-1`` (the image each window is cut from).
    """

    padding: int
    top: np.ndarray
    left: np.ndarray
    rows: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, padding: int) -> CropPlan:
        """One window corner per image, each uniform in ``0 .. 2 * padding``."""
        offsets = rng.integers(0, 2 * padding + 1, size=(2, n))
        return cls(padding, offsets[0], offsets[1], np.arange(n))

    def apply(self, images, fill: int = 0):
        """The windows of ``images`` padded with ``fill`` (the plan on the images' device).

        No loop over images: a strided *view* holds every window position of
        the padded batch, ``(B, C, 2p+1, 2p+1, H, W)``, without copying, and
        one fancy index picks a position per image.
        """
        xp = xp_of(images)
        b, c, h, w = images.shape
        p = self.padding
        padded = xp.pad(images, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
        sb, sc, sh, sw = padded.strides  # (B, C, H + 2p, W + 2p)
        windows = xp.lib.stride_tricks.as_strided(
            padded, shape=(b, c, 2 * p + 1, 2 * p + 1, h, w), strides=(sb, sc, sh, sw, sh, sw)
        )
        return xp.ascontiguousarray(windows[self.rows, :, self.top, self.left])  # (B, C, H, W)


def random_crop(images, padding: int, rng: np.random.Generator, fill: int = 0):
    """Pad each image by ``padding`` pixels of ``fill`` and cut a random window of the old size."""
    p = int(padding)
    if p == 0:
        return images.copy()
    plan = plans.to_device(CropPlan.draw(rng, images.shape[0], p), device_of(images))
    return plan.apply(images, fill)


@dataclass(frozen=True)
class FlipPlan:
    """``horizontal_flip``'s draw for a batch: ``flip`` ``(B,)`` bool, which images mirror."""

    flip: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, p: float = 0.5) -> FlipPlan:
        """Each of ``n`` images mirrored with probability ``p``."""
        return cls(rng.random(n) < p)

    def apply(self, images):
        """``images`` with the drawn ones mirrored (the plan on the images' device)."""
        return xp_of(images).where(self.flip[:, None, None, None], images[..., ::-1], images)


def horizontal_flip(images, rng: np.random.Generator, p: float = 0.5):
    """Mirror each image left-right with probability ``p``."""
    plan = plans.to_device(FlipPlan.draw(rng, images.shape[0], p), device_of(images))
    return plan.apply(images)


__all__ = ["CropPlan", "FlipPlan", "horizontal_flip", "normalize", "random_crop"]
