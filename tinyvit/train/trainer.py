"""The trainer: a model, its optimizer and schedule, the data and a run folder, trained to the end.

One step is ``tinyvit.loop.train_step``: the ViT's logits on a batch of
augmented images, the cross-entropy with label smoothing, ``backward()``,
clipping, and an AdamW update at the learning rate of a warm-up and cosine
schedule (Section 4.1, Appendix B.1). Lesson 6 writes that loop out in a
dozen lines. This class adds what a long run needs around it: epochs and a
test after each, a checkpoint after each (``state``), a clean stop on
Ctrl-C (``stopping``), a length chosen to fit a time budget (``budget``),
the metrics and their figure (``metrics``), a moving average of the weights
and a final test on mirrored images. With several processes (``mpiexec``)
each trains on its part of every batch and rank 0 alone writes (``parallel``).
"""

from __future__ import annotations

import contextlib
import math
import time

from .. import backend, checkpoint, data, distributed, kernels
from .. import functional as F
from .. import progress as bars
from ..ema import ModelEMA
from ..images import preprocessing_of
from ..loop import TrainingDiverged, diverged_loss, train_step
from ..optim import SGD, AdamW, WarmupCosine
from ..resample import interpolate
from . import parallel, start, state
from .budget import TimeBudget
from .config import RunError, TrainConfig
from .metrics import EpochMeter, epoch_line, write_history
from .run_folder import CURVES, METRICS, RunFolder
from .stopping import StopRequest

PLOT_SECONDS = 0.5  # drawing curves.png, before it has been timed
# The progress bar's numbers are brought up to date at most this often: reading the
# right answers counted on the device makes the host wait for it.
POSTFIX_SECONDS = 1.0


def make_optimizer(config: TrainConfig, model):
    """AdamW (no decay on biases, norms, E_pos, the class token), or SGD with Nesterov
    momentum (``sgd``) or plain momentum (``momentum``), as ``config`` says."""
    if config.optimizer == "adamw":
        return AdamW(model, lr=config.lr, weight_decay=config.weight_decay)
    return SGD(model.parameters(), config.lr, config.momentum,
               nesterov=config.optimizer == "sgd", weight_decay=config.weight_decay)  # fmt: skip


