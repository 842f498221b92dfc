"""``python -m tinyvit.train``: the command line, read off the settings' declarations.

Every flag is a field of ``TrainConfig`` or one of the ViT settings a run
may change (``MODEL_SETTINGS``, declared in ``ViTConfig``): its name, its
range or choices and its help come from there, and its default from the
recipe. ``--help`` shows each setting's default and every recipe's value.

Bad settings, data or folders are one ``error:`` line and exit status 2,
before anything is trained; a diverging loss is status 1; a run stopped by
Ctrl-C ends with status 130, by SIGTERM with 143 (its checkpoint saved).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .. import backend, checkpoint, data, files, kernels
from ..cli import ArgumentParser, add_setting_flag, folder_type
from ..loop import TrainingDiverged
from ..settings import declared
from ..vit import CONFIGS, ViTConfig
from .config import MODEL_SETTINGS, RECIPES, RunError, TrainConfig, recipe
from .run_folder import RunFolder
from .trainer import Trainer

SHOWN_MODELS = ("vit_cifar_tiny", "vit_lite_7_4")  # whose settings --help lists


def _show(field, value) -> str:
    hints = field.metadata["cli"]
    if "show" in hints:
        return hints["show"](value)
    if value is None:
        return hints.get("none", "none")
    return f"{value:g}" if isinstance(value, float) else str(value)


def _defaults(field) -> str:
    """``default: 128; recipes gpu: 200, quick: 2`` for a setting of ``TrainConfig`` (the
    length as each recipe resolves it: the default's time budget written in)."""
    base = getattr(TrainConfig().resolved(), field.name)
    values = {name: getattr(recipe(name).resolved(), field.name) for name in RECIPES}
    others = [f"{name}: {_show(field, v)}" for name, v in values.items() if v != base]
    return f"default: {_show(field, base)}" + (f"; recipes {', '.join(others)}" if others else "")


def _model_defaults(field) -> str:
    """``default: the model's (vit_cifar_tiny: 96, vit_lite_7_4: 256; quick recipe: 32)``."""
    shown = [f"{model}: {_show(field, CONFIGS[model][field.name])}" for model in SHOWN_MODELS]
    for name in RECIPES:
        overrides = recipe(name).model_overrides
        if field.name in overrides:
            shown.append(f"{name} recipe: {_show(field, overrides[field.name])}")
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
        "--recipe", choices=tuple(RECIPES), default="cpu",
        help="a set of defaults: cpu (default: the most accuracy in 30 minutes on a CPU), "
        "gpu (ViT-Lite-7/4, 200 epochs), quick (seconds)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="the quick recipe: a run of seconds")
    vit_fields = {f.name: f for f in dataclasses.fields(ViTConfig)}
    for name in MODEL_SETTINGS:
        field = vit_fields[name]
        add_setting_flag(p, field, f"{field.metadata['help']}; {_model_defaults(field)}")
    for field in declared(TrainConfig):
        if field.metadata["cli"].get("flag", True):
            add_setting_flag(p, field, f"{field.metadata['help']} ({_defaults(field)})")
    p.add_argument(
        "--data-dir", help="CIFAR-10 folder (default: $TINYVIT_DATA or ~/.cache/tinyvit)"
    )
    p.add_argument("--no-download", action="store_true", help="never download the data set")
    p.add_argument(
        "--out", default="runs/cifar10", type=folder_type,
        help="folder for checkpoints, metrics and curves (default: runs/cifar10)",
    )  # fmt: skip
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue the run in OUT from its checkpoint"
    )
    again.add_argument(
        "--overwrite", action="store_true",
        help="delete the run already in OUT and start afresh (without it, a folder that "
        "holds a run is refused)",
    )  # fmt: skip
    p.add_argument(
        "--no-progress", action="store_true",
        help="no progress bars (they are drawn only when standard error is a terminal)",
    )  # fmt: skip
    return p


def config_from_args(args) -> TrainConfig:
    """The recipe named on the command line, with the flags that were given."""
    changes = {
        f.name: getattr(args, f.name)
        for f in declared(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    model = {n: getattr(args, n) for n in MODEL_SETTINGS if getattr(args, n) is not None}
    if model:
        changes["model_overrides"] = model
    return recipe("quick" if args.quick else args.recipe, **changes)


def main(argv=None) -> int:
    """The command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    folder, trainer = RunFolder(args.out), None
    try:
        config = config_from_args(args).check()
        data.check_root(args.data_dir)  # a misspelled --data-dir: before the folder is made
        folder.acquire()  # before the data: a second run into this folder stops here
        folder.check(resume=args.resume, overwrite=args.overwrite)
        kernels.configure_process()
        dataset = data.load_cifar10(args.data_dir, download=not args.no_download)
        trainer = Trainer(config, dataset, folder, progress=False if args.no_progress else None)
        trainer.fit(resume=args.resume, overwrite=args.overwrite)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        stop = trainer.stop if trainer is not None else None
        if trainer is not None and trainer.saved is not None:
            kept = f"{trainer.folder.checkpoint} (step {trainer.saved[2]}) is the last save"
        else:
            kept = "nothing was saved"
        name = stop.NAMES.get(stop.signal, "Ctrl-C") if stop and stop.signal else "Ctrl-C"
        print(f"error: stopped at once by {name}; {kept}", file=sys.stderr)
        return stop.exit_status if stop and stop.signal else 130
    except data.DataError as error:
        print(f"error: {error.command_line}", file=sys.stderr)  # --data-dir, not root=
        return 2
    except (
        checkpoint.CheckpointError, backend.DeviceError, RunError, files.WriteError,
    ) as error:  # fmt: skip
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        folder.release()
    return 0 if trainer.step >= trainer.total_steps else trainer.stop.exit_status


__all__ = ["build_parser", "config_from_args", "main"]
