"""The hybrid architecture of Section 3.1: a CNN's feature map as the input sequence.

"As an alternative to raw image patches, the input sequence can be formed
from feature maps of a CNN. In this hybrid model, the patch embedding
projection E (Eq. 1) is applied to patches extracted from a CNN feature map.
As a special case, the patches can have spatial size 1x1, which means that
the input sequence is obtained by simply flattening the spatial dimensions
of the feature map and projecting to the Transformer dimension."

The CNN here is a small stem (``ConvStem``): a few ``k x k`` convolutions,
each followed by a ReLU and, for the first ``stem_pools`` of them, by 3x3
max pooling of stride 2 (each halves the map). That is the convolutional
tokenizer of the Compact Transformers (Hassani et al. 2021, "Escaping the
Big Data Paradigm with Compact Transformers"), whose CCT-2/3x2 (two 3x3
convolutions, two blocks of width 128) reaches 89% on CIFAR-10 from scratch
with 0.28M parameters: the convolutions give the small model the locality
that a plain ViT must learn from data. The paper's own hybrids put a ResNet
there (with GroupNorm, ``stem_norm="group"`` here). The stem's ``(B, C_f, h,
w)`` feature map is cut into ``patch_size x patch_size`` patches (1: one
token per position of the map), E projects each to width D, and the rest is
the ViT of Eq. 1-4: the class token, the position embeddings, the blocks.

So ``HybridViT`` is a ``ViT``: the ViT of an ``h x w`` image of ``C_f``
channels, with the stem in front. Its ``patch_embed`` is ``HybridEmbed``
(timm's name and layout: ``patch_embed.backbone``, then
``patch_embed.proj``, E in a convolution's shape ``(D, C_f, P, P)``), and
whatever takes a ViT takes it: attention maps and rollout (on the grid of
tokens over the image), checkpoints, fine-tuning, the trainer.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass

from . import backend, checks
from .checks import as_pair
from .nn import Conv2d, GroupNorm, MaxPool2d, Module, ReLU
from .settings import check_settings, setting
from .vit import ViT, ViTConfig, patchify
from .vit import count_parameters as count_vit_parameters

POOL = dict(kernel_size=3, stride=2, padding=1)  # each halves a side, rounding up
STEM_NORMS = ("none", "group")
GROUPS = 32  # GroupNorm's groups (BiT's), or fewer where the channels are fewer


def parse_channels(text: str):
    """An argparse ``type=`` for the stem's widths: ``64,128`` -> ``(64, 128)``."""
    try:
        return widths_of("widths", [int(part) for part in text.split(",")])
    except (TypeError, ValueError):
        import argparse  # only a command line gets here

        raise argparse.ArgumentTypeError(
            f"must be the widths of the stem's convolutions, such as 64,128, got {text!r}"
        ) from None


parse_channels.__name__ = "widths"


def widths_of(name, value) -> tuple[int, ...]:
    """A non-empty tuple of positive integers (a JSON list becomes one)."""
    if not isinstance(value, (tuple, list)) or not value:
        raise ValueError(f"{name} must be a non-empty list of widths such as (64, 128), got "
                         f"{value!r}")  # fmt: skip
    return tuple(checks.POSITIVE_INT.check(f"{name}[{i}]", v) for i, v in enumerate(value))


