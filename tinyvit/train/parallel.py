"""A run shared by several processes: what each one does alone, and what they agree on.

Started as ``mpiexec -n N python -m tinyvit.train ...``, every process runs
the same ``Trainer`` with the same settings and ``distributed.world()``'s
communicator, and the run is the one a single process would make:

* ``--batch-size`` stays the whole batch: each process takes ``1/N`` of its
  rows (``shard_of``). The batch's order, augmentation and mixing are drawn
  whole on every process, which keeps its rows (``data.batches(shard=)``),
  and so are the dropout and PatchDropout masks (``backend.batch_shard``):
  each image gets the draws it gets in one process.
* The initial weights are rank 0's (one broadcast); after each
  ``backward()`` one all-reduce averages the gradient buffer, with the loss,
  the right answers and the stop flag in the same message (``step_average``):
  every process then takes the same step and keeps the same weights.
* Rank 0 alone reads and writes the run folder, its checkpoints and metrics
  (``Communicator.from_root``: an error there stops every process alike),
  and alone prints (``quiet`` elsewhere).
* The test images are split among the processes, and their sums of losses
  and right answers added up (``evaluate_parts``).
* A Ctrl-C or SIGTERM (the launcher passes it to every process) stops all of
  them after the same step; the time budget's plan is rank 0's.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..loop import Evaluation, evaluate
from .config import RunError


def fingerprint(dataset) -> dict:
    """What every process's copy of the data set must agree on: its sizes, its classes,
    checksums of its labels and of its first images."""
    return dict(
        train=len(dataset.y_train), test=len(dataset.y_test), classes=list(dataset.classes),
        **{"labels (CRC-32)": zlib.crc32(np.ascontiguousarray(dataset.y_train).tobytes()),
           "first images (CRC-32)": zlib.crc32(np.ascontiguousarray(dataset.x_train[:256]))},
    )  # fmt: skip


def quiet(*args, **kwargs) -> None:
    """The log of the processes other than rank 0: nothing."""


def join(trainer, batch_size: int) -> tuple[int, int] | None:
    """Make ``trainer`` one of the processes of its communicator: its collectives wait less
    once it is asked to stop, and no stop is agreed yet. Returns ``shard_of``."""
    trainer.stop_agreed = False  # whether any process was asked to stop (the step's message)
    trainer.comm.stop_requested = lambda: hasattr(trainer, "stop") and trainer.stop.requested
    return shard_of(trainer.comm, batch_size)


def stopping(trainer) -> bool:
    """Whether ``trainer`` stops after this step: alone, when it was asked to; with several
    processes, when the step's message said that one of them was."""
    return trainer.stop_agreed if trainer.shard else trainer.stop.requested


def shard_of(comm, batch_size: int) -> tuple[int, int] | None:
    """``(rank, processes)``: this process's part of every batch; None for a process alone.
    A ``RunError`` when the batch does not split into equal parts."""
    if comm.size == 1:
        return None
    if batch_size % comm.size:
        near = sorted({max(comm.size, batch_size // comm.size * comm.size),
                       -(-batch_size // comm.size) * comm.size})  # fmt: skip
        raise RunError(
            f"batch size {batch_size} does not split into {comm.size} equal parts, one a "
            f"process: give a --batch-size that is a multiple of {comm.size} "
            f"({' or '.join(map(str, near))})"
        )
    return comm.rank, comm.size


def step_average(trainer, counted):
    """``train_step``'s ``average`` for ``trainer``: one all-reduce of the gradient buffer
    with the loss, the right answers (``counted[0]``, replaced by the sum) and whether a
    stop was asked for anywhere (``trainer.stop_agreed``)."""

    def average(loss):
        sums = trainer.comm.reduce_step(
            trainer.optimizer.flat.grad, loss, counted[0], trainer.stop.requested
        )
        counted[0], trainer.stop_agreed = sums.correct, sums.stop
        return sums.loss

    return average


def evaluate_parts(comm, model, images, labels, **options) -> Evaluation:
    """``loop.evaluate`` of ``images``, each process testing its part of them; the sums of
    the losses and of the right answers added over the processes. ``options`` are
    ``loop.evaluate``'s."""
    if comm.size == 1:
        return evaluate(model, images, labels, **options)
    part = comm.part(len(labels))
    n = part.stop - part.start
    loss_sum = correct = 0.0
    if n:
        mean_loss, accuracy = evaluate(model, images[part], labels[part], **options)
        loss_sum, correct = mean_loss * n, round(accuracy * n)
    loss_sum, correct, total = comm.sum_numbers(loss_sum, correct, n, what="the test's sums")
    return Evaluation(loss_sum / total, correct / total)


__all__ = ["evaluate_parts", "fingerprint", "join", "quiet", "stopping", "shard_of", "step_average"]
