"""timm's Vision Transformers on the Hugging Face Hub, without PyTorch.

timm publishes its pre-trained ViTs on the Hub, one repository per set of
weights: ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`` holds a
``config.json`` and a ``model.safetensors``. tinyvit names its parameters
as timm does, so the weights need no renaming at all; what needs reading is
the configuration:

* ``config.json`` names the architecture (``vit_base_patch16_224``) and the
  ``pretrained_cfg``: input size, interpolation, crop, mean and standard
  deviation (``preprocessing_from_timm``), the number of classes and their
  names. Repositories published with timm's newer export also carry the
  ``model_args`` the model was built with (``num_heads``, ``global_pool``,
  ``class_token``, ...); older ones keep everything in one dictionary.
  Both are read (``parse_config``).
* ``model.safetensors`` is read with safetensors' NumPy API
  (``read_safetensors``). The shapes of its arrays give the width, depth,
  patch size, MLP width and grid (``vit_config``); the head count comes from
  ``model_args`` or from the width, as timm's named sizes have it.

timm's ``VisionTransformer`` has options tinyvit does not: a distillation
token, registers, LayerScale, a norm before the blocks, pooling by
attention, relative or rotary positions, a CNN before the patches. Each is
refused by name, with what it is (``check_layout``), instead of loading
weights into a model that would compute something else.

Files come through ``huggingface_hub`` into its usual cache (``HF_HOME``,
``HF_HUB_CACHE``), with its progress bar; with ``HF_HUB_OFFLINE=1`` only the
cache is read, and a file that is not there is one error saying how to get
it. ``tinyvit.pretrained`` puts this together with the official Google
checkpoints and local files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError
from .images import Preprocessing
from .labels import imagenet_classes, names_of_synsets
from .progress import wanted
from .vit import ViTConfig

# timm's preprocessing defaults (timm.data.resolve_data_config), for configs that omit one.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION = 0.875, "bicubic"

# The head count of timm's ViTs of each width (64 features a head up to ViT-B's width,
# then 16 heads): model_args' num_heads, where the config has it, comes first.
WIDTH_HEADS = {
    192: 3, 256: 4, 320: 5, 384: 6, 512: 8, 640: 10, 768: 12, 896: 14, 1024: 16, 1152: 16,
    1280: 16, 1408: 16, 1664: 16,
}  # fmt: skip

# timm's default weights for the architectures tinyvit names (timm.create_model(name,
# pretrained=True) takes the first tag it lists for the name).
DEFAULT_TAGS = {
    "vit_tiny_patch16_224": "augreg_in21k_ft_in1k",
    "vit_small_patch16_224": "augreg_in21k_ft_in1k",
    "vit_base_patch16_224": "augreg2_in21k_ft_in1k",
    "vit_base_patch32_224": "augreg_in21k_ft_in1k",
    "vit_large_patch16_224": "augreg_in21k_ft_in1k",
    "vit_large_patch32_224": "orig_in21k",
    "vit_huge_patch14_224": "orig_in21k",
    "deit_tiny_patch16_224": "fb_in1k",
    "deit_small_patch16_224": "fb_in1k",
}

FAMILIES = ("vit_", "deit_", "deit3_", "flexivit_")  # timm's VisionTransformer builds these
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class PretrainedError(CheckpointError):
    """Pre-trained weights that cannot be had, or cannot become a tinyvit ViT; the message
    names the file or the name, and says why."""


# ---------------------------------------------------------------------------
# the files, through huggingface_hub
# ---------------------------------------------------------------------------


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the cache only (read when called)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache() -> Path:
    """The Hub's cache folder: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub`` (read when called, as huggingface_hub reads them)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_file(repo_id: str, filename: str, revision=None, progress=None) -> Path:
    """``filename`` of the Hub repository ``repo_id``, downloaded into the Hub's cache (or
    found there); a ``PretrainedError`` that says what to do when it cannot be had."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    cache, local_only = hub_cache(), offline()
    was_disabled = are_progress_bars_disabled()
    if not wanted(progress):
        disable_progress_bars()
    try:
        path = hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=cache, local_files_only=local_only
        )
    except LocalEntryNotFoundError as error:
        how = (
            "HF_HUB_OFFLINE is set, so nothing is downloaded: run once without it, or "
            if local_only
            else f"the Hub could not be reached ({error.__cause__ or error}): connect, or "
        )
        raise PretrainedError(
            f"{repo_id}: {filename} is not in the Hugging Face cache {cache}; {how}fetch it "
            f"on a connected machine with `hf download {repo_id}` and copy its cache "
            f"(HF_HUB_CACHE) here"
        ) from None
    except RepositoryNotFoundError:
        raise PretrainedError(
            f"no repository {repo_id} on the Hugging Face Hub (or it is private or gated); "
            "timm's ViTs are named like timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
        ) from None
    except RevisionNotFoundError:
        raise PretrainedError(f"{repo_id} has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise PretrainedError(
            f"{repo_id} has no {filename}: not a timm model repository tinyvit can read"
        ) from None
    except OSError as error:  # the network, the disk
        raise PretrainedError(f"{repo_id}: could not download {filename} ({error})") from None
    finally:
        if not was_disabled:
            enable_progress_bars()
    return Path(path)


# ---------------------------------------------------------------------------
# reading the files
# ---------------------------------------------------------------------------


def read_safetensors(path) -> dict:
    """Every array of a ``.safetensors`` file as NumPy, floats as float32; a
    ``PretrainedError`` naming the file for one that is damaged or not NumPy-readable."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"no weights file at {path}")
    arrays = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():
                try:
                    value = np.array(f.get_tensor(key))  # a copy in memory, not a file map
                except (TypeError, ValueError) as error:  # bfloat16 and such: no NumPy type
                    raise PretrainedError(
                        f"{path}: {key} has a type NumPy cannot hold ({error}); save the "
                        "weights as float32 or float16"
                    ) from None
                arrays[key] = value.astype(np.float32) if value.dtype.kind == "f" else value
    except (SafetensorError, OSError) as error:
        raise PretrainedError(
            f"{path} ({path.stat().st_size:,} bytes) is not a complete .safetensors file: "
            f"{error}"
        ) from None
    return arrays


