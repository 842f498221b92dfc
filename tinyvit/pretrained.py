"""A pre-trained ViT from a name or a path: ``from_pretrained``.

One call takes any weights tinyvit can read to a model ready to classify:

    model = tinyvit.from_pretrained("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")
    model = tinyvit.from_pretrained("ViT-B/16")          # the paper's, from its bucket
    model = tinyvit.from_pretrained("runs/cifar10/model.npz")

* a local path: a tinyvit checkpoint (``tinyvit.save``), an official
  ``.npz``, a ``.safetensors`` with the ``config.json`` it was published
  with beside it, or a folder that holds those two (timm's ``save_for_hf``,
  a Hub snapshot);
* an official Google checkpoint by name (``tinyvit.official``);
* a timm name on the Hugging Face Hub (``tinyvit.hub``): ``timm/NAME.tag``,
  ``NAME.tag``, or an architecture tinyvit knows the default weights of.

Every model comes back in evaluation mode with its ``preprocessing`` (how
a photo becomes its input: ``tinyvit.images.prepare``) and its ``classes``
(their names, or None when they are only numbered). ``num_classes`` and
``image_size`` apply the paper's fine-tuning recipe on the way
(``interop.adapt``: a new zero-initialized head, position embeddings
resampled in 2-D to the new grid, a rectangle included). A load builds a
new model from scratch and checks every array before any is used, so a
load that fails changes nothing, not even a model already loaded from the
same file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from . import backend
from .checkpoint import META, CheckpointError, check_finite, load, read_npz
from .hub import (
    CONFIG_FILE,
    DEFAULT_TAGS,
    WEIGHTS_FILE,
    PretrainedError,
    check_layout,
    classes_from_timm,
    hub_file,
    parse_config,
    preprocessing_from_timm,
    read_json,
    read_safetensors,
    split_name,
    vit_config,
)
from .interop import adapt, for_finetuning, official_to_state_dict
from .labels import imagenet_classes
from .official import download_official, official_key, official_preprocessing
from .vit import ALIASES, CONFIGS, ViT

PATH_SUFFIXES = (".npz", ".safetensors", ".json")
UNPUBLISHED = tuple(name for name in CONFIGS if name not in DEFAULT_TAGS)  # vit_cifar_tiny, ...


def _build(config, state, where, num_classes=None, image_size=None, new_head=False,
           **changes) -> ViT:  # fmt: skip
    """A ViT of ``config`` with the weights ``state``, after the fine-tuning recipe
    (``adapt``); every failure a ``PretrainedError`` naming ``where``."""
    try:
        config, state = adapt(config, state, num_classes, image_size, new_head=new_head)
        model = ViT(**{**config, **changes})
    except (KeyError, TypeError, ValueError) as error:
        raise PretrainedError(f"{where}: its configuration does not make a ViT: {error}") from None
    try:
        check_finite(state, where)
        model.load_state_dict(state)
    except CheckpointError as error:  # NaN or infinite weights
        raise PretrainedError(str(error)) from None
    except ValueError as error:
        raise PretrainedError(f"{where}: the weights do not fit a ViT: {error}") from None
    return model


def load_timm(config_path, weights_path, where=None, num_classes=None, image_size=None,
              **changes) -> ViT:  # fmt: skip
    """A ViT from timm's ``config.json`` and ``model.safetensors``, its preprocessing and
    class names set (``where`` names it in errors: the Hub repository, else the file)."""
    where = where or str(weights_path)
    parsed = parse_config(read_json(config_path), config_path)
    weights = read_safetensors(weights_path)
    check_layout(parsed, weights, where)
    config = vit_config(parsed, weights, where)
    headless = "head.weight" not in weights
    if headless and num_classes is None:
        raise PretrainedError(
            f"{where} has no classification head (num_classes=0: features only); "
            "from_pretrained(..., num_classes=K) puts a new, zero-initialized head on it "
            "to fine-tune"
        )
    model = _build(config, weights, where, num_classes, image_size, headless, **changes)
    model.preprocessing = preprocessing_from_timm(parsed["pretrained_cfg"], config_path)
    if num_classes is None or num_classes == parsed["num_classes"]:
        model.classes = classes_from_timm(parsed, model.config.num_classes)
    return model


def load_official_npz(path, num_classes=None, image_size=None, **changes) -> ViT:
    """A ViT from an official ``.npz`` (``interop.official_to_state_dict``), with the
    official preprocessing, and ImageNet's class names for a 1000-class head."""
    try:
        config, state = official_to_state_dict(read_npz(path))
    except KeyError as error:
        raise PretrainedError(f"{path}: {error.args[0]}") from None
    model = _build(config, state, path, num_classes, image_size, **changes)
    model.preprocessing = official_preprocessing(model.config.image_size)
    model.classes = imagenet_classes() if model.config.num_classes == 1000 else None
    return model


