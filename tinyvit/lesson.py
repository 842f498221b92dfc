"""The command line every lesson shares: ``--out``, ``--quick``, ``--device``."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import backend


def lesson_arguments(name: str, description: str, argv=None, extra=None) -> argparse.Namespace:
    """Parse a lesson's flags; create its output folder and report it.

    ``--out DIR`` (default ``runs/lessons/<name>``) receives the figures;
    ``--quick`` makes the lesson run in seconds (the tests use it);
    ``--device cuda`` runs it on the GPU. ``extra(parser)`` may add flags.
    """
    parser = argparse.ArgumentParser(prog=f"lessons/{name}.py", description=description)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / "lessons" / name,
        help="folder for the lesson's figures (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="a small, fast run (for tests)")
    parser.add_argument("--device", default="cpu", choices=backend.DEVICES)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    backend.check_device_name(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{name}: figures go to {args.out}/")
    return args


# Lesson 6 writes its trained model here (the trainer's ``model.npz``); lessons
# 7-9 start from it.
LESSON6_MODEL = Path("runs") / "lessons" / "06_train_cifar10" / "model.npz"


def data_dir_flag(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``: where CIFAR-10 is (else $TINYVIT_DATA, else the user's cache)."""
    parser.add_argument(
        "--data-dir", help="CIFAR-10 folder (default: $TINYVIT_DATA or ~/.cache/tinyvit)"
    )


def checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--checkpoint`` (default: the model lesson 6 trained)."""
    data_dir_flag(parser)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=LESSON6_MODEL,
        help="a tinyvit model to look into (default: lesson 6's, %(default)s)",
    )


def trained_model(args, dataset, short_epochs: int = 3):
    """The model of ``args.checkpoint``, or, when there is none, one trained now.

    Lessons 7-9 look inside the model lesson 6 trained. Without its
    checkpoint they say so and train a short run of the same recipe
    (``short_epochs`` epochs; the "quick" recipe under ``--quick``) into
    ``args.out / "short_run"``: a weaker model, but a real one. Nothing is
    ever downloaded.
    """
    from . import checkpoint
    from .train import RECIPES, TrainConfig, Trainer

    path = Path(args.checkpoint)
    if path.is_file():
        print(f"starting from {path}")
        return checkpoint.load(path, device=args.device)
    if args.quick:
        settings = RECIPES["quick"]
        what = "the quick recipe (seconds)"
    else:
        settings = {**RECIPES["cpu"], "epochs": short_epochs}
        what = f"{short_epochs} epochs of lesson 6's recipe"
    print(
        f"no checkpoint at {path} (run lessons/06_train_cifar10.py for the real one): "
        f"training {what} now"
    )
    config = TrainConfig(**{**TrainConfig().__dict__, **settings, "device": args.device})
    trainer = Trainer(config, dataset, Path(args.out) / "short_run")
    trainer.fit()
    return trainer.model.eval()
