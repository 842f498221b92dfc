"""Modules: parameter discovery and names, state dicts and their errors, modes,
devices and dtypes, initialization, and each layer's gradients."""

from __future__ import annotations

import numpy as np
import pytest

import tinyvit.functional as F
from tinyvit import Tensor, backend, gradcheck, manual_seed, nn
from tinyvit.backend import to_numpy


def float64_inputs(xp, *shape, seed=0):
    return Tensor(xp.asarray(np.random.default_rng(seed).standard_normal(shape)))


def test_named_parameters_follow_attribute_order_and_nesting():
    block = nn.Block(8, 2, 16)
    names = [n for n, _ in block.named_parameters()]
    assert names == [
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    ]
    assert block.num_parameters() == sum(p.size for p in block.parameters())
    assert block.attn.qkv.weight.shape == (24, 8)  # fused q, k, v: (3D, D)


def test_named_parameters_are_parameters_only_and_buffers_are_named_apart():
    """``named_parameters()`` never yields a Buffer (the fixed sin-cos table), and
    ``named_buffers()`` / ``buffers()`` yield only them, with their dotted names."""
    from tinyvit import ViT

    model = ViT(16, 8, 3, dim=8, depth=1, heads=2, mlp_dim=16, pos_embed="sincos")
    names = [n for n, _ in model.named_parameters()]
    assert "pos_embed" not in names and "cls_token" in names
    assert all(isinstance(p, nn.Parameter) for _, p in model.named_parameters())
    assert [(n, type(b)) for n, b in model.named_buffers()] == [("pos_embed", nn.Buffer)]
    assert model.buffers() == [model.pos_embed]
    assert [n for n, _ in model.named_buffers("vit.")] == ["vit.pos_embed"]
    assert next(model.blocks[0].named_parameters("blocks.0."))[0] == "blocks.0.norm1.weight"
    assert list(ViT(16, 8, 3, dim=8, depth=1, heads=2, mlp_dim=16).named_buffers()) == []


def test_state_dict_round_trip_copies():
    manual_seed(0)
    a, b = nn.Mlp(4, 8), nn.Mlp(4, 8)
    sd = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["fc1.weight"][:] = 0  # a copy: the module is untouched
    assert np.abs(a.fc1.weight.data).sum() > 0
    b.load_state_dict(a.state_dict())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb
        np.testing.assert_array_equal(to_numpy(pa.data), to_numpy(pb.data))


def test_load_state_dict_names_every_problem():
    mlp = nn.Mlp(4, 8)
    sd = mlp.state_dict()
    del sd["fc2.bias"]
    sd["fc3.weight"] = np.zeros((2, 2))
    sd["fc1.weight"] = np.zeros((4, 8))
    before = mlp.fc1.bias.data.copy()
    sd["fc1.bias"] = np.ones(8)
    with pytest.raises(ValueError) as info:
        mlp.load_state_dict(sd)
    message = str(info.value)
    assert "missing keys: ['fc2.bias']" in message
    assert "unexpected keys: ['fc3.weight']" in message
    assert "fc1.weight: expected shape (8, 4), got (4, 8)" in message
    np.testing.assert_array_equal(mlp.fc1.bias.data, before)  # nothing loaded on failure


def test_load_state_dict_non_strict_still_checks_shapes():
    mlp = nn.Mlp(4, 8)
    mlp.load_state_dict({"fc2.bias": np.ones(4), "other": np.ones(3)}, strict=False)
    np.testing.assert_array_equal(mlp.fc2.bias.data, 1.0)
    with pytest.raises(ValueError, match="expected shape"):
        mlp.load_state_dict({"fc2.bias": np.ones(5)}, strict=False)


def test_load_state_dict_casts_to_the_parameter_dtype():
    layer = nn.Linear(3, 2)
    layer.load_state_dict({"weight": np.ones((2, 3)), "bias": [1.0, 2.0]})
    assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32


