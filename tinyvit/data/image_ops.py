"""RandAugment's image operations, each on a whole uint8 batch ``(B, C, H, W)``.

RandAugment (Cubuk et al. 2020), the augmentation of the paper's successors'
training recipes (DeiT, "How to train your ViT"), picks among fourteen
operations; here they are, one function each, for NumPy or CuPy arrays. An
argument is a number, or a NumPy array with one value per image.

* Color: ``brightness``, ``color``, ``contrast``, ``sharpness`` blend each
  image with a degenerate version of it (black, gray, its mean gray, a
  smoothed copy); ``posterize``, ``solarize``, ``autocontrast``,
  ``equalize`` map every value through a lookup table. They follow Pillow's
  ``ImageEnhance`` / ``ImageOps`` exactly (integer gray levels, results
  truncated to uint8), as torchvision and timm do.
* Geometric: ``rotate``, ``shear_x``, ``shear_y``, ``translate_x``,
  ``translate_y`` resample each image through its own affine map
  (``affine``, nearest neighbor); the maps themselves (``rotation_maps`` ...)
  are separate functions, so RandAugment can draw them for a whole batch.
"""

from __future__ import annotations

import functools

import numpy as np

from ..backend import xp_of


def per_image(value, n: int, dtype=np.float32) -> np.ndarray:
    """A number, or one number per image, as a NumPy array of length ``n``."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=dtype), (n,)))


def identity(images):
    """The images as they are (RandAugment draws it like any other op)."""
    return images


# ---------------------------------------------------------------------------
# Blends: degenerate + factor * (image - degenerate)
# ---------------------------------------------------------------------------


def gray(images, xp):
    """Pillow's luma, ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``: int32 ``(B, H, W)``."""
    rgb = images.astype(xp.int32)
    return (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16


def blend(degenerate, images, factor):
    """``degenerate + factor * (images - degenerate)``, clipped and truncated to uint8.

    factor 1 gives the images back, 0 the degenerate image, and > 1
    extrapolates away from it (more contrast, more color, sharper).
    """
    xp = xp_of(images)
    if not isinstance(factor, xp.ndarray):  # numbers from the host (a batch's plan is there)
        factor = xp.asarray(per_image(factor, images.shape[0]))
    factor = factor.reshape(-1, 1, 1, 1)
    degenerate = degenerate.astype(xp.float32)  # never float64
    out = degenerate + factor * (images.astype(xp.float32) - degenerate)
    return xp.clip(out, 0, 255).astype(xp.uint8)


def brightness(images, factor):
    """Scale every pixel by ``factor``: 0 is black, 1 the image, 2 twice as bright."""
    xp = xp_of(images)
    return blend(xp.zeros((1, 1, 1, 1), xp.float32), images, factor)


def color(images, factor):
    """Saturation: blend with the image's gray version (0 gray, 1 the image, 2 more vivid)."""
    xp = xp_of(images)
    return blend(gray(images, xp)[:, None], images, factor)  # gray (B, 1, H, W)


def contrast(images, factor):
    """Blend with the mean gray level of each image (0 flat gray, 1 the image)."""
    return blend(mean_gray(gray(images, xp_of(images))), images, factor)


def mean_gray(gray_levels):
    """Each image's mean gray level ``(B, 1, 1, 1)``, rounded half up as Pillow does."""
    xp = xp_of(gray_levels)
    pixels = gray_levels.shape[1] * gray_levels.shape[2]
    total = gray_levels.sum(axis=(1, 2), dtype=xp.int64)
    return ((2 * total + pixels) // (2 * pixels)).reshape(-1, 1, 1, 1)


def sharpness(images, factor):
    """Blend with a smoothed image (0 blurred, 1 the image, 2 sharper); borders stay as they are.

    The smoothing is Pillow's SMOOTH filter: weight 5 at the center, 1 on the
    eight neighbors, divided by 13 and rounded.
    """
    return blend(smooth(images), images, factor)


def smooth(images):
    """Pillow's SMOOTH filter on the inside of each channel, int32 ``(B, C, H, W)``."""
    xp = xp_of(images)
    x = images.astype(xp.int32)
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]  # (B, C, H-2, W): vertical 3-sums
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (B, C, H-2, W-2): 3x3 sums
    total = box + 4 * x[:, :, 1:-1, 1:-1]  # center weight 5 = 1 in the box + 4
    smoothed = x.copy()
    smoothed[:, :, 1:-1, 1:-1] = (2 * total + 13) // 26  # total / 13, rounded half up
    return smoothed


# ---------------------------------------------------------------------------
# Lookup tables: every value through a table of 256 entries
# ---------------------------------------------------------------------------


def posterize(images, bits):
    """Keep the top ``bits`` bits of every value (8 keeps the image, 1 leaves two levels)."""
    xp = xp_of(images)
    bits = per_image(bits, images.shape[0], np.int64)
    mask = ((0xFF << (8 - bits)) & 0xFF).astype(np.uint8)  # (B,)
    return images & xp.asarray(mask).reshape(-1, 1, 1, 1)


def posterize_lut(bits: int) -> np.ndarray:
    """``posterize``'s map as a lookup table: uint8 ``(256,)``, every value's top ``bits``."""
    return np.arange(256, dtype=np.uint8) & ((0xFF << (8 - bits)) & 0xFF)


def solarize(images, threshold):
    """Invert every value at or above ``threshold`` (256 keeps the image, 0 inverts it all)."""
    xp = xp_of(images)
    threshold = xp.asarray(per_image(threshold, images.shape[0])).reshape(-1, 1, 1, 1)
    return xp.where(images >= threshold, 255 - images, images)


def solarize_lut(threshold: float) -> np.ndarray:
    """``solarize``'s map as a lookup table: uint8 ``(256,)`` (the threshold in float32)."""
    value = np.arange(256, dtype=np.uint8)
    return np.where(value >= np.float32(threshold), 255 - value, value)


def lut_index(images):
    """``channel * 256 + value`` for every pixel: int64 ``(B*C, H*W)``, one row per channel."""
    xp = xp_of(images)
    b, c, h, w = images.shape
    return _channel_rows(xp, b * c) + images.reshape(b * c, h * w).astype(xp.int64)


@functools.lru_cache(maxsize=16)
def _channel_rows(xp, channels):
    """``channel * 256`` for each of ``channels`` channels, ``(channels, 1)`` int64, made once."""
    return xp.arange(channels, dtype=xp.int64)[:, None] * 256


def apply_lut(images, lut, index):
    """Each pixel's new value from its channel's row of ``lut`` ``(B*C, 256)``."""
    xp = xp_of(images)
    lut = xp.clip(lut, 0, 255).astype(xp.uint8)
    return lut.ravel()[index].reshape(images.shape)  # (B, C, H, W)


def autocontrast(images):
    """Stretch each channel of each image so its darkest value is 0 and its brightest 255.

    As Pillow's ``ImageOps.autocontrast``: a lookup table per channel,
    ``lut[v] = int(v * scale + offset)`` with ``scale = 255 / (high - low)``
    and ``offset = -low * scale``; a flat channel stays as it is.
    """
    return apply_lut(images, autocontrast_lut(images), lut_index(images))


def autocontrast_lut(images):
    """``autocontrast``'s lookup tables, int64 ``(B*C, 256)``."""
    xp = xp_of(images)
    b, c, _, _ = images.shape
    low = images.min(axis=(2, 3)).reshape(b * c, 1).astype(xp.float64)  # (B*C, 1)
    high = images.max(axis=(2, 3)).reshape(b * c, 1).astype(xp.float64)
    flat = high <= low
    scale = 255.0 / xp.where(flat, 1.0, high - low)
    offset = -low * scale
    value = xp.arange(256, dtype=xp.float64)[None, :]  # (1, 256); the table is float64, tiny
    return xp.where(flat, value, value * scale + offset).astype(xp.int64)  # truncated


def equalize(images):
    """Histogram equalization of each channel of each image (Pillow's ``ImageOps.equalize``).

    All B*C histograms come from one ``bincount`` over ``channel * 256 +
    value``; the same index then reads each pixel's new value from its
    channel's lookup table.
    """
    index = lut_index(images)  # (B*C, H*W)
    return apply_lut(images, equalize_lut(images, index), index)


def equalize_lut(images, index):
    """``equalize``'s lookup tables, int64 ``(B*C, 256)``, from ``lut_index(images)``."""
    xp = xp_of(images)
    b, c, h, w = images.shape
    hist = xp.bincount(index.ravel(), minlength=b * c * 256).reshape(b * c, 256)
    # Pillow: step = (pixels - count of the brightest value present) // 255,
    # lut[v] = (pixels below v + step // 2) // step, and no change where step is 0.
    brightest = images.reshape(b * c, h * w).max(axis=1).astype(xp.int64)  # (B*C,)
    last = xp.take_along_axis(hist, brightest[:, None], axis=1)[:, 0]
    step = (h * w - last) // 255  # (B*C,)
    below = xp.cumsum(hist, axis=1) - hist  # (B*C, 256): pixels darker than each value
    lut = (below + (step // 2)[:, None]) // xp.maximum(step, 1)[:, None]
    return xp.where(step[:, None] > 0, lut, xp.arange(256)[None, :])


# ---------------------------------------------------------------------------
# Geometric: each image resampled through its own affine map
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _pixel_grid(xp, b, c, h, w):
    """Constants of ``affine`` for ``(B, C, H, W)`` images, made once per device and shape.

    ``x`` ``(1, W)`` and ``y`` ``(H, 1)``: pixel positions from the image center;
    ``center`` ``(1, 2, 1, 1)``: the center's own position, x then y; ``size``
    ``(1, 2, 1, 1)``: the width and height; ``planes`` ``(B, C, 1, 1)``: where
    each channel of each image starts in the flat batch.
    """
    y = xp.arange(h, dtype=xp.float32)[:, None] - (h - 1) / 2  # (H, 1)
    x = xp.arange(w, dtype=xp.float32)[None, :] - (w - 1) / 2  # (1, W)
    center = xp.asarray([(w - 1) / 2, (h - 1) / 2], dtype=xp.float32).reshape(1, 2, 1, 1)
    size = xp.asarray([w, h], dtype=xp.int32).reshape(1, 2, 1, 1)
    planes = xp.arange(b * c, dtype=xp.int32).reshape(b, c, 1, 1) * (h * w)
    return x, y, center, size, planes


def affine(images, matrices, fill: int = 0):
    """Resample each image through its own affine map (nearest neighbor).

    ``matrices`` is ``(B, 2, 3)`` (or one ``(2, 3)`` for all), a NumPy array
    or one on the images' device: output pixel ``(x, y)``, measured from the
    image center, takes its value from input point ``matrices @ (x, y, 1)``,
    also from the center. Points that fall outside the image get ``fill``.
    """
    xp = xp_of(images)
    b, c, h, w = images.shape
    if not isinstance(matrices, xp.ndarray):  # from the host
        matrices = xp.asarray(
            np.ascontiguousarray(np.broadcast_to(np.asarray(matrices, np.float32), (b, 2, 3)))
        )
    x, y, center, size, planes = _pixel_grid(xp, b, c, h, w)
    m = matrices[:, :, :, None, None]  # (B, 2, 3, 1, 1) to broadcast over the pixel grid
    # Both source coordinates at once, x then y: (B, 2, H, W).
    source = m[:, :, 0] * x + m[:, :, 1] * y + m[:, :, 2] + center
    nearest = xp.floor(source + 0.5).astype(xp.int32)  # (B, 2, H, W)
    inside = ((nearest >= 0) & (nearest < size)).all(axis=1)  # (B, H, W)
    nearest = xp.clip(nearest, 0, size - 1)
    pixel = nearest[:, 1] * w + nearest[:, 0]  # (B, H, W): row * W + column
    out = images.reshape(-1).take(planes + pixel[:, None])  # (B, C, H, W)
    return xp.where(inside[:, None], out, images.dtype.type(fill))


def _maps(n, a=0.0, b=0.0, c=0.0, d=0.0, e=0.0, f=0.0):
    """Per-image inverse maps ``[[a, b, c], [d, e, f]]`` as a NumPy array ``(n, 2, 3)``."""
    rows = [per_image(v, n, np.float64) for v in (a, b, c, d, e, f)]
    return np.stack(rows, axis=-1).reshape(n, 2, 3)


def rotation_maps(degrees, n: int) -> np.ndarray:
    """``rotate``'s inverse maps, float64 ``(n, 2, 3)``."""
    t = np.radians(per_image(degrees, n, np.float64))
    cos, sin = np.cos(t), np.sin(t)
    return _maps(n, cos, -sin, 0, sin, cos, 0)


def shear_x_maps(factor, n: int) -> np.ndarray:
    """``shear_x``'s inverse maps, float64 ``(n, 2, 3)``."""
    return _maps(n, 1, -np.asarray(factor), 0, 0, 1, 0)


def shear_y_maps(factor, n: int) -> np.ndarray:
    """``shear_y``'s inverse maps, float64 ``(n, 2, 3)``."""
    return _maps(n, 1, 0, 0, -np.asarray(factor), 1, 0)


def translate_x_maps(pixels, n: int) -> np.ndarray:
    """``translate_x``'s inverse maps, float64 ``(n, 2, 3)``."""
    return _maps(n, 1, 0, -np.asarray(pixels), 0, 1, 0)


def translate_y_maps(pixels, n: int) -> np.ndarray:
    """``translate_y``'s inverse maps, float64 ``(n, 2, 3)``."""
    return _maps(n, 1, 0, 0, 0, 1, -np.asarray(pixels))


def rotate(images, degrees, fill: int = 0):
    """Rotate counter-clockwise (as seen on screen) by ``degrees`` about the center."""
    return affine(images, rotation_maps(degrees, images.shape[0]), fill)


def shear_x(images, factor, fill: int = 0):
    """Slide each row sideways by ``factor`` times its distance below the center row."""
    return affine(images, shear_x_maps(factor, images.shape[0]), fill)


def shear_y(images, factor, fill: int = 0):
    """Slide each column down by ``factor`` times its distance right of the center column."""
    return affine(images, shear_y_maps(factor, images.shape[0]), fill)


def translate_x(images, pixels, fill: int = 0):
    """Move the picture right by ``pixels`` (left if negative)."""
    return affine(images, translate_x_maps(pixels, images.shape[0]), fill)


def translate_y(images, pixels, fill: int = 0):
    """Move the picture down by ``pixels`` (up if negative)."""
    return affine(images, translate_y_maps(pixels, images.shape[0]), fill)


__all__ = [
    "affine",
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "identity",
    "posterize",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
]
