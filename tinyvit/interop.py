"""Weights from elsewhere, and the paper's recipe for fine-tuning them.

* Official Google ViT checkpoints (``ViT-B_16.npz`` and friends, from the
  JAX code that trained the paper's models) name and shape their arrays
  differently from timm. ``official_to_state_dict`` maps one layout onto the
  other; ``load_official`` builds the matching model.
* Fine-tuning (paper Section 3.2): "we remove the pre-trained prediction head
  and attach a zero-initialized D x K feedforward layer", and at a higher
  resolution "we keep the patch size the same", so the sequence grows and
  "we perform 2D interpolation of the pre-trained position embeddings,
  according to their location in the original image". ``adapt`` does both,
  on a configuration and its weights; the 2-D interpolation itself is
  ``tinyvit.resample.resample_pos_embed``, two small matrix products.

timm's own ``VisionTransformer`` needs no mapping: its ``state_dict()`` has
exactly tinyvit's names and shapes.
"""

from __future__ import annotations

import math
import re

import numpy as np

from . import checks
from .checkpoint import read_npz
from .checks import as_pair
from .models import token_grid
from .resample import resample_pos_embed
from .vit import ViT

# ---------------------------------------------------------------------------
# the fine-tuning recipe
# ---------------------------------------------------------------------------


