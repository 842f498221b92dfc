"""Fine-tuning (Section 3.2): a new head, a new resolution, a short supervised run.

The paper pre-trains on a large data set, then fine-tunes on the task at
hand: the head is replaced by a zero-initialised ``Linear`` for the new
classes and, when the images are larger than in pre-training, the patch size
stays and the grid of position embeddings is resampled
(``tinyvit.interop.for_finetuning``; ``with_new_head`` here replaces the
head even when the number of classes stays, as after label-free
pre-training). ``finetune`` trains such a model on labelled images, upsampled
to its resolution by ``upsample``; ``evaluate`` measures it. The loop's
pieces (AdamW with warm-up and cosine decay, a clipped step, a finiteness
check) are shared with masked patch prediction (``tinyvit.pretrain``).
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import data
from . import functional as F
from .backend import xp_of
from .interop import adapt, interpolation_matrix
from .optim import AdamW, WarmupCosine, clip_grad_norm
from .tensor import no_grad
from .vit import ViT

# ---------------------------------------------------------------------------
# The loop's pieces
# ---------------------------------------------------------------------------


def adamw_with_schedule(module, lr, weight_decay, steps, warmup_steps, min_lr=1e-6):
    """AdamW and its learning-rate schedule: linear warm-up, then cosine decay to ``min_lr``."""
    schedule = WarmupCosine(lr, steps, min(warmup_steps, steps), min(min_lr, lr))
    return AdamW(module, lr=lr, weight_decay=weight_decay), schedule


def take_step(module, optimiser, loss, clip):
    """Backward, gradient clipping at ``clip`` (0: none), one optimiser step."""
    optimiser.zero_grad()
    loss.backward()
    if clip:
        clip_grad_norm(module.parameters(), clip)
    optimiser.step()


def check_finite(value, what, step):
    """Stop with a clear message when the loss is NaN or infinite."""
    if not math.isfinite(value):
        raise FloatingPointError(f"{what}: the loss became {value} at step {step}; try a lower lr")


def uint8_images(images):
    """``images`` itself, after checking it is a NumPy uint8 batch ``(n, C, H, W)``."""
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4):
        raise TypeError(
            f"expected a NumPy uint8 array of images (n, C, H, W), got "
            f"{tuple(getattr(images, 'shape', ()))}, {getattr(images, 'dtype', type(images))}"
        )
    return images


# ---------------------------------------------------------------------------
# Images at the model's resolution; accuracy; the fine-tuning run
# ---------------------------------------------------------------------------


def upsample(images, size, method="bilinear"):
    """Resize float ``(B, C, H, W)`` images to ``size x size`` by separable interpolation.

    The same interpolation matrices that resample the position embeddings
    (``interop.interpolation_matrix``): ``out = R_rows @ image @ R_cols^T``
    per channel. Keeps the images' dtype and device.
    """
    if getattr(images, "ndim", 0) != 4 or images.dtype.kind != "f":
        raise TypeError(
            f"upsample needs float images (B, C, H, W), got shape "
            f"{tuple(getattr(images, 'shape', ()))}, {getattr(images, 'dtype', None)}"
        )
    B, C, H, W = images.shape
    if (H, W) == (size, size):
        return images
    xp = xp_of(images)
    rows = xp.asarray(interpolation_matrix(H, size, method), dtype=images.dtype)  # (size, H)
    cols = xp.asarray(interpolation_matrix(W, size, method), dtype=images.dtype)  # (size, W)
    out = rows @ images @ cols.T  # (B, C, size, H) @ ... -> (B, C, size, size)
    return xp.ascontiguousarray(out)


def evaluate(model: ViT, images, labels, *, batch_size=500, device="cpu"):
    """Accuracy of ``model`` on uint8 ``images`` (upsampled to its resolution) and ``labels``."""
    images = uint8_images(images)
    was_training = model.training
    model.eval()
    correct = 0
    with no_grad():
        for x, y in data.batches(
            images, labels, batch_size, shuffle=False, augment="none", drop_last=False,
            device=device, dtype=model.pos_embed.dtype,
        ):  # fmt: skip
            logits = model(upsample(x, model.image_size))
            correct += int((logits.data.argmax(axis=1) == y).sum())
    model.train(was_training)
    return correct / max(1, len(labels))


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
    """Train ``model`` on labelled uint8 images for ``steps`` steps, testing as it goes.

    Images are normalised, augmented (``augment``: a ``data.AUGMENTS``
    policy) and upsampled to the model's resolution. AdamW, linear warm-up
    (default: a tenth of the steps) and cosine decay, label smoothing and
    clipping: the recipe of ``tinyvit.train``. (The paper fine-tunes with
    SGD and momentum 0.9 at batch 512; with a few hundred small steps AdamW
    is the surer choice.) Every ``eval_every`` steps (default: 8 times evenly in
    the run) and at the end, the accuracy on ``x_test, y_test`` is recorded.
    Returns a list of ``{step, train_loss, test_acc, seconds}`` records; the
    model is trained in place.
    """
    x_train = uint8_images(x_train)
    if batch_size > len(x_train):
        raise ValueError(f"batch_size {batch_size} is larger than the {len(x_train)} images")
    classes = model.config["num_classes"]
    if int(np.max(y_train)) >= classes or int(np.max(y_test)) >= classes:
        raise ValueError(f"labels go beyond the model's {classes} classes")
    if eval_every:
        eval_at = set(range(eval_every, steps + 1, eval_every)) | {steps}
    else:  # eight evenly spaced tests, the last at the end
        eval_at = {max(1, round(steps * k / 8)) for k in range(1, 9)}
    warmup = steps // 10 if warmup_steps is None else warmup_steps
    optimiser, schedule = adamw_with_schedule(model, lr, weight_decay, steps, warmup)
    dtype = model.pos_embed.dtype
    model.train()
    history, losses, started, step, epoch = [], [], time.perf_counter(), 0, 0
    while step < steps:
        for x, y in data.batches(
            x_train, y_train, batch_size, seed=seed, epoch=epoch, augment=augment,
            num_classes=classes, device=device, dtype=dtype,
        ):  # fmt: skip
            optimiser.set_lr(schedule(step))
            logits = model(upsample(x, model.image_size))
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            losses.append(loss.item())
            check_finite(losses[-1], name, step)
            take_step(model, optimiser, loss, clip)
            step += 1
            if step in eval_at:
                accuracy = evaluate(model, x_test, y_test, device=device)
                history.append(
                    dict(
                        step=step,
                        train_loss=float(np.mean(losses)),
                        test_acc=accuracy,
                        seconds=time.perf_counter() - started,
                    )
                )
                losses = []
                if log:
                    log(
                        f"{name} step {step:>5}/{steps}  train loss "
                        f"{history[-1]['train_loss']:.3f}  test accuracy {100 * accuracy:.1f}%  "
                        f"{history[-1]['seconds']:.0f} s"
                    )
            if step == steps:
                break
        epoch += 1
    return history


def with_new_head(model: ViT, num_classes, image_size=None, interpolation="bicubic") -> ViT:
    """Section 3.2's recipe on ``model``, with a zero-initialised head *always*.

    ``interop.for_finetuning`` keeps the head when the number of classes
    stays; after pre-training without labels (masked patch prediction) the
    head was never trained, so here it is replaced whatever its size.
    """
    config, state = adapt(model.config, model.state_dict(), None, image_size, interpolation)
    dim = config["dim"]
    config = {**config, "num_classes": num_classes, "representation_size": None}
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "pre_logits."))}
    state["head.weight"] = np.zeros((num_classes, dim), dtype=state["pos_embed"].dtype)
    state["head.bias"] = np.zeros(num_classes, dtype=state["pos_embed"].dtype)
    new = ViT(**config)
    new.load_state_dict(state)
    return new.to(model.pos_embed.device, model.pos_embed.dtype)


__all__ = [
    "adamw_with_schedule",
    "check_finite",
    "evaluate",
    "finetune",
    "take_step",
    "uint8_images",
    "upsample",
    "with_new_head",
]
