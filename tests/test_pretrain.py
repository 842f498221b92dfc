"""Masked patch prediction (Section 4.6): mean-color targets on hand-made images, the
corruption's proportions and seeds, the composed clean path equal to ``forward_features``,
gradients in float64, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvit import Tensor, ViT, backend, gradcheck, manual_seed
from tinyvit.pretrain import (
    KEPT,
    MASKED,
    RANDOM,
    UNTOUCHED,
    Corruption,
    MaskedPatchPrediction,
    class_colors,
    color_view,
    corrupted_view,
    draw_corruption,
    patch_color_classes,
    pretrain,
)

SMALL = dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=2, heads=2, mlp_dim=16)


def small_mpp(device="cpu", dtype=np.float64, seed=0, **overrides):
    manual_seed(seed)
    vit = ViT(**{**SMALL, **overrides}).to(device, dtype)
    return MaskedPatchPrediction(vit)


def raw_images(batch=3, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)


# ---------------------------------------------------------------- targets


def test_mean_color_classes_of_hand_made_patches():
    image = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    image[0, 0, :4, :4] = 255  # patch 0: pure red -> bins (7, 0, 0)
    image[0, :, :4, 4:] = 31  # patch 1: gray 31 -> bins (0, 0, 0): 31 * 8 / 256 < 1
    image[0, :, 4:, :4] = 32  # patch 2: gray 32 -> bins (1, 1, 1)
    image[0, 1, 4:6, 4:] = 64  # patch 3: green half 64, half 0: mean 32 -> bins (0, 1, 0)
    classes = patch_color_classes(image, 4)
    assert classes.shape == (1, 4) and classes.dtype == np.int64
    assert classes.tolist() == [[7 * 64, 0, 64 + 8 + 1, 8]]
    assert patch_color_classes(image, 4, bits=1).tolist() == [[4, 0, 0, 0]]
    np.testing.assert_allclose(class_colors(classes[0, :1]), [[7.5 / 8, 0.5 / 8, 0.5 / 8]])


def test_mean_color_classes_equal_a_float_reference():
    raw = raw_images(batch=5, size=12, seed=3)
    raw[0, :, :3, :3] = 255  # the top bin
    got = patch_color_classes(raw, 3)  # (5, 16)
    means = raw.astype(np.float64).reshape(5, 3, 4, 3, 4, 3).mean(axis=(3, 5))  # (5, 3, 4, 4)
    bins = np.floor(means * 8 / 256).astype(np.int64)
    expected = (bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2]).reshape(5, -1)
    np.testing.assert_array_equal(got, expected)
    assert got.max() < 512 and got[0, 0] == 511


def test_color_targets_reject_bad_images():
    with pytest.raises(TypeError, match="uint8"):
        patch_color_classes(np.zeros((1, 3, 8, 8), np.float32), 4)
    with pytest.raises(TypeError, match=r"\(3, 8, 8\)"):
        patch_color_classes(np.zeros((3, 8, 8), np.uint8), 4)
    with pytest.raises(ValueError, match="3 color channels"):
        patch_color_classes(np.zeros((1, 1, 8, 8), np.uint8), 4)
    with pytest.raises(ValueError, match="3x3 patches"):
        patch_color_classes(np.zeros((1, 3, 8, 8), np.uint8), 3)
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        class_colors([512])


# ---------------------------------------------------------------- the corruption


def test_corruption_proportions_over_many_draws():
    c = draw_corruption(400, 64, np.random.default_rng(0))
    assert c.kind.shape == c.source.shape == (400, 64)
    assert (c.corrupted.sum(axis=1) == 32).all()  # exactly half of every image's patches
    kinds = c.kind[c.corrupted]  # 12,800 corrupted patches
    for kind, share in ((MASKED, 0.8), (RANDOM, 0.1), (KEPT, 0.1)):
        assert abs((kinds == kind).mean() - share) < 0.015, (kind, (kinds == kind).mean())
    own = np.arange(400 * 64).reshape(400, 64)
    swapped = c.kind == RANDOM
    assert (c.source[~swapped] == own[~swapped]).all()  # everyone else keeps its own
    assert (c.source[swapped] != own[swapped]).all()  # a random *other* patch
    assert (c.source[swapped] // 64 != own[swapped] // 64).mean() > 0.9  # mostly other images
    assert np.unique(c.source[swapped]).size > 0.9 * swapped.sum()


def test_corruption_is_a_function_of_the_seed():
    a = draw_corruption(4, 16, np.random.default_rng(7))
    b = draw_corruption(4, 16, np.random.default_rng(7))
    c = draw_corruption(4, 16, np.random.default_rng(8))
    np.testing.assert_array_equal(a.kind, b.kind)
    np.testing.assert_array_equal(a.source, b.source)
    assert not np.array_equal(a.kind, c.kind)


def test_corruption_settings_are_checked():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="sum to 1"):
        draw_corruption(2, 4, rng, replace=(0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="mask_ratio"):
        draw_corruption(2, 4, rng, mask_ratio=0.0)
    with pytest.raises(ValueError, match="at least one image"):
        draw_corruption(0, 4, rng)
    with pytest.raises(ValueError, match="two patches"):
        draw_corruption(1, 1, rng, replace=(0, 1, 0))
    c = draw_corruption(2, 4, rng, mask_ratio=0.25, replace=(0, 0, 1))
    assert (c.kind[c.corrupted] == KEPT).all() and c.corrupted.sum() == 2


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clean_path_is_exactly_forward_features(xp, device, dtype):
    model = small_mpp(device, dtype)
    x = xp.asarray(np.random.default_rng(1).standard_normal((3, 3, 8, 8)), dtype=dtype)
    expected = backend.to_numpy(model.vit.forward_features(x).data)
    np.testing.assert_array_equal(backend.to_numpy(model.encode(x).data), expected)
    untouched = Corruption(np.zeros((3, 4), np.int8), np.arange(12).reshape(3, 4))
    got = model.encode(x, untouched).data  # the blend with all-zero weights changes nothing
    np.testing.assert_array_equal(backend.to_numpy(got), expected)
    assert got.dtype == dtype


def test_each_kind_of_corruption_does_what_it_says(xp, device):
    model = small_mpp(device)
    patches = Tensor(xp.asarray(np.random.default_rng(2).standard_normal((2, 4, 8))))
    kind = np.array([[MASKED, RANDOM, KEPT, UNTOUCHED], [UNTOUCHED, MASKED, UNTOUCHED, RANDOM]])
    source = np.arange(8).reshape(2, 4)
    source[0, 1], source[1, 3] = 6, 0  # (0, 1) takes patch (1, 2); (1, 3) takes (0, 0)
    out = backend.to_numpy(
        model.corrupt_embeddings(patches, Corruption(kind.astype(np.int8), source)).data
    )
    p, mask = backend.to_numpy(patches.data), backend.to_numpy(model.mask_token.data)
    np.testing.assert_array_equal(out[0, 0], mask)
    np.testing.assert_array_equal(out[1, 1], mask)
    np.testing.assert_array_equal(out[0, 1], p[1, 2])
    np.testing.assert_array_equal(out[1, 3], p[0, 0])
    for b, n in ((0, 2), (0, 3), (1, 0), (1, 2)):
        np.testing.assert_array_equal(out[b, n], p[b, n])


def test_predictions_only_for_the_corrupted_patches():
    model = small_mpp(dtype=np.float32)
    raw = raw_images(batch=3)
    c = model.corrupt(3, np.random.default_rng(0))
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    logits = model(x, c)
    assert logits.shape == (6, 512) and logits.dtype == np.float32  # 2 of 4 patches per image
    targets = model.targets(raw, c)
    np.testing.assert_array_equal(targets, patch_color_classes(raw, 4)[c.corrupted])
    loss = model.loss(raw, c)
    assert loss.dtype == np.float32
    assert abs(loss.item() - np.log(512)) < 0.5  # near chance at initialization
    names = [name for name, _ in model.named_parameters()]
    assert names[-3:] == ["mask_token", "head.weight", "head.bias"]
    assert names[0] == "vit.cls_token"


def _all_kinds(model, batch):
    for seed in range(100):
        c = model.corrupt(batch, np.random.default_rng(seed))
        if {MASKED, RANDOM, KEPT} <= set(c.kind.ravel().tolist()):
            return c
    raise AssertionError("no draw with every kind of corruption")


def test_gradients_of_the_pretraining_loss(xp, device):
    model = small_mpp(device, np.float64)
    raw = xp.asarray(raw_images(batch=3, seed=4))
    c = _all_kinds(model, 3)
    params = dict(model.named_parameters())
    checked = {
        k: params[k]
        for k in (
            "mask_token",
            "head.weight",
            "head.bias",
            "vit.patch_embed.proj.weight",
            "vit.pos_embed",
            "vit.cls_token",
            "vit.blocks.0.attn.qkv.weight",
            "vit.norm.weight",
        )
    }
    report = gradcheck(lambda: model.loss(raw, c), (), checked, max_coords=40)
    assert report.ok
    model.zero_grad()
    model.loss(raw, c).backward()
    assert float(abs(model.mask_token.grad).sum()) > 0  # the [mask] embedding learns


def test_a_detached_mask_embedding_would_be_caught():
    model = small_mpp()
    raw, c = raw_images(batch=2, seed=5), None
    c = _all_kinds(model, 2)
    original = model.corrupt_embeddings

    def broken(patches, corruption):  # the [mask] embedding cut off from the graph
        saved = model.mask_token
        model.mask_token = Tensor(saved.data)
        try:
            return original(patches, corruption)
        finally:
            model.mask_token = saved

    model.corrupt_embeddings = broken
    report = gradcheck(
        lambda: model.loss(raw, c), (), [("mask_token", model.mask_token)], raise_on_failure=False
    )
    assert not report.ok


def test_bad_input_is_named():
    model = small_mpp()
    c = model.corrupt(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\), got \(2, 3, 16, 16\)"):
        model(np.zeros((2, 3, 16, 16)), c)
    with pytest.raises(TypeError, match="uint8"):
        model(np.zeros((2, 3, 8, 8), np.uint8), c)
    with pytest.raises(ValueError, match="corruption is for 2 images of 4 patches"):
        model(np.zeros((3, 3, 8, 8)), c)
    with pytest.raises(TypeError, match="uint8"):
        model.loss(np.zeros((2, 3, 8, 8)), c)
    with pytest.raises(ValueError, match="do not match a corruption"):
        model.targets(raw_images(batch=3), c)
    with pytest.raises(TypeError, match="wraps a ViT"):
        MaskedPatchPrediction(object())


def test_pretraining_learns_and_is_seeded():
    rng = np.random.default_rng(6)
    colors = rng.choice([16, 112, 208], size=(64, 3, 1, 1))  # one flat color per image:
    images = (colors + rng.integers(0, 16, (64, 3, 8, 8))).astype(np.uint8)  # neighbors tell
    runs = []
    for _ in range(2):
        model = small_mpp(dtype=np.float32)
        history = pretrain(model, images, 60, batch_size=16, lr=1e-2, seed=1, log=None)
        runs.append((model.state_dict(), history))
    (a, history), (b, _) = runs
    assert all(np.array_equal(a[k], b[k]) for k in a)
    first, last = np.mean([r["loss"] for r in history[:5]]), history[-1]["loss"]
    assert len(history) == 60 and last < first - 2.0, (first, last)


# ---------------------------------------------------------------- pictures


def test_pictures_of_the_corruption_and_of_colors():
    raw = raw_images(batch=2, seed=8)
    kind = np.array([[MASKED, RANDOM, UNTOUCHED, KEPT], [UNTOUCHED] * 4], dtype=np.int8)
    source = np.arange(8).reshape(2, 4)
    source[0, 1] = 7  # takes the last patch of the second image
    view = corrupted_view(raw, Corruption(kind, source), 4)
    assert view.shape == (2, 8, 8, 3) and view.min() >= 0 and view.max() <= 1
    pixels = raw.transpose(0, 2, 3, 1) / 255.0  # (B, H, W, C)
    np.testing.assert_array_equal(view[0, :4, :4], 0.5)  # [mask]: gray
    np.testing.assert_allclose(view[0, :4, 4:], pixels[1, 4:, 4:], atol=1e-6)  # the other patch
    np.testing.assert_allclose(view[0, 4:], pixels[0, 4:], atol=1e-6)  # kept and untouched
    np.testing.assert_allclose(view[1], pixels[1], atol=1e-6)
    classes = np.full((2, 4), 7 * 64)  # all red
    painted = color_view(raw, classes, kind != UNTOUCHED, 4)
    red = np.broadcast_to([7.5 / 8, 0.5 / 8, 0.5 / 8], (4, 4, 3))
    np.testing.assert_allclose(painted[0, :4, :4], red)
    assert (painted[1] >= 0.75 - 1e-6).all()  # not corrupted: faded towards white
    with pytest.raises(ValueError, match="corruption of shape"):
        corrupted_view(raw[:1], Corruption(kind, source), 4)
