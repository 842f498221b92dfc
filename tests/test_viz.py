"""Looking inside: attention maps, rollout, attention distance, Figure 7
(tinyvit/inspection.py computes them, tinyvit/viz.py draws them)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tinyvit import backend, viz
from tinyvit.backend import to_numpy
from tinyvit.vit import ViT

T5 = 5  # a class token and a 2 x 2 grid of patches: small enough to work out by hand


def e(i, n=T5):
    row = np.zeros(n)
    row[i] = 1.0
    return row


def layer(*heads):
    """One layer of one image from per-head (T, T) matrices: (1, heads, T, T)."""
    return np.stack(heads)[None]


# ---------------------------------------------------------------------------
# rollout on a two-layer example worked out by hand
# ---------------------------------------------------------------------------
#
# Layer 1, head a: every token attends evenly to all five tokens (0.2 each).
#          head b: every token attends only to the class token (e_0).
# Layer 2, head a: every token attends to itself (the identity).
#          head b: the class token attends to patch 1 (image 0) or patch 4
#                  (image 1); every other token attends to itself.

LAYER1_A = np.full((T5, T5), 0.2)
LAYER1_B = np.stack([e(0)] * T5)


def layer2_b(patch):
    return np.stack([e(patch)] + [e(i) for i in range(1, T5)])


def two_layer_example(xp):
    layer1 = np.concatenate([layer(LAYER1_A, LAYER1_B)] * 2)  # (2, 2, 5, 5)
    layer2 = np.concatenate(
        [layer(np.eye(T5), layer2_b(1)), layer(np.eye(T5), layer2_b(4))]
    )  # (2, 2, 5, 5)
    return [xp.asarray(layer1), xp.asarray(layer2)]


def test_rollout_mean_fusion_by_hand(xp):
    # Layer 1, mean of the heads: every row is [0.6, 0.1, 0.1, 0.1, 0.1]. Adding I
    # makes each row sum to 2; halving gives
    #   row 0:  [0.8, 0.05, 0.05, 0.05, 0.05]
    #   row 1:  [0.3, 0.55, 0.05, 0.05, 0.05]      (and likewise rows 2-4)
    # Layer 2 (image 0), mean: row 0 is [0.5, 0.5, 0, 0, 0], rows 1-4 are e_i.
    # Adding I and renormalizing: row 0 = [1.5, 0.5, 0, 0, 0] / 2 = [0.75, 0.25, 0, 0, 0];
    # rows 1-4 stay e_i. So R[0] = 0.75 * Â1[0] + 0.25 * Â1[1]
    #   = [0.6 + 0.075, 0.0375 + 0.1375, 0.05, 0.05, 0.05] = [0.675, 0.175, 0.05, 0.05, 0.05].
    R0 = [0.675, 0.175, 0.05, 0.05, 0.05]
    # Image 1 is the same with patch 4 in place of patch 1.
    R1 = [0.675, 0.05, 0.05, 0.05, 0.175]
    attentions = two_layer_example(xp)
    R = to_numpy(viz.rollout(attentions, "mean"))
    assert R.shape == (2, T5, T5)
    np.testing.assert_allclose(R[0, 0], R0, atol=1e-12)
    np.testing.assert_allclose(R[1, 0], R1, atol=1e-12)
    # Rows 1-4 of R are Â1's rows, since Â2 leaves them alone.
    np.testing.assert_allclose(R[0, 1], [0.3, 0.55, 0.05, 0.05, 0.05], atol=1e-12)
    np.testing.assert_allclose(R.sum(axis=-1), 1.0, atol=1e-12)  # still row-stochastic
    maps = to_numpy(viz.attention_rollout(attentions))
    np.testing.assert_allclose(maps[0], [[0.175, 0.05], [0.05, 0.05]], atol=1e-12)
    np.testing.assert_allclose(maps[1], [[0.05, 0.05], [0.05, 0.175]], atol=1e-12)


def test_rollout_max_fusion_by_hand(xp):
    # Layer 1, max of the heads: every row is [1, 0.2, 0.2, 0.2, 0.2]. Plus I, each row sums
    # to 2.8: row 0 = [2, .2, .2, .2, .2] / 2.8 = [5/7, 1/14, 1/14, 1/14, 1/14],
    #         row 1 = [1, 1.2, .2, .2, .2] / 2.8 = [5/14, 3/7, 1/14, 1/14, 1/14].
    # Layer 2 (image 0), max: row 0 = [1, 1, 0, 0, 0]; plus I: [2, 1, 0, 0, 0] / 3.
    # R[0] = 2/3 Â1[0] + 1/3 Â1[1] = [25/42, 4/21, 1/14, 1/14, 1/14].
    R = to_numpy(viz.rollout(two_layer_example(xp), "max"))
    np.testing.assert_allclose(R[0, 0], [25 / 42, 4 / 21, 1 / 14, 1 / 14, 1 / 14], atol=1e-12)
    maps = to_numpy(viz.attention_rollout(two_layer_example(xp), "max"))
    np.testing.assert_allclose(maps[0], [[4 / 21, 1 / 14], [1 / 14, 1 / 14]], atol=1e-12)


def test_rollout_min_fusion_by_hand(xp):
    # Layer 1, min of the heads: every row is [0.2, 0, 0, 0, 0]. Plus I and renormalized:
    # row 0 = e_0; row i = [0.2 e_0 + e_i] / 1.2 = 1/6 e_0 + 5/6 e_i.
    # Layer 2, min: row 0 = min(e_0, e_1) = 0, rows 1-4 = e_i; plus I: the identity.
    # So R = Â1, and the class token has taken nothing from any patch.
    expected = np.zeros((T5, T5))
    expected[0, 0] = 1.0
    for i in range(1, T5):
        expected[i, 0], expected[i, i] = 1 / 6, 5 / 6
    R = to_numpy(viz.rollout(two_layer_example(xp), "min"))
    np.testing.assert_allclose(R[0], expected, atol=1e-12)
    np.testing.assert_allclose(R[1], expected, atol=1e-12)
    assert not to_numpy(viz.attention_rollout(two_layer_example(xp), "min")).any()


def test_discard_lowest_keeps_the_class_token_column(xp):
    fused = xp.asarray(np.arange(25.0).reshape(1, 5, 5))
    # 20 entries lie outside column 0; a quarter of them, the 5 smallest, are 1, 2, 3, 4
    # and 6. The 5 in column 0 is smaller than 6 but is never discarded.
    out = to_numpy(viz.discard_lowest(fused, 0.25))
    expected = np.arange(25.0).reshape(5, 5)
    expected[0, 1:] = 0
    expected[1, 1] = 0
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(to_numpy(fused)[0], np.arange(25.0).reshape(5, 5))  # a copy
    np.testing.assert_array_equal(to_numpy(viz.discard_lowest(fused, 0.0)), to_numpy(fused))


def discard_example():
    """One head whose class-token row is [0.4, 0.3, 0.15, 0.1, 0.05]; the other rows have
    16 small, distinct patch entries (0.001 ... 0.016) and the rest on the class token."""
    a = np.zeros((T5, T5))
    a[0] = [0.4, 0.3, 0.15, 0.1, 0.05]
    a[1:, 1:] = np.arange(1, 17).reshape(4, 4) * 0.001
    a[1:, 0] = 1 - a[1:, 1:].sum(axis=1)
    return a


def test_rollout_discard_ratio_by_hand(xp):
    attentions = [xp.asarray(layer(discard_example()))]
    # Ratio 0.8 discards 16 of the 20 non-CLS entries: exactly the 16 small ones, so
    # the class token's row is untouched: (A[0] + e_0) / 2.
    maps = to_numpy(viz.attention_rollout(attentions, discard_ratio=0.8))
    np.testing.assert_allclose(maps[0], [[0.15, 0.075], [0.05, 0.025]], atol=1e-12)
    R = to_numpy(viz.rollout(attentions, discard_ratio=0.8))
    for i in range(1, T5):  # rows 1-4 lost their patch entries: (c e_0 + e_i) / (1 + c)
        c = discard_example()[i, 0]
        np.testing.assert_allclose(R[0, i], (c * e(0) + e(i)) / (1 + c), atol=1e-12)
    # Ratio 0.9 discards 18: also the class token's 0.05 and 0.1. Its row becomes
    # [1.4, 0.3, 0.15, 0, 0] / 1.85.
    maps = to_numpy(viz.attention_rollout(attentions, discard_ratio=0.9))
    np.testing.assert_allclose(maps[0], [[0.3 / 1.85, 0.15 / 1.85], [0, 0]], atol=1e-12)


def test_rollout_of_one_layer_is_half_attention_half_identity(xp, rng):
    a = rng.random((3, 4, 10, 10))
    a /= a.sum(axis=-1, keepdims=True)
    R = to_numpy(viz.rollout([xp.asarray(a)]))
    np.testing.assert_allclose(R, (a.mean(axis=1) + np.eye(10)) / 2, atol=1e-12)


def test_rollout_keeps_float32_and_the_device(xp, rng):
    a = rng.random((2, 3, 17, 17)).astype(np.float32)
    out = viz.attention_rollout([xp.asarray(a)] * 3)
    assert out.dtype == np.float32 and out.shape == (2, 4, 4)
    assert backend.xp_of(out) is xp


# ---------------------------------------------------------------------------
# mean attention distance
# ---------------------------------------------------------------------------


def closed_form_uniform_distance(grid, patch):
    """(1/N^2) sum_i sum_j |pos_i - pos_j|, written with plain loops."""
    cells = list(itertools.product(range(grid), range(grid)))
    total = 0.0
    for (r1, c1), (r2, c2) in itertools.product(cells, cells):
        total += math.hypot((r1 - r2) * patch, (c1 - c2) * patch)
    return total / len(cells) ** 2


def test_uniform_attention_distance_matches_its_closed_form(xp):
    expected = closed_form_uniform_distance(8, 4)
    assert abs(expected - 16.5) < 0.1  # the number GUIDE §6 quotes for 32 x 32, 4-px patches
    uniform = xp.full((2, 3, 65, 65), 1 / 65, dtype=np.float32)
    distances = to_numpy(viz.mean_attention_distance([uniform, uniform], patch_size=4))
    assert distances.shape == (2, 3)
    np.testing.assert_allclose(distances, expected, rtol=1e-5)
    assert viz.uniform_attention_distance(8, 4) == pytest.approx(expected, rel=1e-12)
    assert closed_form_uniform_distance(2, 8) == pytest.approx((2 * 8 + 8 * math.sqrt(2)) / 4)


def test_attention_distance_drops_the_class_token_and_renormalizes(xp):
    # Half of every row on the class token, the other half even over the patches: the
    # patch part is uniform once renormalized, so the distance is the uniform one.
    a = np.full((1, 1, 65, 65), 0.5 / 64)
    a[..., 0] = 0.5
    got = to_numpy(viz.mean_attention_distance([xp.asarray(a)], patch_size=4))
    np.testing.assert_allclose(got, [[closed_form_uniform_distance(8, 4)]], rtol=1e-12)


def test_attention_distance_of_local_heads(xp):
    # Head 1 looks only at its own patch (0 px); head 2 at the patch to its right, or
    # to its left in the last column (one patch, 4 px); head 3 evenly at everything.
    n, g = 65, 8
    a = np.zeros((1, 3, n, n))
    for i in range(1, n):
        r, c = divmod(i - 1, g)
        a[0, 0, i, i] = 1.0
        a[0, 1, i, 1 + r * g + (c + 1 if c < g - 1 else c - 1)] = 1.0
    a[0, :2, 0, 0] = 1.0  # the class token's own row is dropped anyway
    a[0, 2] = 1 / n
    got = to_numpy(viz.mean_attention_distance([xp.asarray(a)], patch_size=4))
    np.testing.assert_allclose(got, [[0.0, 4.0, closed_form_uniform_distance(8, 4)]], rtol=1e-12)


# ---------------------------------------------------------------------------
# per-head maps, upsampling, attending with a model
# ---------------------------------------------------------------------------


def test_cls_attention_lays_the_class_row_on_the_grid(xp):
    a = np.zeros((2, 3, 65, 65), dtype=np.float32)
    a[:, :, 0, 1:] = np.arange(64)
    maps = viz.cls_attention(xp.asarray(a))
    assert maps.shape == (2, 3, 8, 8) and maps.dtype == np.float32
    maps = to_numpy(maps)
    assert maps[1, 2, 3, 5] == 3 * 8 + 5  # row by row, as patchify cuts the image


def small_vit(**changes):
    backend.manual_seed(0)
    settings = dict(
        image_size=16, patch_size=4, num_classes=3, dim=16, depth=2, heads=2, mlp_dim=32
    )
    return ViT(**{**settings, **changes}).eval()


def test_attend_returns_logits_and_every_layers_attention(rng):
    model = small_vit()
    images = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    logits, attentions = viz.attend(model, images)
    assert logits.shape == (3, 3) and len(attentions) == 2
    for a in attentions:
        assert a.shape == (3, 2, 17, 17) and a.dtype == np.float32
        np.testing.assert_allclose(a.sum(axis=-1), 1.0, rtol=1e-5)
    assert all(not block.attn.keep_attention for block in model.blocks)  # left as it was
    assert all(block.attn.attention is None for block in model.blocks)
    assert viz.mean_attention_distance(attentions, 4).shape == (2, 2)
    assert viz.cls_attention(attentions[-1]).shape == (3, 2, 4, 4)


# ---------------------------------------------------------------------------
# Figure 7 computations
# ---------------------------------------------------------------------------


def test_embedding_filter_components_find_the_main_directions(xp, rng):
    # 40 filters of 3 x 4 x 4 numbers that vary mostly along u, a little along v.
    u, v = np.linalg.qr(rng.standard_normal((48, 2)))[0].T
    # Centered, uncorrelated coefficients with spreads 5 and 1: the principal directions
    # are then exactly u and v, with 25/26 and 1/26 of the variance.
    c = rng.standard_normal((40, 2))
    coeff = np.linalg.qr(c - c.mean(axis=0))[0] * [5.0, 1.0]
    filters = coeff @ np.stack([u, v]) + 0.3  # the shared offset is centered away
    weight = xp.asarray(filters.reshape(40, 3, 4, 4).astype(np.float32))
    images, share = viz.embedding_filter_components(weight, count=28)
    images, share = to_numpy(images), to_numpy(share)
    assert images.shape == (28, 4, 4, 3) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_allclose(share[:2], [25 / 26, 1 / 26], atol=1e-5)
    assert share[2] < 1e-8

    def as_image(direction):  # flattened (C, P, P) to (P, P, C), scaled to [0, 1]
        img = direction.reshape(3, 4, 4).transpose(1, 2, 0)
        return (img - img.min()) / (img.max() - img.min())

    sign = 1.0 if u[np.abs(u).argmax()] > 0 else -1.0
    np.testing.assert_allclose(images[0], as_image(sign * u), atol=1e-4)
    few, _ = viz.embedding_filter_components(weight[:5])
    assert few.shape[0] == 4  # five filters have four centered directions


def test_position_similarity(xp, rng):
    basis = np.linalg.qr(rng.standard_normal((24, 17)))[0].T * 3.0  # 17 orthogonal rows
    sim = to_numpy(viz.position_similarity(xp.asarray(basis[None].astype(np.float32))))
    assert sim.shape == (4, 4, 4, 4)
    np.testing.assert_allclose(sim.reshape(16, 16), np.eye(16), atol=1e-5)
    same = np.repeat(rng.standard_normal((1, 8)), 10, axis=0)  # 1 + 9 identical rows
    np.testing.assert_allclose(to_numpy(viz.position_similarity(xp.asarray(same))), 1.0)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_errors_name_what_was_expected_and_given():
    good = np.full((1, 2, 5, 5), 0.2)
    with pytest.raises(TypeError, match=r"list of per-layer .*\(1, 2, 5, 5\).*wrap"):
        viz.rollout(good)
    with pytest.raises(ValueError, match="empty list"):
        viz.rollout([])
    with pytest.raises(ValueError, match=r"\(B, heads, T, T\).*\(2, 5, 5\)"):
        viz.rollout([good[0]])
    with pytest.raises(ValueError, match="10 is not a square"):
        viz.cls_attention(np.zeros((1, 1, 11, 11)))
    with pytest.raises(ValueError, match=r"layer 0 has shape \(1, 2, 5, 5\), layer 1"):
        viz.rollout([good, np.full((1, 2, 10, 10), 0.1)])
    with pytest.raises(ValueError, match="one of .*'mean'.*not 'median'"):
        viz.rollout([good], fusion="median")
    with pytest.raises(ValueError, match=r"fused attention \(B, T, T\), got .*\(1, 2, 5, 5\)"):
        viz.discard_lowest(good, 0.5)
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\), not 1.0"):
        viz.attention_rollout([good], discard_ratio=1.0)
    with pytest.raises(ValueError, match=r"\(D, C, P, P\).*\(4, 48\)"):
        viz.embedding_filter_components(np.zeros((4, 48)))
    with pytest.raises(ValueError, match=r"\(1, N\+1, D\).*\(2, 5, 3\)"):
        viz.position_similarity(np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="layer 5 does not exist: the model has 1 layers"):
        viz.plot_attention_grid(
            np.zeros((1, 3, 8, 8), np.uint8), [good], [0], [0], ["a"], "x.png", layer=5
        )


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------


def assert_png(path, min_bytes=5000):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes, (path, len(data))


def test_plots_write_pngs(tmp_path, rng):
    model = small_vit()
    images = rng.integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    _, attentions = viz.attend(model, (images / 255.0 - 0.5).astype(np.float32))
    path = viz.plot_attention_grid(
        images,
        attentions,
        [0, 1, 2],
        [0, 2, 2],
        ["cat", "dog", "frog"],
        tmp_path / "grid.png",
        title="attention",
    )
    assert path == tmp_path / "grid.png"
    assert_png(path)
    fusions = {f: viz.attention_rollout(attentions, f) for f in viz.FUSIONS}
    assert_png(viz.plot_attention_overlays(images, fusions, tmp_path / "fusions.png"))
    distances = viz.mean_attention_distance(attentions, 4)
    assert_png(viz.plot_embedding_filters(model, tmp_path / "filters.png"))
    assert_png(viz.plot_position_similarity(model, tmp_path / "positions.png"))
    assert_png(viz.plot_attention_distance(distances, tmp_path / "distance.png", 4, 4))
    assert_png(viz.plot_figure7(model, distances, tmp_path / "figure7.png"), 20000)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["grid.png", "fusions.png", "filters.png", "positions.png", "distance.png", "figure7.png"]
    )  # no temporary files left behind


def record(epoch, train_loss=0.9, test_loss=0.7, train_acc=0.7, test_acc=0.65):
    return dict(epoch=epoch, train_loss=train_loss, test_loss=test_loss, train_acc=train_acc,
                test_acc=test_acc)  # fmt: skip


def overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("epochs", [1, 3, 16])
def test_training_curves_say_what_they_plot(epochs):
    fig = viz.plt.figure(figsize=(10, 4.2), layout="constrained")
    history = [record(e, test_acc=0.5 + 0.01 * e) for e in range(1, epochs + 1)]
    loss_ax, acc_ax = viz.draw_training_curves(fig, history, label_smoothing=0.1)
    fig.suptitle("title")
    fig.canvas.draw()
    for ax in (loss_ax, acc_ax):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)  # whole epochs only
        assert ax.get_xlim() == (0.5, epochs + 0.5)  # not 0.96-1.04 after one epoch
    labels = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert labels == ["train: training loss (label smoothing 0.1)", "test: plain cross-entropy"]
    best = max(history, key=lambda r: r["test_acc"])
    assert f"best {100 * best['test_acc']:.1f}%, epoch {best['epoch']}" in " ".join(
        t.get_text() for t in acc_ax.get_legend().get_texts()
    )
    assert "label-smoothed" in fig._supxlabel.get_text()
    renderer = fig.canvas.get_renderer()
    for ax in (loss_ax, acc_ax):  # nothing written over a title
        title = ax.title.get_window_extent(renderer)
        assert not overlaps(title, ax.get_legend().get_window_extent(renderer))
        assert not overlaps(title, fig._suptitle.get_window_extent(renderer))
        assert not ax.texts
    viz.plt.close(fig)


def test_training_curves_label_the_flip_test_and_how_training_was_measured():
    history = [record(e, test_acc=0.6 + 0.05 * e) for e in range(1, 4)]  # best: epoch 3, 75%
    history[-1].update(test_loss_tta=0.93, test_acc_tta=0.726)
    fig = viz.plt.figure(figsize=(10, 4.4), layout="constrained")
    loss_ax, acc_ax = viz.draw_training_curves(fig, history, 0.1, patch_dropout=0.5,
                                               augment="flip")  # fmt: skip
    labels = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert labels[0] == "train (PatchDropout 0.5, flip augmentation)"
    assert "final test with flips: 72.6%" in labels
    flips = next(line for line in acc_ax.get_lines() if line.get_label().startswith("final"))
    best_ring = next(line for line in acc_ax.get_lines() if line.get_mfc() == "none")
    assert list(flips.get_xdata()) == [3] and list(flips.get_ydata()) == [pytest.approx(72.6)]
    assert list(best_ring.get_ydata()) == [pytest.approx(75.0)]  # the best plain test
    assert flips.get_marker() != best_ring.get_marker()
    assert flips.get_color() != best_ring.get_color()  # a point of its own, not the ring
    assert "final test with flips: 0.930" in [
        t.get_text() for t in loss_ax.get_legend().get_texts()
    ]
    note = fig._supxlabel.get_text().replace("\n", " ")
    assert "PatchDropout 0.5 (50% of the patch tokens dropped) and flip augmentation" in note
    assert "label-smoothed" in note
    viz.plt.close(fig)
    fig = viz.plt.figure()
    _, acc_ax = viz.draw_training_curves(fig, [record(1), record(2)])  # plain batches, no flips
    labels = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert labels[0] == "train" and not any("flips" in label for label in labels)
    viz.plt.close(fig)


def test_the_trainer_tells_the_curves_how_it_trained(tmp_path, monkeypatch):
    """write_metrics hands the run's PatchDropout and augmentation to the figure."""
    import contextlib
    from types import SimpleNamespace

    from tinyvit.distributed import Communicator
    from tinyvit.train import Trainer, recipe

    drawn = {}
    monkeypatch.setattr(viz, "plot_training_curves", lambda *a, **kw: drawn.update(kw))
    run = SimpleNamespace(
        history=[record(1)], folder=tmp_path, config=recipe("cpu", augment="basic"),
        stop=SimpleNamespace(writing=contextlib.nullcontext), comm=Communicator(),
        data_name="CIFAR-10",
    )  # fmt: skip
    Trainer.write_metrics(run)
    assert drawn["patch_dropout"] == 0.5 and drawn["augment"] == "basic"
    run.config = recipe("cpu", augment="none", model_overrides={"patch_dropout": 0.0})
    Trainer.write_metrics(run)
    assert drawn["patch_dropout"] == 0.0 and drawn["augment"] == "none"
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