def read_json(path) -> dict:
    """A ``config.json`` as a dict; a ``PretrainedError`` naming the file if it is not one."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PretrainedError(f"no configuration file at {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PretrainedError(f"{path} is not a JSON configuration ({error})") from None
    if not isinstance(config, dict):
        raise PretrainedError(f"{path} is not a JSON object but a {type(config).__name__}")
    return config


def parse_config(config: dict, where) -> dict:
    """A timm ``config.json``, old or new form, as one dict: ``architecture``,
    ``pretrained_cfg``, ``model_args``, ``num_classes``, ``global_pool``, ``label_names``,
    ``label_descriptions`` (each None when the file does not say)."""
    if "pretrained_cfg" in config:  # the hub's form: architecture, pretrained_cfg, ...
        pretrained = dict(config["pretrained_cfg"] or {})
    else:  # the legacy form: one dictionary
        pretrained = dict(config)
    architecture = config.get("architecture", pretrained.get("architecture"))
    if not isinstance(architecture, str):
        raise PretrainedError(f"{where}: names no architecture: not a timm model configuration")
    args = dict(config.get("model_args") or {})

    def first(key):
        for source in (config, pretrained):
            if source.get(key) is not None:
                return source[key]
        return None

    return {
        "architecture": architecture,
        "pretrained_cfg": pretrained,
        "model_args": args,
        "num_classes": args.get("num_classes", first("num_classes")),
        "global_pool": args.get("global_pool") or first("global_pool"),
        "label_names": first("label_names") or first("labels"),
        "label_descriptions": first("label_descriptions"),
    }


def preprocessing_from_timm(pretrained_cfg: dict, where) -> Preprocessing:
    """timm's ``pretrained_cfg`` as a ``Preprocessing`` (timm's defaults where it is silent)."""
    cfg = pretrained_cfg
    size = cfg.get("input_size") or (3, 224, 224)
    try:
        return Preprocessing(
            image_size=tuple(size[-2:]),
            mean=tuple(cfg.get("mean") or IMAGENET_MEAN),
            std=tuple(cfg.get("std") or IMAGENET_STD),
            crop_pct=cfg.get("crop_pct") or DEFAULT_CROP_PCT,
            interpolation=cfg.get("interpolation") or DEFAULT_INTERPOLATION,
            crop_mode=cfg.get("crop_mode") or "center",
        )
    except (TypeError, ValueError) as error:
        raise PretrainedError(f"{where}: its preprocessing cannot be used: {error}") from None


def classes_from_timm(parsed: dict, num_classes: int):
    """The names of the classes: the config's label names (ImageNet synsets by their
    names, or by their descriptions when it has them), ImageNet-1k's for 1000 classes,
    else None (numbered)."""
    names = parsed["label_names"]
    if isinstance(names, dict):  # {index: name}, where some indices have none
        names = [names.get(str(i), names.get(i, str(i))) for i in range(num_classes)]
    if names and len(names) == num_classes:
        descriptions = parsed["label_descriptions"] or {}
        if descriptions and num_classes != 1000:
            return tuple(str(descriptions.get(n, n)).split(", ")[0] for n in names)
        return names_of_synsets(names)
    return imagenet_classes() if num_classes == 1000 else None


# ---------------------------------------------------------------------------
# timm's layout and tinyvit's
# ---------------------------------------------------------------------------

# Weights that only layouts tinyvit lacks have: (a piece of the name, what it is).
FOREIGN_WEIGHTS = (
    ("dist_token", "a distillation token (DeiT's distilled models)"),
    ("head_dist", "a distillation head (DeiT's distilled models)"),
    ("reg_token", "register tokens (Darcet et al. 2023)"),
    ("relative_position", "relative position embeddings"),
    ("rel_pos", "relative position embeddings"),
    ("rope", "rotary position embeddings"),
    ("patch_embed.backbone", "a hybrid backbone (a CNN before the patch embedding)"),
    ("norm_pre", "a LayerNorm before the blocks (norm_pre, as in CLIP)"),
    (".ls1.", "LayerScale (init_values)"),
    ("q_norm", "normalized queries and keys (qk_norm)"),
    ("fc_norm", "the final LayerNorm after pooling (fc_norm)"),
    ("attn_pool", "pooling by attention (a MAP head)"),
)
# Weights tinyvit's layout needs, and what a model without them has instead.
NEEDED_WEIGHTS = (
    ("cls_token", "no class token (class_token=False)"),
    ("pos_embed", "no learned position embedding"),
    ("patch_embed.proj.bias", "a patch embedding without a bias (as in CLIP)"),
    ("blocks.0.attn.qkv.bias", "attention without biases (qkv_bias=False)"),
    ("norm.weight", "no LayerNorm after the blocks"),
)


def _args_refusals(parsed: dict) -> list[str]:
    """What ``model_args`` and the pooling say that tinyvit's layout does not have."""
    args, pool = parsed["model_args"], parsed["global_pool"] or "token"
    found = []
    if args.get("class_token") is False:
        found.append("no class token (class_token=False)")
    if args.get("reg_tokens"):
        found.append(f"register tokens (reg_tokens={args['reg_tokens']})")
    if args.get("no_embed_class"):
        found.append("position embeddings without the class token's (no_embed_class=True)")
    if args.get("pre_norm"):
        found.append("a LayerNorm before the blocks (pre_norm=True, as in CLIP)")
    if args.get("final_norm") is False:
        found.append("no LayerNorm after the blocks (final_norm=False)")
    if args.get("fc_norm"):
        found.append("the final LayerNorm after pooling (fc_norm)")
    if args.get("init_values"):
        found.append(f"LayerScale (init_values={args['init_values']})")
    if args.get("qk_norm"):
        found.append("normalized queries and keys (qk_norm=True)")
    if args.get("qkv_bias") is False:
        found.append("attention without biases (qkv_bias=False)")
    if args.get("pos_embed", "learn") != "learn":
        found.append(f"position embeddings {args['pos_embed']!r} (tinyvit learns them)")
    if args.get("act_layer") not in (None, "gelu", "gelu_tanh"):
        found.append(f"the activation {args['act_layer']!r} (tinyvit has GELU)")
    if pool not in ("token", "avg"):
        found.append("pooling by attention (a MAP head)" if pool == "map" else f"pooling {pool!r}")
    return found


