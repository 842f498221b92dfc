"""What defines a training run: ``TrainConfig``, each setting declared once, and the recipes.

Every setting is one ``settings.setting`` field below, with its default,
its range and its help; the command line's flags, ``--help``, the checks and
the checkpoint's copy of the settings are all read off these fields. The
defaults are the default run, ``python -m tinyvit.train``: the CPU recipe
of the plain ViT, the most accuracy a plain ViT reached in half an hour on a
2-core CPU. A recipe is a named set of changes to them (``RECIPES``),
applied by ``recipe()``; the README's main command is the ``hybrid``
recipe's, shared by two processes (``mpiexec -n 2``).

How long a run is: ``steps``, else ``epochs``, else ``time_budget``; at
most one of the three is set, and with none set the run fits itself into
``DEFAULT_TIME_BUDGET``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import backend, checks, data
from ..checks import FRACTION, NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, Range
from ..cli import duration_type
from ..models import NAMES
from ..models import config as named_config
from ..settings import check_settings, check_value, setting
from ..vit import ViTConfig

DEFAULT_TIME_BUDGET = 1800.0  # seconds: the run's length when none is given
LENGTHS = ("steps", "epochs", "time_budget")  # the ways to say how long a run is

# The model settings a run may change (the others follow from the data set or stay
# the named model's); their ranges and help are ViTConfig's, and the stem's a hybrid's
# (HybridConfig: a plain ViT has no stem to change).
MODEL_SETTINGS = (
    "image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "pool", "gelu", "dropout",
    "pos_embed", "patch_dropout", "stem_channels", "stem_kernel_size", "stem_pools", "stem_norm",
)  # fmt: skip
# What a run that starts from a pre-trained model (init) may change in it: nothing that
# changes a weight's shape, but the input size (its E_pos resampled in 2-D, Section 3.2).
FINETUNE_SETTINGS = ("image_size", "dropout", "patch_dropout")


class RunError(ValueError):
    """Settings that cannot make a run, or a folder that cannot take it."""


def _minutes(seconds) -> str:
    return "none" if seconds is None else f"{seconds / 60:g}m"


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint.

    ``TrainConfig()`` is the default run, ``python -m tinyvit.train``. The default model
    changes two settings of ``vit_cifar_tiny``: the patch tokens' average
    instead of the class token (Appendix D.3) and PatchDropout 0.5 (each
    training image keeps a random half of its patch tokens, so a step costs
    about half as much and a time budget buys twice the steps). The final
    test averages each image with its mirror image (``tta="flip"``).
    """

    model: str = setting(
        "vit_cifar_tiny", NAMES, "a named model configuration: a ViT's, or a hybrid's "
        "(hybrid_cifar_2x3: a convolutional stem's feature map as the tokens)", metavar="NAME",
        aliases=("--config",), long_choices=True,
    )  # fmt: skip
    model_overrides: dict = setting(
        kind=None, help="the named model's settings that this run changes",
        factory=lambda: {"pool": "mean", "patch_dropout": 0.5}, flag=False,
    )  # fmt: skip
    init: str | None = setting(
        None, None, "start from this pre-trained model (a timm name on the Hugging Face Hub, "
        "an official checkpoint such as ViT-B/16, a file) with a zero-initialized head for "
        "the data's classes, instead of --model's random weights: Section 3.2's fine-tuning "
        "(with --recipe finetune: python -m tinyvit.finetune's run)",
        optional=True, metavar="NAME|PATH", none="none: from scratch",
    )  # fmt: skip
    epochs: int | None = setting(
        None, POSITIVE_INT, "passes over the training images", optional=True,
        none="as many as fit in the time budget",
    )  # fmt: skip
    steps: int | None = setting(
        None, POSITIVE_INT,
        "optimizer steps in all, instead of --epochs (the last epoch may be cut short)",
        optional=True,
    )  # fmt: skip
    time_budget: float | None = setting(
        None, POSITIVE,
        "wall time for the whole run when neither --epochs nor --steps is given, e.g. 30m: "
        "it times its first steps and a test, then sets --steps to end within it (its log "
        "says how many, to repeat the run)",
        optional=True, parse=duration_type, metavar="TIME", show=_minutes,
    )  # fmt: skip
    batch_size: int = setting(128, POSITIVE_INT, "images per step")
    optimizer: str = setting(
        "adamw", ("adamw", "sgd", "momentum"),
        "adamw; sgd with Nesterov momentum; or momentum, SGD with plain momentum (fine-tuning)",
    )  # fmt: skip
    lr: float = setting(1e-3, POSITIVE, "the peak learning rate, reached at the end of the warm-up")
    min_lr: float = setting(1e-5, NONNEGATIVE, "the learning rate at the end of the cosine decay")
    weight_decay: float = setting(
        0.05, NONNEGATIVE,
        "decoupled weight decay (none on biases, norms, E_pos, the class token)",
    )  # fmt: skip
    momentum: float = setting(0.9, FRACTION, "SGD's momentum")
    warmup_epochs: float = setting(
        1.0, NONNEGATIVE, "epochs of linear warm-up (may be a fraction)"
    )
    label_smoothing: float = setting(0.1, FRACTION, "label smoothing of the training loss")
    clip_grad: float = setting(
        1.0, NONNEGATIVE, "the largest global gradient norm (0: no clipping)"
    )
    augment: str = setting("flip", data.AUGMENTS, "augmentation of the training images")
    randaugment_ops: int = setting(
        2, POSITIVE_INT, "RandAugment's ops per image (with --augment randaugment)"
    )
    randaugment_magnitude: float = setting(
        9.0, Range(float, low=0, high=30), "RandAugment's strength, 0 to 30 (with --augment "
        "randaugment)",
    )  # fmt: skip
    mixup: float = setting(0.0, NONNEGATIVE, "mixup's Beta alpha (0: off)")
    cutmix: float = setting(0.0, NONNEGATIVE, "CutMix's Beta alpha (0: off)")
    train_limit: int | None = setting(
        None, POSITIVE_INT, "use only the first N training images", optional=True, none="all"
    )
    test_limit: int | None = setting(
        None, POSITIVE_INT, "use only the first N test images", optional=True, none="all"
    )
    test_every: int = setting(
        1, POSITIVE_INT, "test after every N-th epoch (the first and the last are always "
        "tested; the time a test takes goes to training instead)", metavar="N",
    )  # fmt: skip
    eval_batch_size: int = setting(500, POSITIVE_INT, "images per batch when testing")
    device: str = setting("cpu", backend.DEVICES, "where to train")
    seed: int = setting(
        0, NONNEGATIVE_INT, "the seed of the weights, the data order, the augmentation and dropout"
    )
    ema: float = setting(
        0.0, FRACTION,
        "test (and save) a moving average of the weights with this decay, e.g. 0.999 (0: off)",
    )  # fmt: skip
    tta: str = setting(
        "flip", ("none", "flip"),
        "test-time augmentation: flip tests the finished model on each image and its mirror "
        "image (the test after every epoch stays plain)",
    )  # fmt: skip

    def __post_init__(self):
        if isinstance(self.model_overrides, dict):  # a list (JSON's tuple) as the tuple it was
            self.model_overrides = {
                k: tuple(v) if isinstance(v, list) else v for k, v in self.model_overrides.items()
            }

    # -- the model -----------------------------------------------------------------

    def model_config(self, num_classes=None) -> ViTConfig:
        """The configuration of this run's model (``num_classes``: the data set's): a
        ``ViTConfig``, or a hybrid's ``HybridConfig`` (``models.build`` builds either)."""
        overrides = dict(self.model_overrides)
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        return named_config(self.model, **overrides)

    def describe_model(self) -> str:
        """The model's name and what the run changed: ``vit_cifar_tiny with dim=128, depth=4``
        (``fine-tuned ViT-B/16 with image_size=384`` for a run that starts from one)."""
        name = self.model if self.init is None else f"fine-tuned {self.init}"
        if not self.model_overrides:
            return name
        changes = ", ".join(f"{k}={v}" for k, v in self.model_overrides.items())
        return f"{name} with {changes}"

    # -- the length ----------------------------------------------------------------

    @property
    def budget(self) -> float | None:
        """The time budget in seconds that this run plans with, or None (a fixed length)."""
        if self.steps is None and self.epochs is None:
            return DEFAULT_TIME_BUDGET if self.time_budget is None else self.time_budget
        return None

    def resolved(self) -> TrainConfig:
        """The same run with its length spelled out (the default budget written in): the
        form a checkpoint keeps, so that two ways of asking for one run compare equal."""
        return dataclasses.replace(self, time_budget=self.budget)

    def tests_after(self, epoch: int, epochs) -> bool:
        """Whether the run tests after epoch ``epoch`` (counted from 0) of ``epochs``: the
        first (whose test times the plan of a time budget), every ``test_every``-th, the
        last (``epochs`` is "?" while a time budget has not fixed it)."""
        return epoch == 0 or (epoch + 1) % self.test_every == 0 or epoch + 1 == epochs

    # -- checks --------------------------------------------------------------------

    def check(self) -> TrainConfig:
        """Every setting in its range, and settings that make sense together; else a
        ``RunError`` naming the setting, what it must be and what it is. Returns self."""
        try:
            check_settings(self)
            if not isinstance(self.model_overrides, dict):
                raise TypeError(f"model_overrides must be a dict, got {self.model_overrides!r}")
            unknown = sorted(set(self.model_overrides) - set(MODEL_SETTINGS))
            if unknown:
                raise ValueError(
                    f"model_overrides: {', '.join(map(repr, unknown))} cannot be changed by a "
                    f"run; these can: {', '.join(MODEL_SETTINGS)}"
                )
            if self.init is None:
                self.model_config()  # checks the overrides and how they fit the model
            elif not isinstance(self.init, str) or not self.init.strip():
                raise ValueError(f"init must name a pre-trained model or a file, got {self.init!r}")
            else:
                _check_finetune_overrides(self.model_overrides)
        except (TypeError, ValueError) as error:
            raise RunError(str(error)) from None
        given = [name for name in LENGTHS if getattr(self, name) is not None]
        if len(given) > 1:
            raise RunError(
                f"{' and '.join(given)} exclude each other: give the run's length one way "
                "(steps, epochs, or a time budget that chooses the steps)"
            )
        if self.min_lr > self.lr:
            raise RunError(
                f"min_lr {self.min_lr:g} is above lr {self.lr:g}: the cosine decay would climb; "
                "lower --min-lr or raise --lr"
            )
        if self.epochs is not None and self.warmup_epochs > self.epochs:
            raise RunError(
                f"the warm-up ({self.warmup_epochs:g} epochs, --warmup-epochs) is longer than "
                f"the run ({self.epochs} epochs, --epochs)"
            )
        if self.device == "cuda":
            backend.check_device_name("cuda")  # DeviceError when there is no GPU
        return self

    @classmethod
    def from_saved(cls, saved: dict) -> TrainConfig:
        """The configuration a checkpoint kept (as a dict), read in today's form.

        Checkpoints written before ``epochs`` could be unset kept it beside a
        time budget or a number of steps, which decided the length instead.
        """
        saved = dict(saved)
        if saved.get("epochs") is not None and (
            saved.get("steps") is not None or saved.get("time_budget") is not None
        ):
            saved["epochs"] = None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


