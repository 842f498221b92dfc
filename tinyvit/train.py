"""Training a Vision Transformer on CIFAR-10: the run, its checkpoints, its command line.

    python -m tinyvit.train                        # the default CPU run
    python -m tinyvit.train --recipe gpu --device cuda
    python -m tinyvit.train --resume --out runs/cifar10

One step is the whole of the paper's training in miniature (Section 4.1,
Appendix B.1): a batch of augmented images, the ViT's logits, the
cross-entropy with label smoothing, ``backward()``, global gradient-norm
clipping and an AdamW update with the learning rate of a linear warm-up
followed by a cosine decay. The step itself is ``tinyvit.loop.train_step``,
the one that fine-tuning and masked patch prediction take too; this module
adds what a long run needs around it.

Everything random is a function of the seed and of where the run is (epoch,
batch, step): the order of the examples, each batch's augmentation, each
step's dropout masks. So a checkpoint needs only the weights, the optimizer's
moments and that position to continue exactly where it stopped: an
interrupted and resumed run ends with the same weights as one that never
stopped.

A run never loses a learner's work:

* its folder is checked before the first step (it can be created, a file can
  be written in it), and a folder that already holds a run is resumed
  (``--resume``) or replaced only when asked (``--overwrite``), never
  silently;
* every file is written atomically (``tinyvit.files``), the checkpoint after
  every epoch and on Ctrl-C (at the end of the current step, so a step is
  never half applied; a second Ctrl-C during a save lets the save finish);
  temporary files of a write that was killed are removed when the next run
  starts;
* a loss that becomes NaN or infinite stops the run with a message and
  leaves the last good checkpoint alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import backend, checkpoint, checks, data, files, kernels
from . import functional as F
from .checks import FRACTION, NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT
from .cli import ArgumentParser, choice_type, duration_type, flag_type
from .ema import ModelEMA
from .loop import TrainingDiverged, evaluate, step_seed, train_step
from .optim import SGD, AdamW, WarmupCosine
from .vit import ALIASES, CONFIGS, POS_EMBEDS, ViT, check_config
from .vit import config as vit_config

# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------

# The model's settings that a run may override, and what each may be.
MODEL_OVERRIDES = {
    "patch_size": POSITIVE_INT,
    "dim": POSITIVE_INT,
    "depth": POSITIVE_INT,
    "heads": POSITIVE_INT,
    "mlp_dim": POSITIVE_INT,
    "pool": ("cls", "mean"),
    "gelu": ("none", "tanh"),
    "dropout": FRACTION,
    "pos_embed": POS_EMBEDS,
    "patch_dropout": FRACTION,
}


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint."""

    model: str = "vit_cifar_tiny"
    model_overrides: dict = field(default_factory=dict)
    epochs: int = 16
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    clip_grad: float = 1.0
    augment: str = "flip"
    mixup: float = 0.0
    cutmix: float = 0.0
    train_limit: int | None = None  # use only the first N training examples
    test_limit: int | None = None
    eval_batch_size: int = 500
    device: str = "cpu"
    seed: int = 0
    steps: int | None = None  # optimizer steps in all; None: epochs x steps per epoch
    time_budget: float | None = None  # seconds: the run sets its steps to end within it
    ema: float = 0.0  # decay of the moving average of the weights that is tested (0: off)
    tta: str = "none"  # "flip": the final test averages each image and its mirror image

    def model_config(self, num_classes=None) -> dict:
        """The ``ViT`` arguments of this run's model (``num_classes``: the data set's)."""
        overrides = dict(self.model_overrides)
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        return vit_config(self.model, **overrides)

    def describe_model(self) -> str:
        """The model's name and what the run changed: ``vit_cifar_tiny with dim=128, depth=4``."""
        if not self.model_overrides:
            return self.model
        changes = ", ".join(f"{k}={v}" for k, v in self.model_overrides.items())
        return f"{self.model} with {changes}"

    def check(self) -> TrainConfig:
        """Every setting in its range, and settings that make sense together; else a
        ``RunError`` naming the setting, what it must be and what it is. Returns self."""
        try:
            for name, kind in SETTINGS.items():
                value = getattr(self, name)
                if value is None and name in OPTIONAL:
                    continue  # None: all of them, or not set
                if isinstance(kind, checks.Range):
                    kind.check(name, value)
                else:
                    checks.one_of(name, value, kind)
            if not isinstance(self.model_overrides, dict):
                raise TypeError(f"model_overrides must be a dict, got {self.model_overrides!r}")
            for name, value in self.model_overrides.items():
                kind = MODEL_OVERRIDES.get(name)
                if kind is None:
                    raise ValueError(
                        f"model_overrides: {name!r} cannot be overridden by a run; "
                        f"these can: {', '.join(MODEL_OVERRIDES)}"
                    )
                if isinstance(kind, checks.Range):
                    kind.check(name, value)
                else:
                    checks.one_of(name, value, kind)
            if self.model not in CONFIGS and self.model not in ALIASES:
                known = ", ".join(sorted(CONFIGS) + sorted(ALIASES))
                raise ValueError(f"unknown model {self.model!r}; known: {known}")
            check_config(**self.model_config())
        except (TypeError, ValueError) as error:
            raise RunError(str(error)) from None
        if self.min_lr > self.lr:
            raise RunError(
                f"min_lr {self.min_lr:g} is above lr {self.lr:g}: the cosine decay would climb; "
                "lower --min-lr or raise --lr"
            )
        if self.steps is not None and self.time_budget is not None:
            raise RunError(
                "steps and time_budget exclude each other: fix the number of steps, or let the "
                "time budget choose it"
            )
        if self.warmup_epochs > self.epochs and self.steps is None and self.time_budget is None:
            raise RunError(
                f"the warm-up ({self.warmup_epochs:g} epochs, --warmup-epochs) is longer than "
                f"the run ({self.epochs} epochs, --epochs)"
            )
        if self.device == "cuda":
            backend.check_device_name("cuda")  # DeviceError when there is no GPU
        return self


