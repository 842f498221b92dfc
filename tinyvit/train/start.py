"""How a run starts: what it trains on, and the weights it starts from.

* **The data.** ``--data-dir`` naming a folder with one subfolder per class
  is your own images (``tinyvit.data.folders``): decoded once at the
  model's resolution, normalized by the folder's own mean and standard
  deviation (by the pre-trained model's when fine-tuning, which its
  weights expect). Anything else is CIFAR-10 (``data.load_cifar10``).
* **The weights.** ``TrainConfig.init`` None trains from scratch: the named
  model, seeded. ``init`` naming a pre-trained model (a timm name on the
  Hub, an official checkpoint, a path: ``tinyvit.from_pretrained``) starts
  from its weights by the paper's fine-tuning recipe (Section 3.2): the
  head replaced by a zero-initialized one for the data's classes, the
  position embeddings resampled in 2-D when the resolution changes
  (``interop.for_finetuning``).

A resumed run takes its architecture, preprocessing and weights from its
own checkpoint: resuming a fine-tuning run needs neither the network nor
the pre-trained file. The model keeps the data's class names and
preprocessing, so that every checkpoint carries them to ``predict`` and to
the evaluation.
"""

from __future__ import annotations

import functools
import json

import numpy as np

from .. import backend, data
from ..checkpoint import META, CheckpointError
from ..images import Preprocessing, preprocessing_of
from ..interop import for_finetuning
from ..models import build, from_saved
from ..pretrained import from_pretrained
from .config import RunError, TrainConfig
from .state import STATE

# What a fine-tuning run may change in the pre-trained model: nothing that changes the
# shape of a weight but the position embeddings' grid (resampled).
FINETUNE_SETTINGS = ("image_size", "dropout", "patch_dropout")


def saved_run(path) -> tuple[dict, dict] | None:
    """``(model description, trainer state)`` of the training checkpoint at ``path``, read
    without its weights; None when there is none, or it cannot be read (the resume
    itself then says why)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(str(archive[f"{META}/meta"])), json.loads(str(archive[STATE]))
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _same_run(saved, config: TrainConfig) -> bool:
    try:
        then = TrainConfig.from_saved(saved[1]["config"]).resolved()
    except (KeyError, TypeError, ValueError):
        return False
    return {**then.__dict__, "device": None} == {**config.resolved().__dict__, "device": None}


@functools.lru_cache(maxsize=1)
def pretrained(init: str):
    """The pre-trained model ``init``, on the host (kept between the command line's look at
    its preprocessing and the trainer's start; ``pretrained.cache_clear()`` lets it go)."""
    try:
        return from_pretrained(init)
    except (CheckpointError, OSError, ValueError) as error:
        raise RunError(f"cannot start from {init}: {error}") from None


def run_preprocessing(config: TrainConfig, checkpoint=None) -> Preprocessing | None:
    """How the run makes an image its input (size, resizing, mean and std), or None for a
    run from scratch, whose data brings its own.

    A run resumed from ``checkpoint`` keeps the one it saved. A fine-tuning
    run takes the pre-trained model's, at the run's ``image_size`` when it
    changes it, the whole image kept (``crop_pct=1``: the training images
    are resized, not cut).
    """
    saved = saved_run(checkpoint) if checkpoint is not None else None
    if saved is not None and _same_run(saved, config) and "preprocessing" in saved[0]:
        return Preprocessing.from_dict(saved[0]["preprocessing"])
    if config.init is None:
        return None
    own = preprocessing_of(pretrained(config.init))
    size = config.model_overrides.get("image_size") or own.image_size
    return own.replace(image_size=size, crop_pct=1.0, crop_mode="center")


def load_dataset(data_dir, config: TrainConfig, *, checkpoint=None, download=True, log=print,
                 progress=None):  # fmt: skip
    """The run's data: a folder of class subfolders at ``data_dir``, decoded as
    ``run_preprocessing`` says (from scratch: at the model's size, normalized by the
    folder's own mean and std); else CIFAR-10 (``data.load_cifar10``)."""
    if data_dir is None or data.data_kind(data_dir) == "cifar10":
        return data.load_cifar10(data_dir, download=download)
    p = run_preprocessing(config, checkpoint)
    if p is None:
        size = config.model_config().image_size
        return data.load_image_folder(data_dir, size, log=log, progress=progress)
    return data.load_image_folder(
        data_dir, p.image_size, interpolation=p.interpolation, mean=p.mean, std=p.std,
        log=log, progress=progress,
    )  # fmt: skip


def initial_model(config: TrainConfig, dataset, checkpoint=None):
    """``(model, rebuilt)``: the model a run starts with, on the host, in training mode.

    From scratch: the named model with the data's classes, seeded. A
    fine-tuning run whose own ``checkpoint`` is there (to be resumed):
    its architecture, rebuilt from the checkpoint's description without
    the pre-trained model (``rebuilt=True``; the resume loads the weights).
    Else the pre-trained model, adapted (``finetuning_model``). The model
    keeps the data's class names and preprocessing.
    """
    classes = tuple(str(name) for name in dataset.classes)
    backend.manual_seed(config.seed)  # the initial weights (and a new head's, if any)
    saved = saved_run(checkpoint) if config.init is not None and checkpoint else None
    rebuilt = saved is not None and _same_run(saved, config)
    if config.init is None:
        model = build(config.model_config(num_classes=len(classes)))
    elif rebuilt:
        model = from_saved(saved[0]["model"], saved[0]["config"])
    else:
        model = finetuning_model(config, len(classes))
        pretrained.cache_clear()  # the pre-trained copy is no longer needed
    own = getattr(dataset, "preprocessing", None)  # a folder's; None for CIFAR-10
    if own is None and config.init is not None:  # CIFAR-10, by the pre-trained model's
        own = run_preprocessing(config, checkpoint).replace(image_size=model.config.image_size)
    model.preprocessing, model.classes = own, classes
    return model.train(), rebuilt


def finetuning_model(config: TrainConfig, num_classes: int):
    """The pre-trained model ``config.init`` with a zero-initialized head of
    ``num_classes`` and the run's changes (``image_size``: ``E_pos`` resampled)."""
    changes = dict(config.model_overrides)
    size = changes.pop("image_size", None)
    source = pretrained(config.init)
    try:
        return for_finetuning(source, num_classes, size, new_head=True, **changes)
    except (TypeError, ValueError) as error:
        raise RunError(f"cannot fine-tune {config.init} so: {error}") from None


def fresh_weights(model, config: TrainConfig) -> None:
    """The pre-trained weights, adapted, put into ``model`` in place (its optimizer's views
    hold): a fine-tuning run that starts afresh where an earlier one's checkpoint was."""
    model.load_state_dict(finetuning_model(config, model.config.num_classes).state_dict())
    pretrained.cache_clear()


def data_name(dataset) -> str:
    """``CIFAR-10`` or ``your images``: what the run's figures say it trained on."""
    return "CIFAR-10" if getattr(dataset, "preprocessing", None) is None else "your images"


__all__ = [
    "FINETUNE_SETTINGS",
    "data_name",
    "finetuning_model",
    "fresh_weights",
    "initial_model",
    "load_dataset",
    "pretrained",
    "run_preprocessing",
    "saved_run",
]
