"""Resampling on a grid: images to a new resolution, attention maps over an image, and
the 2-D interpolation of position embeddings (paper Section 3.2).

Fine-tuning at a higher resolution keeps the patch size, so the grid of
patches grows, and "we perform 2D interpolation of the pre-trained position
embeddings, according to their location in the original image". The same
interpolation enlarges CIFAR-10's 32 x 32 images for such a model, and
stretches a ``g x g`` attention map over the picture it belongs to.

All of it is one idea. Resampling a length-``n_in`` signal to ``n_out``
samples is a matrix ``R`` of shape ``(n_out, n_in)``
(``interpolation_matrix``), and a 2-D grid is resampled one axis at a time,
``out = R_rows @ grid @ R_cols^T`` (``interpolate``). Sample ``i`` of the
output sits at ``(i + 0.5) * n_in / n_out - 0.5`` in input coordinates (pixel
centers aligned: PyTorch's ``align_corners=False``) and mixes the input
samples around it: the nearest one, two (bilinear) or four (bicubic).
"""

from __future__ import annotations

import math

import numpy as np

from .backend import xp_of

MODES = ("nearest", "bilinear", "bicubic")


def _cubic(t, a=-0.75):
    """Keys' cubic convolution kernel (a = -0.75, as PyTorch's bicubic uses)."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1  # |t| <= 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a  # 1 < |t| < 2
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def interpolation_matrix(n_in, n_out, mode="bicubic"):
    """The ``(n_out, n_in)`` float64 matrix that resamples a length-``n_in`` signal to ``n_out``.

    ``"nearest"`` takes input sample ``floor(i * n_in / n_out)`` (PyTorch's
    ``mode="nearest"``: for a whole factor ``k``, every input sample repeated
    ``k`` times); ``"bilinear"`` and ``"bicubic"`` mix two and four samples
    around the output sample's position, indices past the border clamped to
    the edge.
    """
    if mode not in MODES:
        raise ValueError(f"interpolation must be one of {MODES}, not {mode!r}")
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resample {n_in} samples to {n_out}: both must be >= 1")
    matrix = np.zeros((n_out, n_in))
    if mode == "nearest":
        index = np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(int), n_in - 1)
        matrix[np.arange(n_out), index] = 1.0
        return matrix
    source = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    if mode == "bilinear":
        source = np.maximum(source, 0.0)
        taps = (0, 1)
    else:
        taps = (-1, 0, 1, 2)
    left = np.floor(source).astype(int)
    frac = source - left
    for tap in taps:
        index = np.clip(left + tap, 0, n_in - 1)
        weight = 1.0 - np.abs(frac - tap) if mode == "bilinear" else _cubic(frac - tap)
        np.add.at(matrix, (np.arange(n_out), index), weight)
    return matrix


def interpolate(x, size, mode="bilinear"):
    """Resample float arrays ``(..., H, W)`` to ``(..., rows, cols)``, as
    ``torch.nn.functional.interpolate`` does with ``align_corners=False``.

    ``size`` is an int (a square) or ``(rows, cols)``. Images ``(B, C, H, W)``
    and maps ``(B, g, g)`` alike; the result keeps ``x``'s dtype and device,
    and is ``x`` itself when the size is already right.
    """
    if getattr(x, "ndim", 0) < 2 or getattr(x, "dtype", np.dtype(object)).kind != "f":
        raise TypeError(
            f"interpolate needs a float array (..., H, W), got shape "
            f"{tuple(getattr(x, 'shape', ()))}, {getattr(x, 'dtype', type(x).__name__)}"
        )
    rows, cols = (size, size) if isinstance(size, int) else tuple(size)
    H, W = x.shape[-2:]
    if (H, W) == (rows, cols):
        return x
    xp = xp_of(x)
    r_rows = xp.asarray(interpolation_matrix(H, rows, mode), dtype=x.dtype)  # (rows, H)
    r_cols = xp.asarray(interpolation_matrix(W, cols, mode), dtype=x.dtype)  # (cols, W)
    return xp.ascontiguousarray(r_rows @ x @ r_cols.T)  # (..., rows, cols)


def resample_pos_embed(
    pos_embed, new_grid, interpolation="bicubic", num_prefix_tokens=1, old_grid=None
):
    """Resample ``(1, prefix + g*g, D)`` position embeddings to a ``new_grid`` of patches.

    Section 3.2's "2D interpolation of the pre-trained position embeddings":
    the class token's row is kept as it is; the grid of patch embeddings is
    interpolated to ``new_grid`` (an int or ``(rows, cols)``), ``new = R_rows
    @ grid @ R_cols^T`` channel by channel. The grid they come from is square
    unless ``old_grid`` says ``(rows, cols)``. A NumPy or CuPy array; the
    result is on its device, in its dtype (the sums in float64).
    """
    xp = xp_of(pos_embed)
    rows, cols = (new_grid, new_grid) if isinstance(new_grid, int) else new_grid
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
    if old_grid is None:
        side = math.isqrt(grid.shape[0])
        if side * side != grid.shape[0]:
            raise ValueError(
                f"position embeddings of {grid.shape[0]} patches are not a square grid "
                "(old_grid=(rows, cols) names a rectangular one)"
            )
        old_grid = side
    old_rows, old_cols = (old_grid, old_grid) if isinstance(old_grid, int) else old_grid
    if old_rows * old_cols != grid.shape[0]:
        raise ValueError(
            f"position embeddings of {grid.shape[0]} patches are not a grid of "
            f"{old_rows} x {old_cols} patches"
        )
    grid = grid.reshape(old_rows, old_cols, -1).astype(np.float64)  # (g_r, g_c, D)
    r_rows = xp.asarray(interpolation_matrix(old_rows, rows, interpolation))  # (rows, g_r)
    r_cols = xp.asarray(interpolation_matrix(old_cols, cols, interpolation))  # (cols, g_c)
    new = xp.einsum("ij,jkd,lk->ild", r_rows, grid, r_cols)  # (rows, cols, D)
    new = new.reshape(1, rows * cols, -1).astype(pos_embed.dtype)
    return xp.concatenate([prefix, new], axis=1)  # (1, prefix + rows*cols, D)


__all__ = ["MODES", "interpolate", "interpolation_matrix", "resample_pos_embed"]
