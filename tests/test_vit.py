"""The Vision Transformer: Eq. 1-4 shapes, the patch projection as a
convolution, parameter counts against Table 1, gradients of every parameter,
parity with a PyTorch reference of timm's semantics, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvit import Tensor, ViT, backend, create, gradcheck, manual_seed
from tinyvit.backend import to_numpy
from tinyvit.vit import CONFIGS, count_parameters, patchify

SMALL = dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=2, heads=2, mlp_dim=16)


def small_vit(device="cpu", dtype=np.float64, seed=0, **overrides):
    manual_seed(seed)
    return ViT(**{**SMALL, **overrides}).to(device, dtype)


def images(xp, batch=2, channels=3, size=8, seed=1, dtype=np.float64):
    return xp.asarray(
        np.random.default_rng(seed).standard_normal((batch, channels, size, size)), dtype=dtype
    )


# ---------------------------------------------------------------- Eq. 1-4


def test_shapes_follow_eq_1_to_4(xp, device):
    model = small_vit(device, dim=12, heads=3, image_size=16)  # N = (16/4)^2 = 16 patches
    x = images(xp, batch=5, size=16)
    assert model.patch_embed(Tensor(x)).shape == (5, 16, 12)  # x_p E: N rows of width D
    tokens = model.forward_features(x)
    assert tokens.shape == (5, 17, 12)  # N + 1 tokens of width D
    assert model.forward_head(tokens, pre_logits=True).shape == (5, 12)  # y of Eq. 4
    assert model(x).shape == (5, 3)
    assert model.pos_embed.shape == (1, 17, 12) and model.cls_token.shape == (1, 1, 12)


def test_patchify_order_and_the_projection_is_a_convolution(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    P = 4
    rows = patchify(x, P).data  # (2, 4, 48)
    np.testing.assert_array_equal(
        rows[1, 2], x[1, :, 4:8, 0:4].reshape(-1)
    )  # 3rd patch: row 1, col 0
    model = small_vit()
    weight, bias = model.patch_embed.proj.weight.data, model.patch_embed.proj.bias.data
    conv = np.empty((2, 8, 2, 2))  # a stride-P convolution written as loops
    for i in range(2):
        for j in range(2):
            window = x[:, :, i * P : (i + 1) * P, j * P : (j + 1) * P]
            conv[:, :, i, j] = np.einsum("bcuv,dcuv->bd", window, weight) + bias
    got = model.patch_embed(x).data  # (2, N, D)
    np.testing.assert_allclose(got, conv.reshape(2, 8, 4).transpose(0, 2, 1))


def test_class_token_and_mean_pooling(xp, device):
    x = images(xp)
    cls_model = small_vit(device)
    mean_model = small_vit(device, pool="mean")
    tokens = cls_model.forward_features(x)
    np.testing.assert_allclose(
        to_numpy(cls_model.forward_head(tokens, pre_logits=True).data), to_numpy(tokens.data[:, 0])
    )
    tokens = mean_model.forward_features(x)
    np.testing.assert_allclose(
        to_numpy(mean_model.forward_head(tokens, pre_logits=True).data),
        to_numpy(tokens.data[:, 1:]).mean(1),
    )


def test_attention_maps_are_kept_on_request(xp, device):
    model = small_vit(device).keep_attention()
    model(images(xp, batch=3))
    maps = model.attention_maps()
    assert len(maps) == 2 and maps[0].shape == (3, 2, 5, 5)  # (B, heads, N+1, N+1)
    np.testing.assert_allclose(to_numpy(maps[1]).sum(-1), 1.0)
    with pytest.raises(RuntimeError, match="keep_attention"):
        small_vit().attention_maps()


# ---------------------------------------------------------------- configurations

TIMM_PARAMETER_COUNTS = {  # as timm's model cards give them
    "vit_base_patch16_224": 86_567_656,
    "vit_base_patch32_224": 88_224_232,
    "vit_large_patch16_224": 304_326_632,
    "vit_large_patch32_224": 306_535_400,
    "vit_huge_patch14_224": 632_045_800,
    "deit_tiny_patch16_224": 5_717_416,
    "deit_small_patch16_224": 22_050_664,
}


def test_vit_b16_has_exactly_86_567_656_parameters():
    assert create("ViT-B/16").num_parameters() == 86_567_656


@pytest.mark.parametrize("name", sorted(TIMM_PARAMETER_COUNTS))
def test_table_1_parameter_counts(name):
    assert count_parameters(**CONFIGS[name]) == TIMM_PARAMETER_COUNTS[name]


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("vit_cifar_tiny", {}),
        ("vit_lite_7_4", {}),
        ("DeiT-Ti", {"num_classes": 10}),
        ("vit_cifar_tiny", {"representation_size": 32, "pool": "mean"}),
    ],
)
def test_the_count_formula_matches_built_models(name, overrides):
    model = create(name, **overrides)
    assert model.num_parameters() == count_parameters(**model.config)


def test_vit_lite_7_4_is_the_paper_shape():
    c = CONFIGS["vit_lite_7_4"]
    assert (c["dim"], c["depth"], c["heads"], c["mlp_dim"], c["patch_size"]) == (256, 7, 4, 512, 4)
    assert create("ViT-Lite-7/4").num_parameters() == 3_722_250


def test_create_errors():
    with pytest.raises(KeyError, match="unknown ViT configuration 'vit_giant'.*vit_lite_7_4"):
        create("vit_giant")
    with pytest.raises(TypeError, match="layers"):
        create("vit_cifar_tiny", layers=3)


def test_state_dict_uses_timm_names_and_shapes():
    model = ViT(**SMALL)
    sd = model.state_dict()
    D, P = 8, 4
    expected = {
        "cls_token": (1, 1, D),
        "pos_embed": (1, 5, D),
        "patch_embed.proj.weight": (D, 3, P, P),
        "patch_embed.proj.bias": (D,),
    }
    for i in range(2):
        expected |= {
            f"blocks.{i}.norm1.weight": (D,),
            f"blocks.{i}.norm1.bias": (D,),
            f"blocks.{i}.attn.qkv.weight": (3 * D, D),
            f"blocks.{i}.attn.qkv.bias": (3 * D,),
            f"blocks.{i}.attn.proj.weight": (D, D),
            f"blocks.{i}.attn.proj.bias": (D,),
            f"blocks.{i}.norm2.weight": (D,),
            f"blocks.{i}.norm2.bias": (D,),
            f"blocks.{i}.mlp.fc1.weight": (16, D),
            f"blocks.{i}.mlp.fc1.bias": (16,),
            f"blocks.{i}.mlp.fc2.weight": (D, 16),
            f"blocks.{i}.mlp.fc2.bias": (D,),
        }
    expected |= {"norm.weight": (D,), "norm.bias": (D,), "head.weight": (3, D), "head.bias": (3,)}
    assert list(sd) == list(expected)
    assert {k: v.shape for k, v in sd.items()} == expected


def test_initialization():
    manual_seed(0)
    model = create("vit_cifar_tiny")
    assert abs(model.pos_embed.data.std() - 0.02 * 0.8796) < 0.001
    assert np.abs(model.cls_token.data).max() < 1e-5
    np.testing.assert_array_equal(model.blocks[0].attn.qkv.bias.data, 0.0)
    np.testing.assert_array_equal(model.norm.weight.data, 1.0)
    assert model.pos_embed.dtype == np.float32


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("gelu", ["none", "tanh"])
def test_every_parameter_passes_the_gradient_check(pool, gelu, xp, device):
    model = small_vit(device, pool=pool, gelu=gelu)
    x = images(xp)
    report = gradcheck(model, (x,), params=model.named_parameters(), max_coords=6)
    assert len(report.rows) == len(model.parameters()) == 32


def test_gradient_check_with_pre_logits_and_input_gradient(xp, device):
    model = small_vit(device, representation_size=5)
    x = Tensor(images(xp), requires_grad=True)
    gradcheck(model, (x,), params=model.named_parameters(), max_coords=4)


# ---------------------------------------------------------------- bad input


def test_image_side_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match=r"patch_size 4 does not divide image_size 30.*1, 2, 3, 5"):
        ViT(**{**SMALL, "image_size": 30})
    with pytest.raises(ValueError, match=r"patch_size 64 does not divide image_size 32.*16, 32\)"):
        create("vit_cifar_tiny", patch_size=64)  # the hint lists patch sizes that fit, not 0


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("depth", -1, "depth must be an integer >= 1, got -1"),
        ("depth", 0, "depth must be an integer >= 1, got 0"),
        ("image_size", 0, "image_size must be an integer >= 1, got 0"),
        ("num_classes", 0, "num_classes must be an integer >= 1, got 0"),
        ("patch_size", 0, "patch_size must be an integer >= 1, got 0"),
        ("heads", 0, "heads must be an integer >= 1, got 0"),
        ("heads", -3, "heads must be an integer >= 1, got -3"),
        ("dim", -8, "dim must be an integer >= 1, got -8"),
        ("mlp_dim", 0, "mlp_dim must be an integer >= 1, got 0"),
        ("channels", 0, "channels must be an integer >= 1, got 0"),
        ("dropout", 2, r"dropout must be a number in \[0, 1\), got 2"),
        ("emb_dropout", -0.1, r"emb_dropout must be a number in \[0, 1\), got -0.1"),
        ("representation_size", 0, "representation_size must be an integer >= 1, got 0"),
        ("pool", "max", "pool must be one of 'cls', 'mean', got 'max'"),
        ("gelu", "erf", "gelu must be one of 'none', 'tanh', got 'erf'"),
        ("heads", 3, r"heads 3 does not divide dim 8.*1, 2, 4, 8"),
    ],
)
def test_nonsense_arguments_are_refused_by_name(name, value, message):
    with pytest.raises(ValueError, match="ViT: " + message):
        ViT(**{**SMALL, name: value})


@pytest.mark.parametrize("name,value", [("depth", 2.5), ("dim", "8"), ("heads", True)])
def test_arguments_of_the_wrong_type_are_refused_by_name(name, value):
    with pytest.raises(TypeError, match=f"ViT: {name} must be an integer >= 1, got {value!r}"):
        ViT(**{**SMALL, name: value})


def test_numpy_integers_are_integers():
    assert ViT(**{**SMALL, "depth": np.int64(1)}).config["depth"] == 1


@pytest.mark.parametrize(
    "shape,words",
    [
        ((2, 1, 8, 8), ["(B, 3, 8, 8)", "(2, 1, 8, 8)"]),
        ((2, 3, 16, 16), ["(B, 3, 8, 8)", "(2, 3, 16, 16)"]),
        ((3, 8, 8), ["(B, 3, 8, 8)", "(3, 8, 8)", "rank-3"]),
    ],
)
def test_wrong_images_are_named(shape, words):
    with pytest.raises(ValueError) as info:
        small_vit()(np.zeros(shape))
    for word in words:
        assert word in str(info.value)


def test_channels_last_images_are_named_with_the_transpose():
    with pytest.raises(ValueError) as info:
        small_vit()(np.zeros((2, 8, 8, 3)))
    message = str(info.value)
    for words in ("(B, 3, 8, 8)", "(2, 8, 8, 3)", "channels-last (B, H, W, C)",
                  "images.transpose(0, 3, 1, 2)"):  # fmt: skip
        assert words in message, (words, message)
    with pytest.raises(ValueError) as info:  # four channels last: not taken for the layout
        small_vit()(np.zeros((2, 8, 8, 4)))
    assert "channels-last" not in str(info.value) and "(2, 8, 8, 4)" in str(info.value)


def test_a_list_of_images_is_a_type_error():
    with pytest.raises(TypeError, match="ViT expects images as an array .* got list"):
        small_vit()(np.zeros((1, 3, 8, 8)).tolist())


def test_integer_images_are_refused():
    images = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(TypeError, match="uint8.*normalize"):
        small_vit()(images)
    with pytest.raises(TypeError, match="a Tensor of uint8.*normalize"):
        small_vit()(Tensor(images))  # wrapped, the same images are refused the same way


def test_a_tensor_in_another_dtype_is_named():
    with pytest.raises(TypeError, match="float32 but the images are a Tensor of float64"):
        small_vit(dtype=np.float32)(Tensor(np.zeros((1, 3, 8, 8)), dtype=np.float64))


def test_arrays_take_the_model_dtype():
    model = ViT(**SMALL)  # float32
    assert model(np.zeros((1, 3, 8, 8))).dtype == np.float32


# ---------------------------------------------------------------- parity with PyTorch


def torch_reference_vit(torch, config):
    """A ViT written directly in PyTorch with timm's semantics and parameter names:
    exact GELU, LayerNorm eps 1e-6, fused qkv with bias, pre-norm blocks."""
    nn = torch.nn

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            B, N, D = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = (q @ k.transpose(-2, -1) * (D // self.heads) ** -0.5).softmax(dim=-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(B, N, D))

    class Mlp(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self, dim, heads, hidden):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
            self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, hidden)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class PatchEmbed(nn.Module):
        def __init__(self, channels, patch, dim):
            super().__init__()
            self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class Reference(nn.Module):
        def __init__(self, c):
            super().__init__()
            n = (c["image_size"] // c["patch_size"]) ** 2
            self.pool = c["pool"]
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c["dim"]))
            self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, c["dim"]))
            self.patch_embed = PatchEmbed(c["channels"], c["patch_size"], c["dim"])
            self.blocks = nn.ModuleList(
                Block(c["dim"], c["heads"], c["mlp_dim"]) for _ in range(c["depth"])
            )
            self.norm = nn.LayerNorm(c["dim"], eps=1e-6)
            self.head = nn.Linear(c["dim"], c["num_classes"])

        def forward(self, x):
            x = self.patch_embed(x)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            for block in self.blocks:
                x = block(x)
            x = self.norm(x)
            x = x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)
            return self.head(x)

    return Reference(config)


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-4), (np.float64, 1e-9)])
def test_matches_a_pytorch_reference(pool, dtype, tol, kernel_mode, xp, device):
    """Logits and every parameter's gradient, with the kernels and on the reference path."""
    torch = pytest.importorskip("torch")
    config = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=4, mlp_dim=32)
    manual_seed(5)
    ours = ViT(**config, pool=pool).to(device, dtype)
    for p in ours.parameters():  # bigger than the init, so every path matters
        p.data += xp.asarray(np.random.default_rng(p.size).normal(0, 0.1, p.shape), dtype=dtype)
    ref = torch_reference_vit(torch, {**ours.config}).to(
        torch.float64 if dtype == np.float64 else torch.float32
    )
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(6).standard_normal((3, 3, 16, 16)).astype(dtype)
    target = np.array([0, 4, 2])

    import tinyvit.functional as F

    loss = F.cross_entropy(ours(xp.asarray(x)), xp.asarray(target))
    loss.backward()
    ref_logits = ref(torch.from_numpy(x))
    ref_loss = torch.nn.functional.cross_entropy(ref_logits, torch.from_numpy(target))
    ref_loss.backward()
    np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=tol)
    np.testing.assert_allclose(
        to_numpy(ours(xp.asarray(x)).data), ref_logits.detach().numpy(), rtol=tol, atol=tol
    )
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        want = ref_grads[name].grad.numpy()
        scale = np.abs(want).max() + 1e-12
        np.testing.assert_allclose(to_numpy(p.grad) / scale, want / scale, atol=tol, err_msg=name)