# The range or the choices of every setting but the model.
SETTINGS = {
    "epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "optimizer": ("adamw", "sgd"),
    "lr": POSITIVE,
    "min_lr": NONNEGATIVE,
    "weight_decay": NONNEGATIVE,
    "momentum": FRACTION,
    "warmup_epochs": NONNEGATIVE,
    "label_smoothing": FRACTION,
    "clip_grad": NONNEGATIVE,
    "augment": data.AUGMENTS,
    "mixup": NONNEGATIVE,
    "cutmix": NONNEGATIVE,
    "train_limit": POSITIVE_INT,
    "test_limit": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "device": backend.DEVICES,
    "seed": NONNEGATIVE_INT,
    "steps": POSITIVE_INT,
    "time_budget": POSITIVE,
    "ema": FRACTION,
    "tta": ("none", "flip"),
}
OPTIONAL = ("train_limit", "test_limit", "steps", "time_budget")  # None is allowed


RECIPES = {
    # The default CPU run: the most accuracy in 30 minutes on a 2-core CPU
    # (issue 15's search, benchmarks/results/cifar10_cpu/search_v2/).
    # TrainConfig's defaults (vit_cifar_tiny: patch 4, D 96, 6 layers; AdamW at
    # 1e-3 after a 1-epoch warm-up, flips only) with four changes, each measured:
    # global average pooling instead of the class token (+1.3 points at 10
    # epochs), PatchDropout 0.5 (half the tokens in training: 1.8x the steps in
    # the same time, -0.2 points at equal steps), as many steps as fit in 30
    # minutes, and a final test that averages each image with its mirror image
    # (+0.6 points). A moving average of the weights gave nothing at this length
    # and is left off; so are the fixed sin-cos position embeddings (worse).
    "cpu": dict(
        model_overrides=dict(pool="mean", patch_dropout=0.5),
        time_budget=1800.0,
        tta="flip",
    ),
    # The published from-scratch recipe of ViT-Lite-7/4 (Compact Transformers
    # paper: 91.38% in 200 epochs): AdamW 5e-4, weight decay 0.03, batch 128,
    # 5 warm-up epochs, cosine decay, label smoothing 0.1, a strong augmentation
    # policy (RandAugment here, AutoAugment there) with crop and flip.
    "gpu": dict(
        model="vit_lite_7_4",
        epochs=200,
        batch_size=128,
        lr=5e-4,
        min_lr=1e-6,
        weight_decay=0.03,
        warmup_epochs=5.0,
        augment="randaugment",
        device="cuda",
    ),
    # A run of seconds, for tests and for trying the command line.
    "quick": dict(
        model_overrides=dict(patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64),
        epochs=2,
        batch_size=64,
        lr=1e-3,
        warmup_epochs=0.5,
        train_limit=1024,
        test_limit=500,
    ),
}


# A time budget: the run times its steps (from the 5th: the first few are slower;
# at least 25 of them), and keeps a margin of 6% for what it does not time: loading
# the data, and a speed that drifts over a run (by up to 5% in half an hour on our
# 2-core machines, where the first epoch is among the fastest).
BUDGET_STEPS = (5, 25)
BUDGET_MARGIN = 0.06
PLOT_SECONDS = 0.5  # drawing curves.png, when it has not been timed yet
# The progress bar's loss and accuracy are brought up to date at most this often: the
# right answers are counted on the device, and reading them makes the host wait for it.
POSTFIX_SECONDS = 1.0


class RunError(ValueError):
    """Settings that cannot make a run, or a folder that cannot take it."""


# ---------------------------------------------------------------------------
# the run's folder
# ---------------------------------------------------------------------------

