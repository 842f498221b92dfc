"""Training a Vision Transformer on CIFAR-10: the loop, its checkpoints, its command line.

    python -m tinyvit.train                        # the default CPU run
    python -m tinyvit.train --recipe gpu --device cuda
    python -m tinyvit.train --resume --out runs/cifar10

One step is the whole of the paper's training in miniature: a batch of
augmented images, the ViT's logits, the cross-entropy with label smoothing,
``backward()``, global gradient-norm clipping and an AdamW update with the
learning rate of a linear warm-up followed by a cosine decay.

Everything random is a function of the seed and of where the run is (epoch,
batch, step): the order of the examples, each batch's augmentation, each
step's dropout masks. So a checkpoint needs only the weights, the optimiser's
moments and that position to continue exactly where it stopped: an
interrupted and resumed run ends with the same weights as one that never
stopped. A checkpoint is written atomically after every epoch, and on Ctrl-C
(at the end of the current step, so a step is never half applied). A loss
that becomes NaN or infinite stops the run with a message and leaves the
last good checkpoint alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import backend, checkpoint, data, kernels
from . import functional as F
from .optim import SGD, AdamW, WarmupCosine, clip_grad_norm
from .tensor import no_grad
from .vit import ViT
from .vit import config as vit_config

# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------

MODEL_OVERRIDES = ("patch_size", "dim", "depth", "heads", "mlp_dim", "pool", "gelu", "dropout")


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


RECIPES = {
    # The default CPU run: the most accuracy in 30 minutes on a 2-core CPU.
    # TrainConfig's defaults are that run: vit_cifar_tiny (patch 4, D 96, 6
    # layers), 16 epochs of AdamW at 1e-3 after a 1-epoch warm-up, flips only
    # (in so short a run, random crops cost more than they give). 12 epochs
    # filled the half hour until the engine got faster (66.6%); 16 now do (68.3%).
    "cpu": dict(),
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


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class RunError(ValueError):
    """Settings that cannot make a run (or cannot continue the one in a checkpoint)."""


def step_seed(seed, step) -> int:
    """The seed of one step's dropout masks: a function of the run's seed and the step."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


# ---------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------


