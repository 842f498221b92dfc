"""Rectangular images: ``ViT(image_size=(H, W))``, its grid of position embeddings resampled
in 2-D, and the attention maps and figures of a rectangular grid of patches."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvit import checks, viz
from tinyvit.interop import adapt, for_finetuning
from tinyvit.resample import resample_pos_embed
from tinyvit.vit import ViT, ViTConfig, count_parameters, sincos_position_embedding


def small(**changes):
    settings = dict(image_size=(16, 24), patch_size=4, num_classes=3, dim=16, depth=2, heads=2,
                    mlp_dim=8)  # fmt: skip
    return ViT(**{**settings, **changes})


def test_image_size_is_a_side_or_a_pair():
    assert ViTConfig(image_size=[32, 32], patch_size=4, num_classes=2, dim=8, depth=1, heads=1,
                     mlp_dim=4).image_size == 32  # fmt: skip  (a square pair is its side)
    config = small().config
    assert config.image_size == (16, 24) and config.grid_size == (4, 6) and config.grid == (4, 6)
    assert checks.image_size("x", (16, 24)) == (16, 24) and checks.as_pair(5) == (5, 5)
    assert checks.parse_image_size("224") == 224
    assert checks.parse_image_size("224x320") == (224, 320)
    with pytest.raises(Exception, match="224 or 224x320"):
        checks.parse_image_size("224x")
    with pytest.raises(ValueError, match=r"patch_size 5 does not divide image_size \(16, 24\)"):
        small(patch_size=5)
    with pytest.raises(ValueError, match=r"pair \(H, W\).*\(1, 2, 3\)"):
        small(image_size=(1, 2, 3))
    with pytest.raises(ValueError, match=r"image_size\[1\] must be an integer >= 1, got 0"):
        small(image_size=(16, 0))


def test_a_rectangular_vit_runs_and_counts_its_parameters():
    model = small()
    assert model.pos_embed.shape == (1, 1 + 4 * 6, 16)
    assert model.patch_embed.grid_size == (4, 6) and model.patch_embed.num_patches == 24
    assert model(np.zeros((2, 3, 16, 24), np.float32)).shape == (2, 3)
    assert count_parameters(**model.config) == model.num_parameters()
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 24\), got \(2, 3, 24, 16\)"):
        model(np.zeros((2, 3, 24, 16), np.float32))
    fixed = small(pos_embed="sincos")
    table = sincos_position_embedding((4, 6), 16)[0, 1:]  # (24, 16): rows of 6 patches
    assert np.allclose(fixed.pos_embed.data[0, 1:], table)
    assert np.allclose(table[1, :4], np.sin(1.0 * 1.0 / 10000 ** (np.arange(4) / 3)))  # col 1
    assert np.allclose(table[6, 8:12], np.sin(1.0 / 10000 ** (np.arange(4) / 3)))  # row 1


def test_position_embeddings_resample_from_and_to_a_rectangle():
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(6.0), indexing="ij")
    grid = np.stack([rows, cols], axis=-1).reshape(1, 24, 2)  # each patch's own (row, col)
    pos = np.concatenate([np.full((1, 1, 2), 7.0), grid], axis=1)
    same = resample_pos_embed(pos, (4, 6), "bilinear", old_grid=(4, 6))
    np.testing.assert_allclose(same, pos)
    wide = resample_pos_embed(pos, (4, 12), "bilinear", old_grid=(4, 6))  # twice the columns
    assert wide.shape == (1, 1 + 48, 2) and wide[0, 0].tolist() == [7.0, 7.0]
    wide = wide[0, 1:].reshape(4, 12, 2)
    np.testing.assert_allclose(wide[..., 0], np.repeat(np.arange(4.0)[:, None], 12, axis=1))
    np.testing.assert_allclose(wide[0, 1:11, 1], (np.arange(1, 11) + 0.5) / 2 - 0.5)  # inside
    square = np.zeros((1, 1 + 9, 2))
    assert resample_pos_embed(square, (3, 6)).shape == (1, 19, 2)
    with pytest.raises(ValueError, match="not a grid of 4 x 5 patches"):
        resample_pos_embed(pos, 8, old_grid=(4, 5))


def test_adapt_takes_a_square_model_to_a_rectangle_and_back():
    square = small(image_size=16)
    wide = for_finetuning(square, image_size=(16, 32))
    assert wide.config.image_size == (16, 32) and wide.pos_embed.shape == (1, 1 + 32, 16)
    assert wide(np.zeros((1, 3, 16, 32), np.float32)).shape == (1, 3)
    config, state = adapt(wide.config, wide.state_dict(), image_size=16)
    assert config["image_size"] == 16 and state["pos_embed"].shape == (1, 17, 16)
    with pytest.raises(ValueError, match=r"\(16, 30\) is not a multiple of the patch size 4"):
        adapt(square.config, square.state_dict(), image_size=(16, 30))


def test_attention_maps_of_a_rectangular_grid(tmp_path):
    model = small()
    rng = np.random.default_rng(0)
    logits, attentions = viz.attend(model, rng.standard_normal((2, 3, 16, 24)).astype(np.float32))
    grid = model.patch_embed.grid_size
    heads = viz.cls_attention(attentions[-1], grid=grid)
    assert heads.shape == (2, 2, 4, 6)
    np.testing.assert_allclose(heads[0, 1].reshape(-1), attentions[-1][0, 1, 0, 1:])
    rollout = viz.attention_rollout(attentions, grid=grid)
    assert rollout.shape == (2, 4, 6)
    assert viz.mean_attention_distance(attentions, 4, grid).shape == (2, 2)
    assert viz.position_similarity(model.pos_embed, grid=grid).shape == (4, 6, 4, 6)
    with pytest.raises(ValueError, match="24 is not a square.*grid=\\(rows, cols\\)"):
        viz.cls_attention(attentions[-1])
    with pytest.raises(ValueError, match="25 tokens are not a class token plus a grid of 5 x 5"):
        viz.attention_rollout(attentions, grid=(5, 5))
    # a patch 4 pixels apart horizontally: the distances follow the grid's rows of 6
    d = viz.patch_distances((4, 6), 4)
    assert d[0, 1] == 4 and d[0, 6] == 4 and d.shape == (24, 24)
    photo = rng.integers(0, 256, (2, 3, 40, 60), dtype=np.uint8)  # at its own resolution
    path = viz.plot_attention_overlays(photo, {"rollout": rollout, "head 1": heads[:, 0]},
                                       tmp_path / "wide.png")  # fmt: skip
    assert path.stat().st_size > 0
    assert viz.plot_position_similarity(model, tmp_path / "pos.png").stat().st_size > 0
    distances = viz.mean_attention_distance(attentions, 4, grid)
    assert viz.plot_figure7(model, distances, tmp_path / "fig7.png").stat().st_size > 0
