"""Optimisers, the schedule and clipping: against hand computations and PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinyvit import ViT, manual_seed
from tinyvit.nn import Parameter
from tinyvit.optim import SGD, AdamW, WarmupCosine, clip_grad_norm, param_groups

SMALL = dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=1, heads=2, mlp_dim=16)


def params_with_grads(seed=0, shapes=((3, 4), (4,))):
    rng = np.random.default_rng(seed)
    params = [Parameter(rng.standard_normal(s)) for s in shapes]  # float64
    return params, rng


def test_adamw_step_equals_a_hand_computation():
    (w,), rng = params_with_grads(shapes=((3, 4),))
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    opt = AdamW([w], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    p, m, v = w.data.copy(), np.zeros((3, 4)), np.zeros((3, 4))
    for t in range(1, 4):
        g = rng.standard_normal((3, 4))
        w.grad = g.copy()
        opt.step()
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(w.data, p, rtol=1e-12, atol=1e-14)


def test_adamw_default_groups_skip_biases_norms_pos_embed_and_cls_token():
    model = ViT(**SMALL)
    decayed, plain = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    no_decay = {names[id(p)] for p in plain["params"]}
    assert {
        "pos_embed",
        "cls_token",
        "norm.weight",
        "head.bias",
        "blocks.0.attn.qkv.bias",
    } <= no_decay
    assert {names[id(p)] for p in decayed["params"]} == {
        "patch_embed.proj.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.weight",
        "head.weight",
    }
    opt = AdamW(model, lr=0.1, weight_decay=0.5)
    before = model.pos_embed.data.copy()
    for p in model.parameters():
        p.grad = np.zeros_like(p.data)
    opt.step()  # zero gradients: only the decay could move anything
    np.testing.assert_array_equal(model.pos_embed.data, before)
    assert not np.array_equal(model.head.weight.data, 0.0)


def test_updates_keep_float32():
    model = ViT(**SMALL)
    opt = AdamW(model, lr=1e-3)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert all(s["exp_avg"].dtype == np.float32 for s in opt.state)


def torch_pair(torch, seed=0):
    params, rng = params_with_grads(seed, shapes=((5, 3), (3,), (2, 2)))
    refs = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    return params, refs, rng


def step_both_and_compare(torch, ours, theirs, params, refs, rng, steps):
    """Feed both optimizers the same random gradients; their parameters must agree."""
    for _ in range(steps):
        for p, r in zip(params, refs, strict=True):
            g = rng.standard_normal(p.shape)
            p.grad, r.grad = g.copy(), torch.tensor(g)
        ours.step()
        theirs.step()
    for p, r in zip(params, refs, strict=True):
        np.testing.assert_allclose(p.data, r.detach().numpy(), rtol=1e-12, atol=1e-14)



@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adamw_matches_torch(weight_decay):
    torch = pytest.importorskip("torch")
    params, refs, rng = torch_pair(torch)
    groups = [{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0, "lr": 0.003}]
    ref_groups = [{"params": refs[:2]}, {"params": refs[2:], "weight_decay": 0.0, "lr": 0.003}]
    ours = AdamW(groups, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    theirs = torch.optim.AdamW(
        ref_groups, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay
    )
    step_both_and_compare(torch, ours, theirs, params, refs, rng, steps=5)


@pytest.mark.parametrize(
    "momentum,nesterov,weight_decay", [(0.0, False, 0.0), (0.9, False, 1e-3), (0.9, True, 1e-3)]
)
def test_sgd_matches_torch(momentum, nesterov, weight_decay):
    torch = pytest.importorskip("torch")
    params, refs, rng = torch_pair(torch, seed=1)
    ours = SGD(params, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    theirs = torch.optim.SGD(
        refs, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )
    step_both_and_compare(torch, ours, theirs, params, refs, rng, steps=4)


def test_sgd_needs_momentum_for_nesterov():
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([], lr=0.1, nesterov=True)


def test_warmup_cosine_values():
    s = WarmupCosine(lr=1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
    assert s(0) == pytest.approx(0.1)  # warm-up: lr * (step + 1) / warmup
    assert s(4) == pytest.approx(0.5)
    assert s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)  # cosine starts at the peak
    assert s(60) == pytest.approx(0.55)  # half-way: the mean of peak and floor
    assert s(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    assert WarmupCosine(2.0, 10)(0) == pytest.approx(2.0)  # no warm-up
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(1.0, 10, warmup_steps=20)


def test_clip_grad_norm():
    params, _ = params_with_grads(shapes=((2, 2), (3,)))
    params[0].grad = np.full((2, 2), 3.0)
    params[1].grad = np.full(3, 4.0)
    norm = clip_grad_norm(params, max_norm=100.0)
    assert norm == pytest.approx(math.sqrt(4 * 9 + 3 * 16))
    np.testing.assert_array_equal(params[0].grad, 3.0)  # below the limit: untouched
    norm = clip_grad_norm(params, max_norm=1.0)
    total = math.sqrt(sum((p.grad**2).sum() for p in params))
    assert total == pytest.approx(1.0, rel=1e-5)
    params[0].grad[0, 0] = np.nan
    assert math.isnan(clip_grad_norm(params, 1.0))


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    params, refs, rng = torch_pair(torch, seed=2)
    for p, r in zip(params, refs, strict=True):
        g = rng.standard_normal(p.shape) * 3
        p.grad, r.grad = g.copy(), torch.tensor(g)
    assert clip_grad_norm(params, 0.5) == pytest.approx(
        float(torch.nn.utils.clip_grad_norm_(refs, 0.5))
    )
    for p, r in zip(params, refs, strict=True):
        np.testing.assert_allclose(p.grad, r.grad.numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "make", [lambda m: AdamW(m, lr=0.01), lambda m: SGD(m.parameters(), 0.1, 0.9, True)]
)
def test_state_dict_resumes_exactly(make):
    def run(steps, resume_at=None):
        manual_seed(0)
        model = ViT(**SMALL)
        opt = make(model)
        rng = np.random.default_rng(3)
        for t in range(steps):
            if t == resume_at:
                saved_weights, saved_opt = model.state_dict(), opt.state_dict()
                manual_seed(1)
                model = ViT(**SMALL)  # a fresh process: other weights, empty state
                opt = make(model)
                model.load_state_dict(saved_weights)
                opt.load_state_dict({k: np.array(v) for k, v in saved_opt.items()})
            for p in model.parameters():
                p.grad = rng.standard_normal(p.shape).astype(np.float32)
            opt.step()
        return model.state_dict()

    straight, resumed = run(6), run(6, resume_at=3)
    for k in straight:
        np.testing.assert_array_equal(straight[k], resumed[k])
