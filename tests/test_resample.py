"""Resampling: the interpolation matrices against PyTorch's interpolate (nearest,
bilinear, bicubic), images and maps resized on their own device in their own
dtype, and the position embeddings' 2-D interpolation with the class token kept."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvit.backend import to_numpy
from tinyvit.resample import interpolate, interpolation_matrix, resample_pos_embed


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resampling_to_the_same_grid_changes_nothing(mode):
    pe = np.random.default_rng(0).standard_normal((1, 1 + 7 * 7, 5))
    np.testing.assert_allclose(resample_pos_embed(pe, 7, mode), pe, atol=1e-15)
    np.testing.assert_allclose(interpolation_matrix(7, 7, mode), np.eye(7), atol=1e-15)


def test_bilinear_reproduces_a_linear_ramp_inside():
    ramp = np.arange(6.0)  # samples at pixel centers 0..5
    up = interpolation_matrix(6, 12, "bilinear") @ ramp
    centers = (np.arange(12) + 0.5) * 0.5 - 0.5
    inside = (centers >= 0) & (centers <= 5)
    np.testing.assert_allclose(up[inside], centers[inside])


def test_nearest_repeats_each_sample_for_a_whole_factor():
    np.testing.assert_array_equal(interpolation_matrix(3, 6, "nearest") @ [1.0, 2.0, 3.0],
                                  [1, 1, 2, 2, 3, 3])  # fmt: skip


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("sizes", [(4, 6), (6, (9, 5)), (8, 3), (5, 12)])
def test_interpolate_matches_torch(mode, sizes):
    torch = pytest.importorskip("torch")
    old, new = sizes
    rows, cols = (new, new) if isinstance(new, int) else new
    x = np.random.default_rng(1).standard_normal((2, 3, old, old))
    ours = interpolate(x, new, mode)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(rows, cols), mode=mode,
        **({} if mode == "nearest" else {"align_corners": False}),
    )  # fmt: skip
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-12)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("grids", [(4, 6), (6, (9, 5)), (8, 3)])
def test_position_embeddings_match_torch_and_keep_the_class_token(mode, grids):
    torch = pytest.importorskip("torch")
    old, new = grids
    rows, cols = (new, new) if isinstance(new, int) else new
    pe = np.random.default_rng(1).standard_normal((1, 1 + old * old, 3))
    ours = resample_pos_embed(pe, new, mode)
    grid = torch.from_numpy(pe[0, 1:].reshape(old, old, 3)).permute(2, 0, 1)[None]
    ref = torch.nn.functional.interpolate(grid, size=(rows, cols), mode=mode, align_corners=False)
    np.testing.assert_allclose(
        ours[0, 1:], ref[0].permute(1, 2, 0).reshape(-1, 3).numpy(), atol=1e-12
    )
    np.testing.assert_array_equal(ours[:, :1], pe[:, :1])  # the class token's row is untouched


def test_images_keep_their_dtype_and_device(xp):
    x = xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)), dtype=np.float32)
    up = interpolate(x, 12)
    assert up.shape == (2, 3, 12, 12) and up.dtype == np.float32 and type(up) is type(x)
    assert interpolate(x, 8) is x  # nothing to do
    np.testing.assert_allclose(to_numpy(interpolate(xp.full((1, 3, 4, 4), 2.5), 10)), 2.5)


def test_maps_over_an_image(xp):
    maps = xp.asarray(np.arange(8.0, dtype=np.float32).reshape(2, 2, 2))
    near = to_numpy(interpolate(maps, 8, "nearest"))
    assert near.shape == (2, 8, 8) and near.dtype == np.float32
    np.testing.assert_array_equal(near[1, :4, 4:], 5.0)  # each patch covers 4 x 4 pixels
    smooth = to_numpy(interpolate(maps, 8, "bilinear"))
    assert smooth.min() >= 0 and smooth.max() <= 7


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"one of \('nearest', 'bilinear', 'bicubic'\).*'area'"):
        interpolation_matrix(3, 4, "area")
    with pytest.raises(ValueError, match="cannot resample 3 samples to 0"):
        interpolation_matrix(3, 0)
    with pytest.raises(TypeError, match=r"float array.*\(2, 3, 8, 8\), uint8"):
        interpolate(np.zeros((2, 3, 8, 8), np.uint8), 12)
    with pytest.raises(ValueError, match="square"):
        resample_pos_embed(np.zeros((1, 1 + 6, 2)), 3)