class Trainer:
    """One training run: ``Trainer(config, dataset, out).fit()``.

    ``dataset`` has ``x_train, y_train, x_test, y_test, classes`` (a ``data.CIFAR10``, or
    a ``data.ImageFolder`` of your images, with its ``preprocessing``); the model starts
    from ``config.init``'s pre-trained weights when it names a model (``start``);
    ``out`` is the run's folder (``RunFolder``). ``fit(resume=..., overwrite=...)`` trains
    to the end or to Ctrl-C and returns the history, one record per epoch. ``progress``:
    draw progress bars (default: when standard error is a terminal). ``comm``: the
    processes that share the run (``distributed.world``; default: this one alone).
    """

    def __init__(self, config: TrainConfig, dataset, out, progress=None, log=print, comm=None):
        self.config, self.comm = config.check(), comm or distributed.Communicator()
        self.log = log if self.comm.root else parallel.quiet  # rank 0 alone prints
        self.progress = bars.wanted(progress) and self.comm.root
        self.folder = out if isinstance(out, RunFolder) else RunFolder(out)
        c = config
        self.shard = parallel.join(self, c.batch_size)  # this process's part of each batch
        self.x_train = dataset.x_train[: c.train_limit]
        self.y_train = dataset.y_train[: c.train_limit]
        self.x_test, self.y_test = dataset.x_test[: c.test_limit], dataset.y_test[: c.test_limit]
        self.num_classes = len(dataset.classes)
        self.steps_per_epoch = data.num_batches(len(self.y_train), c.batch_size, drop_last=True)
        if self.steps_per_epoch == 0:
            raise RunError(
                f"batch size {c.batch_size} is larger than the {len(self.y_train)} "
                "training examples"
            )
        self.warmup_steps = round(c.warmup_epochs * self.steps_per_epoch)
        # With a time budget the length is provisional until the run has timed itself.
        self.budget = TimeBudget(c.budget) if c.budget else None
        self.planned = self.budget is None
        if c.steps or c.epochs:
            self.set_total_steps(c.steps or c.epochs * self.steps_per_epoch)
        else:  # long enough for the warm-up, which is timed before the plan is made
            self.set_total_steps(max(self.warmup_steps, self.steps_per_epoch))

        # The initial weights: seeded, or a pre-trained model's (start), with the data's
        # class names and preprocessing; a fine-tuning run's own checkpoint gives its shape.
        model, self.rebuilt = start.initial_model(c, dataset, self.folder.checkpoint)
        self.model = model.to(c.device)
        self.data_name = start.data_name(dataset)
        self.optimizer = make_optimizer(c, self.model)
        self.comm.broadcast_array(self.optimizer.flat.data)  # rank 0's weights, everywhere
        self.ema = ModelEMA(self.model, c.ema) if c.ema else None

        self.epoch, self.batch, self.step = 0, 0, 0  # where the run is
        self.meter, self.history = EpochMeter(), []
        self.elapsed = 0.0  # seconds spent before this process
        self.saved = None  # (epoch, batch, step) of the last checkpoint on disk
        self.stop = StopRequest(self.log)
        self._started = time.perf_counter()

    def set_total_steps(self, total_steps) -> None:
        """The run's length in steps, and the schedule over it: a linear warm-up of
        ``warmup_epochs`` (at most the whole run), then cosine decay to ``min_lr``."""
        c = self.config
        self.total_steps = int(total_steps)
        warmup = min(self.total_steps, self.warmup_steps)
        self.schedule = WarmupCosine(c.lr, self.total_steps, warmup, c.min_lr)

    @property
    def normalization(self):
        """The model's preprocessing: its mean and std normalize the training images as they
        will every image it sees (CIFAR-10's, a folder's own, a pre-trained model's)."""
        return preprocessing_of(self.model)

    @property
    def epochs(self) -> int:
        """Epochs in the run, the last one possibly cut short."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def elapsed_seconds(self) -> float:
        """Seconds of this run so far, across resumes."""
        return self.elapsed + time.perf_counter() - self._started

    # -- checkpoints -----------------------------------------------------------------

    def save_checkpoint(self):
        position = dict(epoch=self.epoch, batch=self.batch, step=self.step)
        run = dict(
            config=self.config.resolved().__dict__, **position, total_steps=self.total_steps,
            planned=self.planned, sums=self.meter.settle(), history=self.history,
            elapsed=self.elapsed_seconds(),
        )  # fmt: skip
        with self.stop.writing():
            self.comm.from_root(state.save_state, self.folder.checkpoint, self.model,
                                self.optimizer, self.ema, run)  # fmt: skip
        self.saved = (self.epoch, self.batch, self.step)

    def load_checkpoint(self, path=None):
        path = path or self.folder.checkpoint
        arrays, saved = self.comm.from_root(state.read_state, path)  # rank 0 reads, for all
        state.check_same_run(path, saved["config"], self.config)
        state.load_weights(path, arrays, self.model, self.optimizer, self.ema)
        self.epoch, self.batch, self.step = saved["epoch"], saved["batch"], saved["step"]
        self.meter, self.history = EpochMeter(saved["sums"]), saved["history"]
        self.elapsed = saved["elapsed"]
        self.set_total_steps(saved["total_steps"])
        self.planned = saved["planned"]
        self.saved = (self.epoch, self.batch, self.step)

    # -- one step, one epoch ---------------------------------------------------------

    def train_on_batch(self, x, y):
        """One optimization step on a batch; returns its mean loss and its number of right
        answers (a 0-d array on the device, not read)."""
        c, counted, labels = self.config, [], y if y.ndim == 1 else y.argmax(axis=1)  # mixed: top

        def forward():
            logits = self.model(interpolate(x, self.model.image_size))  # (B, classes)
            counted.append((logits.data.argmax(axis=1) == labels).sum())
            return F.cross_entropy(logits, y, label_smoothing=c.label_smoothing), logits

        with backend.batch_shard(*(self.shard or (0, 1))):  # masks drawn for the whole batch
            loss, _ = train_step(
                self.model, self.optimizer, forward, step=self.step, lr=self.schedule(self.step),
                clip=c.clip_grad, seed=c.seed, max_loss=diverged_loss(self.num_classes),
                average=parallel.step_average(self, counted) if self.shard else None,
            )  # fmt: skip
        if self.ema is not None:
            self.ema.update(self.model)
        return loss, counted[0]

    def train_epoch(self) -> bool:
        """Train to the end of this epoch (or of the run); False when a stop was asked for."""
        c = self.config
        batches = data.batches(
            self.x_train, self.y_train, c.batch_size, seed=c.seed, epoch=self.epoch,
            augment=c.augment, mixup_alpha=c.mixup, cutmix_alpha=c.cutmix,
            num_classes=self.num_classes, device=c.device, start=self.batch,
            num_ops=c.randaugment_ops, magnitude=c.randaugment_magnitude, shard=self.shard,
            mean=self.normalization.mean, std=self.normalization.std,
        )  # fmt: skip
        bar = epoch_bar(self, batches)
        tick = shown = time.perf_counter()
        for x, y in bar:
            loss, correct = self.train_on_batch(x, y)
            now = time.perf_counter()
            self.meter.add(loss, correct, c.batch_size, now - tick)
            if not self.planned:
                self.budget.record(now - tick)
                if TimeBudget.plan_during_epoch(self.step, self.warmup_steps, self.steps_per_epoch):
                    self.plan(self.budget.step_seconds(), *time_epoch_end(self))
                    bar.total = min(self.steps_per_epoch, self.total_steps)
                now = time.perf_counter()
            tick = now
            self.batch, self.step = self.batch + 1, self.step + 1
            if self.progress and now - shown >= POSTFIX_SECONDS:
                shown, s = now, self.meter.summary()
                bar.set_postfix(loss=f"{s['loss']:.3f}", acc=f"{s['acc']:.3f}",
                                img_s=f"{s['images_per_s']:.0f}",
                                lr=f"{self.schedule(self.step - 1):.2e}")  # fmt: skip
            if parallel.stopping(self) or self.step >= self.total_steps:
                break
        bar.close()
        return not parallel.stopping(self)

    # -- a time budget ---------------------------------------------------------------

    def plan(self, step_seconds, test_seconds, save_seconds) -> None:
        """Fix the run's length to what fits in the time budget (``TimeBudget``), from
        the step, test and save times measured on this run; the plan is logged, with the
        ``--steps`` that repeats it."""
        c = self.config
        spent = self.elapsed_seconds()
        total = self.comm.broadcast(self.budget.steps_that_fit(  # rank 0's plan, for everyone
            spent=spent, step=self.step, epoch=self.epoch, steps_per_epoch=self.steps_per_epoch,
            step_seconds=step_seconds, test_seconds=test_seconds, save_seconds=save_seconds,
            tested=c.tests_after,
            final_seconds=2 * test_seconds + save_seconds if c.tta == "flip" else 0.0,
        ))  # fmt: skip
        exact = self.step <= self.schedule.warmup  # no learning rate depended on the length
        self.set_total_steps(total)
        self.planned = True
        again = "step for step" if exact else "but for the learning rates of its first steps"
        every = f" (every {c.test_every} epochs)" if c.test_every > 1 else ""
        self.log(
            f"time budget {self.budget.seconds / 60:.3g} min: {step_seconds:.3f} s a step, "
            f"{test_seconds:.1f} s a test{every}, {save_seconds:.1f} s to save, {spent:.0f} s "
            f"spent: {total:,} steps ({total / self.steps_per_epoch:.2f} epochs). The same run "
            f"again, {again}: --steps {total} instead of --time-budget"
        )

    # -- testing ---------------------------------------------------------------------

    def tested_weights(self):
        """A context in which the model has the weights that are tested and saved: the
        moving average when the run keeps one, else the trained ones."""
        return self.ema.applied_to(self.model) if self.ema else contextlib.nullcontext()

    def evaluate(self, limit=None, desc="testing", tta=False):
        """``loop.evaluate`` of the first ``limit`` test images, tested weights, in parts."""
        with self.tested_weights():
            return parallel.evaluate_parts(
                self.comm, self.model, self.x_test[:limit], self.y_test[:limit],
                batch_size=self.config.eval_batch_size, progress=self.progress and limit is None,
                desc=desc, tta=tta,
            )  # fmt: skip

    def end_epoch(self):
        """Test (where ``tests_after`` says), record the epoch, save; with a time budget not
        yet planned, plan it now."""
        tick, epochs = time.perf_counter(), self.epochs if self.planned else "?"  # ?: unplanned
        tested = {}
        if self.config.tests_after(self.epoch, epochs):
            tested = dict(zip(("test_loss", "test_acc"), self.evaluate(
                desc=f"epoch {self.epoch + 1}/{epochs}: testing")))  # fmt: skip
        s, test_seconds = self.meter.summary(), time.perf_counter() - tick
        record = dict(
            epoch=self.epoch + 1, step=self.step, train_loss=s["loss"], train_acc=s["acc"],
            **tested, lr=self.schedule(self.step - 1), train_images_per_s=s["images_per_s"],
            eval_seconds=test_seconds, elapsed_seconds=self.elapsed_seconds(),
        )  # fmt: skip
        self.history.append(record)
        self.epoch, self.batch, self.meter = self.epoch + 1, 0, EpochMeter()
        self.log(epoch_line(record, epochs))
        self.save_checkpoint()
        self.write_metrics()
        if not self.planned:  # a time budget, planned with this epoch's timings
            self.plan(self.budget.step_seconds(), test_seconds,
                      time.perf_counter() - tick - test_seconds)  # fmt: skip
            self.save_checkpoint()  # with the plan, for a resumed run

    def final_test(self) -> None:
        """With ``tta="flip"``: the finished model tested on each image and its mirror
        image, recorded in the last epoch's record."""
        if self.config.tta != "flip" or not self.history or "test_acc_tta" in self.history[-1]:
            return
        loss, accuracy = self.evaluate(desc="testing with flips", tta=True)
        self.history[-1].update(test_loss_tta=loss, test_acc_tta=accuracy)
        self.log(
            f"with flip test-time augmentation: test loss {loss:.4f} acc {100 * accuracy:.2f}%"
        )
        self.save_checkpoint()
        self.write_metrics()

    def write_metrics(self):
        c = self.config
        with self.stop.writing():
            self.comm.from_root(lambda: write_history(
                self.history, self.folder / METRICS, self.folder / CURVES,
                title=f"{c.describe_model()} on {self.data_name}", augment=c.augment,
                label_smoothing=c.label_smoothing, patch_dropout=c.model_config().patch_dropout,
            ))  # fmt: skip

    # -- the run ---------------------------------------------------------------------

    def fit(self, resume=False, overwrite=False):
        """Train to the end (or until Ctrl-C); returns the history of epoch records.

        A folder that already holds a run is continued with ``resume=True``
        or replaced with ``overwrite=True``; otherwise it is refused
        (``RunError``). The folder is locked while the run writes it.
        """
        self._started = time.perf_counter()
        try:
            self.comm.from_root(self.folder.prepare, resume, overwrite, self.log)
            if resume and self.comm.from_root(self.folder.checkpoint.exists):
                self.load_checkpoint()
                self.log(
                    f"resuming {self.folder.checkpoint}: epoch {self.epoch + 1}, batch "
                    f"{self.batch}, step {self.step} of {self.total_steps}"
                )
            elif resume:
                self.log(f"nothing to resume in {self.folder}: starting afresh")
            if self.rebuilt and self.saved is None:  # afresh where an earlier run's checkpoint was
                start.fresh_weights(self.model, self.config)
                self.ema = ModelEMA(self.model, self.config.ema) if self.config.ema else None
            self.log(describe_run(self))
            with self.stop:
                self._train()
        except TrainingDiverged as error:
            error.epoch, error.advice = self.epoch + 1, divergence_advice(self)
            raise
        finally:
            self.folder.release()
        return self.history

    def _train(self) -> None:
        while self.step < self.total_steps:
            if self.train_epoch():
                self.end_epoch()
            else:
                self.save_checkpoint()
            if self.comm.any(self.stop.requested) and self.step < self.total_steps:
                self.log(
                    f"stopped at epoch {self.epoch + 1}, batch {self.batch}; saved "
                    f"{self.folder.checkpoint}. Continue with the same command and --resume."
                )
                return
        self.final_test()
        with self.stop.writing(), self.tested_weights():
            self.comm.from_root(checkpoint.save, self.model, self.folder.model)
        if self.history:
            self.log(done_line(self))


