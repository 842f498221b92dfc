"""What defines a training run: ``TrainConfig``, each setting declared once, and the recipes.

Every setting is one ``settings.setting`` field below, with its default,
its range and its help; the command line's flags, ``--help``, the checks and
the checkpoint's copy of the settings are all read off these fields. The
defaults are the README's main command, ``python -m tinyvit.train``: the
CPU recipe, the most accuracy in half an hour on a 2-core CPU. A recipe is
a named set of changes to them (``RECIPES``), applied by ``recipe()``.

How long a run is: ``steps``, else ``epochs``, else ``time_budget``; at
most one of the three is set, and with none set the run fits itself into
``DEFAULT_TIME_BUDGET``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import backend, data
from ..checks import FRACTION, NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT
from ..cli import duration_type
from ..settings import check_settings, setting
from ..vit import NAMES, ViTConfig
from ..vit import config as vit_config

DEFAULT_TIME_BUDGET = 1800.0  # seconds: the run's length when none is given
LENGTHS = ("steps", "epochs", "time_budget")  # the ways to say how long a run is

# The ViT settings a run may change (the others follow from the data set or stay
# the named model's); their ranges and help are ViTConfig's.
MODEL_SETTINGS = (
    "patch_size", "dim", "depth", "heads", "mlp_dim", "pool", "gelu", "dropout", "pos_embed",
    "patch_dropout",
)  # fmt: skip


class RunError(ValueError):
    """Settings that cannot make a run, or a folder that cannot take it."""


def _minutes(seconds) -> str:
    return "none" if seconds is None else f"{seconds / 60:g}m"


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint.

    ``TrainConfig()`` is the README's main command. The default model
    changes two settings of ``vit_cifar_tiny``: the patch tokens' average
    instead of the class token (Appendix D.3) and PatchDropout 0.5 (each
    training image keeps a random half of its patch tokens, so a step costs
    about half as much and a time budget buys twice the steps). The final
    test averages each image with its mirror image (``tta="flip"``).
    """

    model: str = setting(
        "vit_cifar_tiny", NAMES, "a named ViT configuration", metavar="NAME",
        aliases=("--config",), long_choices=True,
    )  # fmt: skip
    model_overrides: dict = setting(
        kind=None, help="the named model's settings that this run changes",
        factory=lambda: {"pool": "mean", "patch_dropout": 0.5}, flag=False,
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
    optimizer: str = setting("adamw", ("adamw", "sgd"), "adamw, or sgd with Nesterov momentum")
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
    mixup: float = setting(0.0, NONNEGATIVE, "mixup's Beta alpha (0: off)")
    cutmix: float = setting(0.0, NONNEGATIVE, "CutMix's Beta alpha (0: off)")
    train_limit: int | None = setting(
        None, POSITIVE_INT, "use only the first N training images", optional=True, none="all"
    )
    test_limit: int | None = setting(
        None, POSITIVE_INT, "use only the first N test images", optional=True, none="all"
    )
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

    # -- the model -----------------------------------------------------------------

    def model_config(self, num_classes=None) -> ViTConfig:
        """The ``ViTConfig`` of this run's model (``num_classes``: the data set's)."""
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
            self.model_config()  # checks the overrides and how they fit the model
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
    # The README's main command: TrainConfig's defaults as they are.
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


__all__ = [
    "DEFAULT_TIME_BUDGET",
    "LENGTHS",
    "MODEL_SETTINGS",
    "RECIPES",
    "RunError",
    "TrainConfig",
    "recipe",
]
