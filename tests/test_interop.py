"""Official Google checkpoints and the fine-tuning recipe: resampled position
embeddings (``tests/test_resample.py`` checks the resampling itself), a fresh
zero head, and logits that agree with an independent NumPy forward over the
official arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinyvit import ViT, manual_seed
from tinyvit.interop import adapt, for_finetuning, load_official, official_to_state_dict
from tinyvit.resample import resample_pos_embed

# ---------------------------------------------------------------- official checkpoints

P, C, D, H, MLP, DEPTH, CLASSES, GRID = 4, 3, 8, 2, 16, 2, 5, 2


def official_arrays(pre_logits=False, seed=0):
    """Random arrays in the layout of the official ViT-B_16.npz (GUIDE section 5)."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.normal(0, 0.3, shape).astype(np.float32)

    a = {
        "embedding/kernel": r(P, P, C, D),
        "embedding/bias": r(D),
        "cls": r(1, 1, D),
        "Transformer/posembed_input/pos_embedding": r(1, GRID * GRID + 1, D),
        "Transformer/encoder_norm/scale": 1 + r(D),
        "Transformer/encoder_norm/bias": r(D),
        "head/kernel": r(D if not pre_logits else 6, CLASSES),
        "head/bias": r(CLASSES),
    }
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}/"
        m = b + "MultiHeadDotProductAttention_1/"
        for n in ("query", "key", "value"):
            a[m + f"{n}/kernel"], a[m + f"{n}/bias"] = r(D, H, D // H), r(H, D // H)
        a[m + "out/kernel"], a[m + "out/bias"] = r(H, D // H, D), r(D)
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            a[b + f"{ln}/scale"], a[b + f"{ln}/bias"] = 1 + r(D), r(D)
        a[b + "MlpBlock_3/Dense_0/kernel"], a[b + "MlpBlock_3/Dense_0/bias"] = r(D, MLP), r(MLP)
        a[b + "MlpBlock_3/Dense_1/kernel"], a[b + "MlpBlock_3/Dense_1/bias"] = r(MLP, D), r(D)
    if pre_logits:
        a["pre_logits/kernel"], a["pre_logits/bias"] = r(D, 6), r(6)
    return a


def official_forward(a, images):
    """The ViT computed straight from the official arrays, NHWC as the JAX code is."""

    def ln(x, prefix):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * a[prefix + "/scale"] + a[prefix + "/bias"]

    def gelu(x):  # flax's default, the tanh form
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    x = images.transpose(0, 2, 3, 1).astype(np.float64)  # NHWC
    B, Hh, Ww, _ = x.shape
    x = x.reshape(B, Hh // P, P, Ww // P, P, C)
    x = np.einsum("bipjqc,pqcd->bijd", x, a["embedding/kernel"]) + a["embedding/bias"]
    x = x.reshape(B, -1, D)
    x = (
        np.concatenate([np.repeat(a["cls"], B, 0), x], 1)
        + a["Transformer/posembed_input/pos_embedding"]
    )
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}/"
        m = b + "MultiHeadDotProductAttention_1/"
        y = ln(x, b + "LayerNorm_0")
        q, k, v = (
            np.einsum("bnd,dhk->bnhk", y, a[m + f"{n}/kernel"]) + a[m + f"{n}/bias"]
            for n in ("query", "key", "value")
        )
        s = np.einsum("bqhk,bnhk->bhqn", q, k) / math.sqrt(D // H)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("bhqn,bnhk->bqhk", s, v)
        x = x + np.einsum("bqhk,hkd->bqd", o, a[m + "out/kernel"]) + a[m + "out/bias"]
        y = ln(x, b + "LayerNorm_2")
        y = gelu(y @ a[b + "MlpBlock_3/Dense_0/kernel"] + a[b + "MlpBlock_3/Dense_0/bias"])
        x = x + y @ a[b + "MlpBlock_3/Dense_1/kernel"] + a[b + "MlpBlock_3/Dense_1/bias"]
    y = ln(x, "Transformer/encoder_norm")[:, 0]
    if "pre_logits/kernel" in a:
        y = np.tanh(y @ a["pre_logits/kernel"] + a["pre_logits/bias"])
    return y @ a["head/kernel"] + a["head/bias"]


@pytest.mark.parametrize("pre_logits", [False, True])
def test_official_checkpoint_loads_and_agrees_with_a_numpy_forward(pre_logits, tmp_path):
    arrays = official_arrays(pre_logits)
    path = tmp_path / "ViT-tiny_4.npz"
    np.savez(path, **arrays)
    model = load_official(path).to(np.float64)
    assert model.config["image_size"] == GRID * P and model.config["gelu"] == "tanh"
    assert model.config["representation_size"] == (6 if pre_logits else None)
    images = np.random.default_rng(2).uniform(-1, 1, (3, C, GRID * P, GRID * P))
    np.testing.assert_allclose(
        model(images).data, official_forward(arrays, images), rtol=1e-5, atol=1e-5
    )


def test_new_resolution_and_classes_follow_the_fine_tuning_recipe(tmp_path):
    arrays = official_arrays(pre_logits=True)
    path = tmp_path / "ViT.npz"
    np.savez(path, **arrays)
    model = load_official(path, num_classes=7, image_size=16, interpolation="bicubic")
    assert not model.training  # loaded for use; .train() to fine-tune
    assert model.config["image_size"] == 16 and model.config["num_classes"] == 7
    assert model.pre_logits is None  # the whole old head is gone
    np.testing.assert_array_equal(model.head.weight.data, 0.0)
    np.testing.assert_array_equal(model.head.bias.data, 0.0)
    old_pe = arrays["Transformer/posembed_input/pos_embedding"]
    assert model.pos_embed.shape == (1, 1 + 16, D)
    np.testing.assert_array_equal(model.pos_embed.data[:, 0], old_pe[:, 0])  # class token's row
    np.testing.assert_allclose(model.pos_embed.data, resample_pos_embed(old_pe, 4), rtol=1e-6)
    np.testing.assert_array_equal(
        model.blocks[1].mlp.fc2.weight.data,
        arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel"].T,
    )
    logits = model(np.zeros((2, 3, 16, 16), dtype=np.float32))
    np.testing.assert_array_equal(logits.data, 0.0)  # a zero head predicts nothing yet


def test_a_tinyvit_model_prepared_for_fine_tuning():
    manual_seed(0)
    small = ViT(image_size=8, patch_size=4, num_classes=3, dim=8, depth=1, heads=2, mlp_dim=16)
    bigger = for_finetuning(small, num_classes=4, image_size=12, dropout=0.1)
    assert bigger.config["dropout"] == 0.1 and bigger.pos_embed.shape == (1, 10, 8)
    np.testing.assert_array_equal(
        bigger.blocks[0].attn.qkv.weight.data, small.blocks[0].attn.qkv.weight.data
    )
    np.testing.assert_array_equal(bigger.head.weight.data, 0.0)
    same = for_finetuning(small)  # nothing to change: the same weights
    np.testing.assert_array_equal(same.head.weight.data, small.head.weight.data)


def test_adapt_keeps_the_head_when_the_classes_stay():
    config, state = official_to_state_dict(official_arrays())
    new_config, new_state = adapt(config, state, num_classes=CLASSES, image_size=12)
    np.testing.assert_array_equal(new_state["head.weight"], state["head.weight"])
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        adapt(config, state, image_size=10)


def test_not_an_official_checkpoint(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(KeyError, match="not an official ViT checkpoint"):
        load_official(path)


def test_official_mapping_fills_every_parameter():
    config, state = official_to_state_dict(official_arrays())
    model = ViT(**config)
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state)  # strict: shapes and names all fit
