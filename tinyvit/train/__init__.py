"""Training a Vision Transformer on CIFAR-10 or your images: the run, its checkpoints, its
command line.

    python -m tinyvit.train                        # the default CPU run (30 minutes)
    python -m tinyvit.train --recipe gpu --device cuda
    python -m tinyvit.train --resume --out runs/cifar10
    python -m tinyvit.train --data-dir my_photos   # a folder of class subfolders
    python -m tinyvit.finetune --model ViT-B/16 --data-dir my_photos   # the finetune recipe
    mpiexec -n 2 python -m tinyvit.train           # one run, two processes (the mpi extra)

In Python, ``Trainer(recipe("cpu"), load_cifar10(), "runs/cifar10").fit()``.

One step is the paper's training in miniature (Section 4.1, Appendix B.1),
``tinyvit.loop.train_step``; lesson 6 writes the loop out. The package adds
what a long run needs around it, one concern a module:

    config      TrainConfig: every setting declared once; the recipes
    budget      how many steps fit in a time budget
    run_folder  the run's files, the checks before the first step, the lock
    stopping    Ctrl-C as a request: the step ends, the checkpoint is written
    state       what a checkpoint holds so that a resumed run ends as if it never stopped
    start       its data (CIFAR-10, your images) and first weights (random, pre-trained)
    metrics     the epoch's sums, metrics.jsonl and curves.png
    trainer     Trainer: epochs, tests, checkpoints, the time budget, EMA, flips
    parallel    one run shared by several processes (mpiexec): who draws, writes, prints
    command     the command line, generated from the settings
"""

from ..loop import TrainingDiverged, step_seed
from .budget import TimeBudget
from .command import build_parser, config_from_args, main
from .config import DEFAULT_TIME_BUDGET, RECIPES, RunError, TrainConfig, recipe
from .run_folder import RUN_FILES, RunFolder, check_run_folder
from .trainer import Trainer

__all__ = [
    "DEFAULT_TIME_BUDGET",
    "RECIPES",
    "RUN_FILES",
    "RunError",
    "RunFolder",
    "TimeBudget",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "build_parser",
    "check_run_folder",
    "config_from_args",
    "main",
    "recipe",
    "step_seed",
]
