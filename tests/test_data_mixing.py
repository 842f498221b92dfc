"""Mixup and CutMix (tinyvit.data.mixing): images and targets mixed alike, on NumPy and
on CuPy where a GPU (or the stand-in) is present."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvit import backend
from tinyvit import data as D


def images_on(xp, n=8, seed=0, size=32):
    return xp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), np.uint8))


def host(a):
    return backend.to_numpy(a)


def _recover_partners(targets, labels):
    """(partner index, lam) per row, read off the targets of distinct labels."""
    partners, lams = [], []
    for b, row in enumerate(targets):
        lam = row[labels[b]]
        others = np.flatnonzero((row > 1e-6) & (np.arange(len(row)) != labels[b]))
        partners.append(int(np.flatnonzero(labels == others[0])[0]) if len(others) else b)
        lams.append(lam)
    return partners, np.array(lams)


def test_mixup_mixes_images_and_targets_alike(xp):
    x = D.normalize(images_on(xp, n=10))
    labels = xp.asarray(np.arange(10))  # distinct labels: the targets tell each partner
    mixed, targets = D.mixup(x, labels, 0.4, np.random.default_rng(1), num_classes=10)
    assert mixed.dtype == np.float32 and targets.dtype == np.float32
    assert targets.shape == (10, 10)
    assert np.allclose(host(targets).sum(axis=1), 1.0)
    partners, lams = _recover_partners(host(targets), np.arange(10))
    for b, (j, lam) in enumerate(zip(partners, lams)):
        expected = host(x)[b] if j == b else lam * host(x)[b] + (1 - lam) * host(x)[j]
        assert np.allclose(host(mixed)[b], expected, atol=1e-5)
    with pytest.raises(TypeError, match="float"):
        D.mixup(images_on(xp), labels[:8], 0.4, np.random.default_rng(1))


def test_cutmix_pastes_a_box_and_weighs_targets_by_its_area(xp):
    x = D.normalize(images_on(xp, n=10))
    labels = xp.asarray(np.arange(10))
    for seed in range(5):
        out, targets = D.cutmix(x, labels, 1.0, np.random.default_rng(seed), num_classes=10)
        assert out.dtype == np.float32 and targets.shape == (10, 10)
        assert np.allclose(host(targets).sum(axis=1), 1.0)
        partners, lams = _recover_partners(host(targets), np.arange(10))
        for b, (j, lam) in enumerate(zip(partners, lams)):
            own = (host(out)[b] == host(x)[b]).all(axis=0)  # (H, W) pixels still its own
            if j != b:
                assert np.isclose(own.mean(), lam, atol=1e-6)
                assert np.array_equal(host(out)[b][:, ~own], host(x)[j][:, ~own])


def test_one_hot_and_soft_labels(xp):
    labels = xp.asarray(np.array([2, 0, 1]))
    assert np.array_equal(host(D.one_hot(labels, 3)), np.eye(3, dtype=np.float32)[[2, 0, 1]])
    soft = xp.asarray(np.full((4, 3), 1 / 3, np.float32))
    _, targets = D.mixup(D.normalize(images_on(xp, n=4)), soft, 1.0, np.random.default_rng(0), 3)
    assert np.allclose(host(targets), 1 / 3)