# The recipes: named changes to TrainConfig's defaults (``recipe()`` applies them).
RECIPES = {
    # The default run, the plain ViT: TrainConfig's defaults as they are.
    "cpu": {},
    # The published from-scratch recipe of ViT-Lite-7/4 (Compact Transformers
    # paper: 91.38% in 200 epochs): AdamW 5e-4, weight decay 0.03, batch 128,
    # 5 warm-up epochs, cosine decay, label smoothing 0.1, a strong augmentation
    # policy (RandAugment here, AutoAugment there) with crop and flip.
    "gpu": dict(
        model="vit_lite_7_4",
        model_overrides={},
        epochs=200,
        batch_size=128,
        lr=5e-4,
        min_lr=1e-6,
        weight_decay=0.03,
        warmup_epochs=5.0,
        augment="randaugment",
        device="cuda",
        tta="none",
    ),
    # The paper's hybrid (Section 3.1) on a CPU: hybrid_cifar_2x3 with a narrower stem
    # (3 -> 32 -> 64 channels), whose 8 x 8 feature map is the sequence, PatchDropout 0.5 on
    # those tokens, their average as the representation, crops and flips, AdamW at 2e-3;
    # the rest is the cpu recipe's (one warm-up epoch, cosine decay fitted to the half hour,
    # label smoothing 0.1, a final test with flips), and a test after every fifth epoch
    # only, the time of the others given to training. The README's main command, under
    # mpiexec -n 2. Chosen by the screening runs of benchmarks/results/cifar10_hybrid/.
    "hybrid": dict(
        model="hybrid_cifar_2x3",
        model_overrides={"pool": "mean", "stem_channels": (32, 64), "patch_dropout": 0.5},
        augment="basic",
        lr=2e-3,
        test_every=5,
    ),
    # Fine-tuning a pre-trained model (Section 3.2, Appendix B.1.1; python -m
    # tinyvit.finetune, with --init): SGD with momentum 0.9, no weight decay, gradient
    # clipping at global norm 1, a linear warm-up then cosine decay to zero, no label
    # smoothing; the pre-trained model's own shape (no overrides). The paper's batch is
    # 512 at learning rates 0.001-0.03; here a CPU's batch of 32 at 0.003.
    "finetune": dict(
        model_overrides={},
        optimizer="momentum",
        momentum=0.9,
        batch_size=32,
        lr=3e-3,
        min_lr=0.0,
        weight_decay=0.0,
        warmup_epochs=0.5,
        label_smoothing=0.0,
        clip_grad=1.0,
        eval_batch_size=64,
        tta="none",
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
        tta="none",
    ),
}