def adapt(
    config, state_dict, num_classes=None, image_size=None, interpolation="bicubic",
    new_head=False,
):  # fmt: skip
    """Return ``(config, state_dict)`` for fine-tuning at a new resolution or class count.

    A new ``image_size`` (a side, or ``(H, W)``) keeps the patch size and
    resamples the position embeddings' grid in 2-D, to a rectangle if asked.
    A new ``num_classes`` (or ``new_head=True``, as after pre-training
    without labels, whose head was never trained) drops the head and a
    ``pre_logits`` layer and puts a zero-initialized head in their place.
    """
    config, state = dict(config), dict(state_dict)
    if image_size is not None:
        image_size = checks.image_size("image_size", image_size)  # a side, or (H, W)
    if image_size is not None and image_size != checks.image_size("", config["image_size"]):
        P = config["patch_size"]
        (H, W), (old_H, old_W) = as_pair(image_size), as_pair(config["image_size"])
        old_grid, new_grid = (old_H // P, old_W // P), (H // P, W // P)
        if "stem_channels" in config:  # a hybrid: its tokens are its stem's feature map's
            old_grid = token_grid(config)
            new_grid = token_grid({**config, "image_size": image_size})
        elif H % P or W % P:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {P}")
        if "pos_embed" in state:  # a learned E_pos; fixed sin-cos ones are made anew
            state["pos_embed"] = resample_pos_embed(
                state["pos_embed"], new_grid, interpolation, old_grid=old_grid
            )
        config["image_size"] = image_size
    num_classes = config["num_classes"] if num_classes is None else num_classes
    if new_head or num_classes != config["num_classes"]:
        dim = config["dim"]
        for key in [k for k in state if k.startswith(("head.", "pre_logits."))]:
            del state[key]
        dtype = state["cls_token"].dtype
        state["head.weight"] = np.zeros((num_classes, dim), dtype=dtype)  # (K, D): zero
        state["head.bias"] = np.zeros(num_classes, dtype=dtype)
        config["num_classes"], config["representation_size"] = num_classes, None
    return config, state


def for_finetuning(
    model, num_classes=None, image_size=None, interpolation="bicubic", new_head=False,
    **changes,
):  # fmt: skip
    """A new model of ``model``'s kind (a ViT, a hybrid) from its weights, adapted by
    ``adapt``; ``changes`` set other configuration entries (dropout, say) that do not
    alter any weight's shape."""
    config, state = adapt(
        model.config, model.state_dict(), num_classes, image_size, interpolation, new_head
    )
    new = type(model)(**{**config, **changes})
    new.load_state_dict(state)
    return new.to(model.pos_embed.device, model.pos_embed.dtype)  # where and as the model is


# ---------------------------------------------------------------------------
# official Google ViT checkpoints
# ---------------------------------------------------------------------------


def official_to_state_dict(arrays):
    """Map the arrays of an official ``.npz`` to ``(config, timm-named state_dict)``.

    Kernels there are stored ``(in, out)``; timm's Linear weights are
    ``(out, in)``. Queries, keys and values are three ``(D, heads, D_h)``
    kernels; timm fuses them into one ``(3D, D)`` ``qkv`` weight. The patch
    kernel is a ``(P, P, C, D)`` convolution (height, width, in, out); timm's is
    ``(D, C, P, P)``.
    """
    a = {k: np.asarray(v) for k, v in arrays.items()}
    try:
        P, _, C, D = a["embedding/kernel"].shape
        depth = len(
            {m.group(1) for k in a if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
        )
        first = "Transformer/encoderblock_0/"
        heads = a[first + "MultiHeadDotProductAttention_1/query/kernel"].shape[1]
        mlp_dim = a[first + "MlpBlock_3/Dense_0/kernel"].shape[1]
        pos = a["Transformer/posembed_input/pos_embedding"]
        classes = a["head/kernel"].shape[1]
    except KeyError as missing:
        raise KeyError(f"not an official ViT checkpoint: no entry {missing}") from None
    grid = math.isqrt(pos.shape[1] - 1)
    representation = a["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in a else None
    config = dict(
        image_size=grid * P,
        patch_size=P,
        num_classes=classes,
        dim=D,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
        channels=C,
        gelu="tanh",  # the official code's GELU is the tanh approximation
        representation_size=representation,
    )

    def linear(prefix):  # an (in, out) kernel and its bias -> timm's (out, in) weight and bias
        return a[prefix + "/kernel"].T, a[prefix + "/bias"]

    state = {
        "cls_token": a["cls"],
        "pos_embed": pos,
        "patch_embed.proj.weight": a["embedding/kernel"].transpose(3, 2, 0, 1),  # (D, C, P, P)
        "patch_embed.proj.bias": a["embedding/bias"],
    }
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        attn = src + "MultiHeadDotProductAttention_1/"
        state[dst + "norm1.weight"] = a[src + "LayerNorm_0/scale"]
        state[dst + "norm1.bias"] = a[src + "LayerNorm_0/bias"]
        # (D, heads, D_h) kernels -> (D, D) -> transposed, stacked as [q; k; v]: (3D, D)
        state[dst + "attn.qkv.weight"] = np.concatenate(
            [a[attn + f"{n}/kernel"].reshape(D, D).T for n in ("query", "key", "value")]
        )
        state[dst + "attn.qkv.bias"] = np.concatenate(
            [a[attn + f"{n}/bias"].reshape(D) for n in ("query", "key", "value")]
        )
        state[dst + "attn.proj.weight"] = a[attn + "out/kernel"].reshape(D, D).T  # (heads*D_h, D)^T
        state[dst + "attn.proj.bias"] = a[attn + "out/bias"]
        state[dst + "norm2.weight"] = a[src + "LayerNorm_2/scale"]
        state[dst + "norm2.bias"] = a[src + "LayerNorm_2/bias"]
        state[dst + "mlp.fc1.weight"], state[dst + "mlp.fc1.bias"] = linear(
            src + "MlpBlock_3/Dense_0"
        )
        state[dst + "mlp.fc2.weight"], state[dst + "mlp.fc2.bias"] = linear(
            src + "MlpBlock_3/Dense_1"
        )
    state["norm.weight"] = a["Transformer/encoder_norm/scale"]
    state["norm.bias"] = a["Transformer/encoder_norm/bias"]
    if representation is not None:
        state["pre_logits.fc.weight"], state["pre_logits.fc.bias"] = linear("pre_logits")
    state["head.weight"], state["head.bias"] = linear("head")
    return config, {k: np.ascontiguousarray(v) for k, v in state.items()}


def load_official(path, num_classes=None, image_size=None, interpolation="bicubic", **changes):
    """A ViT with the weights of an official ``.npz`` checkpoint.

    The configuration is read off the arrays' shapes. ``num_classes`` and
    ``image_size`` apply the fine-tuning recipe (``adapt``); ``changes`` set
    other configuration entries: ``gelu``, or ``pool="mean"`` for arrays that
    ``to_official`` wrote from a mean-pooled tinyvit model (the layout does not
    record what the head reads). Official models expect inputs scaled to
    ``[-1, 1]``. The model comes back in evaluation mode, as ``tinyvit.load``'s
    does (``model.train()`` before fine-tuning it).
    """
    config, state = official_to_state_dict(read_npz(path))
    config, state = adapt(config, state, num_classes, image_size, interpolation)
    model = ViT(**{**config, **changes})
    model.load_state_dict(state)
    return model.eval()


def to_official(model: ViT) -> dict:
    """``model``'s weights as the arrays of an official ``ViT-*.npz`` (the inverse of
    ``interop.official_to_state_dict``): kernels ``(in, out)``, the patch kernel
    ``(P, P, C, D)``, queries, keys and values as ``(D, heads, D_h)`` kernels.

    A mean-pooled model (``pool="mean"``) keeps its class token in the sequence,
    so its arrays fit this layout too; the layout cannot say that its head reads
    the patch tokens' average, so read it back with ``load_official(...,
    pool="mean")``. (The official ``gap`` models have no class token at all.)"""
    s = model.state_dict()
    D, H = model.config["dim"], model.config["heads"]
    Dh = D // H
    a = {
        "embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # (P, P, C, D)
        "embedding/bias": s["patch_embed.proj.bias"],
        "cls": s["cls_token"],
        "Transformer/posembed_input/pos_embedding": s["pos_embed"],
    }
    for i in range(len(model.blocks)):
        src, dst = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        attn = dst + "MultiHeadDotProductAttention_1/"
        a[dst + "LayerNorm_0/scale"] = s[src + "norm1.weight"]
        a[dst + "LayerNorm_0/bias"] = s[src + "norm1.bias"]
        qkv_w = s[src + "attn.qkv.weight"].reshape(3, D, D)  # [q; k; v], each (out, in)
        qkv_b = s[src + "attn.qkv.bias"].reshape(3, D)
        for j, part in enumerate(("query", "key", "value")):
            a[attn + f"{part}/kernel"] = qkv_w[j].T.reshape(D, H, Dh)  # (D, heads, D_h)
            a[attn + f"{part}/bias"] = qkv_b[j].reshape(H, Dh)
        a[attn + "out/kernel"] = s[src + "attn.proj.weight"].T.reshape(H, Dh, D)
        a[attn + "out/bias"] = s[src + "attn.proj.bias"]
        a[dst + "LayerNorm_2/scale"] = s[src + "norm2.weight"]
        a[dst + "LayerNorm_2/bias"] = s[src + "norm2.bias"]
        for j, layer in enumerate(("fc1", "fc2")):
            a[dst + f"MlpBlock_3/Dense_{j}/kernel"] = s[src + f"mlp.{layer}.weight"].T
            a[dst + f"MlpBlock_3/Dense_{j}/bias"] = s[src + f"mlp.{layer}.bias"]
    a["Transformer/encoder_norm/scale"] = s["norm.weight"]
    a["Transformer/encoder_norm/bias"] = s["norm.bias"]
    if model.pre_logits is not None:
        a["pre_logits/kernel"] = s["pre_logits.fc.weight"].T
        a["pre_logits/bias"] = s["pre_logits.fc.bias"]
    a["head/kernel"] = s["head.weight"].T
    a["head/bias"] = s["head.bias"]
    return {k: np.ascontiguousarray(v) for k, v in a.items()}
