"""Fine-tuning (Section 3.2): a new head, a new resolution, a short supervised run.

    python -m tinyvit.finetune --model NAME|PATH --data-dir FOLDER [--image-size 384]

The paper pre-trains on a large data set, then fine-tunes on the task at
hand: the head is replaced by a zero-initialized ``Linear`` for the new
classes and, when the images are larger than in pre-training, the patch size
stays and the grid of position embeddings is resampled
(``tinyvit.interop.for_finetuning``; with ``new_head=True`` the head is
replaced even when the number of classes stays, as after label-free
pre-training). ``finetune`` trains such a model on labeled images, resized
to its resolution by ``tinyvit.resample.interpolate``, and tests it as it
goes with ``tinyvit.loop.evaluate``. Its step is ``tinyvit.loop.train_step``,
the trainer's own: AdamW with warm-up and cosine decay, a clipped step, a
finiteness check.

The command line fine-tunes a pre-trained model on a folder of your images
with the trainer itself (``tinyvit.train``, its ``finetune`` recipe and its
``init`` setting): the paper's recipe (a zero-initialized head for the
folder's classes, ``E_pos`` resampled when ``--image-size`` changes the
resolution, SGD with momentum 0.9, no weight decay, clipping at 1, a
warm-up then cosine decay), and the trainer's run folder, lock,
checkpoints, ``--resume`` (which needs no network: the checkpoint holds the
weights) and Ctrl-C. ``finetune()`` below is the same recipe's idea as one
function for lessons 9 and 10, on arrays.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from . import checks, data
from . import functional as F
from .loop import adamw_with_schedule, diverged_loss, evaluate, train_step
from .resample import interpolate
from .vit import ViT


def _checked_arguments(model, x_train, y_train, y_test, steps, batch_size, lr):
    """``x_train`` as uint8 images and the model's number of classes, once every argument
    that a run needs is known to be good: a bad one fails before any training."""
    x_train = checks.uint8_images(x_train, "x_train")
    checks.POSITIVE_INT.check("finetune: steps", steps)
    checks.POSITIVE_INT.check("finetune: batch_size", batch_size)
    checks.POSITIVE.check("finetune: lr", lr)
    if batch_size > len(x_train):
        raise ValueError(f"batch_size {batch_size} is larger than the {len(x_train)} images")
    classes = model.config["num_classes"]
    if int(np.max(y_train)) >= classes or int(np.max(y_test)) >= classes:
        raise ValueError(f"labels go beyond the model's {classes} classes")
    return x_train, classes


def _test_steps(steps, eval_every) -> set:
    """The steps after which the model is tested: every ``eval_every`` and the last, or
    eight evenly spaced ones."""
    if eval_every:
        return set(range(eval_every, steps + 1, eval_every)) | {steps}
    return {max(1, round(steps * k / 8)) for k in range(1, 9)}  # the last at the end


def _test_record(model, x_test, y_test, step, losses, started) -> dict:
    """The record of ``step``: the mean training loss since the last test, the test accuracy
    and the seconds since the start."""
    return dict(
        step=step,
        train_loss=float(np.mean(losses)),
        test_acc=evaluate(model, x_test, y_test).accuracy,
        seconds=time.perf_counter() - started,
    )


def finetune(
    model: ViT,
    x_train,
    y_train,
    x_test,
    y_test,
    steps,
    *,
    batch_size=64,
    lr=1e-3,
    weight_decay=0.05,
    warmup_steps=None,
    label_smoothing=0.1,
    clip=1.0,
    augment="flip",
    eval_every=None,
    seed=0,
    device="cpu",
    log=print,
    name="fine-tune",
):
    """Train ``model`` on labeled uint8 images for ``steps`` steps, testing as it goes.

    Images are normalized, augmented (``augment``: a ``data.AUGMENTS``
    policy) and resized to the model's resolution. AdamW, linear warm-up
    (default: a tenth of the steps) and cosine decay, label smoothing and
    clipping: the recipe of ``tinyvit.train``. (The paper fine-tunes with
    SGD and momentum 0.9 at batch 512; with a few hundred small steps AdamW
    is the surer choice.) Every ``eval_every`` steps (default: 8 times evenly in
    the run) and at the end, the accuracy on ``x_test, y_test`` is recorded.
    Returns a list of ``{step, train_loss, test_acc, seconds}`` records; the
    model is trained in place.
    """
    x_train, classes = _checked_arguments(model, x_train, y_train, y_test, steps, batch_size, lr)
    eval_at = _test_steps(steps, eval_every)
    warmup = steps // 10 if warmup_steps is None else warmup_steps
    optimizer, schedule = adamw_with_schedule(model, lr, weight_decay, steps, warmup)
    dtype = model.pos_embed.dtype
    model.train()
    history, losses, started, step, epoch = [], [], time.perf_counter(), 0, 0
    while step < steps:
        for x, y in data.batches(
            x_train, y_train, batch_size, seed=seed, epoch=epoch, augment=augment,
            num_classes=classes, device=device, dtype=dtype,
        ):  # fmt: skip

            def forward(x=x, y=y):
                logits = model(interpolate(x, model.image_size))  # (B, classes)
                return F.cross_entropy(logits, y, label_smoothing=label_smoothing), None

            loss, _ = train_step(
                model, optimizer, forward, step=step, lr=schedule(step), clip=clip, seed=seed,
                run=name, max_loss=diverged_loss(model.head.out_features),
            )  # fmt: skip
            losses.append(loss)
            step += 1
            if step in eval_at:
                history.append(_test_record(model, x_test, y_test, step, losses, started))
                losses = []
                if log:
                    log(
                        f"{name} step {step:>5}/{steps}  train loss "
                        f"{history[-1]['train_loss']:.3f}  test accuracy "
                        f"{100 * history[-1]['test_acc']:.1f}%  {history[-1]['seconds']:.0f} s"
                    )
            if step == steps:
                break
        epoch += 1
    return history


def main(argv=None) -> int:
    """``python -m tinyvit.finetune``: the trainer's command line with the finetune recipe,
    ``--model`` naming the pre-trained model to start from; returns the exit status."""
    from .train.command import main as train_main

    return train_main(argv, finetune=True)


__all__ = ["finetune", "main"]


if __name__ == "__main__":
    sys.exit(main())
