"""The hybrid of Section 3.1 (tinyvit/hybrid.py): a convolutional stem's feature map as the
sequence. Its parameters counted by hand, its configuration checked, its forward the ViT's
on the stem's features, its gradients exact; it checkpoints, resumes bit for bit, gives
attention maps on its grid of tokens, fine-tunes, and trains from the command line."""

from __future__ import annotations

import dataclasses
import json
import signal

import numpy as np
import pytest
from test_train import synthetic_cifar, tiny_config

import tinyvit
from tinyvit import Tensor, backend, gradcheck, hybrid, inspection, interop, models, no_grad
from tinyvit.data import CIFAR10
from tinyvit.hybrid import HybridConfig, HybridViT
from tinyvit.train import TrainConfig, Trainer, build_parser, config_from_args, recipe
from tinyvit.vit import ViT

TINY_HYBRID = dict(dim=16, depth=1, heads=2, mlp_dim=32, stem_channels=(4, 8))


def images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


# ---------------------------------------------------------------- shape and parameters


def test_the_cct_like_configuration_by_hand():
    """hybrid_cifar_2x3: 3x3 convolutions 3 -> 64 -> 128 (no bias), each with 3/2 pooling,
    so 32 x 32 images become 8 x 8 = 64 tokens; E (1x1, 128 -> 128, with bias), the class
    token, 65 position embeddings, two blocks of width 128 with MLP 128, the head."""
    model = models.create("hybrid_cifar_2x3")
    D, M = 128, 128
    stem = 3 * 64 * 9 + 64 * 128 * 9
    E = 128 * D + D
    block = 4 * D + (3 * D * D + 3 * D) + (D * D + D) + (2 * D * M + M + D)
    total = stem + E + D + 65 * D + 2 * block + 2 * D + D * 10 + 10
    assert total == 301_130  # the probe's CCT-2/3x2-like 284,491 + E + a class token + its E_pos
    assert model.num_parameters() == total == hybrid.count_parameters(model.config)
    assert model.config.feature_size == (8, 8) and model.patch_embed.grid_size == (8, 8)
    assert model.patch_embed.patch_size == model.config.token_stride == 4  # pixels per token
    names = [name for name, _ in model.named_parameters()]
    assert names[:6] == [
        "cls_token", "pos_embed", "patch_embed.backbone.stages.0.conv.weight",
        "patch_embed.backbone.stages.1.conv.weight", "patch_embed.proj.weight",
        "patch_embed.proj.bias",
    ]  # fmt: skip
    assert model.patch_embed.proj.weight.shape == (128, 128, 1, 1)  # timm's HybridEmbed.proj
    assert names[-2:] == ["head.weight", "head.bias"] and "blocks.1.mlp.fc2.weight" in names


@pytest.mark.parametrize(
    "changes",
    [
        dict(stem_norm="group"),
        dict(stem_pools=1, patch_size=2),
        dict(stem_channels=(8, 16, 24), stem_pools=2, stem_kernel_size=5),
        dict(image_size=(32, 48), pos_embed="sincos"),
        dict(representation_size=24, pool="mean"),
    ],
)
def test_parameters_are_counted_from_the_configuration(changes):
    config = hybrid.config("hybrid_cifar_2x3", **{**TINY_HYBRID, **changes})
    model = HybridViT(config)
    assert model.num_parameters() == hybrid.count_parameters(config)
    rows, cols = config.grid_size
    assert model.pos_embed.shape[1] == rows * cols + 1
    assert model(images(size=32) if "image_size" not in changes else np.zeros(
        (1, 3, 32, 48), np.float32)).shape[-1] == 10  # fmt: skip


def test_the_stem_sets_the_grid_of_tokens():
    config = hybrid.config("hybrid_cifar_2x3", **TINY_HYBRID)
    assert config.replace(stem_pools=1).grid_size == (16, 16)
    assert config.replace(stem_pools=0).grid_size == (32, 32)
    assert config.replace(image_size=30).grid_size == (8, 8)  # 30 -> 15 -> 8: rounded up
    assert config.replace(patch_size=2).grid_size == (4, 4)
    assert config.replace(image_size=(32, 64)).grid_size == (8, 16)
    assert config.replace(stem_pools=1).token_stride == 2


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(stem_pools=3), r"stem_pools 3 is more than the stem's 2 convolutions"),
        (dict(patch_size=3), r"8 x 8 feature map, which patch_size 3 does not cut"),
        (dict(stem_channels=()), r"stem_channels must be a non-empty list of widths"),
        (dict(stem_channels=(8, 0)), r"stem_channels\[1\] must be an integer >= 1, got 0"),
        (dict(stem_norm="batch"), r"stem_norm must be one of 'none', 'group'"),
        (dict(heads=3), r"heads 3 does not divide dim 16"),
    ],
)
def test_bad_configurations_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        hybrid.config("hybrid_cifar_2x3", **{**TINY_HYBRID, **changes})


