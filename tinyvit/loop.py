"""One training step and one evaluation, shared by every training loop in tinyvit.

The paper trains a ViT three ways, and tinyvit has a loop for each: supervised
training from scratch (Section 4.1, ``tinyvit.train.Trainer``), fine-tuning
with a new head (Section 3.2, ``tinyvit.finetune.finetune``) and masked patch
prediction (Section 4.6, ``tinyvit.pretrain.pretrain``). They differ in their
data and their loss; the step is the same, and it lives here, once:

    lr      = schedule(step)                 a linear warm-up, then cosine decay
    masks   = seeded by (seed, step)         dropout, reproducible and resumable
    loss    = forward()                      the model, then the loss
    grads   = loss.backward()
    grads   = mean over processes            data parallelism: one all-reduce (distributed)
    grads  *= min(1, clip / ||grads||)       global gradient-norm clipping, on the device
    finite? else TrainingDiverged            loss and norm read together; weights untouched
    weights = optimizer.step()               AdamW or SGD

On a GPU the host queues work and goes on until it needs a value back;
waiting for one is a synchronization, and the GPU idles while the host
catches up. A step has exactly one: the loss and the gradient's norm come
back together, after the backward pass and the clipping are queued, because
the host must know they are finite before it lets the optimizer move the
weights.

``evaluate`` is the one measurement on held-out images: mean cross-entropy
and accuracy, in evaluation mode (no dropout), without a graph, at the
model's resolution.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import backend, checks, data
from . import functional as F
from . import progress as bars
from .images import preprocessing_of
from .optim import AdamW, WarmupCosine, clip_gradients
from .resample import interpolate
from .tensor import no_grad


class TrainingDiverged(FloatingPointError):
    """The loss (or the gradient's norm) became NaN or infinite, or the loss grew far past
    any sensible value; the weights are as before the step that saw it.

    ``limit`` is the bound a finite loss went over; ``advice`` is the caller's
    suggestion of what to try (and what was kept); the trainer fills it with
    flags and its checkpoint.
    """

    def __init__(self, what, value, step, lr, *, run="training", epoch=None, advice=None,
                 limit=None):  # fmt: skip
        super().__init__(what, value, step, lr)
        self.what, self.value, self.step, self.lr = what, value, step, lr
        self.run, self.epoch, self.limit = run, epoch, limit
        self.advice = advice or "Try a lower learning rate or a longer warm-up."

    def __str__(self):
        where = f"epoch {self.epoch}, step {self.step}" if self.epoch else f"step {self.step}"
        if self.limit is not None and math.isfinite(self.value):
            became = f"became {self.value:.4g} (a diverged run: over {self.limit:.3g})"
        else:
            became = f"became {self.value}"
        return (
            f"{self.run}: the {self.what} {became} at {where} "
            f"(learning rate {self.lr:.3g}). {self.advice}"
        )


def diverged_loss(num_classes: int) -> float:
    """The cross-entropy above which a run has diverged, though the loss is still finite:
    ten times that of a uniform guess over ``num_classes`` (``ln K``). A run learning at
    a sane rate stays below a guess's loss after its first steps, and far below ten times
    it; a learning rate a hundred times too high sends it to thousands."""
    return 10.0 * math.log(max(num_classes, 2))


def step_seed(seed, step) -> int:
    """The seed of one step's dropout masks: a function of the run's seed and the step."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def train_step(
    model, optimizer, forward, *, step, lr, clip=0.0, seed=None, run="training", max_loss=None,
    average=None,
):  # fmt: skip
    """One optimization step of ``model``; returns ``(loss value, output)``.

    ``forward()`` runs the model and returns ``(loss, output)``: the scalar
    loss ``Tensor`` and anything the caller wants back (the logits, to count
    what was right; or ``None``). Before it, the learning rate is set to
    ``lr`` and, when ``seed`` is given, the dropout masks are seeded by
    ``(seed, step)``. A loss that is not finite, or (with ``clip``) a
    gradient norm that is not finite, raises ``TrainingDiverged`` before the
    weights change, and so does a finite loss above ``max_loss`` when it is given
    (``diverged_loss``). ``clip`` is the largest global gradient norm (0: none).
    With data parallelism, ``average(loss)`` is called after ``backward()``:
    it averages the optimizer's gradient buffer over the processes, in place,
    and returns the loss averaged with it (``distributed``), so that the
    clipping, the checks and the update see the whole batch's.
    """
    optimizer.set_lr(lr)
    if seed is not None:
        backend.manual_seed(step_seed(seed, step))  # this step's dropout masks
    loss, output = forward()
    optimizer.zero_grad()
    loss.backward()
    mean = loss.data if average is None else average(loss.data)  # 0-d, on the device
    norm = clip_gradients(model.parameters(), clip) if clip else None  # 0-d, on the device
    # The step's one synchronization: the loss and the norm, read in one copy.
    value, norm = backend.scalars(mean, norm)
    if not math.isfinite(value):
        raise TrainingDiverged("loss", value, step, lr, run=run)
    if max_loss is not None and value > max_loss:
        raise TrainingDiverged("loss", value, step, lr, run=run, limit=max_loss)
    if norm is not None and not math.isfinite(norm):
        raise TrainingDiverged("gradient norm", norm, step, lr, run=run)
    optimizer.step()
    return value, output