def test_train_eval_reach_every_module():
    model = nn.Block(8, 2, 16, dropout=0.5)
    model.eval()
    assert all(not m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_dropout_module_obeys_the_mode():
    drop = nn.Dropout(0.5)
    x = Tensor(np.ones((10, 10), dtype=np.float32))
    assert np.any(drop(x).data == 0)
    drop.eval()
    assert drop(x) is x


def test_to_dtype_and_device(device):
    layer = nn.Linear(3, 2).to(np.float64)
    assert layer.weight.dtype == np.float64
    layer.to(device)
    assert layer.weight.device == device
    y = layer(Tensor(backend.module_for(device).ones((1, 3))))
    assert y.device == device and y.dtype == np.float64


def test_zero_grad():
    layer = nn.Linear(3, 2)
    layer(Tensor(np.ones((1, 3), dtype=np.float32))).sum().backward()
    assert layer.weight.grad is not None
    layer.zero_grad()
    assert all(p.grad is None for p in layer.parameters())


def test_initialization_is_timm_like():
    manual_seed(0)
    layer = nn.Linear(400, 300)
    w = layer.weight.data
    # normal(0, 0.02) cut at two standard deviations has std 0.02 * 0.8796
    assert abs(w.std() - 0.02 * 0.8796) < 0.0003
    assert np.abs(w).max() <= 0.04 + 1e-7  # truncated at two standard deviations
    np.testing.assert_array_equal(layer.bias.data, 0.0)
    norm = nn.LayerNorm(5)
    np.testing.assert_array_equal(norm.weight.data, 1.0)
    np.testing.assert_array_equal(norm.bias.data, 0.0)
    assert norm.eps == 1e-6
    manual_seed(0)
    np.testing.assert_array_equal(nn.Linear(400, 300).weight.data, w)  # seeded


def test_attention_equals_eq_5_to_8_by_hand(xp):
    manual_seed(1)
    attn = nn.Attention(12, 3).to(np.float64).to(backend.device_of(xp.zeros(1)))
    attn.keep_attention = True
    x = float64_inputs(xp, 2, 5, 12)
    out = to_numpy(attn(x).data)
    z = to_numpy(x.data)
    W, b = to_numpy(attn.qkv.weight.data), to_numpy(attn.qkv.bias.data)
    q, k, v = np.split(z @ W.T + b, 3, axis=-1)  # Eq. 5
    heads = []
    for h in range(3):
        cols = slice(4 * h, 4 * h + 4)
        scores = q[..., cols] @ k[..., cols].transpose(0, 2, 1) / 2.0  # sqrt(D_h) = 2
        A = np.exp(scores - scores.max(-1, keepdims=True))
        A /= A.sum(-1, keepdims=True)  # Eq. 6
        np.testing.assert_allclose(to_numpy(attn.attention)[:, h], A)
        heads.append(A @ v[..., cols])  # Eq. 7
    msa = np.concatenate(heads, -1) @ to_numpy(attn.proj.weight.data).T + to_numpy(
        attn.proj.bias.data
    )  # Eq. 8
    np.testing.assert_allclose(out, msa)
    attn.keep_attention = False
    attn(x)
    assert attn.attention is None


def test_block_is_eq_2_and_3(xp):
    manual_seed(2)
    block = nn.Block(8, 2, 16).to(np.float64).to(backend.device_of(xp.zeros(1)))
    z = float64_inputs(xp, 2, 3, 8)
    z1 = block.attn(block.norm1(z)) + z  # Eq. 2
    z2 = block.mlp(block.norm2(z1)) + z1  # Eq. 3
    np.testing.assert_array_equal(to_numpy(block(z).data), to_numpy(z2.data))


@pytest.mark.parametrize(
    "make_module,shape",
    [
        (lambda: nn.Linear(5, 4), (2, 3, 5)),
        (lambda: nn.LayerNorm(5), (2, 3, 5)),
        (lambda: nn.Mlp(5, 7, gelu="tanh"), (2, 3, 5)),
        (lambda: nn.Attention(6, 2), (2, 4, 6)),
        (lambda: nn.Block(6, 3, 8), (2, 4, 6)),
    ],
)
def test_module_gradients(make_module, shape, xp):
    manual_seed(3)
    module = make_module().to(np.float64).to(backend.device_of(xp.zeros(1)))
    x = float64_inputs(xp, *shape)
    x.requires_grad = True
    gradcheck(module, (x,), params=module.named_parameters(), max_coords=20)


def test_attention_dim_must_split_into_heads():
    with pytest.raises(ValueError, match=r"dim \(10\).*heads \(3\)"):
        nn.Attention(10, 3)


def test_linear_layer_matches_functional():
    layer = nn.Linear(3, 2)
    x = Tensor(np.ones((4, 3), dtype=np.float32))
    np.testing.assert_array_equal(layer(x).data, F.linear(x, layer.weight, layer.bias).data)
    assert "Linear(3, 2, bias=True)" in repr(layer)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: nn.Linear(0, 3), "Linear: in_features must be an integer >= 1, got 0"),
        (lambda: nn.Linear(3, -2), "Linear: out_features must be an integer >= 1, got -2"),
        (lambda: nn.LayerNorm(0), "LayerNorm: dim must be an integer >= 1, got 0"),
        (lambda: nn.LayerNorm(4, eps=0), r"LayerNorm: eps must be a number > 0, got 0"),
        (lambda: nn.Dropout(1.0), r"Dropout: p must be a number in \[0, 1\), got 1.0"),
        (lambda: nn.Attention(8, 0), "Attention: heads must be an integer >= 1, got 0"),
        (lambda: nn.Attention(8, -3), "Attention: heads must be an integer >= 1, got -3"),
        (lambda: nn.Block(8, 2, 0), "Mlp: hidden_dim must be an integer >= 1, got 0"),
    ],
)
def test_constructors_name_a_bad_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()