def evaluate(model, images, labels, batch_size=500, device="cpu"):
    """Mean cross-entropy and accuracy of ``model`` on a labelled set, without a graph."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    with no_grad():
        for x, y in data.batches(
            images,
            labels,
            batch_size,
            seed=0,
            epoch=0,
            shuffle=False,
            augment="none",
            device=device,
            drop_last=False,
        ):
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.data.argmax(axis=1) == y).sum())
    model.train(was_training)
    return loss_sum / len(labels), correct / len(labels)


class Trainer:
    """One training run: a model, its optimiser and schedule, the data and the output folder.

    ``Trainer(config, dataset, out)`` where ``dataset`` is a ``data.CIFAR10``
    (or anything with ``x_train, y_train, x_test, y_test, classes``). Files
    in ``out``: ``checkpoint.npz`` (the latest), ``model.npz`` (the final
    weights, loadable with ``tinyvit.load``), ``metrics.jsonl`` (one line
    per epoch) and ``curves.png``.
    """

    def __init__(self, config: TrainConfig, dataset, out, progress=True, log=print):
        self.config, self.out, self.progress, self.log = config, Path(out), progress, log
        self.out.mkdir(parents=True, exist_ok=True)
        c = config
        backend.check_device_name(c.device)
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
        self.total_steps = c.epochs * self.steps_per_epoch

        backend.manual_seed(c.seed)  # the initial weights
        self.model = ViT(**vit_config(c.model, num_classes=self.num_classes, **c.model_overrides))
        self.model.to(c.device)
        if c.optimizer == "adamw":
            self.optimizer = AdamW(self.model, lr=c.lr, weight_decay=c.weight_decay)
        elif c.optimizer == "sgd":
            self.optimizer = SGD(
                self.model.parameters(),
                c.lr,
                c.momentum,
                nesterov=True,
                weight_decay=c.weight_decay,
            )
        else:
            raise RunError(f"optimizer must be 'adamw' or 'sgd', not {c.optimizer!r}")
        warmup = min(self.total_steps, round(c.warmup_epochs * self.steps_per_epoch))
        self.schedule = WarmupCosine(c.lr, self.total_steps, warmup, c.min_lr)

        # where the run is, and what it has seen so far
        self.epoch, self.batch, self.step = 0, 0, 0
        self.sums = dict(loss=0.0, correct=0.0, seen=0, seconds=0.0)
        self.history = []
        self.elapsed = 0.0  # seconds of training and evaluation before this process
        self._stop_requested = False

    # -- checkpoints ---------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.npz"

    def save_checkpoint(self):
        state = dict(
            config=dataclasses.asdict(self.config),
            epoch=self.epoch,
            batch=self.batch,
            step=self.step,
            sums=self.sums,
            history=self.history,
            elapsed=self.elapsed + (time.perf_counter() - self._started),
        )
        extra = {f"optim/{k}": v for k, v in self.optimizer.state_dict().items()}
        extra["trainer/state"] = np.array(json.dumps(state))
        checkpoint.save(self.model, self.checkpoint_path, extra=extra)

    def load_checkpoint(self, path=None):
        path = Path(path or self.checkpoint_path)
        arrays = checkpoint.read_npz(path)
        if "trainer/state" not in arrays:
            raise checkpoint.CheckpointError(
                f"{path} has no trainer state: not a training checkpoint"
            )
        state = json.loads(str(arrays["trainer/state"]))
        saved = state["config"]
        ours = dataclasses.asdict(self.config)
        differ = {
            k: (saved.get(k), v) for k, v in ours.items() if k != "device" and saved.get(k) != v
        }
        if differ:
            detail = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise RunError(f"cannot resume {path}: the run's settings differ ({detail})")
        self.model.load_state_dict({k: v for k, v in arrays.items() if "/" not in k})
        self.optimizer.load_state_dict(
            {k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}
        )
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.sums, self.history, self.elapsed = state["sums"], state["history"], state["elapsed"]

    # -- the loop ------------------------------------------------------------

    def _on_interrupt(self, signum, frame):
        if self._stop_requested:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self._stop_requested = True
        self.log(
            "\nCtrl-C: finishing this step, saving a checkpoint, then stopping "
            "(press again to stop at once, without saving)"
        )

    def train_step(self, x, y):
        """One optimisation step; returns the batch's mean loss and number correct."""
        c = self.config
        lr = self.schedule(self.step)
        self.optimizer.set_lr(lr)
        backend.manual_seed(step_seed(c.seed, self.step))  # this step's dropout masks
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"the loss became {value} at epoch {self.epoch + 1}, step {self.step} "
                f"(learning rate {lr:.3g}). The last good checkpoint, {self.checkpoint_path}, "
                "is untouched. Try a lower --lr, a longer --warmup-epochs or --clip-grad 1."
            )
        self.optimizer.zero_grad()
        loss.backward()
        if c.clip_grad:
            clip_grad_norm(self.model.parameters(), c.clip_grad)
        self.optimizer.step()
        labels = y if y.ndim == 1 else y.argmax(axis=1)  # mixup/cutmix: the main class
        correct = int((logits.data.argmax(axis=1) == labels).sum())
        return value, correct

    def train_epoch(self):
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
            total=self.steps_per_epoch,
            initial=self.batch,
            desc=f"epoch {self.epoch + 1}/{c.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        tick = time.perf_counter()
        for x, y in bar:
            loss, correct = self.train_step(x, y)
            n = len(x)
            now = time.perf_counter()
            self.sums["loss"] += loss * n
            self.sums["correct"] += correct
            self.sums["seen"] += n
            self.sums["seconds"] += now - tick
            tick = now
            self.batch += 1
            self.step += 1
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
        bar.close()
        return True

    def end_epoch(self):
        c = self.config
        tick = time.perf_counter()
        test_loss, test_acc = evaluate(
            self.model, self.x_test, self.y_test, c.eval_batch_size, c.device
        )
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
            f"epoch {record['epoch']:>3}/{c.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {100 * record['train_acc']:.2f}%  |  test loss {test_loss:.4f} "
            f"acc {100 * test_acc:.2f}%  |  {record['train_images_per_s']:.0f} img/s  "
            f"{record['elapsed_seconds'] / 60:.1f} min"
        )
        self.save_checkpoint()
        self.write_metrics()

    def write_metrics(self):
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        tmp = self.out / ".metrics.jsonl.tmp"
        tmp.write_text(lines)
        os.replace(tmp, self.out / "metrics.jsonl")
        from .viz import plot_training_curves

        plot_training_curves(
            self.history, self.out / "curves.png", title=f"{self.config.model} on CIFAR-10"
        )

    def fit(self, resume=False):
        """Train to the end (or until Ctrl-C); returns the history of epoch records."""
        self._started = time.perf_counter()
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
        self.log(
            f"{c.model}: {self.model.num_parameters():,} parameters, {len(self.y_train):,} "
            f"training images, {self.steps_per_epoch} steps per epoch, {c.epochs} epochs, "
            f"on {c.device}; {kernels.describe(c.device)}"
        )
        # Ctrl-C asks for a clean stop (signals reach only the main thread)
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_interrupt) if in_main else None
        try:
            while self.epoch < c.epochs:
                if not self.train_epoch():
                    self.save_checkpoint()
                    self.log(
                        f"stopped at epoch {self.epoch + 1}, batch {self.batch}; saved "
                        f"{self.checkpoint_path}. Continue with the same command and --resume."
                    )
                    return self.history
                self.end_epoch()
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        checkpoint.save(self.model, self.out / "model.npz")
        if self.history:
            best = max(r["test_acc"] for r in self.history)
            self.log(
                f"done: final test accuracy {100 * self.history[-1]['test_acc']:.2f}% "
                f"(best {100 * best:.2f}%), {self.history[-1]['elapsed_seconds'] / 60:.1f} min; "
                f"model in {self.out / 'model.npz'}"
            )
        return self.history


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tinyvit.train",
        description="Train a Vision Transformer on CIFAR-10.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="cpu",
        help="a set of defaults; any flag below overrides it",
    )
    p.add_argument("--quick", action="store_true", help="the 'quick' recipe: a run of seconds")
    defaults = TrainConfig()
    p.add_argument(
        "--model", "--config", dest="model", help=f"a named ViT configuration ({defaults.model})"
    )
    for name in MODEL_OVERRIDES:
        kind = str if name in ("pool", "gelu") else float if name == "dropout" else int
        p.add_argument(
            f"--{name.replace('_', '-')}", type=kind, help="override the model's " + name
        )
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model", "model_overrides"):
            continue
        kind = type(f.default) if f.default is not None else int
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, help=f"default: {f.default!r}")
    p.add_argument(
        "--data-dir", help="CIFAR-10 folder (default: $TINYVIT_DATA or ~/.cache/tinyvit)"
    )
    p.add_argument("--no-download", action="store_true", help="never download the data set")
    p.add_argument(
        "--out", default="runs/cifar10", help="folder for checkpoints, metrics and curves"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    return TrainConfig(**values)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    try:
        dataset = data.load_cifar10(args.data_dir, download=not args.no_download)
        trainer = Trainer(config, dataset, args.out, progress=not args.no_progress)
        trainer.fit(resume=args.resume)
    except TrainingDiverged as error:
        print(f"\nstopped: {error}", file=sys.stderr)
        return 1
    except (data.DataError, checkpoint.CheckpointError, backend.DeviceError, RunError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 130 if trainer._stop_requested else 0


if __name__ == "__main__":
    sys.exit(main())