def test_finetune_curves_keep_the_legend_off_the_lines_and_say_when_too_short():
    def run(start, slope):
        return [dict(step=s, test_acc=start + slope * s, train_loss=1.6 - 0.01 * s)
                for s in range(1, 7)]  # fmt: skip

    references = {"unchanged model": 0.655, "unchanged, resampled": 0.595, "chance": 0.2}
    note = "--quick: 6 steps are too few to show fine-tuning's gain"
    fig = viz.plt.figure(figsize=(11, 5), layout="constrained")
    acc_ax, loss_ax = viz.draw_finetune_curves(
        fig, {"fine-tuned": run(0.48, 0.001), "from scratch": run(0.2, 0.01)}, references,
        "test accuracy (%)", "training loss", note=note,
    )  # fmt: skip
    fig.suptitle("title")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0]
    box = legend.get_window_extent(renderer)
    for ax in (acc_ax, loss_ax):  # below both panels: it covers no curve and no reference line
        assert not overlaps(box, ax.get_window_extent(renderer))
        assert not overlaps(box, ax.xaxis.label.get_window_extent(renderer))
    assert [t.get_text() for t in legend.get_texts()] == ["fine-tuned", "from scratch",
                                                          *references]  # fmt: skip
    assert legend.get_title().get_text() == note
    assert len(acc_ax.get_lines()) == 2 + len(references) and not acc_ax.get_legend()
    viz.plt.close(fig)
    fig = viz.plt.figure(layout="constrained")
    viz.draw_finetune_curves(fig, {"fine-tuned": run(0.6, 0.01)}, {}, "accuracy", "loss")
    assert fig.legends[0].get_title().get_text() == ""  # no caveat unless one is given
    viz.plt.close(fig)
    with pytest.raises(ValueError, match="runs is empty"):
        viz.draw_finetune_curves(viz.plt.figure(), {}, references, "a", "l")


