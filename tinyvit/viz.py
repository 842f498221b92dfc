"""Figures: how the lessons show what the numbers say.

Everything here draws with matplotlib's file-only ``Agg`` backend (no screen
needed) and writes PNG files atomically: a half-written figure never
replaces a good one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def save_figure(fig, path, dpi=130) -> Path:
    """Write ``fig`` to ``path`` (PNG) through a temporary file and a rename; close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)
    return path


def plot_training_curves(history, path, title="Training on CIFAR-10") -> Path:
    """Loss and accuracy per epoch, train and test, from the trainer's history records."""
    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", ms=3, label="train")
    loss_ax.plot(epochs, [r["test_loss"] for r in history], "o-", ms=3, label="test")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.set_title("loss")
    loss_ax.legend(frameon=False)
    acc_ax.plot(epochs, [100 * r["train_acc"] for r in history], "o-", ms=3, label="train")
    acc_ax.plot(epochs, [100 * r["test_acc"] for r in history], "o-", ms=3, label="test")
    best = max(history, key=lambda r: r["test_acc"])
    acc_ax.annotate(
        f"{100 * best['test_acc']:.1f}%",
        (best["epoch"], 100 * best["test_acc"]),
        textcoords="offset points",
        xytext=(0, 8),
        ha="center",
        fontsize=9,
    )
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title("accuracy (train: on augmented batches)")
    acc_ax.legend(frameon=False)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)