CHECKPOINT, MODEL, METRICS, CURVES = "checkpoint.npz", "model.npz", "metrics.jsonl", "curves.png"
RUN_FILES = (CHECKPOINT, MODEL, METRICS, CURVES)


def check_run_folder(out, resume=False, overwrite=False) -> list[str]:
    """Check that ``out`` can take this run, before anything is read or trained.

    The folder is created if needed and a file is written in it and removed
    (``files.check_writable``). A folder that holds a run (any of
    ``RUN_FILES``) is resumed (``resume``), replaced (``overwrite``), or
    refused with a ``RunError`` that names both ways on. Returns the run
    files that are there; nothing is changed but the folder's creation.
    """
    out = Path(out)
    if resume and overwrite:
        raise RunError("resume and overwrite exclude each other: continue the run, or replace it")
    files.check_writable(out)
    present = [name for name in RUN_FILES if (out / name).is_file()]
    if resume and present and CHECKPOINT not in present:
        raise RunError(
            f"{out} holds {', '.join(present)} but no {CHECKPOINT} to resume from; "
            "start again there with --overwrite, or in a new --out folder"
        )
    if present and not resume and not overwrite:
        raise RunError(
            f"{out} already holds a run ({', '.join(present)}); continue it with --resume, "
            "or start a new one with another --out folder or with --overwrite (which "
            "deletes it)"
        )
    return present


# ---------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------