def test_training_curves_without_smoothing_and_empty():
    fig = viz.plt.figure()
    loss_ax, _ = viz.draw_training_curves(fig, [record(1)])
    assert loss_ax.get_legend().get_texts()[0].get_text() == "train: training loss"
    assert fig._supxlabel is None
    viz.plt.close(fig)
    with pytest.raises(ValueError, match="history is empty"):
        viz.draw_training_curves(viz.plt.figure(), [])


def test_flat_maps_are_drawn_flat_and_peaked_ones_in_full():
    from tinyvit.viz import attention_heat, peak_over_mean

    flat = np.full((4, 4), 1 / 16) + np.random.default_rng(0).normal(0, 1e-4, (4, 4))
    heat = attention_heat(flat)
    assert peak_over_mean(flat) < 1.01 and np.ptp(heat) < 0.02  # noise is not drawn as structure
    assert heat.max() < 0.02  # at the color map's low end ("least"), not one even middle color
    peaked = np.full((4, 4), 1.0)
    peaked[1, 2] = 4.0  # peak over mean: 4 / (19 / 16) = 3.4x
    heat = attention_heat(peaked)
    assert heat.min() == 0.0 and heat.max() == 1.0
    half = np.array([[1.0, 2.0], [1.0, 1.0]])  # 1.6x: 60% of the full contrast
    assert np.ptp(attention_heat(half)) == pytest.approx(0.6)
    assert attention_heat(half).min() == 0.0  # from the dark end: the brightest is mid-range