def load_path(path, num_classes=None, image_size=None, **changes) -> ViT:
    """A ViT from a local file or folder (see the module's docstring for the kinds)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file():
            return load_timm(path / CONFIG_FILE, path / WEIGHTS_FILE, str(path), num_classes,
                             image_size, **changes)  # fmt: skip
        raise PretrainedError(f"{path} is a folder without {WEIGHTS_FILE} and {CONFIG_FILE}")
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    if path.suffix == ".safetensors":
        config = path.with_name(CONFIG_FILE)
        if not config.is_file():
            raise PretrainedError(
                f"{path} needs the {CONFIG_FILE} it was published with, beside it ({config}): "
                "the weights alone do not say the image size, heads or preprocessing"
            )
        return load_timm(config, path, str(path), num_classes, image_size, **changes)
    if path.suffix != ".npz":
        raise PretrainedError(
            f"{path}: expected a tinyvit checkpoint or an official checkpoint (.npz), or "
            f"timm weights (.safetensors with its {CONFIG_FILE}), not a {path.suffix or 'plain'} "
            "file"
        )
    try:  # the names of the arrays, without reading them
        with zipfile.ZipFile(path) as archive:
            names = {n.removesuffix(".npy") for n in archive.namelist()}
    except (zipfile.BadZipFile, OSError):
        names = set(read_npz(path))  # its error says what the file is instead
    if f"{META}/meta" not in names and "embedding/kernel" in names:
        return load_official_npz(path, num_classes, image_size, **changes)
    model = load(path)
    if num_classes is None and image_size is None and not changes:
        return model
    tuned = for_finetuning(model, num_classes, image_size, **changes)
    tuned.preprocessing, tuned.classes = model.preprocessing, model.classes
    if num_classes not in (None, model.config.num_classes):
        tuned.classes = None
    return tuned


def _is_path(name) -> bool:
    """Whether ``name`` means a file rather than a model's name."""
    if isinstance(name, os.PathLike):
        return True
    text = str(name)
    return (
        Path(text).expanduser().exists()
        or text.endswith(PATH_SUFFIXES)
        or text.startswith(("./", "../", "/", "~", ".\\"))
    )


def from_pretrained(
    name, *, num_classes=None, image_size=None, device="cpu", progress=None, cache_dir=None,
    **changes,
) -> ViT:  # fmt: skip
    """A pre-trained ViT, ready: ``name`` is a path, an official checkpoint's name or a timm
    name on the Hub (the module's docstring lists them).

    ``num_classes`` puts a new zero-initialized head of that many classes on
    it, ``image_size`` (a side or ``(H, W)``) resamples its position
    embeddings to that input size: the fine-tuning recipe of Section 3.2.
    ``changes`` set configuration entries that change no weight's shape
    (``dropout=0.1``). ``progress``: download bars (None: on a terminal);
    ``cache_dir``: where official checkpoints are kept. The model is on
    ``device``, in evaluation mode, with ``model.preprocessing`` and
    ``model.classes`` set. Errors are ``PretrainedError`` (a ``CheckpointError``)
    or ``FileNotFoundError``, each naming the file or the name.
    """
    backend.check_device_name(device)
    if _is_path(name):
        model = load_path(name, num_classes, image_size, **changes)
    elif official_key(str(name)) is not None:
        path = download_official(str(name), cache_dir, progress=progress)
        model = load_official_npz(path, num_classes, image_size, **changes)
    else:
        name = ALIASES.get(name, name)
        if name in UNPUBLISHED:
            raise PretrainedError(
                f"no pre-trained weights are published for {name}: tinyvit trains it "
                "(python -m tinyvit.train); the lessons ship one in lessons/models/"
            )
        repo, revision = split_name(name)
        config = hub_file(repo, CONFIG_FILE, revision, progress)
        weights = hub_file(repo, WEIGHTS_FILE, revision, progress)
        model = load_timm(config, weights, repo, num_classes, image_size, **changes)
    if image_size is not None and model.preprocessing is not None:
        model.preprocessing = model.preprocessing.replace(image_size=model.config.image_size)
    return model.to(device).eval()


__all__ = [
    "CheckpointError",
    "PretrainedError",
    "from_pretrained",
    "load_official_npz",
    "load_path",
    "load_timm",
]
