"""The Vision Transformer of Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021).

The whole model is four equations (Section 3.1):

    Eq. 1   z_0  = [x_class; x_p^1 E; ...; x_p^N E] + E_pos
    Eq. 2   z'_l = MSA(LN(z_{l-1})) + z_{l-1}            l = 1..L
    Eq. 3   z_l  = MLP(LN(z'_l)) + z'_l                  l = 1..L
    Eq. 4   y    = LN(z_L^0)

An image of ``H x W`` pixels and ``C`` channels is cut into ``N = HW / P^2``
patches of ``P x P`` pixels. Each patch, flattened to ``P^2 C`` numbers, is
multiplied by the learned matrix ``E`` (``PatchEmbed``): a linear projection
that equals a convolution with kernel and stride ``P``, which is why its
weight is stored in the convolution's shape ``(D, C, P, P)``. A learned class
token is put in front, a learned position embedding added (Eq. 1), and the
sequence of ``N + 1`` vectors of width ``D`` goes through ``L`` encoder
blocks (Eq. 2-3, ``nn.Block``). The class token's final state, normalized
(Eq. 4), is the image's representation; a linear head maps it to logits.
With ``pool="mean"`` the patch tokens' average is used instead.

Parameter names and shapes are timm's (``cls_token``, ``pos_embed``,
``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ..., ``head.bias``),
and so is the initialization.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import backend, checks
from . import functional as F
from .checks import FRACTION, POSITIVE_INT, as_pair, parse_image_size
from .nn import Block, Buffer, Dropout, LayerNorm, Linear, Module, Parameter, trunc_normal
from .settings import check_settings, setting
from .tensor import Tensor, concatenate


def patchify(images, patch_size):
    """Cut ``(B, C, H, W)`` images into ``(B, N, C*P*P)`` rows, one per patch.

    Patches are taken row by row, left to right; each is flattened channel
    first, then row, then column: the order in which a convolution kernel of
    shape ``(D, C, P, P)`` flattens.
    """
    images = images if isinstance(images, Tensor) else Tensor(images)
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)  # (B, C, rows, P, cols, P)
    x = x.transpose(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, P, P)
    return x.reshape(B, (H // P) * (W // P), C * P * P)  # (B, N, C*P*P)


class PatchProjection(Module):
    """The matrix E of Eq. 1, kept in the shape of a convolution kernel, ``(D, C, P, P)``."""

    def __init__(self, channels, patch_size, dim):
        self.weight = Parameter(trunc_normal((dim, channels, patch_size, patch_size)))
        self.bias = Parameter(np.zeros(dim, dtype=backend.DEFAULT_DTYPE))

    def forward(self, patches):  # (B, N, C*P*P) -> (B, N, D)
        dim = self.weight.shape[0]
        return F.linear(patches, self.weight.reshape(dim, -1), self.bias)  # weight as (D, C*P*P)

    def extra_repr(self):
        D, C, P, _ = self.weight.shape
        return f"{C * P * P} -> {D}, as a {P}x{P} convolution with stride {P}"


class PatchEmbed(Module):
    """Images to patch embeddings: ``x_p^i E`` for every patch ``i`` of Eq. 1.

    ``grid_size`` is the grid of patches, ``(rows, cols)``, as timm's; ``grid``
    is its side for a square image, else the pair, as ``image_size`` is spelled.
    """

    def __init__(self, image_size, patch_size, channels, dim):
        self.patch_size = patch_size
        H, W = as_pair(image_size)
        self.grid_size = (H // patch_size, W // patch_size)  # (rows, cols)
        self.grid = self.grid_size[0] if H == W else self.grid_size
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = PatchProjection(channels, patch_size, dim)

    def forward(self, images):  # (B, C, H, W) -> (B, N, D)
        return self.proj(patchify(images, self.patch_size))


class PreLogits(Module):
    """The extra ``tanh(Linear)`` layer some ImageNet-21k checkpoints have before the head."""

    def __init__(self, dim, representation_size):
        self.fc = Linear(dim, representation_size)

    def forward(self, x):
        return self.fc(x).tanh()


POS_EMBEDS = ("learn", "sincos")


@dataclass(frozen=True)
class ViTConfig(Mapping):
    """Everything that defines a ViT's shape, in vit-pytorch's order and names.

    ``ViT(**settings)`` and ``ViT(ViTConfig(...))`` build the same model;
    ``model.config`` is this, and a checkpoint keeps it as JSON. Each
    argument is declared once, here, with its range and its help: the
    trainer's flags and their ``--help`` are read off these fields.
    Construction checks every value and how they fit together; a
    ``ValueError`` or ``TypeError`` names the argument, what it must be and
    what it is. It also reads like the dict it replaces: ``config["dim"]``,
    ``ViT(**config)``, ``dict(config)``.
    """

    image_size: int | tuple[int, int] = setting(
        kind=None, help="the input images' size in pixels: a side N (N x N) or H x W",
        metavar="N|HxW", parse=parse_image_size,
    )  # fmt: skip
    patch_size: int = setting(kind=POSITIVE_INT, help="the patch size P")
    num_classes: int = setting(kind=POSITIVE_INT, help="the number of classes the head predicts")
    dim: int = setting(kind=POSITIVE_INT, help="the width D")
    depth: int = setting(kind=POSITIVE_INT, help="the number of blocks L")
    heads: int = setting(kind=POSITIVE_INT, help="the number of heads")
    mlp_dim: int = setting(kind=POSITIVE_INT, help="the MLP's hidden width")
    pool: str = setting(
        "cls", ("cls", "mean"), "cls (the class token) or mean (the patch tokens' average)"
    )
    channels: int = setting(3, POSITIVE_INT, "the input images' channels")
    dropout: float = setting(0.0, FRACTION, "dropout in the blocks")
    emb_dropout: float = setting(0.0, FRACTION, "dropout on the embedded patches")
    gelu: str = setting("none", ("none", "tanh"), "the GELU: none (exact) or tanh")
    representation_size: int | None = setting(
        None, POSITIVE_INT, "the width of a pre-logits layer (ImageNet-21k checkpoints)",
        optional=True,
    )  # fmt: skip
    pos_embed: str = setting(
        "learn", POS_EMBEDS, "position embeddings: learn (E_pos, learned) or sincos (fixed 2-D "
        "sin-cos)",
    )  # fmt: skip
    patch_dropout: float = setting(
        0.0, FRACTION, "train on a random 1 - X of each image's patch tokens (PatchDropout)"
    )

    def __post_init__(self):
        for name, value in check_settings(self, prefix="ViT: ").items():
            object.__setattr__(self, name, value)  # NumPy integers become Python ones
        size = checks.image_size("ViT: image_size", self.image_size)  # (H, W) or a side
        object.__setattr__(self, "image_size", size)
        H, W = as_pair(size)
        if H % self.patch_size or W % self.patch_size:
            fits = ", ".join(map(str, checks.divisors(math.gcd(H, W))))
            raise ValueError(
                f"ViT: patch_size {self.patch_size} does not divide image_size "
                f"{self.image_size}: the image must split into whole patches (patch sizes "
                f"that fit: {fits})"
            )
        if self.dim % self.heads:
            fits = ", ".join(map(str, checks.divisors(self.dim)))
            raise ValueError(
                f"ViT: heads {self.heads} does not divide dim {self.dim}: each head takes "
                f"dim / heads features (head counts that fit: {fits})"
            )
        if self.pos_embed == "sincos" and self.dim % 4:
            raise ValueError(
                f"ViT: pos_embed 'sincos' needs dim divisible by 4 (sin and cos of the row "
                f"and the column), got dim {self.dim}"
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        """The grid of patches, ``(rows, cols)``: ``(H / patch_size, W / patch_size)``."""
        H, W = as_pair(self.image_size)
        return H // self.patch_size, W // self.patch_size

    @property
    def grid(self):
        """Patches along a side (``image_size / patch_size``); for a rectangular image,
        the pair ``grid_size``, as ``image_size`` is spelled."""
        rows, cols = self.grid_size
        return rows if rows == cols else (rows, cols)

    def replace(self, **changes) -> ViTConfig:
        """A copy with ``changes``, checked again; an unknown name is a TypeError listing
        the known ones."""
        unknown = sorted(set(changes) - set(self))
        if unknown:
            raise TypeError(f"unknown ViT argument(s) {unknown}; known: {', '.join(self)}")
        return dataclasses.replace(self, **changes)

    # -- read like a dict ----------------------------------------------------------

    def __getitem__(self, name):
        if name not in _FIELD_NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self):
        return iter(_FIELD_NAMES)

    def __len__(self):
        return len(_FIELD_NAMES)

    def to_dict(self) -> dict:
        """A plain dict, for JSON."""
        return dict(self)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ViTConfig))


def sincos_position_embedding(grid, dim, temperature=10000.0, num_prefix_tokens=1):
    """Fixed 2-D sin-cos position embeddings, ``(1, num_prefix_tokens + rows * cols, dim)``
    for a ``grid`` of patches: a side (a square) or ``(rows, cols)``.

    As in "Better plain ViT baselines for ImageNet-1k" (Beyer et al. 2022):
    a quarter of the width each for ``sin`` and ``cos`` of the patch's column
    and of its row, at ``dim / 4`` frequencies from 1 down to ``1 /
    temperature``; the class token's row is zero. Nothing to learn, and two
    patches' embeddings are more alike the nearer they are.
    """
    quarter = dim // 4
    omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))  # (dim/4,)
    rows, cols = np.meshgrid(*(np.arange(n) for n in as_pair(grid)), indexing="ij")
    col_angles = cols.reshape(-1, 1) * omega  # (N, dim/4)
    row_angles = rows.reshape(-1, 1) * omega  # (N, dim/4)
    table = np.concatenate(
        [np.sin(col_angles), np.cos(col_angles), np.sin(row_angles), np.cos(row_angles)], axis=1
    )  # (N, dim), patches row by row as patchify orders them
    prefix = np.zeros((num_prefix_tokens, dim))
    return np.concatenate([prefix, table])[None].astype(backend.DEFAULT_DTYPE)


class ViT(Module):
    """The Vision Transformer, with the arguments of vit-pytorch's ``ViT``.

    ``ViT(image_size, patch_size, num_classes, dim, depth, heads, mlp_dim,
    pool="cls" | "mean", channels=3, dropout=0.0, emb_dropout=0.0,
    gelu="none" | "tanh", representation_size=None, pos_embed="learn" | "sincos",
    patch_dropout=0.0)``: the fields of ``ViTConfig``, which checks them; or
    ``ViT(config)`` with a ``ViTConfig``. ``model.config`` is that configuration.

    ``model(images)`` takes a ``(B, C, H, W)`` batch (a Tensor or an array)
    and returns ``(B, num_classes)`` logits. ``image_size`` is a side or a
    pair ``(H, W)``: a rectangular image has a ``rows x cols`` grid of
    patches and of position embeddings, as timm allows. ``pool="mean"`` averages the
    patch tokens (the class token is still there, as in timm's
    ``global_pool="avg"`` without ``fc_norm``). ``representation_size`` adds
    the ``pre_logits`` layer of ImageNet-21k checkpoints. Two options of
    timm's: ``pos_embed="sincos"`` replaces the learned ``E_pos`` by fixed 2-D
    sin-cos embeddings (``sincos_position_embedding``), and ``patch_dropout=p``
    trains on a random ``1 - p`` of each image's patch tokens
    (``functional.patch_dropout``; all of them in evaluation).
    """

    def __init__(self, *args, **kwargs):
        config = args[0] if len(args) == 1 and isinstance(args[0], ViTConfig) else None
        if config is None:
            config = ViTConfig(*args, **kwargs)
        elif kwargs:
            config = config.replace(**kwargs)
        self.config = config
        image_size, patch_size, dim = config.image_size, config.patch_size, config.dim
        channels, pool, patch_dropout = config.channels, config.pool, config.patch_dropout
        self.image_size, self.channels, self.pool = image_size, channels, pool
        self.patch_dropout = patch_dropout
        num_patches = config.grid_size[0] * config.grid_size[1]
        rng = backend.default_generator("cpu")
        dtype = backend.DEFAULT_DTYPE
        # Parameters in timm's order, so that state_dict() lists them as timm does.
        self.cls_token = Parameter((rng.standard_normal((1, 1, dim)) * 1e-6).astype(dtype))
        if config.pos_embed == "learn":
            self.pos_embed = Parameter(trunc_normal((1, num_patches + 1, dim)))  # E_pos
        else:  # fixed, not learned
            self.pos_embed = Buffer(sincos_position_embedding(config.grid_size, dim))
        self.patch_embed = PatchEmbed(image_size, patch_size, channels, dim)
        self.pos_drop = Dropout(config.emb_dropout)
        self.blocks = [
            Block(dim, config.heads, config.mlp_dim, config.dropout, config.gelu)
            for _ in range(config.depth)
        ]
        self.norm = LayerNorm(dim)
        width = config.representation_size
        self.pre_logits = PreLogits(dim, width) if width else None
        self.head = Linear(width or dim, config.num_classes)
        # How a photo becomes this model's input (a tinyvit.images.Preprocessing) and the
        # names of its classes: the loaders set them, and checkpoints keep them.
        self.preprocessing = None
        self.classes = None

    # -- the four equations --------------------------------------------------

    def check_images(self, images) -> Tensor:
        """Check a batch of images and return it as a tensor in the model's dtype.

        An array of floats is cast to the model's dtype; a ``Tensor`` must
        already have it (a cast would cut it from its graph). Integer images,
        wrapped in a ``Tensor`` or not, are refused: normalize them first.
        """
        if not (hasattr(images, "shape") and hasattr(images, "dtype")):
            raise TypeError(
                f"ViT expects images as an array or a Tensor (B, C, H, W), got "
                f"{type(images).__name__}; np.asarray(images) makes one"
            )
        shape = tuple(images.shape)
        expected = (self.channels, *as_pair(self.image_size))
        if len(shape) != 4 or shape[1:] != expected:
            last = shape[1:] == (*expected[1:], expected[0])  # (B, H, W, C)
            raise ValueError(
                f"ViT expects images of shape (B, {', '.join(map(str, expected))}), "
                f"got {shape}"
                + ("" if len(shape) == 4 else f": a rank-{len(shape)} array, not (B, C, H, W)")
                + (": channels-last (B, H, W, C); images.transpose(0, 3, 1, 2) makes them "
                   "(B, C, H, W) (tinyvit.data.normalize does it)" if last else "")
            )
        dtype = self.pos_embed.dtype
        if images.dtype.kind != "f":
            what = "a Tensor of " if isinstance(images, Tensor) else ""
            raise TypeError(
                f"ViT expects floating-point images, got {what}{images.dtype}; "
                "normalize them first (tinyvit.data.normalize does)"
            )
        if isinstance(images, Tensor):
            if images.dtype != dtype:
                raise TypeError(
                    f"ViT's weights are {dtype} but the images are a Tensor of {images.dtype}; "
                    f"convert one of them (images.astype({dtype.name}) or model.to(...))"
                )
            return images
        return Tensor(images.astype(dtype, copy=False))

    def forward_features(self, images) -> Tensor:
        """Eq. 1-3 and the LN of Eq. 4: ``(B, C, H, W)`` images to ``(B, N+1, D)`` tokens."""
        patches = self.patch_embed(self.check_images(images))  # (B, N, D): x_p^i E
        return self.encode(patches)

    def encode(self, patches) -> Tensor:
        """The rest of Eq. 1, then Eq. 2-3 and the LN of Eq. 4: ``(B, N, D)`` patch
        embeddings to ``(B, N+1, D)`` tokens. (Masked patch prediction corrupts
        the patch embeddings between ``patch_embed`` and this step.)"""
        B = patches.shape[0]
        cls = self.cls_token.broadcast_to((B, 1, patches.shape[2]))  # (B, 1, D): x_class
        z = concatenate([cls, patches], axis=1) + self.pos_embed  # (B, N+1, D): Eq. 1
        z = self.pos_drop(z)
        if self.patch_dropout and self.training:  # (B, 1 + K, D): K patches kept
            z = F.patch_dropout(z, self.patch_dropout)
        for block in self.blocks:  # Eq. 2-3
            z = block(z)
        return self.norm(z)  # LN of Eq. 4, applied to every token

    def forward_head(self, tokens, pre_logits=False) -> Tensor:
        """Pool ``(B, N+1, D)`` tokens to ``y`` (Eq. 4) and apply the head.

        With ``pre_logits=True`` returns the ``(B, D)`` representation itself
        (the features a linear probe uses).
        """
        if self.pool == "cls":
            y = tokens[:, 0]  # (B, D): z_L^0
        else:
            y = tokens[:, 1:].mean(axis=1)  # (B, D): mean of the patch tokens
        if self.pre_logits is not None:
            y = self.pre_logits(y)
        return y if pre_logits else self.head(y)  # (B, num_classes)

    def forward(self, images) -> Tensor:
        return self.forward_head(self.forward_features(images))

    # -- looking inside --------------------------------------------------------

    def keep_attention(self, keep=True):
        """Make every block keep its last attention probabilities; returns self."""
        for block in self.blocks:
            block.attn.keep_attention = keep
            block.attn.attention = None
        return self

    def attention_maps(self):
        """The kept ``(B, heads, N+1, N+1)`` attention of each block, first to last."""
        maps = [block.attn.attention for block in self.blocks]
        if any(m is None for m in maps):
            raise RuntimeError("no attention kept: call model.keep_attention() and run a forward")
        return maps

    def extra_repr(self):
        c = self.config
        return (
            f"image_size={c.image_size}, patch_size={c.patch_size}, dim={c.dim}, "
            f"depth={c.depth}, heads={c.heads}, mlp_dim={c.mlp_dim}, "
            f"num_classes={c.num_classes}, pool={c.pool!r}"
        )


# help(ViT) and an editor show ViTConfig's arguments, the ones ViT(...) takes.
ViT.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
    + list(inspect.signature(ViTConfig).parameters.values())
)


# ---------------------------------------------------------------------------
# named configurations
# ---------------------------------------------------------------------------


def _imagenet(patch_size, dim, depth, heads, mlp_dim) -> ViTConfig:
    return ViTConfig(224, patch_size, 1000, dim, depth, heads, mlp_dim)


CONFIGS = {
    # The paper's Table 1, at 224 x 224 with 1000 classes.
    "vit_base_patch16_224": _imagenet(16, 768, 12, 12, 3072),
    "vit_base_patch32_224": _imagenet(32, 768, 12, 12, 3072),
    "vit_large_patch16_224": _imagenet(16, 1024, 24, 16, 4096),
    "vit_large_patch32_224": _imagenet(32, 1024, 24, 16, 4096),
    "vit_huge_patch14_224": _imagenet(14, 1280, 32, 16, 5120),
    # DeiT (Touvron et al. 2021): the same architecture, narrower.
    "deit_tiny_patch16_224": _imagenet(16, 192, 12, 3, 768),
    "deit_small_patch16_224": _imagenet(16, 384, 12, 6, 1536),
    # For 32 x 32 images (CIFAR-10). Small enough for a CPU:
    "vit_cifar_tiny": ViTConfig(
        image_size=32, patch_size=4, num_classes=10, dim=96, depth=6, heads=3, mlp_dim=192
    ),
    # Like ViT-Lite-7/4 of the Compact Transformers paper, for GPU runs:
    "vit_lite_7_4": ViTConfig(
        image_size=32, patch_size=4, num_classes=10, dim=256, depth=7, heads=4, mlp_dim=512
    ),
}

ALIASES = {
    "ViT-B/16": "vit_base_patch16_224",
    "ViT-B/32": "vit_base_patch32_224",
    "ViT-L/16": "vit_large_patch16_224",
    "ViT-L/32": "vit_large_patch32_224",
    "ViT-H/14": "vit_huge_patch14_224",
    "DeiT-Ti": "deit_tiny_patch16_224",
    "DeiT-S": "deit_small_patch16_224",
    "ViT-Lite-7/4": "vit_lite_7_4",
}

NAMES = tuple(sorted(CONFIGS) + sorted(ALIASES))  # every name config() and create() take


def config(name, **overrides) -> ViTConfig:
    """The configuration named ``name`` (a key of ``CONFIGS`` or ``ALIASES``), with
    ``overrides`` applied and checked."""
    key = ALIASES.get(name, name)
    if key not in CONFIGS:
        raise KeyError(f"unknown ViT configuration {name!r}; known: {', '.join(NAMES)}")
    return CONFIGS[key].replace(**overrides)


def create(name, **overrides) -> ViT:
    """A ViT of a named configuration.

    ``create("ViT-B/16")``, ``create("vit_lite_7_4", pool="mean")``.
    """
    return ViT(config(name, **overrides))


def count_parameters(
    image_size,
    patch_size,
    num_classes,
    dim,
    depth,
    mlp_dim,
    channels=3,
    representation_size=None,
    pos_embed="learn",
    **_,
):
    """The number of parameters of a ViT, counted from its configuration alone.

    Patch projection ``P^2 C D + D``; class token ``D``; position embedding
    ``(N + 1) D`` (none when it is the fixed sin-cos one); per block two
    LayerNorms (``4D``), ``qkv`` (``3D^2 + 3D``), ``proj`` (``D^2 + D``), the
    MLP (``2 D M + M + D``); the final LayerNorm (``2D``), the optional
    pre-logits layer and the head.
    """
    H, W = as_pair(image_size)
    N = (H // patch_size) * (W // patch_size)
    D, M = dim, mlp_dim
    block = 4 * D + (3 * D * D + 3 * D) + (D * D + D) + (2 * D * M + M + D)
    head_in = representation_size or D
    pre = representation_size * (D + 1) if representation_size else 0
    return (
        patch_size**2 * channels * D
        + D
        + D
        + ((N + 1) * D if pos_embed == "learn" else 0)
        + depth * block
        + 2 * D
        + pre
        + head_in * num_classes
        + num_classes
    )
