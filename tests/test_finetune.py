"""Fine-tuning (Section 3.2): the zero head at a new resolution, a seeded fine-tuning run
on a toy task, and the official layout written and read back."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvit import ViT, manual_seed
from tinyvit.checkpoint import write_npz
from tinyvit.finetune import finetune
from tinyvit.interop import for_finetuning, load_official, official_to_state_dict, to_official
from tinyvit.loop import evaluate

SMALL = dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=2, heads=2, mlp_dim=16)


def test_official_layout_round_trip(tmp_path):
    manual_seed(3)
    model = ViT(**{**SMALL, "gelu": "none"}).to(np.float64)
    config, state = official_to_state_dict(to_official(model))
    assert {k: v for k, v in config.items() if k != "gelu"} == {
        k: v for k, v in model.config.items() if k in config and k != "gelu"
    }
    own = model.state_dict()
    assert state.keys() == own.keys()
    for k in own:
        np.testing.assert_array_equal(state[k], own[k], err_msg=k)
    path = write_npz(tmp_path / "ViT-tiny.npz", to_official(model))
    back = load_official(path, gelu="none").to(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    np.testing.assert_allclose(back(x).data, model(x).data, rtol=1e-6, atol=1e-6)


def test_a_mean_pooled_model_goes_through_the_official_layout(tmp_path):
    manual_seed(4)
    model = ViT(**{**SMALL, "gelu": "none", "pool": "mean"}).to(np.float64)
    path = write_npz(tmp_path / "ViT-gap.npz", to_official(model))
    back = load_official(path, gelu="none", pool="mean").to(np.float64)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8))
    np.testing.assert_allclose(back(x).data, model(x).data, rtol=1e-6, atol=1e-6)
    as_cls = load_official(path, gelu="none").to(np.float64)  # the class token's row instead
    assert np.abs(as_cls(x).data - model(x).data).max() > 1e-3


def test_a_new_head_follows_the_recipe():
    manual_seed(0)
    model = ViT(**SMALL)
    new = for_finetuning(model, 3, image_size=16, new_head=True)  # same class count: fresh
    assert (new.head.weight.data == 0).all() and (new.head.bias.data == 0).all()
    assert new.pos_embed.shape == (1, 1 + 16, 8) and new.image_size == 16
    reference = for_finetuning(model, num_classes=5, image_size=16)
    five = for_finetuning(model, 5, image_size=16, new_head=True)
    for k, v in reference.state_dict().items():
        np.testing.assert_array_equal(five.state_dict()[k], v, err_msg=k)


def test_finetune_and_evaluate_on_a_toy_task():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 96)
    images = np.where(labels[:, None, None, None] == 1, 200, 40).astype(np.uint8)
    images = np.broadcast_to(images, (96, 3, 8, 8)) + rng.integers(0, 30, (96, 3, 8, 8))
    images = images.astype(np.uint8)
    histories = []
    for _ in range(2):
        manual_seed(0)
        model = for_finetuning(ViT(**SMALL), 2, image_size=12, new_head=True)  # upsampled
        histories.append(
            finetune(
                model, images[:64], labels[:64], images[64:], labels[64:], 30,
                batch_size=16, lr=3e-3, eval_every=10, log=None,
            )  # fmt: skip
        )
    again = [dict(r, seconds=h["seconds"]) for r, h in zip(histories[1], histories[0])]
    assert histories[0] == again  # the same seed, the same run
    assert [r["step"] for r in histories[0]] == [10, 20, 30]
    assert histories[0][-1]["test_acc"] == 1.0
    assert evaluate(model, images[64:], labels[64:]).accuracy == 1.0
    with pytest.raises(ValueError, match="beyond the model's 2 classes"):
        finetune(model, images, labels + 1, images, labels, 1, log=None)
    with pytest.raises(TypeError, match="x_train: expected a NumPy uint8"):
        finetune(model, images.astype(np.float32), labels, images, labels, 1, log=None)
    with pytest.raises(ValueError, match="finetune: steps must be an integer >= 1, got 0"):
        finetune(model, images, labels, images, labels, 0, log=None)