def test_model_on_the_gpu_refuses_cpu_images():
    if not backend.cuda_available():
        pytest.skip("no GPU")
    model = small_vit("cuda")
    with pytest.raises(backend.DeviceError):
        model(np.zeros((1, 3, 8, 8)))


# ---------------------------------------- fixed position embeddings, token dropping


def test_sincos_position_embeddings_are_fixed_and_follow_the_grid():
    from tinyvit.nn import Buffer
    from tinyvit.vit import sincos_position_embedding

    model = small_vit(pos_embed="sincos", dim=8)
    assert isinstance(model.pos_embed, Buffer) and "pos_embed" not in model.state_dict()
    assert model.num_parameters() == count_parameters(**model.config)
    assert model.num_parameters() == small_vit().num_parameters() - model.pos_embed.size
    table = sincos_position_embedding(grid=2, dim=8)[0]  # (1 + 4, 8)
    np.testing.assert_array_equal(table[0], 0.0)  # the class token's row
    col, row = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])  # patches row by row
    omega = 1.0 / 10000.0 ** (np.arange(2) / 1)
    want = np.concatenate(
        [np.sin(col[:, None] * omega), np.cos(col[:, None] * omega),
         np.sin(row[:, None] * omega), np.cos(row[:, None] * omega)], axis=1,
    )  # fmt: skip
    np.testing.assert_allclose(table[1:], want, rtol=1e-6)
    assert model.pos_embed.dtype == np.float64  # moved and cast with the parameters
    with pytest.raises(ValueError, match="divisible by 4"):
        ViT(**{**SMALL, "dim": 6, "heads": 2}, pos_embed="sincos")


def test_patch_dropout_trains_on_fewer_tokens_and_tests_on_all(xp, device):
    model = small_vit(device, patch_dropout=0.5, image_size=16)  # 16 patches
    seen = []
    original = model.blocks[0].forward
    model.blocks[0].forward = lambda z: seen.append(z.shape[1]) or original(z)
    x = xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 16, 16)))
    model.train()(x)
    model.eval()(x)
    assert seen == [1 + 8, 1 + 16]
    model.train()
    gradcheck(lambda w: _logits_with_embedding(model, x, w, device), (model.pos_embed,))


def _logits_with_embedding(model, x, weight, device):
    backend.manual_seed(3)  # the same tokens dropped at every evaluation of the check
    return model(x)
