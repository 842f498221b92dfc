"""Optimizers, the schedule and clipping: against hand computations and PyTorch; the
gradient buffer's rules; old checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tinyvit import Tensor, ViT, manual_seed
from tinyvit.ema import ModelEMA
from tinyvit.nn import Parameter
from tinyvit.optim import (
    SGD,
    AdamW,
    WarmupCosine,
    clip_grad_norm,
    clip_gradients,
    param_groups,
    whole_buffer,
)

OLD_CHECKPOINT = Path(__file__).parent / "data" / "optimizer_checkpoint_c3dfd68.npz"

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


# ---------------------------------------------------------------- the gradient buffer


def test_backward_adds_into_the_optimizers_views_and_zero_grad_zeroes_them():
    """Every ``.grad`` is a view of the optimizer's gradient buffer; backward adds into it
    (so two backward passes add up); ``zero_grad`` zeroes the buffer and keeps the views;
    a parameter no gradient reaches keeps zeros."""
    (w, unused), _ = params_with_grads(shapes=((3,), (2,)))
    opt = SGD([w, unused], lr=0.1)
    assert whole_buffer([w.grad, unused.grad]) is opt.flat.grad
    assert w.data.base is opt.flat.data and not opt.flat.grad.any()
    x = Tensor(np.array([1.0, 2.0, 3.0]))
    for _ in range(2):
        (w * x).sum().backward()
    grad = w.grad
    assert grad.base is opt.flat.grad
    np.testing.assert_array_equal(opt.flat.grad, [2.0, 4.0, 6.0, 0.0, 0.0])
    opt.zero_grad()
    assert w.grad is grad and not opt.flat.grad.any()
    w.grad = None  # as Module.zero_grad() leaves it
    opt.zero_grad()
    assert w.grad is grad


def test_an_optimizer_takes_over_gradients_computed_before_it():
    (w,), rng = params_with_grads(shapes=((3, 4),))
    w.grad = rng.standard_normal((3, 4))
    given = w.grad.copy()
    opt = AdamW([w], lr=0.1)
    assert w.grad.base is opt.flat.grad
    np.testing.assert_array_equal(w.grad, given)


def test_a_parameter_without_a_gradient_sees_zeros_as_in_torch():
    """As PyTorch with ``zero_grad(set_to_none=False)``: a parameter that no gradient
    reaches has a zero gradient, and weight decay and the moments still move it; a
    ``.grad`` set to None by hand counts as zero too."""
    torch = pytest.importorskip("torch")
    params, refs, rng = torch_pair(torch)
    ours = AdamW(params, lr=0.01, weight_decay=0.1)
    theirs = torch.optim.AdamW(refs, lr=0.01, weight_decay=0.1)
    for r in refs:
        r.grad = torch.zeros_like(r)
    last = params[2].data.copy()
    for step in range(4):
        ours.zero_grad()
        theirs.zero_grad(set_to_none=False)
        for i, (p, r) in enumerate(zip(params, refs, strict=True)):
            if i == 2 and step > 0:
                continue  # no gradient reaches it after the first step
            g = rng.standard_normal(p.shape)
            p.grad += g  # as backward() adds it
            r.grad += torch.tensor(g)
        if step == 3:
            params[2].grad = None
        ours.step()
        theirs.step()
        assert not np.array_equal(params[2].data, last)  # it still moves
        last = params[2].data.copy()
    for p, r in zip(params, refs, strict=True):
        np.testing.assert_allclose(p.data, r.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert {s["step"] for s in ours.state} == {4}


def test_what_is_put_in_place_of_a_view_is_copied_into_the_buffer():
    """A ``.grad`` set by hand and a ``.data`` replaced by an array of the same shape,
    dtype and device: ``step()`` copies them into the buffers and the views come back."""
    (w, b), rng = params_with_grads(shapes=((3, 4), (4,)))
    opt = SGD([w, b], lr=0.5)
    data_view, grad_view = w.data, w.grad
    w.data = np.ones((3, 4))  # e.g. model.to() to where it already is, or p.data = ...
    w.grad = np.full((3, 4), 2.0)
    opt.step()
    assert w.data is data_view and w.grad is grad_view
    np.testing.assert_array_equal(w.data, 0.0)  # 1 - 0.5 * 2
    np.testing.assert_array_equal(opt.flat.data[:12], 0.0)
    b.grad = np.zeros(5)
    with pytest.raises(ValueError, match=r"gradient of shape \(5,\).*shape \(4,\)"):
        opt.step()


def test_a_parameter_moved_after_its_optimizer_was_made_is_a_clear_error():
    (w, b), _ = params_with_grads(shapes=((3, 4), (4,)))
    opt = AdamW([w, b], lr=0.1)
    w.data = w.data.astype(np.float32)  # model.to(float32) after the optimizer
    with pytest.raises(ValueError, match=r"float64 on cpu\) became .*float32.*before making"):
        opt.step()


def test_parameters_must_share_a_device_and_dtype_and_appear_once():
    (w, b), _ = params_with_grads(shapes=((3, 4), (4,)))
    b.data = b.data.astype(np.float32)
    with pytest.raises(ValueError, match="AdamW: .*one device and dtype.*cpu float32, cpu float64"):
        AdamW([w, b], lr=0.1)
    with pytest.raises(ValueError, match="SGD: a parameter appears more than once"):
        SGD([{"params": [w]}, {"params": [w]}], lr=0.1)


def test_clipping_the_buffer_equals_clipping_each_gradient():
    """Given exactly the optimizer's parameters, ``clip_gradients`` works on the whole
    buffer; given some of them, on each gradient: the same scale either way."""
    params, rng = params_with_grads(shapes=((2, 3), (3,), (4,)))
    opt = SGD(params, lr=0.1)
    for p in params:
        p.grad += rng.standard_normal(p.shape) * 3
    separate = [p.grad.copy() for p in params]
    norm = float(clip_gradients(params, 0.5))  # the buffer: one dot product, one scale
    assert norm == pytest.approx(math.sqrt(sum((g**2).sum() for g in separate)), rel=1e-12)
    for p, g in zip(params, separate):
        np.testing.assert_allclose(p.grad, g * 0.5 / (norm + 1e-6), rtol=1e-12)
    assert whole_buffer(p.grad for p in params) is opt.flat.grad
    assert whole_buffer(p.grad for p in params[:2]) is None  # part of it: one by one
    assert whole_buffer([params[0].grad, params[0].grad, params[2].grad]) is None


def test_an_old_checkpoint_resumes_to_the_bit():
    """Optimizer and EMA states written by tinyvit c3dfd68 (one state per parameter,
    before the optimizers kept one per group): loaded, and three more steps with the
    same gradients, they give that version's weights and averages to the bit. (Written
    by saving after 3 of 6 steps with ``p.grad`` drawn from ``default_rng(3)``.)"""
    arrays = np.load(OLD_CHECKPOINT)
    makers = {
        "adamw": lambda m: AdamW(m, lr=0.01, weight_decay=0.05),
        "sgd": lambda m: SGD(m.parameters(), 0.1, 0.9, nesterov=True, weight_decay=1e-3),
    }
    for kind, make in makers.items():
        def part(prefix, kind=kind):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        manual_seed(1)  # other weights: the checkpoint must set them all
        model = ViT(**SMALL)
        opt, ema = make(model), ModelEMA(model, 0.9)
        model.load_state_dict(part(f"{kind}/saved/model/"))
        opt.load_state_dict(part(f"{kind}/saved/optim/"))
        ema.load_state_dict(part(f"{kind}/saved/ema/"))
        assert opt.steps == 3 and ema.updates == 3
        rng = np.random.default_rng(3)
        for p in model.parameters() * 3:  # the draws of the first three steps
            rng.standard_normal(p.shape).astype(np.float32)
        for _ in range(3):
            opt.zero_grad()
            for p in model.parameters():
                p.grad = rng.standard_normal(p.shape).astype(np.float32)
            opt.step()
            ema.update(model)
        for name, value in part(f"{kind}/final/model/").items():
            np.testing.assert_array_equal(model.state_dict()[name], value, err_msg=name)
        final = part(f"{kind}/final/ema/")
        assert ema.updates == int(final.pop("updates")) == 6
        for name, value in final.items():
            np.testing.assert_array_equal(ema.averages[name], value, err_msg=name)


def test_a_state_a_group_cannot_share_is_a_clear_error():
    """One step count per group: a saved state whose parameters of one group took
    different numbers of steps cannot be loaded, nor one with misshaped arrays."""
    params, rng = params_with_grads(shapes=((2, 2), (3,)))
    opt = AdamW(params, lr=0.1)
    for p in params:
        p.grad += 1.0
    opt.step()
    state = opt.state_dict()
    fresh = AdamW(params_with_grads(shapes=((2, 2), (3,)))[0], lr=0.1)
    with pytest.raises(ValueError, match="differ in step"):
        fresh.load_state_dict({**state, "state1.step": np.array(2)})
    with pytest.raises(ValueError, match=r"state0.exp_avg has shape \(4,\)"):
        fresh.load_state_dict({**state, "state0.exp_avg": np.zeros(4)})
    with pytest.raises(ValueError, match="this optimizer has 2 parameters"):
        fresh.load_state_dict({**state, "state2.step": np.array(1)})
    assert fresh.steps == 0 and fresh.group_states == [{}]  # nothing loaded
    fresh.load_state_dict(state)
    for a, b in zip(fresh.state, opt.state, strict=True):
        assert a["step"] == b["step"] == 1
        np.testing.assert_array_equal(a["exp_avg_sq"], b["exp_avg_sq"])