def stem_output_size(size: int, kernel_size: int, pools: int, convolutions: int) -> int:
    """One side of the stem's feature map: each convolution (padding ``k // 2``, stride 1)
    keeps an odd kernel's side, each pooling takes ``floor((n - 1) / 2) + 1``."""
    for i in range(convolutions):
        size = size + 2 * (kernel_size // 2) - kernel_size + 1
        if i < pools:
            size = (size + 2 * POOL["padding"] - POOL["kernel_size"]) // POOL["stride"] + 1
    return size


@dataclass(frozen=True)
class HybridConfig(ViTConfig):
    """A ViT's settings (``ViTConfig``), and the stem's.

    ``image_size`` and ``channels`` are the input images'; ``patch_size`` is
    the side of the patches cut from the stem's feature map (1: one token per
    position). ``grid_size`` is the grid of tokens.
    """

    stem_channels: tuple = setting(
        (64, 128), None, "the widths of the stem's convolutions, first to last (e.g. 64,128)",
        metavar="C1,C2,...", parse=parse_channels, show=lambda widths: ",".join(map(str, widths)),
    )  # fmt: skip
    stem_kernel_size: int = setting(3, checks.POSITIVE_INT, "the side of the stem's kernels")
    stem_pools: int | None = setting(
        None, checks.NONNEGATIVE_INT,
        "how many of the stem's convolutions, from the first, are followed by 3x3 max "
        "pooling of stride 2 (each halves the tokens' grid)",
        optional=True, none="every one",
    )  # fmt: skip
    stem_norm: str = setting(
        "none", STEM_NORMS, "the stem's normalization: none, or group (GroupNorm, as BiT)"
    )

    def __post_init__(self):
        for name, value in check_settings(self, prefix="HybridViT: ").items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "image_size", checks.image_size(
            "HybridViT: image_size", self.image_size))  # fmt: skip
        object.__setattr__(
            self, "stem_channels", widths_of("HybridViT: stem_channels", self.stem_channels)
        )
        if self.pools > len(self.stem_channels):
            raise ValueError(
                f"HybridViT: stem_pools {self.stem_pools} is more than the stem's "
                f"{len(self.stem_channels)} convolutions"
            )
        rows, cols = self.feature_size
        if rows < 1 or cols < 1 or rows % self.patch_size or cols % self.patch_size:
            raise ValueError(
                f"HybridViT: the stem turns {self.image_size} images into a {rows} x {cols} "
                f"feature map, which patch_size {self.patch_size} does not cut into whole "
                "patches (patch_size 1 always does)"
            )
        self.vit_config()  # the encoder's settings, checked as a ViT's

    @property
    def pools(self) -> int:
        """How many of the stem's convolutions are followed by max pooling."""
        return len(self.stem_channels) if self.stem_pools is None else self.stem_pools

    @property
    def feature_size(self) -> tuple[int, int]:
        """The stem's feature map, ``(h, w)``."""
        return tuple(
            stem_output_size(n, self.stem_kernel_size, self.pools, len(self.stem_channels))
            for n in as_pair(self.image_size)
        )

    @property
    def grid_size(self) -> tuple[int, int]:
        """The grid of tokens, ``(rows, cols)``: the feature map cut into patches."""
        rows, cols = self.feature_size
        return rows // self.patch_size, cols // self.patch_size

    @property
    def token_stride(self) -> int:
        """Pixels from one token to the next: ``2^pools * patch_size``."""
        return 2**self.pools * self.patch_size

    def vit_config(self) -> ViTConfig:
        """The ViT that runs on the stem's feature map: an ``h x w`` image of ``C_f``
        channels, cut into ``patch_size`` patches."""
        own = {f.name for f in dataclasses.fields(ViTConfig)}
        vit = {k: v for k, v in dataclasses.asdict(self).items() if k in own}
        rows, cols = self.feature_size
        size = rows if rows == cols else (rows, cols)
        return ViTConfig(**{**vit, "image_size": size, "channels": self.stem_channels[-1]})

    # -- read like a dict (ViTConfig's, with the stem's settings) -----------------

    def __getitem__(self, name):
        if name not in HYBRID_FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self):
        return iter(HYBRID_FIELDS)

    def __len__(self):
        return len(HYBRID_FIELDS)

    def to_dict(self) -> dict:
        """A plain dict, for JSON (the widths as a list)."""
        return {**dict(self), "stem_channels": list(self.stem_channels)}


HYBRID_FIELDS = tuple(f.name for f in dataclasses.fields(HybridConfig))


def he_normal(shape, fan_in, dtype=backend.DEFAULT_DTYPE):
    """Normal(0, sqrt(2 / fan_in)) (He et al. 2015): the variance that a ReLU halves is
    doubled, so activations keep their scale through a stem without normalization (CCT's
    tokenizer starts so)."""
    values = backend.default_generator("cpu").standard_normal(shape)
    return (values * math.sqrt(2.0 / fan_in)).astype(dtype)


class ConvStage(Module):
    """``k x k`` convolution (stride 1, padding ``k // 2``, no bias), [GroupNorm], ReLU,
    [3x3 max pooling of stride 2].

    The ReLU runs after the pooling, on a quarter of the values: the two
    commute, ``max(relu(a), relu(b)) = relu(max(a, b))``, because a ReLU never
    changes which of two numbers is larger (the gradients agree too: both
    send it to the window's winner, or nowhere when the winner is negative).
    """

    def __init__(self, in_channels, out_channels, kernel_size, pool, norm):
        self.conv = Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                           bias=False)  # fmt: skip
        fan_in = in_channels * kernel_size * kernel_size
        self.conv.weight.data[...] = he_normal(self.conv.weight.shape, fan_in)
        self.norm = GroupNorm(math.gcd(GROUPS, out_channels), out_channels) if norm else None
        self.pool = MaxPool2d(**POOL) if pool else None
        self.act = ReLU()

    def forward(self, x):  # (B, C_in, H, W) -> (B, C_out, H or H/2, W or W/2)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.pool is not None:
            x = self.pool(x)  # then the ReLU: the same as pooling after it, and cheaper
        return self.act(x)


class ConvStem(Module):
    """The CNN of the hybrid: ``ConvStage`` after ``ConvStage``, images to a feature map."""

    def __init__(self, channels, widths, kernel_size, pools, norm):
        ins = (channels, *widths[:-1])
        self.stages = [
            ConvStage(i, o, kernel_size, pool=n < pools, norm=norm == "group")
            for n, (i, o) in enumerate(zip(ins, widths))
        ]

    def forward(self, images):  # (B, C, H, W) -> (B, C_f, h, w)
        x = images
        for stage in self.stages:
            x = stage(x)
        return x