def _drawn_pixels(ax):
    """The RGB pixels drawn inside ``ax`` (its frame excluded)."""
    fig = ax.figure
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    box = ax.get_window_extent()
    top = pixels.shape[0] - int(box.y1)
    return pixels[top + 2 : top + int(box.height) - 2, int(box.x0) + 2 : int(box.x1) - 2]


def test_a_flat_map_is_drawn_gray_and_says_flat():
    """A flat map reads as "nothing stands out": no color of the attention map over the image
    (the old drawing put one even orange over it, as if attention were strong everywhere)."""
    rng = np.random.default_rng(0)
    gray = rng.random((32, 32))
    flat = np.full((8, 8), 1 / 64) + rng.normal(0, 1e-3, (8, 8))  # peak over mean about 1.2x
    assert viz.peak_over_mean(flat) < viz.FLAT_PEAK
    fig, (flat_ax, peaked_ax) = viz.plt.subplots(1, 2, figsize=(4, 2), dpi=100)
    viz._draw_overlay(flat_ax, gray, flat, smooth=False)
    peaked = np.ones((8, 8))
    peaked[2, 5] = 20.0
    viz._draw_overlay(peaked_ax, gray, peaked, smooth=False)
    drawn = _drawn_pixels(flat_ax)
    assert np.abs(drawn - drawn.mean(axis=-1, keepdims=True)).max() <= 2  # gray: R = G = B
    assert "flat" in flat_ax.texts[0].get_text()
    drawn = _drawn_pixels(peaked_ax)
    assert np.abs(drawn - drawn.mean(axis=-1, keepdims=True)).max() > 25  # its peak in color
    assert "flat" not in peaked_ax.texts[0].get_text()
    viz.plt.close(fig)