class Trainer:
    """One training run: a model, its optimizer and schedule, the data and the output folder.

    ``Trainer(config, dataset, out)`` where ``dataset`` is a ``data.CIFAR10``
    (or anything with ``x_train, y_train, x_test, y_test, classes``). Files
    in ``out``: ``checkpoint.npz`` (the latest), ``model.npz`` (the final
    weights, loadable with ``tinyvit.load``), ``metrics.jsonl`` (one line
    per epoch) and ``curves.png``. ``fit(resume=..., overwrite=...)`` runs it.
    """

    def __init__(self, config: TrainConfig, dataset, out, progress=True, log=print):
        self.config, self.out, self.progress, self.log = config.check(), Path(out), progress, log
        c = config
        if c.device == "cpu":
            kernels.cpu_runtime.keep_freed_memory()  # reuse freed activations, no refaulting
        self.x_train, self.y_train = (
            dataset.x_train[: c.train_limit],
            dataset.y_train[: c.train_limit],
        )
        self.x_test, self.y_test = dataset.x_test[: c.test_limit], dataset.y_test[: c.test_limit]
        self.num_classes = len(dataset.classes)
        self.steps_per_epoch = data.num_batches(len(self.y_train), c.batch_size, drop_last=True)
        if self.steps_per_epoch == 0:
            raise RunError(
                f"batch size {c.batch_size} is larger than the {len(self.y_train)} "
                "training examples"
            )
        # With a time budget this is provisional: the run measures its speed over its
        # first steps and then sets the number of steps (``fit_time_budget``).
        self.planned = c.time_budget is None  # the number of steps is settled
        self.set_total_steps(c.steps or c.epochs * self.steps_per_epoch)

        backend.manual_seed(c.seed)  # the initial weights
        self.model = ViT(**c.model_config(num_classes=self.num_classes))
        self.model.to(c.device)
        if c.optimizer == "adamw":
            self.optimizer = AdamW(self.model, lr=c.lr, weight_decay=c.weight_decay)
        else:
            self.optimizer = SGD(
                self.model.parameters(),
                c.lr,
                c.momentum,
                nesterov=True,
                weight_decay=c.weight_decay,
            )
        self.ema = ModelEMA(self.model, c.ema) if c.ema else None

        # where the run is, and what it has seen so far
        self.epoch, self.batch, self.step = 0, 0, 0
        self.sums = dict(loss=0.0, correct=0.0, seen=0, seconds=0.0)
        self._correct = None  # right answers counted on the device, not yet in sums
        self.history = []
        self.elapsed = 0.0  # seconds of training and evaluation before this process
        self.saved = None  # (epoch, batch, step) of the last checkpoint on disk, if any
        self._stop_requested = False
        self._saving = False
        self._started = time.perf_counter()
        self._step_seconds = []  # the first steps' times, for a time budget
        if not self.planned:
            from . import viz  # noqa: F401  (imported now, not inside the first timed epoch)

    def set_total_steps(self, total_steps) -> None:
        """The run's length in steps, and the schedule over it: a linear warm-up of
        ``warmup_epochs`` (at most the whole run), then cosine decay to ``min_lr``."""
        c = self.config
        self.total_steps = int(total_steps)
        warmup = min(self.total_steps, round(c.warmup_epochs * self.steps_per_epoch))
        self.schedule = WarmupCosine(c.lr, self.total_steps, warmup, c.min_lr)

    @property
    def epochs(self) -> int:
        """Epochs in the run, the last one possibly cut short."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    # -- checkpoints ---------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    @contextlib.contextmanager
    def _writing(self):
        """While files are written, a second Ctrl-C lets the write finish."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def save_checkpoint(self):
        self._settle()
        state = dict(
            config=dataclasses.asdict(self.config),
            epoch=self.epoch,
            batch=self.batch,
            step=self.step,
            total_steps=self.total_steps,
            planned=self.planned,
            sums=self.sums,
            history=self.history,
            elapsed=self.elapsed + (time.perf_counter() - self._started),
        )
        extra = {f"optim/{k}": v for k, v in self.optimizer.state_dict().items()}
        if self.ema is not None:
            extra.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
        extra["trainer/state"] = np.array(json.dumps(state))
        with self._writing():
            checkpoint.save(self.model, self.checkpoint_path, extra=extra)
        self.saved = (self.epoch, self.batch, self.step)

    def load_checkpoint(self, path=None):
        path = Path(path or self.checkpoint_path)
        arrays = checkpoint.read_npz(path)
        if "trainer/state" not in arrays:
            raise checkpoint.CheckpointError(
                f"{path} has no trainer state: not a training checkpoint"
            )
        try:
            state = json.loads(str(arrays["trainer/state"]))
            saved = state["config"]
            position = {k: state[k] for k in ("epoch", "batch", "step", "sums", "history")}
            total_steps, planned = int(state["total_steps"]), bool(state["planned"])
            elapsed = float(state["elapsed"])
        except json.JSONDecodeError as error:
            raise checkpoint.CheckpointError(
                f"{path}: its trainer state is not valid JSON ({error.msg})"
            ) from None
        except (KeyError, TypeError, ValueError) as error:
            raise checkpoint.CheckpointError(
                f"{path}: its trainer state is incomplete or damaged ({type(error).__name__}: "
                f"{error})"
            ) from None
        ours = dataclasses.asdict(self.config)
        differ = {
            k: (saved.get(k), v) for k, v in ours.items() if k != "device" and saved.get(k) != v
        }
        if differ:
            detail = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise RunError(f"cannot resume {path}: the run's settings differ ({detail})")
        try:
            self.model.load_state_dict({k: v for k, v in arrays.items() if "/" not in k})
            self.optimizer.load_state_dict(
                {k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}
            )
            if self.ema is not None:
                self.ema.load_state_dict(
                    {k[len("ema/") :]: v for k, v in arrays.items() if k.startswith("ema/")}
                )
        except (KeyError, ValueError) as error:
            raise checkpoint.CheckpointError(f"{path}: {error}") from None
        self.epoch, self.batch, self.step = position["epoch"], position["batch"], position["step"]
        self.sums, self.history, self.elapsed = position["sums"], position["history"], elapsed
        self._correct = None
        self.set_total_steps(total_steps)
        self.planned = planned
        self.saved = (self.epoch, self.batch, self.step)

    # -- the loop ------------------------------------------------------------

    def _on_interrupt(self, signum, frame):
        if self._saving:  # never break a write: let it finish, then stop
            self._stop_requested = True
            self.log("\nCtrl-C: files are being written; stopping as soon as they are safe")
            return
        if self._stop_requested:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self._stop_requested = True
        self.log(
            "\nCtrl-C: finishing what is under way (this step, or the epoch's test), saving a "
            "checkpoint, then stopping (press again to stop at once, without saving)"
        )

    def train_step(self, x, y):
        """One optimization step (``loop.train_step``); returns the batch's mean loss and
        number correct."""
        c = self.config

        def forward():
            logits = self.model(x)  # (B, classes)
            return F.cross_entropy(logits, y, label_smoothing=c.label_smoothing), logits

        loss, logits = train_step(
            self.model, self.optimizer, forward, step=self.step, lr=self.schedule(self.step),
            clip=c.clip_grad, seed=c.seed,
        )  # fmt: skip
        if self.ema is not None:
            self.ema.update(self.model)
        labels = y if y.ndim == 1 else y.argmax(axis=1)  # mixup/cutmix: the main class
        correct = (logits.data.argmax(axis=1) == labels).sum()  # 0-d, on the device: not read
        return loss, correct

    def _settle(self):
        """Add the right answers counted on the device since the last call to the epoch's
        sums (one synchronisation; the progress bar and the epoch's end need them)."""
        if self._correct is not None:
            self.sums["correct"] += backend.scalars(self._correct)[0]
            self._correct = None

    def train_epoch(self):
        """Train to the end of this epoch (or of the run, or until Ctrl-C: then False)."""
        c = self.config
        batches = data.batches(
            self.x_train,
            self.y_train,
            c.batch_size,
            seed=c.seed,
            epoch=self.epoch,
            augment=c.augment,
            mixup=c.mixup,
            cutmix=c.cutmix,
            num_classes=self.num_classes,
            device=c.device,
            start=self.batch,
        )
        bar = tqdm(
            batches,
            total=min(self.steps_per_epoch, self.total_steps - self.epoch * self.steps_per_epoch),
            initial=self.batch,
            desc=f"epoch {self.epoch + 1}/{self.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        tick = shown = time.perf_counter()
        for x, y in bar:
            loss, correct = self.train_step(x, y)
            n = len(x)
            now = time.perf_counter()
            self.sums["loss"] += loss * n
            self._correct = correct if self._correct is None else self._correct + correct
            self.sums["seen"] += n
            self.sums["seconds"] += now - tick
            if not self.planned:
                self._step_seconds.append(now - tick)
                if self.plan_now():
                    self.fit_time_budget(self.measured_step_seconds(), self.per_epoch_estimate())
                    bar.total = min(self.steps_per_epoch, self.total_steps)
                now = time.perf_counter()
            tick = now
            self.batch += 1
            self.step += 1
            if self.progress and now - shown >= POSTFIX_SECONDS:  # reading the count waits
                shown = now
                self._settle()
                seen = self.sums["seen"]
                bar.set_postfix(
                    loss=f"{self.sums['loss'] / seen:.3f}",
                    acc=f"{self.sums['correct'] / seen:.3f}",
                    img_s=f"{seen / max(self.sums['seconds'], 1e-9):.0f}",
                    lr=f"{self.schedule(self.step - 1):.2e}",
                )
            if self._stop_requested:
                bar.close()
                return False
            if self.step >= self.total_steps:  # the run ends inside this epoch
                break
        bar.close()
        return True

    def fit_time_budget(self, step_seconds, per_epoch_seconds) -> None:
        """Set the number of steps so that training, the test after every epoch and the
        files written with it all end within ``time_budget``.

        ``step_seconds`` and ``per_epoch_seconds`` (a test and the saves) are
        measured on this run. The plan is made once, before the learning rate
        depends on the run's length (during the warm-up), and kept in the
        checkpoint, so a resumed run goes on with it.
        """
        c = self.config
        spent = self.elapsed + (time.perf_counter() - self._started)
        left = c.time_budget * (1.0 - BUDGET_MARGIN) - spent

        final = 2 * per_epoch_seconds if c.tta == "flip" else 0.0  # the flipped test at the end

        def needed(total):  # seconds from now to the end of a run of `total` steps
            tests = math.ceil(total / self.steps_per_epoch) - self.epoch
            return (total - self.step) * step_seconds + tests * per_epoch_seconds + final

        low, high = self.step + 1, self.step + 2 + int(max(left, 0.0) / step_seconds)
        while high - low > 1:  # the largest total that fits: needed() grows with it
            middle = (low + high) // 2
            low, high = (middle, high) if needed(middle) <= left else (low, middle)
        exact = self.step <= self.schedule.warmup  # no learning rate has depended on the length
        self.set_total_steps(low)
        self.planned = True
        again = "step for step" if exact else "but for the learning rates of its first steps"
        self.log(
            f"time budget {c.time_budget / 60:.3g} min: {step_seconds:.3f} s a step, "
            f"{per_epoch_seconds:.1f} s to test and save, {spent:.0f} s spent: {low:,} steps "
            f"({low / self.steps_per_epoch:.2f} epochs). The same run again, {again}: "
            f"--steps {low} instead of --time-budget"
        )

    def elapsed_minutes(self) -> float:
        """Minutes of this run so far, across resumes."""
        return (self.elapsed + time.perf_counter() - self._started) / 60

    def plan_now(self) -> bool:
        """Whether a time budget is to be planned during this step: when the warm-up
        ends inside the first epoch (else at that epoch's end, ``end_epoch``)."""
        warmup = round(self.config.warmup_epochs * self.steps_per_epoch)
        return (
            not self.planned
            and self.step + 1 == max(BUDGET_STEPS[1], warmup)
            and self.step + 1 < self.steps_per_epoch
        )

    def per_epoch_estimate(self) -> float:
        """Seconds to test and save, before any epoch has ended: a test on a sample of
        the test images, timed, and a checkpoint written (as on Ctrl-C), timed."""
        c = self.config
        tick = time.perf_counter()
        sample = min(len(self.y_test), 2 * c.eval_batch_size)
        self.test(limit=sample)
        test_seconds = (time.perf_counter() - tick) * len(self.y_test) / sample
        tick = time.perf_counter()
        self.save_checkpoint()
        return test_seconds + (time.perf_counter() - tick) + PLOT_SECONDS

    def measured_step_seconds(self) -> float:
        """The median time of this process's first steps (the very first are slower)."""
        return float(np.median(self._step_seconds[BUDGET_STEPS[0] :] or self._step_seconds))

    def tested_weights(self):
        """A context in which the model has the weights that are tested and saved: the
        moving average when the run keeps one (``--ema``), else the trained ones."""
        return self.ema.applied_to(self.model) if self.ema else contextlib.nullcontext()

    def test(self, limit=None, desc="testing", tta=False):
        """``evaluate`` on the test images (the first ``limit``), with the EMA's weights when
        the run keeps one (and, with ``tta``, each image also seen mirrored)."""
        c = self.config
        with self.tested_weights():
            return evaluate(
                self.model, self.x_test[:limit], self.y_test[:limit],
                batch_size=c.eval_batch_size, progress=self.progress and limit is None,
                desc=desc, tta=tta,
            )  # fmt: skip

    def final_test(self) -> None:
        """With ``tta="flip"``: the finished model tested on each image and its mirror
        image, recorded in the last epoch's record (the test after every epoch is plain:
        twice its cost in every epoch would buy less than a longer run)."""
        if self.config.tta != "flip" or not self.history or "test_acc_tta" in self.history[-1]:
            return
        loss, accuracy = self.test(desc="testing with flips", tta=True)
        self.history[-1].update(test_loss_tta=loss, test_acc_tta=accuracy)
        self.log(
            f"with flip test-time augmentation: test loss {loss:.4f} acc {100 * accuracy:.2f}%"
        )
        self.save_checkpoint()
        self.write_metrics()

    def end_epoch(self):
        tick = time.perf_counter()
        test_loss, test_acc = self.test(desc=f"epoch {self.epoch + 1}/{self.epochs}: testing")
        self._settle()
        s = self.sums
        record = dict(
            epoch=self.epoch + 1,
            step=self.step,
            train_loss=s["loss"] / s["seen"],
            train_acc=s["correct"] / s["seen"],
            test_loss=test_loss,
            test_acc=test_acc,
            lr=self.schedule(self.step - 1),
            train_images_per_s=s["seen"] / max(s["seconds"], 1e-9),
            eval_seconds=time.perf_counter() - tick,
            elapsed_seconds=self.elapsed + (time.perf_counter() - self._started),
        )
        self.history.append(record)
        self.epoch, self.batch = self.epoch + 1, 0
        self.sums = dict(loss=0.0, correct=0.0, seen=0, seconds=0.0)
        self.log(
            f"epoch {record['epoch']:>3}/{self.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {100 * record['train_acc']:.2f}%  |  test loss {test_loss:.4f} "
            f"acc {100 * test_acc:.2f}%  |  {record['train_images_per_s']:.0f} img/s  "
            f"{record['elapsed_seconds'] / 60:.1f} min"
        )
        self.save_checkpoint()
        self.write_metrics()
        if not self.planned:  # a time budget, planned with this epoch's timings
            self.fit_time_budget(self.measured_step_seconds(), time.perf_counter() - tick)
            self.save_checkpoint()  # with the plan, for a resumed run

    def write_metrics(self):
        """``metrics.jsonl`` and ``curves.png`` from the history, each written atomically."""
        from .viz import plot_training_curves

        with self._writing():
            lines = "".join(json.dumps(record) + "\n" for record in self.history)
            files.write_text(self.out / METRICS, lines)
            plot_training_curves(
                self.history,
                self.out / CURVES,
                title=f"{self.config.describe_model()} on CIFAR-10",
                label_smoothing=self.config.label_smoothing,
            )

    def _divergence_advice(self) -> str:
        c = self.config
        if self.saved is not None:
            kept = (
                f"The last good checkpoint, {self.checkpoint_path} (step {self.saved[2]}), "
                "is untouched."
            )
        else:
            kept = "No checkpoint had been written yet (the first comes at the end of epoch 1)."
        tries = [
            f"a lower --lr (it is {c.lr:g})",
            f"a longer --warmup-epochs (it is {c.warmup_epochs:g})",
        ]
        if not c.clip_grad:
            tries.append("--clip-grad 1")
        return (
            f"{kept} Try {', '.join(tries[:-1])} or {tries[-1]}, in a new --out folder or "
            "with --overwrite (a resumed run would take the same steps again)."
        )

    def prepare(self, resume=False, overwrite=False) -> None:
        """Make the folder ready: checked (``check_run_folder``), a replaced run's files
        deleted, leftovers of killed writes removed."""
        present = check_run_folder(self.out, resume=resume, overwrite=overwrite)
        if overwrite and present:
            for name in present:
                (self.out / name).unlink()
            self.log(f"--overwrite: deleted the earlier run in {self.out} ({', '.join(present)})")
        removed = files.remove_leftovers(self.out, RUN_FILES)
        if removed:
            names = ", ".join(p.name for p in removed)
            self.log(f"removed {len(removed)} temporary file(s) of an interrupted write: {names}")

    def fit(self, resume=False, overwrite=False):
        """Train to the end (or until Ctrl-C); returns the history of epoch records.

        A folder that already holds a run is continued with ``resume=True``
        or replaced with ``overwrite=True``; otherwise it is refused
        (``RunError``).
        """
        self._started = time.perf_counter()
        self.prepare(resume=resume, overwrite=overwrite)
        if resume:
            if self.checkpoint_path.exists():
                self.load_checkpoint()
                self.log(
                    f"resuming {self.checkpoint_path}: epoch {self.epoch + 1}, batch {self.batch}, "
                    f"step {self.step} of {self.total_steps}"
                )
            else:
                self.log(f"nothing to resume in {self.out}: starting afresh")
        c = self.config
        length = (
            f"{self.epochs} epochs"
            if self.planned
            else f"as many steps as fit in {c.time_budget / 60:.3g} minutes"
        )
        extras = [f"EMA {c.ema:g}"] if c.ema else []
        extras += ["a final test with flips"] if c.tta == "flip" else []
        self.log(
            f"{c.describe_model()}: {self.model.num_parameters():,} parameters, "
            f"{len(self.y_train):,} training images, {self.steps_per_epoch} steps per epoch, "
            f"{length}{''.join(', ' + e for e in extras)}, on {c.device}; "
            f"{kernels.describe(c.device)}"
        )
        # Ctrl-C asks for a clean stop (signals reach only the main thread)
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_interrupt) if in_main else None
        try:
            while self.step < self.total_steps:
                if self.train_epoch():
                    self.end_epoch()
                else:
                    self.save_checkpoint()
                if self._stop_requested and self.step < self.total_steps:
                    self.log(
                        f"stopped at epoch {self.epoch + 1}, batch {self.batch}; saved "
                        f"{self.checkpoint_path}. Continue with the same command and --resume."
                    )
                    return self.history
            self.final_test()
            with self._writing(), self.tested_weights():
                checkpoint.save(self.model, self.out / MODEL)
        except TrainingDiverged as error:
            error.epoch, error.advice = self.epoch + 1, self._divergence_advice()
            raise
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        if self.history:
            best = max(r["test_acc"] for r in self.history)
            last = self.history[-1]
            flipped = (
                f", {100 * last['test_acc_tta']:.2f}% with flips" if "test_acc_tta" in last else ""
            )
            self.log(
                f"done: final test accuracy {100 * last['test_acc']:.2f}%{flipped} "
                f"(best {100 * best:.2f}%), {self.elapsed_minutes():.1f} min; "
                f"model in {self.out / MODEL}"
            )
        return self.history


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------

