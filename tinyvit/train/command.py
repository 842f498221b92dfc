"""``python -m tinyvit.train``: the command line, read off the settings' declarations.

Every flag is a field of ``TrainConfig`` or one of the ViT settings a run
may change (``MODEL_SETTINGS``, declared in ``ViTConfig``): its name, its
range or choices and its help come from there, and its default from the
recipe. ``--help`` shows each setting's default and every recipe's value.

Bad settings, data or folders are one ``error:`` line and exit status 2,
before anything is trained; a diverging loss is status 1; a run stopped by
Ctrl-C ends with status 130, by SIGTERM with 143 (its checkpoint saved).

Started by an MPI launcher (``mpiexec -n 4 python -m tinyvit.train ...``)
the same command is one run shared by the processes (``train.parallel``):
they check that their settings and data agree, rank 0 alone takes the
folder, reads and writes it and prints, and a process that fails by itself
ends the job with one line that names its rank.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
import time
import traceback
from pathlib import Path

from .. import backend, checkpoint, data, distributed, files, kernels
from ..cli import ArgumentParser, add_setting_flag, folder_type
from ..hybrid import HybridConfig
from ..loop import TrainingDiverged
from ..models import config as named_config
from ..settings import declared
from . import parallel, start
from .config import FINETUNE_SETTINGS, MODEL_SETTINGS, RECIPES, RunError, TrainConfig, recipe
from .run_folder import RunFolder
from .trainer import Trainer

SHOWN_MODELS = ("vit_cifar_tiny", "vit_lite_7_4", "hybrid_cifar_2x3")  # their settings in --help


def _show(field, value) -> str:
    hints = field.metadata["cli"]
    if "show" in hints:
        return hints["show"](value)
    if value is None:
        return hints.get("none", "none")
    return f"{value:g}" if isinstance(value, float) else str(value)


def _defaults(field, finetune: bool = False) -> str:
    """``default: 128; recipes gpu: 200, quick: 2`` for a setting of ``TrainConfig`` (the
    length as each recipe resolves it: the default's time budget written in); for the
    fine-tuning command, ``default: 32``, the finetune recipe's."""
    if finetune:
        return f"default: {_show(field, getattr(recipe('finetune').resolved(), field.name))}"
    base = getattr(TrainConfig().resolved(), field.name)
    values = {name: getattr(recipe(name).resolved(), field.name) for name in RECIPES}
    others = [f"{name}: {_show(field, v)}" for name, v in values.items() if v != base]
    return f"default: {_show(field, base)}" + (f"; recipes {', '.join(others)}" if others else "")


def _model_defaults(field) -> str:
    """``default: the model's (vit_cifar_tiny: 96, vit_lite_7_4: 256; quick recipe: 32)``."""
    shown = [
        f"{model}: {_show(field, named_config(model)[field.name])}"
        for model in SHOWN_MODELS
        if field.name in named_config(model)  # a stem's settings: the hybrid's only
    ]
    for name in RECIPES:
        overrides = recipe(name).model_overrides
        if field.name in overrides:
            shown.append(f"{name} recipe: {_show(field, overrides[field.name])}")
    return f"default: the model's ({', '.join(shown)})"


def build_parser(finetune: bool = False) -> argparse.ArgumentParser:
    """``python -m tinyvit.train``'s flags; with ``finetune``, ``python -m tinyvit.finetune``'s:
    the same run with the finetune recipe, ``--model`` naming the pre-trained model."""
    p = ArgumentParser(
        prog=f"python -m tinyvit.{'finetune' if finetune else 'train'}",
        description=FINETUNE_DESCRIPTION if finetune else (
            "Train a Vision Transformer on CIFAR-10 or on a folder of your images. A recipe "
            "sets every default below; each flag overrides it."
        ),
    )  # fmt: skip
    if finetune:
        p.set_defaults(recipe="finetune", quick=False)
        p.add_argument(
            "--model", dest="init", required=True, metavar="NAME|PATH",
            help="the pre-trained model: a timm name on the Hugging Face Hub "
            "(timm/vit_base_patch16_224.augreg2_in21k_ft_in1k), an official checkpoint "
            "(ViT-B/16), or a file (a tinyvit model, an official .npz, timm's .safetensors)",
        )  # fmt: skip
    else:
        p.add_argument(
            "--recipe", choices=tuple(RECIPES), default="cpu",
            help="a set of defaults: cpu (default: the most accuracy in 30 minutes on a "
            "CPU), hybrid (the paper's hybrid: a convolutional stem, then the ViT), gpu "
            "(ViT-Lite-7/4, 200 epochs), finetune (python -m tinyvit.finetune's, with "
            "--init), quick (seconds)",
        )  # fmt: skip
        p.add_argument("--quick", action="store_true", help="the quick recipe: a run of seconds")
    _add_settings(p, finetune)
    p.add_argument(
        "--data-dir", help="CIFAR-10's folder (default: $TINYVIT_DATA or ~/.cache/tinyvit), "
        "or a folder of your images, one subfolder per class (train/ and val/ above them "
        "for a split of your own)",
    )  # fmt: skip
    p.add_argument("--no-download", action="store_true", help="never download the data set")
    out = "runs/finetune" if finetune else "runs/cifar10"
    p.add_argument(
        "--out", default=out, type=folder_type,
        help=f"folder for checkpoints, metrics and curves (default: {out})",
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


FINETUNE_DESCRIPTION = (
    "Fine-tune a pre-trained Vision Transformer on a folder of your images (or CIFAR-10), "
    "as Section 3.2 of the paper does: a zero-initialized head for the data's classes, the "
    "position embeddings resampled when --image-size changes the resolution, SGD with "
    "momentum 0.9, no weight decay, clipping at 1, a warm-up then cosine decay. The "
    "trainer's run folder, checkpoints, --resume and Ctrl-C; every flag overrides the recipe."
)


def _add_settings(p, finetune: bool) -> None:
    """The flags of the model settings a run may change and of ``TrainConfig``'s fields (a
    fine-tuning run: only those that leave the pre-trained model's shape)."""
    vit_fields = {f.name: f for f in dataclasses.fields(HybridConfig)}  # a ViT's, and a stem's
    for name in FINETUNE_SETTINGS if finetune else MODEL_SETTINGS:
        field = vit_fields[name]
        shown = "the pre-trained model's" if finetune else _model_defaults(field)
        add_setting_flag(p, field, f"{field.metadata['help']}; {shown}")
    for field in declared(TrainConfig):
        if field.metadata["cli"].get("flag", True) and not (
            finetune and field.name in ("model", "init")
        ):
            add_setting_flag(
                p, field, f"{field.metadata['help']} ({_defaults(field, finetune)})"
            )


def config_from_args(args) -> TrainConfig:
    """The recipe named on the command line, with the flags that were given."""
    changes = {
        f.name: getattr(args, f.name)
        for f in declared(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    model = {n: getattr(args, n) for n in MODEL_SETTINGS if getattr(args, n, None) is not None}
    if model:
        changes["model_overrides"] = model
    return recipe("quick" if args.quick else args.recipe, **changes)


def _quiet_unless(shown: bool):
    """A context in which nothing is printed unless ``shown``: the processes other than
    rank 0 parse the same command line, and rank 0 alone says what is wrong with it."""
    if shown:
        return contextlib.nullcontext()
    sink = io.StringIO()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(sink))
    stack.enter_context(contextlib.redirect_stderr(sink))
    return stack


def _prepare(args, folder, comm):
    """Everything before the first step, in the order that fails soonest: the settings
    (the same on every process), the folder (rank 0's), the data (rank 0 first: it may
    download). Returns ``(config, dataset)``."""
    config = comm.everywhere(lambda: config_from_args(args).check())
    comm.everywhere(data.check_root, args.data_dir)  # a misspelled --data-dir: nothing made
    distributed.check_same(comm, "settings", dict(
        **dataclasses.asdict(config.resolved()), resume=args.resume, overwrite=args.overwrite,
        kernels=kernels.mode(),
    ))  # fmt: skip

    def claim():  # before the data: a second run into this folder stops here
        folder.acquire()
        folder.check(resume=args.resume, overwrite=args.overwrite)

    comm.from_root(claim)
    kernels.configure_process(distributed.threads_each(distributed.launched()))
    loaded = []

    def load(download):  # CIFAR-10, or a folder of your images (train.start)
        loaded.append(start.load_dataset(
            args.data_dir, config, checkpoint=folder.checkpoint if args.resume else None,
            download=download, log=print if comm.root else parallel.quiet,
            progress=False if args.no_progress or not comm.root else None,
        ))  # fmt: skip

    comm.from_root(load, not args.no_download)  # rank 0 first: it may download
    comm.everywhere(lambda: comm.root or load(False))  # then the others read it
    distributed.check_same(comm, "data", parallel.fingerprint(loaded[0]))
    return config, loaded[0]


def main(argv=None, finetune: bool = False) -> int:
    """The command line (``finetune``: ``python -m tinyvit.finetune``'s); returns the exit
    status. With several processes (``mpiexec``), rank 0 alone prints, and a process that
    fails by itself ends the job (``distributed.exit_job``)."""
    launch = distributed.launched()
    with _quiet_unless(launch is None or launch.rank == 0):
        args = build_parser(finetune).parse_args(argv)
    folder, trainer, comm = RunFolder(args.out), None, distributed.Communicator()
    if launch is not None and launch.rank != 0:
        comm.rank = launch.rank  # until MPI says so itself: quiet
    try:
        comm = distributed.world(config_from_args(args).device)
        config, dataset = _prepare(args, folder, comm)
        trainer = Trainer(config, dataset, folder, progress=False if args.no_progress else None,
                          comm=comm)  # fmt: skip
        trainer.fit(resume=args.resume, overwrite=args.overwrite)
    except distributed.PeerLost as error:
        folder.release()
        if not error.report:
            time.sleep(1.0)  # the rank that reports it prints first
        distributed.exit_job(comm, str(error) if error.report else None, 1, name_rank=False)
    except KeyboardInterrupt:
        status = _stopped_at_once(trainer, comm)
        if comm.size > 1:  # the others may be inside a collective: end the job now
            folder.release()
            distributed.exit_job(comm, None, status)
        return status
    except KNOWN_ERRORS as error:
        if comm.root:
            rank = getattr(error, "rank", 0)
            where = f"rank {rank}: " if rank else ""
            print(f"error: {where}{getattr(error, 'command_line', error)}", file=sys.stderr)
        return 1 if isinstance(error, TrainingDiverged) else 2
    except Exception as error:
        if comm.size == 1:
            raise
        folder.release()
        distributed.exit_job(comm, f"{type(error).__name__}: {error} ({_where(error)})", 1)
    finally:
        folder.release()
    return 0 if trainer.step >= trainer.total_steps else trainer.stop.exit_status


# Errors that every process meets alike (rank 0's folder and files through
# from_root, each process's data and settings through everywhere, a diverging
# loss through the averaged loss): one line from rank 0, and a clean exit.
KNOWN_ERRORS = (
    TrainingDiverged, data.DataError, checkpoint.CheckpointError, backend.DeviceError, RunError,
    files.WriteError, distributed.DistributedError,
)  # fmt: skip


def _stopped_at_once(trainer, comm) -> int:
    """A second Ctrl-C (or SIGTERM): rank 0 says what was kept; the exit status."""
    stop = trainer.stop if trainer is not None else None
    if trainer is not None and trainer.saved is not None:
        kept = f"{trainer.folder.checkpoint} (step {trainer.saved[2]}) is the last save"
    else:
        kept = "nothing was saved"
    name = stop.NAMES.get(stop.signal, "Ctrl-C") if stop and stop.signal else "Ctrl-C"
    if comm.root:
        print(f"error: stopped at once by {name}; {kept}", file=sys.stderr, flush=True)
    return stop.exit_status if stop and stop.signal else 130


def _where(error) -> str:
    """``file.py:123``: the innermost line of tinyvit (else of anything) that raised."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "tinyvit" in f.filename] or frames
    frame = ours[-1] if ours else None
    return f"at {Path(frame.filename).name}:{frame.lineno}" if frame else "no traceback"


__all__ = ["build_parser", "config_from_args", "main"]