def recipe(name: str = "cpu", **changes) -> TrainConfig:
    """The ``TrainConfig`` of recipe ``name`` with ``changes``; the one place recipes merge.

    A length in ``changes`` (``epochs``, ``steps`` or ``time_budget``)
    replaces the recipe's; ``model_overrides`` in ``changes`` are added to
    the recipe's (``recipe("cpu", model_overrides={"dim": 64})`` keeps its
    pooling and PatchDropout).
    """
    if name not in RECIPES:
        raise RunError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    values = {**dataclasses.asdict(TrainConfig()), **RECIPES[name]}
    if any(changes.get(length) is not None for length in LENGTHS):
        values.update(dict.fromkeys(LENGTHS))
    overrides = {**values["model_overrides"], **changes.pop("model_overrides", {})}
    return TrainConfig(**{**values, **changes, "model_overrides": overrides})


def _check_finetune_overrides(overrides: dict) -> None:
    """A fine-tuning run's changes to the pre-trained model: only ``FINETUNE_SETTINGS``,
    each in its range (``ViTConfig``'s)."""
    fixed = sorted(set(overrides) - set(FINETUNE_SETTINGS))
    if fixed:
        raise ValueError(
            f"{', '.join(fixed)} cannot change in a run that starts from a pre-trained model "
            f"(init): its weights have their shape; such a run may change "
            f"{', '.join(FINETUNE_SETTINGS)} (the finetune recipe, python -m tinyvit.finetune's, "
            "changes none)"
        )
    fields = {f.name: f for f in dataclasses.fields(ViTConfig)}
    for name, value in overrides.items():
        if name == "image_size":
            checks.image_size("image_size", value)
        else:
            check_value(fields[name], value)


__all__ = [
    "DEFAULT_TIME_BUDGET",
    "FINETUNE_SETTINGS",
    "LENGTHS",
    "MODEL_SETTINGS",
    "RECIPES",
    "RunError",
    "TrainConfig",
    "recipe",
]