HELP = {
    "epochs": "passes over the training images",
    "batch_size": "images per step",
    "optimizer": "adamw, or sgd with Nesterov momentum",
    "lr": "the peak learning rate, reached at the end of the warm-up",
    "min_lr": "the learning rate at the end of the cosine decay",
    "weight_decay": "decoupled weight decay (none on biases, norms, E_pos, the class token)",
    "momentum": "SGD's momentum",
    "warmup_epochs": "epochs of linear warm-up (may be a fraction)",
    "label_smoothing": "label smoothing of the training loss",
    "clip_grad": "the largest global gradient norm (0: no clipping)",
    "augment": "augmentation of the training images",
    "mixup": "mixup's Beta alpha (0: off)",
    "cutmix": "CutMix's Beta alpha (0: off)",
    "train_limit": "use only the first N training images",
    "test_limit": "use only the first N test images",
    "eval_batch_size": "images per batch when testing",
    "device": "where to train",
    "seed": "the seed of the weights, the data order, the augmentation and dropout",
    "steps": "optimizer steps in all, instead of --epochs (the last epoch may be cut short)",
    "time_budget": "wall time for the whole run, e.g. 30m: it times its first steps and a "
    "test, then sets --steps to end within it (its log says how many, to repeat the run)",
    "ema": "test (and save) a moving average of the weights with this decay, e.g. 0.999 (0: off)",
    "tta": "test-time augmentation: flip tests the finished model on each image and its "
    "mirror image (the test after every epoch stays plain)",
}


