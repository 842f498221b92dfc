"""Every model kind by name: the plain ViT's configurations and the hybrid's.

Two kinds of model share one interface: ``ViT`` (``vit.py``, patches of
pixels) and ``HybridViT`` (``hybrid.py``, patches of a CNN's feature map).
A name (``"vit_cifar_tiny"``, ``"hybrid_cifar_2x3"``) says which; a
configuration builds its own kind (``build``), and a checkpoint that names
its kind and keeps its configuration is rebuilt by ``from_saved``. The
trainer, the checkpoints and ``tinyvit.create`` look models up here.
"""

from __future__ import annotations

from . import hybrid, vit
from .hybrid import HybridConfig, HybridViT
from .vit import ViT, ViTConfig

KINDS = {"ViT": ViT, "HybridViT": HybridViT}  # a checkpoint's "model" entry -> its class
NAMES = vit.NAMES + hybrid.NAMES  # every name config() and create() take


def config(name, **overrides) -> ViTConfig:
    """The configuration named ``name`` (a ViT's or a hybrid's), with ``overrides``."""
    if name in hybrid.CONFIGS:
        return hybrid.config(name, **overrides)
    if vit.ALIASES.get(name, name) in vit.CONFIGS:
        return vit.config(name, **overrides)
    raise KeyError(f"unknown ViT configuration {name!r}; known: {', '.join(NAMES)}")


def build(config: ViTConfig) -> ViT:
    """The model of ``config``: a ``HybridViT`` for a ``HybridConfig``, else a ``ViT``."""
    return HybridViT(config) if isinstance(config, HybridConfig) else ViT(config)


def create(name, **overrides) -> ViT:
    """A freshly initialized model of a named configuration:
    ``create("hybrid_cifar_2x3", depth=4)``."""
    return build(config(name, **overrides))


def from_saved(kind: str, settings: dict) -> ViT:
    """The model of kind ``kind`` (a key of ``KINDS``) built from its saved settings; a
    ``KeyError`` for an unknown kind, a ``TypeError`` or ``ValueError`` for settings that
    do not build one."""
    if kind not in KINDS:
        raise KeyError(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[kind](**settings)


def token_grid(settings) -> tuple[int, int]:
    """The grid of tokens, ``(rows, cols)``, of a model's settings (a ViT's, or a hybrid's:
    those with a stem), checked as its configuration checks them."""
    kind = HybridConfig if "stem_channels" in settings else ViTConfig
    return kind(**settings).grid_size


__all__ = ["KINDS", "NAMES", "build", "config", "create", "from_saved", "token_grid"]
