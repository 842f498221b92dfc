"""The trainer: it learns, it resumes exactly, it stops cleanly on Ctrl-C and on
a diverging loss, and its command line runs end to end on CIFAR-10."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyvit
from tinyvit.data import CIFAR10
from tinyvit.train import RunError, TrainConfig, Trainer, TrainingDiverged, main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-bin"
TINY = dict(patch_size=8, dim=16, depth=1, heads=2, mlp_dim=32)


def synthetic_cifar(n_train=256, n_test=64, classes=4, seed=0):
    """Images whose class is a fixed coloured pattern under noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (classes, 3, 32, 32))

    def make(n):
        labels = rng.integers(0, classes, n)
        noise = rng.normal(0, 40, (n, 3, 32, 32))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        return images, labels.astype(np.int64)

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    return CIFAR10(xtr, ytr, xte, yte, tuple(f"class {i}" for i in range(classes)))


def tiny_config(**changes):
    base = dict(
        model_overrides=TINY,
        epochs=2,
        batch_size=32,
        lr=3e-3,
        warmup_epochs=0.5,
        augment="basic",
        eval_batch_size=64,
    )
    return TrainConfig(**{**base, **changes})


def weights(trainer):
    return trainer.model.state_dict()


def test_training_loss_falls_well_below_its_start(tmp_path):
    trainer = Trainer(
        tiny_config(epochs=6, lr=1e-2, augment="none", label_smoothing=0.0),
        synthetic_cifar(),
        tmp_path,
        progress=False,
    )
    first = []
    original = trainer.train_step

    def spy(x, y):
        loss, correct = original(x, y)
        first.append(loss)
        return loss, correct

    trainer.train_step = spy
    history = trainer.fit()
    assert len(history) == 6
    assert history[-1]["train_loss"] < 0.25 * first[0]
    assert history[-1]["test_acc"] > 0.9  # four patterns under noise
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 6
    assert (tmp_path / "curves.png").stat().st_size > 5000
    model = tinyvit.load(tmp_path / "model.npz")
    np.testing.assert_array_equal(model.head.weight.data, trainer.model.head.weight.data)


@pytest.mark.parametrize("stop_at", [8, 5])  # an epoch boundary (8 steps per epoch), and mid-epoch
def test_an_interrupted_and_resumed_run_ends_with_the_same_weights(stop_at, tmp_path):
    config = tiny_config(mixup=0.5, cutmix=0.5, model_overrides={**TINY, "dropout": 0.1})
    dataset = synthetic_cifar()
    straight = Trainer(config, dataset, tmp_path / "straight", progress=False)
    straight.fit()

    first = Trainer(config, dataset, tmp_path / "resumed", progress=False)
    original = first.train_step

    def interrupt(x, y):
        result = original(x, y)
        if first.step + 1 == stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, caught by the trainer
        return result

    first.train_step = interrupt
    first.fit()
    assert first._stop_requested and first.step == stop_at
    second = Trainer(config, dataset, tmp_path / "resumed", progress=False)
    second.fit(resume=True)
    assert second.step == straight.step == 16
    for key, value in weights(straight).items():
        np.testing.assert_array_equal(weights(second)[key], value, err_msg=key)
    assert [r["test_acc"] for r in second.history] == [r["test_acc"] for r in straight.history]
    assert [r["train_loss"] for r in second.history] == pytest.approx(
        [r["train_loss"] for r in straight.history], rel=1e-12
    )


def test_a_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(epochs=3), synthetic_cifar(), tmp_path, progress=False)
    original = trainer.train_step

    def poison(x, y):
        if trainer.step == 10:  # in the second epoch
            trainer.model.head.bias.data[:] = np.nan
        return original(x, y)

    trainer.train_step = poison
    with pytest.raises(
        TrainingDiverged, match=r"nan at epoch 2, step 10.*checkpoint.npz.*untouched"
    ):
        trainer.fit()
    state = json.loads(
        str(tinyvit.checkpoint.read_npz(tmp_path / "checkpoint.npz")["trainer/state"])
    )
    assert state["epoch"] == 1 and state["step"] == 8  # the end of the first epoch
    good = tinyvit.load(tmp_path / "checkpoint.npz")
    assert np.all(np.isfinite(good.head.bias.data))


def test_resuming_with_other_settings_is_refused(tmp_path):
    Trainer(tiny_config(epochs=1), synthetic_cifar(), tmp_path, progress=False).fit()
    other = Trainer(tiny_config(epochs=1, lr=0.1), synthetic_cifar(), tmp_path, progress=False)
    with pytest.raises(RunError, match=r"lr: checkpoint 0.003, now 0.1"):
        other.fit(resume=True)


def test_bad_settings():
    with pytest.raises(RunError, match="larger than the 256"):
        Trainer(tiny_config(batch_size=512), synthetic_cifar(), "unused", progress=False)
    with pytest.raises(RunError, match="'adam'"):
        Trainer(tiny_config(optimizer="adam"), synthetic_cifar(), "unused", progress=False)


def test_sgd_trains_too(tmp_path):
    trainer = Trainer(
        tiny_config(optimizer="sgd", lr=0.05), synthetic_cifar(), tmp_path, progress=False
    )
    history = trainer.fit()
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(
        [
            "--quick",
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--no-download",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED.is_dir(), reason="no CIFAR-10 copy beside the repository")
def test_the_command_line_quick_run_on_cifar10(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyvit.train",
            "--quick",
            "--data-dir",
            str(SHARED),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch   2/2" in result.stdout and "done: final test accuracy" in result.stdout
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert (
        len(history) == 2 and history[-1]["test_acc"] > 0.15
    )  # better than chance after 2 tiny epochs
    for name in ("checkpoint.npz", "model.npz", "curves.png"):
        assert (out / name).exists()