def _show(value, name="") -> str:
    if name == "time_budget":
        return "none" if value is None else f"{value / 60:g}m"
    return "all" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _defaults(name) -> str:
    """``default: 16; recipes gpu: 200, quick: 2`` for one setting, from the recipes."""
    base = getattr(TrainConfig(), name)
    others = [
        f"{recipe}: {_show(values[name], name)}"
        for recipe, values in RECIPES.items()
        if name in values and values[name] != base
    ]
    return f"default: {_show(base, name)}" + (f"; recipes {', '.join(others)}" if others else "")


def _model_defaults(name) -> str:
    """``default: the model's (vit_cifar_tiny: 96, vit_lite_7_4: 256; quick recipe: 32)``."""
    own = inspect.signature(ViT).parameters
    shown = [
        f"{model}: {_show(CONFIGS[model].get(name, own[name].default))}"
        for model in ("vit_cifar_tiny", "vit_lite_7_4")
    ]
    for recipe, values in RECIPES.items():
        overrides = values.get("model_overrides", {})
        if name in overrides:
            shown.append(f"{recipe} recipe: {_show(overrides[name])}")
    return f"default: the model's ({', '.join(shown)})"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m tinyvit.train",
        description=(
            "Train a Vision Transformer on CIFAR-10. A recipe sets every default below; "
            "each flag overrides it."
        ),
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="cpu",
        help="a set of defaults: cpu (default), gpu (ViT-Lite-7/4, 200 epochs), quick (seconds)",
    )
    p.add_argument("--quick", action="store_true", help="the quick recipe: a run of seconds")
    known = tuple(sorted(CONFIGS) + sorted(ALIASES))
    p.add_argument(
        "--model",
        "--config",
        dest="model",
        type=choice_type(known, "model"),
        metavar="NAME",
        help=f"a named ViT configuration (default: {TrainConfig().model}; gpu recipe: "
        f"{RECIPES['gpu']['model']}); one of {', '.join(known)}",
    )
    words = dict(
        patch_size="the patch size P", dim="the width D", depth="the number of blocks L",
        heads="the number of heads", mlp_dim="the MLP's hidden width",
        pool="cls (the class token) or mean (the patch tokens' average)",
        gelu="the GELU: none (exact) or tanh", dropout="dropout in the blocks",
        pos_embed="position embeddings: learn (E_pos, learned) or sincos (fixed 2-D sin-cos)",
        patch_dropout="train on a random 1 - X of each image's patch tokens (PatchDropout)",
    )  # fmt: skip
    flags = [(n, k, f"{words[n]}; {_model_defaults(n)}") for n, k in MODEL_OVERRIDES.items()]
    flags += [(n, k, f"{HELP[n]} ({_defaults(n)})") for n, k in SETTINGS.items()]
    for name, kind, help_text in flags:
        flag = f"--{name.replace('_', '-')}"
        if name == "time_budget":
            p.add_argument(flag, type=duration_type, metavar="TIME", help=help_text)
        elif isinstance(kind, checks.Range):
            metavar = "N" if kind.kind is int else "X"
            p.add_argument(flag, type=flag_type(kind), metavar=metavar, help=help_text)
        else:
            p.add_argument(flag, choices=kind, help=help_text)
    p.add_argument(
        "--data-dir", help="CIFAR-10 folder (default: $TINYVIT_DATA or ~/.cache/tinyvit)"
    )
    p.add_argument("--no-download", action="store_true", help="never download the data set")
    p.add_argument(
        "--out",
        default="runs/cifar10",
        help="folder for checkpoints, metrics and curves (default: runs/cifar10)",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue the run in OUT from its checkpoint"
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run already in OUT and start afresh (without it, a folder that "
        "holds a run is refused)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args) -> TrainConfig:
    recipe = "quick" if args.quick else args.recipe
    values = {**dataclasses.asdict(TrainConfig()), **RECIPES[recipe]}
    overrides = dict(values.get("model_overrides", {}))
    for name in MODEL_OVERRIDES:
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    values["model_overrides"] = overrides
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name != "model_overrides":
            values[f.name] = value
    if args.time_budget is None and (args.epochs is not None or args.steps is not None):
        values["time_budget"] = None  # a length asked for replaces the recipe's time budget
    if args.steps is None and args.time_budget is not None:
        values["steps"] = None
    return TrainConfig(**values)


def main(argv=None) -> int:
    """The command line. Bad settings, data or folders: one ``error:`` line, status 2,
    before anything is trained; a diverging loss: status 1; Ctrl-C: status 130."""
    args = build_parser().parse_args(argv)
    trainer = None
    try:
        config = config_from_args(args).check()
        check_run_folder(args.out, resume=args.resume, overwrite=args.overwrite)
        dataset = data.load_cifar10(args.data_dir, download=not args.no_download)
        trainer = Trainer(config, dataset, args.out, progress=not args.no_progress)
        trainer.fit(resume=args.resume, overwrite=args.overwrite)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if trainer is not None and trainer.saved is not None:
            kept = f"{trainer.checkpoint_path} (step {trainer.saved[2]}) is the last save"
        else:
            kept = "nothing was saved"
        print(f"error: stopped at once by Ctrl-C; {kept}", file=sys.stderr)
        return 130
    except (
        data.DataError,
        checkpoint.CheckpointError,
        backend.DeviceError,
        RunError,
        files.WriteError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if trainer.step >= trainer.total_steps else 130  # 130: stopped by Ctrl-C


__all__ = [
    "RECIPES",
    "RUN_FILES",
    "RunError",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "check_run_folder",
    "main",
    "step_seed",
]


if __name__ == "__main__":
    sys.exit(main())