def done_line(trainer: Trainer) -> str:
    """A finished run's last line: the final test, with flips, the best test, the time."""
    t = trainer
    best = max(r["test_acc"] for r in t.history if "test_acc" in r)
    last = t.history[-1]
    flipped = f", {100 * last['test_acc_tta']:.2f}% with flips" if "test_acc_tta" in last else ""
    return (
        f"done: final test accuracy {100 * last['test_acc']:.2f}%{flipped} "
        f"(best {100 * best:.2f}%), {t.elapsed_seconds() / 60:.1f} min; model in {t.folder.model}"
    )


def epoch_bar(trainer: Trainer, batches):
    """The progress bar of the epoch under way (drawn only where ``trainer.progress``)."""
    t = trainer
    left = t.total_steps - t.epoch * t.steps_per_epoch
    return bars.bar(
        batches, total=min(t.steps_per_epoch, left), initial=t.batch,
        desc=f"epoch {t.epoch + 1}/{t.epochs if t.planned else '?'}", progress=t.progress,
        leave=False, dynamic_ncols=True,
    )  # fmt: skip


def time_epoch_end(trainer: Trainer) -> tuple[float, float]:
    """Seconds to test and to save at an epoch's end, before one has ended: a test on a
    sample of the test images and a checkpoint written (as on Ctrl-C), both timed."""
    tick = time.perf_counter()
    sample = min(len(trainer.y_test), 2 * trainer.config.eval_batch_size)
    trainer.evaluate(limit=sample)
    test_seconds = (time.perf_counter() - tick) * len(trainer.y_test) / sample
    tick = time.perf_counter()
    trainer.save_checkpoint()
    return test_seconds, time.perf_counter() - tick + PLOT_SECONDS