def test_the_configuration_reads_like_a_dict_and_survives_json():
    config = hybrid.config("hybrid_cifar_2x3", stem_norm="group")
    again = HybridConfig(**json.loads(json.dumps(dict(config))))
    assert again == config and again.stem_channels == (64, 128)
    assert config["stem_norm"] == "group" and "stem_channels" in list(config)
    assert set(dict(config)) == {f.name for f in dataclasses.fields(HybridConfig)}
    with pytest.raises(KeyError, match="unknown ViT configuration 'hybrid_tiny'"):
        models.config("hybrid_tiny")
    assert isinstance(tinyvit.create("hybrid_cifar_7x3"), HybridViT)
    assert type(models.create("vit_cifar_tiny")) is ViT


# ---------------------------------------------------------------- what it computes


def test_a_hybrid_is_the_vit_of_its_stems_feature_map():
    """Section 3.1: the sequence is the feature map's 1x1 patches, projected by E; the rest
    is the plain ViT, here built apart on the stem's output with the same weights."""
    tinyvit.manual_seed(0)
    model = HybridViT(hybrid.config("hybrid_cifar_2x3", **TINY_HYBRID)).eval()
    x = images()
    with no_grad():
        features = model.patch_embed.backbone(Tensor(x))  # (B, 8, 8, 8): C_f = 8
        assert features.shape == (2, 8, 8, 8)
        plain = ViT(model.config.vit_config()).eval()  # image_size 8, channels 8, patch 1
        plain.load_state_dict({k: v for k, v in model.state_dict().items()
                               if not k.startswith("patch_embed.backbone")})  # fmt: skip
        np.testing.assert_allclose(model(x).data, plain(features).data, rtol=1e-5, atol=1e-6)


def test_every_parameter_gets_its_exact_gradient():
    tinyvit.manual_seed(1)
    model = HybridViT(hybrid.config(
        "hybrid_cifar_2x3", image_size=12, dim=8, depth=1, heads=2, mlp_dim=8,
        stem_channels=(3, 4), stem_norm="group", pool="mean",
    )).to(np.float64)  # fmt: skip
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 12, 12)))
    gradcheck(lambda: model(x), (), dict(model.named_parameters()), max_coords=12)


def test_the_same_on_the_cuda_device(device):
    tinyvit.manual_seed(0)
    model = HybridViT(hybrid.config("hybrid_cifar_2x3", **TINY_HYBRID))
    x = images()
    expected = model(x)
    expected.sum().backward()
    first = model.patch_embed.backbone.stages[0].conv.weight.grad.copy()
    model.zero_grad()
    model.to(device)
    xp = backend.module_for(device)
    y = model(xp.asarray(x))
    y.sum().backward()
    np.testing.assert_allclose(backend.to_numpy(y.data), expected.data, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        backend.to_numpy(model.patch_embed.backbone.stages[0].conv.weight.grad), first,
        rtol=1e-3, atol=1e-5,
    )  # fmt: skip


# ---------------------------------------------------------------- saved, resumed, inspected


def test_a_checkpoint_rebuilds_the_hybrid(tmp_path):
    tinyvit.manual_seed(3)
    model = HybridViT(hybrid.config("hybrid_cifar_2x3", **TINY_HYBRID, stem_norm="group"))
    tinyvit.save(model, tmp_path / "hybrid.npz")
    loaded = tinyvit.load(tmp_path / "hybrid.npz")
    assert type(loaded) is HybridViT and loaded.config == model.config
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value, err_msg=name)
    with no_grad():
        np.testing.assert_array_equal(loaded(images()).data, model.eval()(images()).data)


def hybrid_run(**changes):
    return tiny_config(**{"model": "hybrid_cifar_2x3", "model_overrides": TINY_HYBRID, **changes})


@pytest.mark.parametrize("stop_at", [8, 5])  # an epoch boundary, and mid-epoch
def test_an_interrupted_hybrid_run_resumes_to_the_same_weights(stop_at, tmp_path):
    config = hybrid_run(mixup=0.5, ema=0.9, model_overrides={**TINY_HYBRID, "pool": "mean",
                                                               "patch_dropout": 0.25})
    dataset = synthetic_cifar()
    straight = Trainer(config, dataset, tmp_path / "straight", progress=False)
    straight.fit()
    assert isinstance(straight.model, HybridViT)
    first = Trainer(config, dataset, tmp_path / "resumed", progress=False)
    original = first.train_on_batch

    def interrupt(x, y):
        result = original(x, y)
        if first.step + 1 == stop_at:
            signal.raise_signal(signal.SIGINT)  # a Ctrl-C, to this thread: handled at once
        return result

    first.train_on_batch = interrupt
    first.fit()
    assert first.stop.requested and first.step == stop_at
    second = Trainer(config, dataset, tmp_path / "resumed", progress=False)
    second.fit(resume=True)
    assert second.step == straight.step == 16
    for key, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(second.model.state_dict()[key], value, err_msg=key)
    assert [r["test_acc"] for r in second.history] == [r["test_acc"] for r in straight.history]
    assert type(tinyvit.load(tmp_path / "resumed" / "model.npz")) is HybridViT