def check_layout(parsed: dict, weights: dict, where) -> None:
    """Refuse, naming it and saying what it is, every part of the model that tinyvit's ViT
    does not have (the architecture, ``model_args``, the weights' names)."""
    architecture = parsed["architecture"]
    if not architecture.startswith(FAMILIES):
        raise PretrainedError(
            f"{where}: the architecture {architecture!r} is not one of timm's plain Vision "
            f"Transformers ({', '.join(f + '*' for f in FAMILIES)}), the only layout "
            "tinyvit builds"
        )
    found = _args_refusals(parsed)
    if "distilled" in architecture:
        found.insert(0, "a distillation token (DeiT's distilled models)")
    for piece, what in FOREIGN_WEIGHTS:
        if any(piece in key for key in weights) and what not in found:
            found.append(what)
    for key, what in NEEDED_WEIGHTS:
        if key not in weights and what not in found:
            found.append(what)
    if "patch_embed.proj.weight" in weights and weights["patch_embed.proj.weight"].ndim == 4:
        D, C, ph, pw = weights["patch_embed.proj.weight"].shape
        if ph != pw:
            found.append(f"{ph} x {pw} patches (tinyvit's patches are square)")
    if found:
        raise PretrainedError(
            f"{where}: {architecture} has a layout tinyvit does not build: "
            + "; ".join(found)
            + ". tinyvit builds the paper's ViT: a class token, learned position "
            "embeddings, pre-norm blocks with GELU, the class token or the patch tokens' "
            "average read by the head"
        )


