"""Few-shot linear probes (Section 4.1): the closed form against NumPy's solvers, perfect
accuracy on separable data, seeded sampling of shots, frozen features, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvit import ViT, backend, manual_seed
from tinyvit.data import normalize
from tinyvit.fewshot import features, fewshot_accuracy, fit_probe, pm1_targets, sample_shots


def blobs(per_class, num_classes=4, dim=6, spread=0.3, seed=0):
    """Points around ``num_classes`` far-apart centers (the same for every seed): separable."""
    centers = np.random.default_rng(99).standard_normal((num_classes, dim)) * 5
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    x = centers[labels] + spread * rng.standard_normal((len(labels), dim))
    return x.astype(np.float32), labels


def test_targets_are_plus_and_minus_one():
    np.testing.assert_array_equal(pm1_targets([2, 0], 3), [[-1, -1, 1], [1, -1, -1]])


def test_the_closed_form_solves_the_regularized_normal_equations(xp):
    x, y = blobs(5, seed=1)
    l2 = 0.7
    probe = fit_probe(xp.asarray(x), y, 4, l2=l2, standardize=False)
    a = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])  # [X, 1]
    targets = np.where(np.arange(4)[None] == y[:, None], 1.0, -1.0)
    penalty = np.diag([l2] * x.shape[1] + [0.0])  # no penalty on the bias
    theta = np.linalg.solve(a.T @ a + penalty, a.T @ targets)
    np.testing.assert_allclose(backend.to_numpy(probe.weight), theta[:-1], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(backend.to_numpy(probe.bias), theta[-1], rtol=1e-9, atol=1e-9)


def test_without_regularization_it_is_ordinary_least_squares():
    x, y = blobs(20, seed=2)  # 80 examples, 6 dimensions: a unique solution
    probe = fit_probe(x, y, 4, l2=0.0, standardize=True)
    mean, std = x.astype(np.float64).mean(0), x.astype(np.float64).std(0) + 1e-6
    a = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    theta = np.linalg.lstsq(a, pm1_targets(y, 4), rcond=None)[0]
    np.testing.assert_allclose(probe.weight, theta[:-1], rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(probe.bias, theta[-1], rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(
        probe.scores(x), a @ theta, rtol=1e-7, atol=1e-8
    )  # standardized with the fitted statistics


def test_separable_data_is_classified_perfectly():
    x, y = blobs(60, seed=3)
    test_x, test_y = blobs(25, seed=13)  # new points around the same centers
    results = fewshot_accuracy(x, y, test_x, test_y, shots=(1, 5, 10), trials=3)
    assert results == {1: 1.0, 5: 1.0, 10: 1.0}
    probe = fit_probe(x, y, 4)
    assert probe.accuracy(test_x, test_y) == 1.0
    assert probe.predict(test_x).dtype == np.int64


def test_noise_features_give_chance_and_the_probe_can_fail():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((400, 16)).astype(np.float32), rng.integers(0, 4, 400)
    results = fewshot_accuracy(x[:200], y[:200], x[200:], y[200:], shots=(5,), trials=5)
    assert 0.1 < results[5] < 0.45  # 4 classes: about 25%


def test_shots_are_seeded_and_balanced():
    labels = np.repeat(np.arange(3), 7)
    a = sample_shots(labels, 5, np.random.default_rng(0))
    b = sample_shots(labels, 5, np.random.default_rng(0))
    c = sample_shots(labels, 5, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == [5, 5, 5] and len(set(a.tolist())) == 15
    with pytest.raises(ValueError, match="class 1 has 2 examples, fewer than the 3"):
        sample_shots(np.array([0, 0, 0, 1, 1]), 3, np.random.default_rng(0))


def test_bad_input_is_named():
    x, y = blobs(3)
    with pytest.raises(ValueError, match=r"2-D float array.*\(12,\)"):
        fit_probe(x[:, 0], y, 4)
    with pytest.raises(ValueError, match="12 integer class labels"):
        fit_probe(x, y[:5], 4)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fit_probe(x, y, 3)
    with pytest.raises(ValueError, match="l2 must be at least 0"):
        fit_probe(x, y, 4, l2=-1)
    with pytest.raises(ValueError, match="6-dimensional features"):
        fit_probe(x, y, 4).predict(x[:, :5])
    with pytest.raises(ValueError, match="differ in width"):
        fewshot_accuracy(x, y, x[:, :5], y)
    with pytest.raises(ValueError, match="shots must be at least 1"):
        fewshot_accuracy(x, y, x, y, shots=(0,))


def test_features_are_the_class_token_after_the_final_norm():
    manual_seed(0)
    model = ViT(image_size=8, patch_size=4, num_classes=3, dim=8, depth=1, heads=2, mlp_dim=16)
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    got = features(model, images, batch_size=2)
    tokens = model.forward_features(normalize(images)).data
    assert got.shape == (5, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, tokens[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        features(model, images, pool="mean"), tokens[:, 1:].mean(1), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="'max'"):
        features(model, images, pool="max")
    with pytest.raises(TypeError, match="uint8"):
        features(model, images.astype(np.float32))
