"""The command line every lesson shares: ``--out``, ``--quick``, ``--device``, ``--data-dir``.

Every lesson takes the same flags, so a learner can run any of them the same
way; lessons 7-10, which look inside a trained model, add ``--checkpoint``.
A mistake on the command line (a flag out of range, a checkpoint that is not
there, a folder that cannot be written, data that cannot be found) is one
``error: ...`` line and exit status 2, before the lesson starts its work.

A lesson also runs cell by cell in Jupyter or VS Code (``jupytext --to
notebook lessons/06_train_cifar10.py`` makes a notebook of it): there the
command line belongs to the kernel, not to the lesson, which then takes its
defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from . import backend, files, kernels
from .cli import ArgumentParser, fail, folder_type

# Lesson 6 writes its trained model here (the trainer's ``model.npz``); lessons
# 7-10 start from it when it is there, else from the default run's (a plain ViT).
LESSON6_MODEL = Path("runs") / "lessons" / "06_train_cifar10" / "model.npz"
MAIN_MODEL = Path("runs") / "cifar10" / "model.npz"  # python -m tinyvit.train's
# The model of the default CPU run, shipped with the lessons (its provenance in the
# README beside it): what lessons 7-10 look into when lesson 6 has not been run.
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "lessons" / "models" / "vit_cifar_tiny.npz"
# Lesson 12's real ViT: the paper's ViT-B/16 at 224 x 224 (pre-trained on ImageNet-21k,
# fine-tuned on ImageNet), in the paper's bucket and, the same weights converted by
# timm, on the Hugging Face Hub.
PAPER_VIT = "imagenet21k+imagenet2012/ViT-B_16-224"
PAPER_VIT_HUB = "timm/vit_base_patch16_224.orig_in21k_ft_in1k"


def lesson_arguments(name: str, description: str, argv=None, extra=None) -> argparse.Namespace:
    """Parse a lesson's flags, apply ``kernels.configure_process()``; report the output folder.

    ``--out DIR`` (default ``runs/lessons/<name>``) receives the figures;
    ``--quick`` makes the lesson run in seconds (the tests use it);
    ``--device cuda`` runs it on the GPU; ``--data-dir`` says where CIFAR-10
    is, for the lessons that read it. ``extra(parser)`` may add flags
    (``checkpoint_flags``).
    """
    if argv is None and in_notebook():
        argv = []  # sys.argv is the kernel's (-f kernel.json), not the lesson's
    parser = ArgumentParser(prog=f"lessons/{name}.py", description=description)
    parser.add_argument(
        "--out",
        type=folder_type,
        default=Path("runs") / "lessons" / name,
        help="folder for the lesson's figures (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="a small, fast run (for tests)")
    parser.add_argument("--device", default="cpu", choices=backend.DEVICES)
    parser.add_argument(
        "--data-dir",
        help="CIFAR-10 folder, for lessons 6-10 (default: $TINYVIT_DATA or ~/.cache/tinyvit)",
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        backend.check_device_name(args.device)
        files.check_writable(args.out)
    except (backend.DeviceError, files.WriteError) as error:
        fail(str(error))
    kernels.configure_process()  # OpenBLAS's idle threads and the allocator (kernels/__init__)
    print(f"{name}: figures go to {args.out}/")
    return args


def existing_file(text: str) -> Path:
    """An argparse ``type=`` for a file that must be there."""
    path = Path(text)
    if not path.is_file():
        why = "it is a folder" if path.is_dir() else "no such file"
        raise argparse.ArgumentTypeError(f"cannot read {path}: {why}")
    return path


def checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``: the model to look into (default: lesson 6's, else the shipped one).

    A checkpoint named on the command line must exist; only when none is
    named and neither lesson 6's model nor the shipped one is there does the
    lesson train a short run itself.
    """
    parser.add_argument(
        "--checkpoint",
        type=existing_file,
        default=None,
        help=f"a tinyvit model to look into (default: lesson 6's, {LESSON6_MODEL}, else "
        f"python -m tinyvit.train's plain ViT, {MAIN_MODEL}, else the one shipped in "
        "lessons/models/; "
        "without any of them the lesson trains a short run first)",
    )


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (Jupyter, VS Code's cells)."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return get is not None and type(get()).__name__ == "ZMQInteractiveShell"


def default_model(args):
    """The model a lesson looks into: ``--checkpoint``, else lesson 6's, else the default
    run's (``python -m tinyvit.train``) when it is a plain ViT, else the shipped one;
    ``None`` when there is none of them."""
    if args.checkpoint is not None:
        return Path(args.checkpoint)
    for path in (LESSON6_MODEL, MAIN_MODEL):
        if path.is_file() and not is_hybrid(path):
            return path
    return SHIPPED_MODEL if SHIPPED_MODEL.is_file() else None


def is_hybrid(path) -> bool:
    """Whether the checkpoint at ``path`` is a hybrid's (``--recipe hybrid`` writes
    runs/cifar10 too): lessons 7-10 look into a plain ViT's pixel patches. A file that is
    no checkpoint counts as none, for loading it to say what is wrong."""
    from . import checkpoint

    try:
        return checkpoint.read_meta(checkpoint.read_npz(path), path)["model"] == "HybridViT"
    except (OSError, ValueError, checkpoint.CheckpointError):
        return False


def load_data(args):
    """CIFAR-10 from ``--data-dir`` (downloaded when missing, as ``data.load_cifar10`` does);
    one error line if it cannot be had."""
    from . import data

    try:
        return data.load_cifar10(args.data_dir)
    except data.DataError as error:
        fail(error.command_line)  # in the words of --data-dir


def trained_model(args, dataset, short_epochs: int = 3):
    """The model of ``default_model(args)``, or, when there is none, one trained now.

    Lessons 7-10 look inside a trained model: ``--checkpoint``, else the one
    lesson 6 trained, else the one shipped with the lessons (the default CPU
    run's), also under ``--quick``, so that even a run of seconds shows what
    a trained ViT learned. Without any of them they say so and train a short
    run of the same recipe (``short_epochs`` epochs; the "quick" recipe under
    ``--quick``) into ``args.out / "short_run"`` (``"quick_run"``): a weaker
    model, but a real one. A short run already there is resumed (or,
    finished, reused), so running the lesson again costs nothing.
    """
    from . import checkpoint
    from .train import RunError, Trainer, recipe

    path = default_model(args)
    if path is not None:
        print(f"starting from {path}")
        try:
            return checkpoint.load(path, device=args.device)
        except checkpoint.CheckpointError as error:
            fail(str(error))

    if args.quick:
        config, folder = recipe("quick", device=args.device), "quick_run"
        what = "the quick recipe (seconds)"
    else:
        config, folder = recipe("cpu", epochs=short_epochs, device=args.device), "short_run"
        what = f"{short_epochs} epochs of lesson 6's recipe"
    print(
        f"no trained model: neither lesson 6's ({LESSON6_MODEL}; run "
        f"lessons/06_train_cifar10.py), nor python -m tinyvit.train's ({MAIN_MODEL}), nor the "
        f"shipped one ({SHIPPED_MODEL}): training {what} now"
    )
    try:
        trainer = Trainer(config, dataset, Path(args.out) / folder)
        trainer.fit(resume=True)
    except (RunError, checkpoint.CheckpointError, files.WriteError) as error:
        fail(str(error))
    if trainer.step < trainer.total_steps:
        fail("stopped by Ctrl-C before the short run ended; run the lesson again to go on", 130)
    return trainer.model.eval()


@contextlib.contextmanager
def hub_offline(offline: bool = True):
    """A context in which the Hugging Face Hub is read from its cache alone
    (``HF_HUB_OFFLINE=1``, which ``tinyvit.hub`` reads when called)."""
    before = os.environ.get("HF_HUB_OFFLINE")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _cached_offline(name) -> None:
    """A ``PretrainedError`` when ``name`` is an official checkpoint not yet in the cache:
    reading it would download it."""
    from .data import default_root
    from .official import official_key
    from .pretrained import PretrainedError

    key = None if Path(str(name)).expanduser().exists() else official_key(str(name))
    if key is not None and not (default_root() / "vit_models" / f"{key}.npz").is_file():
        raise PretrainedError(f"{name} is not in the cache, and --quick downloads nothing")


def shipped_model(device="cpu"):
    """The CIFAR-10 model shipped with the lessons (one error line when it is not there)."""
    from . import checkpoint

    if not SHIPPED_MODEL.is_file():
        fail(f"the model shipped with the lessons, {SHIPPED_MODEL}, is not here")
    return checkpoint.load(SHIPPED_MODEL, device=device)


def real_vit(name=None, quick=False, device="cpu"):
    """``(model, name, real)``: lesson 12's pre-trained ViT, or the shipped CIFAR-10 model in
    its place (``real=False``), said in one line.

    ``name`` (``--model``) must load: from its cache alone under ``quick``,
    else downloading what is missing; a failure is one error line. Without
    it the paper's ViT-B/16 is taken from the Hub's cache, else from the
    paper's bucket (its cache, else a download); without the network and
    without either in a cache, and always under ``quick`` (seconds, no
    download), the shipped model stands in.
    """
    from .checkpoint import CheckpointError
    from .pretrained import from_pretrained

    if name is not None:
        try:
            with hub_offline(quick):
                if quick:
                    _cached_offline(name)
                return from_pretrained(name, device=device), str(name), True
        except (CheckpointError, OSError, ValueError) as error:
            fail(str(error))
    if quick:
        print("--quick: the shipped CIFAR-10 model stands in for the paper's ViT-B/16 "
              "(nothing is downloaded; without --quick it is)")  # fmt: skip
        return shipped_model(device), str(SHIPPED_MODEL), False
    try:
        with hub_offline():
            return from_pretrained(PAPER_VIT_HUB, device=device), PAPER_VIT_HUB, True
    except (CheckpointError, OSError, ValueError):
        pass  # not in the Hub's cache: the bucket
    try:
        return from_pretrained(PAPER_VIT, device=device), PAPER_VIT, True
    except (CheckpointError, OSError, ValueError) as error:
        print(
            f"no network and nothing cached: {PAPER_VIT_HUB} is not in the Hugging Face "
            f"cache and {PAPER_VIT} could not be had ({error}); the shipped CIFAR-10 model "
            "stands in for the paper's ViT-B/16, so each figure shows a 32 x 32 model twice"
        )
    return shipped_model(device), str(SHIPPED_MODEL), False