class Evaluation(NamedTuple):
    """What ``evaluate`` measures: mean cross-entropy (no label smoothing) and accuracy."""

    loss: float
    accuracy: float


def evaluate(model, images, labels, *, batch_size=500, progress=False, desc="testing", tta=False):
    """Mean cross-entropy and accuracy of ``model`` on uint8 ``images`` ``(n, C, H, W)``.

    Images are normalized as for training (by the mean and standard deviation
    of the model's ``preprocessing``) and resized to the model's resolution
    (``resample.interpolate``, bilinear) when they differ; the model runs in
    evaluation mode, without a graph, on its own device and in
    its own dtype, and is put back in the mode it was in. With ``tta=True``
    (test-time augmentation) each image is also seen mirrored left to right
    and the two predicted distributions are averaged: the loss is that of the
    average, the prediction its largest class. ``progress`` shows a bar.
    Returns an ``Evaluation(loss, accuracy)``.
    """
    images = checks.uint8_images(images)
    if len(labels) != len(images) or len(images) == 0:
        raise ValueError(
            f"evaluate needs as many labels as images (at least one), got {len(images)} "
            f"images and {len(labels)} labels"
        )
    classes = model.head.out_features
    host = backend.to_numpy(labels)
    low, high = int(host.min()), int(host.max())
    if low < 0 or high >= classes:  # here, on the host: on the GPU nothing would check them
        raise ValueError(
            f"evaluate: labels must lie in [0, {classes}) for a model of {classes} classes, "
            f"got values from {low} to {high}"
        )
    device, dtype = model.cls_token.device, model.cls_token.dtype
    was_training = model.training
    model.eval()
    loss_sum = correct = 0  # sums on the model's device, read once at the end
    p = preprocessing_of(model)
    batches = data.batches(
        images, labels, batch_size, shuffle=False, augment="none", drop_last=False,
        device=device, dtype=dtype, mean=p.mean, std=p.std,
    )  # fmt: skip
    total = data.num_batches(len(images), batch_size, drop_last=False)
    try:
        with no_grad():
            for x, y in bars.bar(batches, total=total, desc=desc, progress=progress, leave=False):
                x = interpolate(x, model.image_size)  # (B, C, H, W) at the model's size
                if tta:
                    probs = F.softmax(model(x), axis=1).data  # (B, classes)
                    probs = 0.5 * (probs + F.softmax(model(x[..., ::-1]), axis=1).data)
                    xp = backend.xp_of(probs)
                    picked = probs[xp.arange(len(y)), y]  # the true class's probability
                    nll = -xp.log(xp.maximum(picked, xp.finfo(dtype).tiny)).sum()
                    loss_sum = loss_sum + nll.astype(np.float64)
                    predicted = probs.argmax(axis=1)
                else:
                    logits = model(x)  # (B, classes)
                    nll = F.cross_entropy(logits, y, reduction="sum").data
                    loss_sum = loss_sum + nll.astype(np.float64)
                    predicted = logits.data.argmax(axis=1)
                correct = correct + (predicted == y).sum()
    finally:
        model.train(was_training)
    loss_sum, correct = backend.scalars(loss_sum, correct)
    return Evaluation(loss_sum / len(images), correct / len(images))


def adamw_with_schedule(module, lr, weight_decay, steps, warmup_steps, min_lr=1e-6):
    """AdamW and its learning-rate schedule: linear warm-up, then cosine decay to ``min_lr``."""
    schedule = WarmupCosine(lr, steps, min(warmup_steps, steps), min(min_lr, lr))
    return AdamW(module, lr=lr, weight_decay=weight_decay), schedule


__all__ = [
    "Evaluation",
    "TrainingDiverged",
    "adamw_with_schedule",
    "diverged_loss",
    "evaluate",
    "step_seed",
    "train_step",
]