def test_each_position_similarity_tile_marks_its_own_position():
    g = 4
    model = small_vit()
    fig = viz.plt.figure()
    ax = viz.draw_position_similarity(fig, model)
    mosaic = np.ma.getdata(ax.images[0].get_array())
    marks = [p for p in ax.patches if isinstance(p, viz.plt.Rectangle)]
    assert len(marks) == g * g
    corners = sorted((m.get_x(), m.get_y()) for m in marks)
    expected = sorted((c * (g + 1) + c - 0.5, r * (g + 1) + r - 0.5)
                      for r in range(g) for c in range(g))  # fmt: skip
    assert corners == expected  # tile (r, c), its cell (r, c)
    for m in marks:  # each outlines a cell where a position meets itself: similarity 1
        row, col = int(m.get_y() + 0.5), int(m.get_x() + 0.5)
        assert mosaic[row, col] == pytest.approx(1.0, abs=1e-5)
        assert m.get_fill() is False and m.get_edgecolor()[:3] == (1.0, 0.0, 0.0)
    assert "the patch itself" in ax.get_title()
    viz.plt.close(fig)


def test_a_mean_pooled_model_reads_the_patch_tokens_average_row():
    """pool="mean": the map is what the average of the patch tokens takes from each patch."""
    from tinyvit.viz import attention_rollout, cls_attention, readout_row

    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 5, 5))  # (B, heads, 1 + 4 patches, 1 + 4)
    a /= a.sum(axis=-1, keepdims=True)
    heads = cls_attention(a, pool="mean")
    np.testing.assert_allclose(heads, a[:, :, 1:, 1:].mean(axis=2).reshape(2, 3, 2, 2))
    np.testing.assert_allclose(cls_attention(a), a[:, :, 0, 1:].reshape(2, 3, 2, 2))
    hat = a.mean(axis=1) + np.eye(5)
    hat /= hat.sum(axis=-1, keepdims=True)  # one layer's rollout
    np.testing.assert_allclose(
        attention_rollout([a], pool="mean"), hat[:, 1:, 1:].mean(axis=1).reshape(2, 2, 2)
    )
    with pytest.raises(ValueError, match="'avg'"):
        readout_row(a, "avg")