class HybridEmbed(Module):
    """Images to the tokens of Eq. 1 through a CNN: ``x_p^i E`` for each patch ``x_p^i``
    of the stem's feature map (timm's ``HybridEmbed``: ``backbone``, then ``proj``).

    ``grid_size`` is the grid of tokens, ``(rows, cols)``; ``patch_size`` the
    pixels from one token to the next on the image (``token_stride``), so that
    what lays a ViT's patches over its image (attention maps, attention
    distances in pixels) lays these tokens over theirs.
    """

    def __init__(self, config: HybridConfig, proj):
        self.backbone = ConvStem(config.channels, config.stem_channels, config.stem_kernel_size,
                                 config.pools, config.stem_norm)  # fmt: skip
        self.proj = proj  # E: (D, C_f, P, P), the ViT's PatchProjection
        self.feature_size = config.feature_size
        self.feature_patch_size = config.patch_size
        self.patch_size = config.token_stride
        self.grid_size = config.grid_size
        self.grid = config.grid
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    @property
    def filters(self):
        """The first convolution's kernels, ``(C_1, C, k, k)``: the filters that look at
        pixels, as E does in a plain ViT (Fig. 7, left)."""
        return self.backbone.stages[0].conv.weight

    def forward(self, images):  # (B, C, H, W) -> (B, N, D)
        features = self.backbone(images)  # (B, C_f, h, w)
        return self.proj(patchify(features, self.feature_patch_size))  # (B, N, D)


class HybridViT(ViT):
    """The hybrid of Section 3.1: ``ConvStem``, then a ViT on its feature map.

    ``HybridViT(image_size, patch_size, num_classes, dim, depth, heads,
    mlp_dim, ..., stem_channels=(64, 128), stem_kernel_size=3,
    stem_pools=None, stem_norm="none")``: the fields of ``HybridConfig``, or
    ``HybridViT(config)``. A ``ViT`` in every other way: ``forward``,
    ``encode``, ``attention_maps``, the names of its parameters.
    """

    def __init__(self, *args, **kwargs):
        config = args[0] if len(args) == 1 and isinstance(args[0], HybridConfig) else None
        if config is None:
            config = HybridConfig(*args, **kwargs)
        elif kwargs:
            config = config.replace(**kwargs)
        super().__init__(config.vit_config())  # E, the class token, E_pos, the blocks, the head
        self.config = config
        self.image_size, self.channels = config.image_size, config.channels  # the images'
        self.patch_embed = HybridEmbed(config, self.patch_embed.proj)

    def extra_repr(self):
        c = self.config
        return (
            f"{super().extra_repr()}, stem_channels={c.stem_channels}, "
            f"stem_kernel_size={c.stem_kernel_size}, stem_pools={c.pools}, "
            f"stem_norm={c.stem_norm!r}, tokens={c.grid_size[0]}x{c.grid_size[1]}"
        )


HybridViT.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
    + list(inspect.signature(HybridConfig).parameters.values())
)


# ---------------------------------------------------------------------------
# named configurations
# ---------------------------------------------------------------------------

CONFIGS = {
    # Like CCT-2/3x2 (two 3x3 convolutions of widths 64 and 128, each with ReLU and
    # 3/2 max pooling: 8 x 8 tokens of width 128; two blocks, 2 heads, MLP 128), with the
    # paper's 1x1 projection E and a class token: for a CPU.
    "hybrid_cifar_2x3": HybridConfig(
        image_size=32, patch_size=1, num_classes=10, dim=128, depth=2, heads=2, mlp_dim=128,
        stem_channels=(64, 128),
    ),  # fmt: skip
    # Like CCT-7/3x1 (one 3x3 convolution of width 256 with pooling: 16 x 16 tokens;
    # seven blocks of width 256, 4 heads, MLP 512): for a GPU.
    "hybrid_cifar_7x3": HybridConfig(
        image_size=32, patch_size=1, num_classes=10, dim=256, depth=7, heads=4, mlp_dim=512,
        stem_channels=(256,),
    ),  # fmt: skip
}
NAMES = tuple(sorted(CONFIGS))


def config(name, **overrides) -> HybridConfig:
    """The hybrid configuration named ``name`` (a key of ``CONFIGS``), with ``overrides``."""
    if name not in CONFIGS:
        raise KeyError(f"unknown hybrid configuration {name!r}; known: {', '.join(NAMES)}")
    return CONFIGS[name].replace(**overrides)


def count_parameters(config: HybridConfig) -> int:
    """The number of parameters of a hybrid, counted from its configuration alone.

    The stem: each convolution ``C_in C_out k^2`` (no bias), plus ``2 C_out``
    for its GroupNorm; then the ViT of the feature map (``vit.count_parameters``:
    E is ``P^2 C_f D + D``, then the class token, E_pos, the blocks, the head).
    """
    widths = config.stem_channels
    ins = (config.channels, *widths[:-1])
    k = config.stem_kernel_size
    stem = sum(i * o * k * k for i, o in zip(ins, widths))
    if config.stem_norm == "group":
        stem += sum(2 * o for o in widths)
    return stem + count_vit_parameters(**config.vit_config())


__all__ = [
    "CONFIGS",
    "NAMES",
    "ConvStage",
    "ConvStem",
    "HybridConfig",
    "HybridEmbed",
    "HybridViT",
    "config",
    "count_parameters",
    "he_normal",
    "stem_output_size",
]
