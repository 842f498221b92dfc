"""From bytes to network inputs: normalization, and the basic augmentation (crop and flip).

``normalize`` turns images into the network's float inputs, ``(x - mean) /
std`` per channel with CIFAR-10's statistics, ``x`` on the 0..1 scale:
uint8 images (0..255, as the data set's files hold them) are divided by
255, float images must already lie in [0, 1] (as ``plt.imread`` gives a
PNG), and channels-last images ``(B, H, W, C)`` are transposed to the
network's ``(B, C, H, W)``. The basic
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
    """Images to the network's inputs ``(B, C, H, W)``: ``(x - mean) / std`` per channel, in
    ``dtype``, with ``x`` on the 0..1 scale.

    Integer images (uint8, as CIFAR-10's files hold them) are taken as 0..255
    and divided by 255; float images are taken as they are and must lie in
    [0, 1] (what ``matplotlib.pyplot.imread`` gives a PNG); other values are
    refused, not guessed at. ``(B, C, H, W)`` is the layout; channels-last
    ``(B, H, W, C)`` images (imread's, stacked) are transposed to it, told
    apart by C = ``len(mean)`` on the last axis and not on axis 1.
    """
    if not (hasattr(images, "shape") and hasattr(images, "dtype")):
        raise TypeError(
            f"normalize expects an array of images (B, C, H, W), got {type(images).__name__}; "
            "np.asarray(images) makes one"
        )
    channels, shape = len(mean), tuple(images.shape)
    if len(std) != channels:
        raise ValueError(f"mean has {channels} values but std has {len(std)}")
    if len(shape) == 4 and shape[1] != channels and shape[3] == channels:
        images = images.transpose(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    elif len(shape) != 4 or shape[1] != channels:
        raise ValueError(
            f"normalize expects images (B, C, H, W), or channels-last (B, H, W, C), with "
            f"C = {channels} channels (mean and std have {channels} values); got shape {shape}"
            + ("; one image needs a batch axis: images[None]" if len(shape) == 3 else "")
        )
    peak = _peak(images)
    scale, shift = _normalization(xp_of(images), np.dtype(dtype), tuple(mean), tuple(std), peak)
    out = images.astype(dtype, order="C")  # (B, C, H, W)
    out *= scale
    out += shift
    return out


def _peak(images) -> float:
    """255.0 for integer images 0..255, 1.0 for float images in [0, 1]; else an error."""
    kind = images.dtype.kind
    if kind == "u" and images.dtype.itemsize == 1:
        return 255.0  # uint8: every value is in range
    expected = "normalize takes integer images 0..255 (uint8) or float images in [0, 1]"
    if kind not in "uif":
        raise TypeError(f"{expected}, got {images.dtype}")
    peak = 1.0 if kind == "f" else 255.0
    if images.size == 0:
        return peak
    low, high = float(images.min()), float(images.max())
    if 0 <= low and high <= peak:
        return peak
    hint = ""
    if kind == "f" and 0 <= low and high <= 255:
        hint = "; float images 0..255 must be divided by 255 first (or made uint8)"
    elif kind == "f" and low < 0:
        hint = "; with values below 0 they look normalized already: pass them to the model"
    raise ValueError(f"{expected}, got {images.dtype} values in [{low:g}, {high:g}]{hint}")


@functools.lru_cache(maxsize=16)
def _normalization(xp, dtype, mean, std, peak):
    """``normalize``'s scale and shift, ``(1, C, 1, 1)`` each, made once per device, dtype and
    scale (on a GPU, not copied over again with every batch)."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    # One multiply and one add: x * 1/(peak std) - mean/std.
    scale = xp.asarray(1.0 / (peak * std), dtype=dtype).reshape(1, len(mean), 1, 1)
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