def _weight(weights: dict, key: str, ndim: int, where):
    """``weights[key]``, which must be there with ``ndim`` axes."""
    if key not in weights:
        raise PretrainedError(f"{where}: no {key} among the weights")
    value = weights[key]
    if value.ndim != ndim:
        raise PretrainedError(
            f"{where}: {key} has shape {tuple(value.shape)}, not {ndim} axes as a ViT's has"
        )
    return value


def vit_config(parsed: dict, weights: dict, where) -> ViTConfig:
    """The ``ViTConfig`` of timm weights: shapes from the arrays, the rest from the config
    (image size, heads, pooling, GELU), each checked against the other."""
    args, pretrained = parsed["model_args"], parsed["pretrained_cfg"]
    dim, channels, patch, _ = _weight(weights, "patch_embed.proj.weight", 4, where).shape
    depth = len({m.group(1) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k))})
    mlp_dim = _weight(weights, "blocks.0.mlp.fc1.weight", 2, where).shape[0]
    head = weights.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 0
    heads = args.get("num_heads") or WIDTH_HEADS.get(int(dim))
    if heads is None:
        raise PretrainedError(
            f"{where}: its config gives no num_heads, and width {dim} is none of timm's "
            f"named sizes ({', '.join(map(str, WIDTH_HEADS))}): the head count is unknown"
        )
    size = args.get("img_size") or (pretrained.get("input_size") or (3, 224, 224))[-2:]
    H, W = (size, size) if isinstance(size, int) else tuple(size)
    tokens = _weight(weights, "pos_embed", 3, where).shape[1]
    if tokens != 1 + (H // patch) * (W // patch):
        raise PretrainedError(
            f"{where}: pos_embed has {tokens} positions, not 1 + {H // patch} x {W // patch} "
            f"for {H} x {W} images in {patch} x {patch} patches"
        )
    act = args.get("act_layer")
    try:
        return ViTConfig(
            image_size=(H, W), patch_size=int(patch), num_classes=max(num_classes, 1),
            dim=int(dim), depth=depth, heads=int(heads), mlp_dim=int(mlp_dim),
            pool="mean" if parsed["global_pool"] == "avg" else "cls",
            channels=int(channels), gelu="tanh" if act == "gelu_tanh" else "none",
        )  # fmt: skip
    except (TypeError, ValueError) as error:
        raise PretrainedError(f"{where}: its configuration does not make a ViT: {error}") from None


def split_name(name: str) -> tuple[str, str | None]:
    """A Hub repository and revision from a timm name: ``timm/NAME[@revision]``,
    ``hf-hub:timm/NAME``, a bare ``NAME.tag``, or an architecture with a default tag here
    (``vit_base_patch16_224``)."""
    for prefix in ("hf-hub:", "hf_hub:"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    repo, _, revision = name.partition("@")
    if "/" not in repo:
        repo = f"timm/{repo}.{DEFAULT_TAGS[repo]}" if repo in DEFAULT_TAGS else f"timm/{repo}"
    return repo, revision or None


__all__ = [
    "CONFIG_FILE",
    "DEFAULT_TAGS",
    "FAMILIES",
    "PretrainedError",
    "WEIGHTS_FILE",
    "WIDTH_HEADS",
    "check_layout",
    "classes_from_timm",
    "hub_cache",
    "hub_file",
    "offline",
    "parse_config",
    "preprocessing_from_timm",
    "read_json",
    "read_safetensors",
    "split_name",
    "vit_config",
]
