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


# ---------------------------------------------------------------------------
# python -m tinyvit.finetune: the trainer with the finetune recipe, from a pre-trained model
# ---------------------------------------------------------------------------


@pytest.fixture
def pretrained_on_the_hub(tmp_path, monkeypatch):
    """A small pre-trained ViT (32 x 32 in 16 x 16 patches, 5 classes, mean and std 0.5) in
    an offline Hub cache made here; its repository's name."""
    from test_pretrained import REPO, hub_repo, old_config, random_vit

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    hub_repo(cache, REPO, old_config(), random_vit().state_dict())
    return REPO


def finetune_flags(model, root, out, *extra):
    return ["--model", str(model), "--data-dir", str(root), "--image-size", "48", "--steps", "6",
            "--batch-size", "4", "--out", str(out), "--no-progress", *extra]  # fmt: skip


def test_the_finetune_recipe_is_the_papers(tmp_path, pretrained_on_the_hub):
    """A zero-initialized head for the folder's classes, E_pos resampled to the new grid,
    the other weights the pre-trained ones; SGD with momentum 0.9 (not Nesterov), no weight
    decay, clipping at 1, a warm-up then cosine decay to zero; the model's own normalization."""
    from test_data_folders import write_images

    from tinyvit import data, from_pretrained
    from tinyvit.optim import SGD
    from tinyvit.train import Trainer, recipe

    source = from_pretrained(pretrained_on_the_hub)
    config = recipe("finetune", init=pretrained_on_the_hub, steps=6, batch_size=4,
                    model_overrides={"image_size": 48})  # fmt: skip
    dataset = data.load_image_folder(write_images(tmp_path / "pets"), 48, mean=(0.5,) * 3,
                                     std=(0.5,) * 3, log=lambda line: None)  # fmt: skip
    trainer = Trainer(config, dataset, tmp_path / "run", progress=False, log=lambda line: None)
    model = trainer.model
    assert model.config.num_classes == 3 and model.classes == ("cat", "dog", "fox")
    assert not model.head.weight.data.any() and not model.head.bias.data.any()
    assert model.pos_embed.shape == (1, 1 + 9, 192)  # a 3 x 3 grid, from 2 x 2
    mine, theirs = model.state_dict(), source.state_dict()
    for key in theirs:
        if not key.startswith(("head.", "pos_embed")):
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)
    optimizer = trainer.optimizer
    assert isinstance(optimizer, SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, False, 0.0)
    assert config.clip_grad == 1.0 and config.label_smoothing == 0.0
    schedule = trainer.schedule
    assert schedule(0) < schedule(schedule.warmup) == config.lr and schedule.min_lr == 0.0
    assert trainer.normalization == dataset.preprocessing  # the pre-trained model's 0.5s


def test_the_finetune_command_resumes_without_the_pretrained_model(
    tmp_path, pretrained_on_the_hub, monkeypatch, capsys
):
    """Interrupted at step 3 and resumed after the Hub's cache is gone (HF_HUB_OFFLINE):
    the checkpoint holds the weights, and the run ends as the straight one does."""
    import os
    import shutil
    import signal

    from test_data_folders import write_images

    import tinyvit
    from tinyvit.finetune import main
    from tinyvit.train import Trainer

    root = write_images(tmp_path / "pets")
    assert main(finetune_flags(pretrained_on_the_hub, root, tmp_path / "straight")) == 0
    log = capsys.readouterr().out
    assert f"fine-tuned {pretrained_on_the_hub} with image_size=48" in log
    assert "images at 48 x 48" in log
    original = Trainer.train_on_batch

    def interrupt(self, x, y):
        result = original(self, x, y)
        if self.step + 1 == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, caught by the trainer
        return result

    monkeypatch.setattr(Trainer, "train_on_batch", interrupt)
    assert main(finetune_flags(pretrained_on_the_hub, root, tmp_path / "resumed")) == 130
    monkeypatch.setattr(Trainer, "train_on_batch", original)
    shutil.rmtree(tmp_path / "hub")  # no pre-trained model any more, and no network
    capsys.readouterr()
    flags = finetune_flags(pretrained_on_the_hub, root, tmp_path / "resumed", "--resume")
    assert main(flags) == 0, capsys.readouterr().err
    assert "resuming" in capsys.readouterr().out
    straight = tinyvit.load(tmp_path / "straight" / "model.npz")
    resumed = tinyvit.load(tmp_path / "resumed" / "model.npz")
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)
    assert resumed.classes == ("cat", "dog", "fox") and resumed.config.image_size == 48
    assert resumed.preprocessing.mean == (0.5,) * 3 and resumed.preprocessing.image_size == 48
    # a fresh start without the pre-trained model is one error line naming it
    status = main(finetune_flags(pretrained_on_the_hub, root, tmp_path / "again"))
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: cannot start from {pretrained_on_the_hub}: ")


def test_overwriting_a_finetuning_run_starts_again_from_the_pretrained_weights(
    tmp_path, pretrained_on_the_hub, capsys
):
    """--overwrite where a run of the same settings was: its checkpoint gives the shape,
    the pre-trained model the weights (the same result as the first run's)."""
    from test_data_folders import write_images

    import tinyvit
    from tinyvit.finetune import main

    root = write_images(tmp_path / "pets")
    flags = finetune_flags(pretrained_on_the_hub, root, tmp_path / "run")
    assert main(flags) == 0
    first = tinyvit.load(tmp_path / "run" / "model.npz").state_dict()
    assert main([*flags, "--overwrite"]) == 0, capsys.readouterr().err
    again = tinyvit.load(tmp_path / "run" / "model.npz").state_dict()
    for key, value in first.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # the pre-trained shape is not the run's to change
        main(finetune_flags(pretrained_on_the_hub, root, tmp_path / "x", "--dim", "8"))
    assert info.value.code == 2 and "unrecognized arguments: --dim 8" in capsys.readouterr().err


def test_finetuning_on_cifar10_resizes_the_images_to_the_pretrained_resolution(tmp_path):
    """CIFAR-10's 32 x 32 images through a model fine-tuned at 48 x 48: resized in training
    and in testing, normalized by the pre-trained model's statistics, named by its classes."""
    from test_train import synthetic_cifar

    import tinyvit
    from tinyvit.train import Trainer, recipe

    source = ViT(image_size=48, patch_size=16, num_classes=7, dim=16, depth=1, heads=2,
                 mlp_dim=16)  # fmt: skip
    source.preprocessing = tinyvit.images.Preprocessing(48, (0.4,) * 3, (0.3,) * 3, 0.9)
    path = tinyvit.save(source, tmp_path / "pre.npz")
    config = recipe("finetune", init=str(path), steps=4, batch_size=16, eval_batch_size=32)
    trainer = Trainer(config, synthetic_cifar(64, 32), tmp_path / "run", progress=False,
                      log=lambda line: None)  # fmt: skip
    history = trainer.fit()
    assert trainer.step == 4 and len(history) == 1  # 64 images, 16 a step: one epoch
    model = tinyvit.load(tmp_path / "run" / "model.npz")
    assert model.config.image_size == 48 and model.classes == tuple(f"class {i}" for i in range(4))
    assert model.preprocessing == source.preprocessing.replace(crop_pct=1.0)