def describe_run(trainer: Trainer) -> str:
    """A run's first line: the model, the data, the length, the extras, the kernels."""
    c, t = trainer.config, trainer
    length = (
        f"{t.epochs} epochs" if t.planned
        else f"as many steps as fit in {t.budget.seconds / 60:.3g} minutes"
    )  # fmt: skip
    extras = [f"EMA {c.ema:g}"] if c.ema else []
    if t.comm.size > 1:
        extras.append(f"{t.comm.size} processes of {c.batch_size // t.comm.size} images a step")
    extras += ["a final test with flips"] if c.tta == "flip" else []
    return (
        f"{c.describe_model()}: {t.model.num_parameters():,} parameters, "
        f"{len(t.y_train):,} training images, {t.steps_per_epoch} steps per epoch, "
        f"{length}{''.join(', ' + e for e in extras)}, on {c.device}; "
        f"{kernels.describe(c.device)}"
    )


def divergence_advice(trainer: Trainer) -> str:
    """What was kept, and what to try, when a run's loss has diverged."""
    c = trainer.config
    if trainer.saved is not None:
        kept = (
            f"The last good checkpoint, {trainer.folder.checkpoint} (step {trainer.saved[2]}), "
            "is untouched."
        )
    else:
        kept = "No checkpoint had been written yet (the first comes at the end of epoch 1)."
    tries = [f"a lower --lr (it is {c.lr:g})",
             f"a longer --warmup-epochs (it is {c.warmup_epochs:g})"]  # fmt: skip
    if not c.clip_grad:
        tries.append("--clip-grad 1")
    return (
        f"{kept} Try {', '.join(tries[:-1])} or {tries[-1]}, in a new --out folder or "
        "with --overwrite (a resumed run would take the same steps again)."
    )


__all__ = [
    "Trainer", "describe_run", "divergence_advice", "done_line", "epoch_bar", "make_optimizer",
    "time_epoch_end",
]  # fmt: skip