def blocky_cifar(n_train=256, n_test=64, classes=4, seed=0):
    """Images whose class is a fixed pattern of 4 x 4 colored blocks under noise. (A
    pattern that changes from pixel to pixel, as ``synthetic_cifar``'s, is lost in the
    stem's max pooling: there the tiny hybrid stays at chance.)"""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (classes, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)

    def make(n):
        labels = rng.integers(0, classes, n)
        noise = rng.normal(0, 40, (n, 3, 32, 32))
        return np.clip(templates[labels] + noise, 0, 255).astype(np.uint8), labels

    (x_train, y_train), (x_test, y_test) = make(n_train), make(n_test)
    return CIFAR10(x_train, y_train, x_test, y_test, tuple(f"class {i}" for i in range(classes)))


def test_a_hybrid_learns(tmp_path):
    history = Trainer(
        hybrid_run(epochs=4, lr=1e-2, augment="none", label_smoothing=0.0),
        blocky_cifar(), tmp_path, progress=False,
    ).fit()  # fmt: skip
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.9  # four patterns under noise


def test_attention_maps_lie_on_the_grid_of_tokens():
    model = HybridViT(hybrid.config("hybrid_cifar_2x3", **TINY_HYBRID))
    logits, attentions = inspection.attend(model, images(3))
    assert logits.shape == (3, 10) and len(attentions) == 1
    assert attentions[0].shape == (3, 2, 65, 65)  # the class token and 8 x 8 tokens
    assert inspection.cls_attention(attentions[0]).shape == (3, 2, 8, 8)
    assert inspection.attention_rollout(attentions, pool="mean").shape == (3, 8, 8)
    distance = inspection.mean_attention_distance(attentions, model.patch_embed.patch_size)
    assert distance.shape == (1, 2)  # in pixels: tokens 4 px apart, as 4-pixel patches are
    np.testing.assert_allclose(distance, inspection.uniform_attention_distance(8, 4), rtol=0.05)


def test_figure_7_shows_the_first_convolutions_filters(tmp_path):
    from tinyvit import viz

    model = HybridViT(hybrid.config("hybrid_cifar_2x3", **TINY_HYBRID))
    _, attentions = inspection.attend(model, images())
    distance = inspection.mean_attention_distance(attentions, model.patch_embed.patch_size)
    assert viz._weight_of(model) is model.patch_embed.backbone.stages[0].conv.weight
    path = viz.plot_figure7(model, distance, tmp_path / "figure7.png")
    assert path.stat().st_size > 5000


def test_fine_tuning_at_a_new_resolution_resamples_the_tokens_grid():
    tinyvit.manual_seed(4)
    model = HybridViT(hybrid.config("hybrid_cifar_2x3", **TINY_HYBRID))
    tuned = interop.for_finetuning(model, num_classes=5, image_size=48)
    assert type(tuned) is HybridViT and tuned.config.grid_size == (12, 12)
    assert tuned.pos_embed.shape == (1, 145, 16)
    np.testing.assert_array_equal(tuned.pos_embed.data[:, 0], model.pos_embed.data[:, 0])
    stem, tuned_stem = model.patch_embed.backbone, tuned.patch_embed.backbone
    np.testing.assert_array_equal(tuned_stem.stages[1].conv.weight.data,
                                  stem.stages[1].conv.weight.data)  # fmt: skip
    assert not tuned.head.weight.data.any()
    assert tuned(images(size=48)).shape == (2, 5)


# ---------------------------------------------------------------- the command line


def test_the_command_line_builds_a_hybrid():
    args = build_parser().parse_args(
        ["--recipe", "hybrid", "--stem-channels", "32,64", "--stem-norm", "group"]
    )
    config = config_from_args(args).check()
    assert config.model == "hybrid_cifar_2x3" and config.augment == "basic"
    model_config = config.model_config(num_classes=10)
    assert isinstance(model_config, HybridConfig) and model_config.stem_channels == (32, 64)
    assert model_config.pool == "mean" and model_config.stem_norm == "group"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--stem-channels", "32,x"])
    assert config_from_args(build_parser().parse_args(
        ["--augment", "randaugment", "--randaugment-magnitude", "5", "--randaugment-ops", "1"]
    )).randaugment_magnitude == 5.0  # fmt: skip


def test_a_stem_setting_on_a_plain_vit_is_refused():
    from tinyvit.train import RunError

    with pytest.raises(RunError, match=r"unknown ViT argument\(s\) \['stem_channels'\]"):
        recipe("cpu", model_overrides={"stem_channels": (8,)}).check()
    assert TrainConfig.from_saved({"model": "vit_cifar_tiny"}).randaugment_ops == 2
