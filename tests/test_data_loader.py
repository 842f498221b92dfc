"""Batches (tinyvit.data.loader): determinism, resumption, evaluation order, mixed
targets and the checks of their arguments."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest

from tinyvit import backend
from tinyvit import data as D
from tinyvit.data import plans

try:  # counts the copies to the device when "cuda" is the stand-in
    import cupy_standin
except ImportError:
    cupy_standin = None


def host(a):
    return backend.to_numpy(a)


@pytest.fixture
def toy():
    """50 images whose labels are their own indices (so each example can be traced)."""
    x = np.random.default_rng(0).integers(0, 256, (50, 3, 32, 32), np.uint8)
    return x, np.arange(50)


def collect(iterator):
    return [(host(images), host(targets)) for images, targets in iterator]


def same(a, b):
    return len(a) == len(b) and all(
        np.array_equal(x1, x2) and np.array_equal(t1, t2) for (x1, t1), (x2, t2) in zip(a, b)
    )


@pytest.mark.parametrize("augment", ["flip", "basic", "randaugment"])
def test_same_seed_same_batches(toy, device, augment):
    x, y = toy

    def run(**kw):
        return collect(D.batches(x, y, 8, augment=augment, num_classes=50, device=device, **kw))

    first = run(seed=1, epoch=2)
    assert len(first) == 6 and same(first, run(seed=1, epoch=2))
    assert not same(first, run(seed=2, epoch=2)) and not same(first, run(seed=1, epoch=3))
    images, targets = first[0]
    assert images.shape == (8, 3, 32, 32) and images.dtype == np.float32
    assert targets.shape == (8,) and targets.dtype == np.int64


def test_resuming_at_batch_k_sees_the_same_batches(toy, device):
    x, y = toy
    kw = dict(seed=3, epoch=1, augment="randaugment", mixup_alpha=0.8, cutmix_alpha=1.0,
              num_classes=50)  # fmt: skip
    whole = collect(D.batches(x, y, 8, device=device, **kw))
    for start in (0, 2, 5, 6):
        assert same(collect(D.batches(x, y, 8, device=device, start=start, **kw)), whole[start:])


def test_every_example_once_per_epoch(toy):
    x, y = toy
    seen = np.concatenate([t for _, t in collect(D.batches(x, y, 8, seed=0, augment="none"))])
    assert len(seen) == 48 and len(set(seen.tolist())) == 48  # 2 dropped with the last batch
    images, labels = collect(D.batches(x, y, 8, seed=0, augment="none"))[0]
    assert np.array_equal(images, D.normalize(x[labels]))  # images travel with their labels


def test_evaluation_covers_everything_in_order(toy, device):
    x, y = toy
    out = collect(
        D.batches(x, y, 16, shuffle=False, augment="none", drop_last=False, device=device)
    )
    assert [len(t) for _, t in out] == [16, 16, 16, 2]
    assert np.array_equal(np.concatenate([t for _, t in out]), y)
    assert np.array_equal(np.concatenate([i for i, _ in out]), D.normalize(x))
    assert D.num_batches(50, 16, drop_last=False) == 4 and D.num_batches(50, 16) == 3


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_batches_have_probability_targets(toy, device, mixup_alpha, cutmix_alpha):
    x, y = toy
    batches = D.batches(x, y, 10, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                        num_classes=50, device=device)  # fmt: skip
    for images, targets in collect(batches):
        assert images.dtype == np.float32 and targets.dtype == np.float32
        assert targets.shape == (10, 50) and np.allclose(targets.sum(axis=1), 1.0)


def test_batches_refuse_bad_arguments(toy):
    x, y = toy
    with pytest.raises(ValueError, match="'fancy'"):
        D.batches(x, y, 8, augment="fancy")
    with pytest.raises(ValueError, match="start=7"):
        D.batches(x, y, 8, start=7)
    with pytest.raises(ValueError, match="49 labels"):
        D.batches(x, y[:49], 8)
    with pytest.raises(TypeError, match="uint8"):
        D.batches(x.astype(np.float32), y, 8)



def test_the_epoch_order_is_the_order_batches_visit(toy):
    x, y = toy
    for seed, epoch in ((0, 0), (4, 7)):
        seen = np.concatenate([t for _, t in collect(D.batches(x, y, 8, seed=seed, epoch=epoch,
                                                               augment="none"))])  # fmt: skip
        assert np.array_equal(seen, D.epoch_order(50, seed, epoch)[:48])
    assert not np.array_equal(D.epoch_order(50, 0, 0), D.epoch_order(50, 0, 1))
    assert np.array_equal(D.epoch_order(50, 3, 2, shuffle=False), np.arange(50))
    a, b = D.batch_rng(1, 2, 3).random(4), D.batch_rng(1, 2, 3).random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, D.batch_rng(1, 2, 4).random(4))


@pytest.mark.skipif(not backend.cuda_available(), reason="no GPU and no CuPy stand-in")
def test_a_seed_gives_the_same_batches_on_every_device(toy):
    """Every draw is made on the host, so the GPU's batches are the CPU's, bit for bit."""
    x, y = toy
    kw = dict(seed=2, epoch=1, augment="randaugment", mixup_alpha=0.8, cutmix_alpha=1.0,
              num_classes=50, num_ops=3, magnitude=20)  # fmt: skip
    cpu = collect(D.batches(x, y, 8, device="cpu", **kw))
    assert same(cpu, collect(D.batches(x, y, 8, device="cuda", **kw)))


def test_a_plan_moves_to_the_device_in_one_copy(device):
    """A batch's plan, nested dataclasses and all: every array on the device (one copy
    from the host on the CuPy stand-in), every other field as it was."""
    rng = np.random.default_rng(0)
    plan = D.BatchPlan(
        np.arange(6),
        D.draw_augmentation(rng, (6, 3, 8, 8), "randaugment", num_ops=2),
        D.CutMixPlan.draw(rng, (6, 3, 8, 8), 1.0),
    )
    counter = contextlib.nullcontext(None)
    if device == "cuda" and cupy_standin is not None and cupy_standin.installed():
        counter = cupy_standin.counting()
    with counter as counts:
        moved = plans.to_device(plan, device)
    if counts is not None:
        assert counts.host_to_device == 1, counts
    before, after = leaves(plan), leaves(moved)
    assert [v for v in before if not isinstance(v, np.ndarray)] == [
        v for v in after if not hasattr(v, "shape")
    ]  # the policy, each round's drawn ops, CutMix's box: as they were
    before = [v for v in before if isinstance(v, np.ndarray)]
    after = [v for v in after if hasattr(v, "shape")]
    assert len(before) == len(after) == 1 + 2 * 8 + 3 + 1 + 1  # labels, rounds, crop, flip, perm
    assert all(isinstance(a, backend.module_for(device).ndarray) for a in after)
    assert all(np.array_equal(a, host(b)) and a.dtype == b.dtype for a, b in zip(before, after))
    assert moved.mixing.box == plan.mixing.box and moved.augmentation.policy == "randaugment"
    assert [r.drawn for r in moved.augmentation.rounds] == [
        r.drawn for r in plan.augmentation.rounds
    ]


def leaves(value) -> list:
    """Everything in a plan that is not a dataclass or a tuple, depth first."""
    if dataclasses.is_dataclass(value):
        return [v for f in dataclasses.fields(value) for v in leaves(getattr(value, f.name))]
    if isinstance(value, tuple):
        return [v for item in value for v in leaves(item)]
    return [value]
