"""What a run measures as it goes: the epoch's running sums, one record per epoch, the files.

During an epoch the trainer adds each step's loss, right answers, images
and seconds to an ``EpochMeter``. The right answers are counted on the
device, where the logits are; reading them back makes the host wait for the
device, so they are added up there and read only when a number is shown
(``settle``). At the epoch's end the sums and the test's result become one
record of ``history``, a line of ``metrics.jsonl``, and a point of each
curve in ``curves.png``.
"""

from __future__ import annotations

import json

from .. import backend, files


class EpochMeter:
    """Running sums over the steps of the current epoch."""

    def __init__(self, sums=None):
        self.sums = dict(sums or dict(loss=0.0, correct=0.0, seen=0, seconds=0.0))
        self._correct = None  # right answers counted on the device, not yet in sums

    def add(self, loss: float, correct, images: int, seconds: float) -> None:
        """One step: its mean loss, its right answers (a 0-d device array), its size and
        its time."""
        self.sums["loss"] += loss * images
        self._correct = correct if self._correct is None else self._correct + correct
        self.sums["seen"] += images
        self.sums["seconds"] += seconds

    def settle(self) -> dict:
        """Bring the right answers counted on the device into the sums (one wait for the
        device); returns the sums."""
        if self._correct is not None:
            self.sums["correct"] += backend.scalars(self._correct)[0]
            self._correct = None
        return self.sums

    def summary(self) -> dict:
        """Mean loss, accuracy and images per second so far (settles first)."""
        s = self.settle()
        seen = max(s["seen"], 1)
        return dict(
            loss=s["loss"] / seen,
            acc=s["correct"] / seen,
            images_per_s=s["seen"] / max(s["seconds"], 1e-9),
        )


def epoch_line(record: dict, epochs) -> str:
    """The line the trainer prints at the end of an epoch (``epochs``: the run's, or "?"
    while a time budget has not fixed them yet); an epoch without a test says so."""
    test = (
        f"test loss {record['test_loss']:.4f} acc {100 * record['test_acc']:.2f}%"
        if "test_acc" in record else "not tested".ljust(27)  # as wide as a test's words
    )  # fmt: skip
    return (
        f"epoch {record['epoch']:>3}/{epochs}  train loss {record['train_loss']:.4f} "
        f"acc {100 * record['train_acc']:.2f}%  |  {test}  |  "
        f"{record['train_images_per_s']:.0f} img/s  {record['elapsed_seconds'] / 60:.1f} min"
    )


def write_history(
    history, metrics_path, curves_path, title, label_smoothing, patch_dropout=0.0, augment="none"
) -> None:
    """``metrics.jsonl`` (one JSON record per line) and ``curves.png``, each atomically; the
    curves say how the training batches were altered (``patch_dropout``, ``augment``)."""
    from ..viz import plot_training_curves  # matplotlib: only when a figure is drawn

    lines = "".join(json.dumps(record) + "\n" for record in history)
    files.write_text(metrics_path, lines)
    plot_training_curves(history, curves_path, title=title, label_smoothing=label_smoothing,
                         patch_dropout=patch_dropout, augment=augment)  # fmt: skip


__all__ = ["EpochMeter", "epoch_line", "write_history"]
