"""Checkpoints: weights and the configuration that rebuilds their model, in one ``.npz``.

``save(model, path)`` writes every parameter under its timm name, plus the
model's configuration as JSON, into a NumPy ``.npz`` archive. The JSON also
keeps how a photo becomes the model's input (its
``tinyvit.images.Preprocessing``: CIFAR-10's mean and standard deviation at
its input size, unless the model says otherwise) and its class names when
it has them; a checkpoint written before these were kept loads with
CIFAR-10's preprocessing, as it was trained. The write is atomic
(``tinyvit.files.atomic_write``): the archive is written to a temporary file
beside the target and renamed over it only when complete, so
an interrupted save never leaves a half-written checkpoint where a good one
was. ``load(path)`` reads it back with ``allow_pickle=False`` (an ``.npz``
then holds nothing but arrays), checks its description, and returns a ready
model; a file that is truncated, foreign or hand-edited into nonsense is a
``CheckpointError`` that names it and says what is wrong.

``write_npz`` and ``read_npz`` are the two halves on their own, for callers
with more to store (the trainer keeps its optimizer state the same way).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from . import backend, files
from .images import Preprocessing, cifar10_preprocessing, preprocessing_of

FORMAT = "tinyvit-checkpoint-1"
META = "__tinyvit__"  # prefix of the entries that are not weights


class CheckpointError(ValueError):
    """A file that is not a (complete) tinyvit checkpoint."""


def write_npz(path, arrays: dict) -> Path:
    """Write ``{name: array}`` to ``path`` atomically (``tinyvit.files.atomic_write``)."""
    arrays = {k: backend.to_numpy(v) for k, v in arrays.items()}
    return files.atomic_write(path, lambda f: np.savez(f, **arrays))


def read_npz(path) -> dict:
    """Every array of an ``.npz`` file, read without pickle; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # every .npz is a zip archive, and every zip starts so
        raise CheckpointError(
            f"{path} ({size:,} bytes) is not an .npz archive but a file of another kind "
            f"(it starts with {magic!r}, not a zip header)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise CheckpointError(
                f"{path} holds Python objects, which tinyvit never loads (pickle can run code)"
            ) from None
        raise CheckpointError(
            f"{path} ({size:,} bytes) is not a complete .npz archive: it is truncated "
            f"or damaged ({error})"
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as error:
        raise CheckpointError(
            f"{path} ({size:,} bytes) is not a complete .npz archive: it is truncated "
            f"or a file of another kind ({type(error).__name__}: {error})"
        ) from None


def save(model, path, extra=None) -> Path:
    """Write ``model``'s weights and configuration to ``path`` (an ``.npz``), atomically.

    ``extra`` may add arrays under other names (they come back from ``read_npz``).
    """
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(
            "save() needs a model that records its configuration (a ViT), "
            f"not {type(model).__name__}"
        )
    state = model.state_dict()
    dtype = next(iter(state.values())).dtype.name if state else "float32"
    meta = {"format": FORMAT, "model": type(model).__name__, "config": dict(config), "dtype": dtype}
    meta["preprocessing"] = preprocessing_of(model).to_dict()
    if getattr(model, "classes", None) is not None:
        meta["classes"] = [str(name) for name in model.classes]
    arrays = {f"{META}/meta": np.array(json.dumps(meta)), **state}
    for name, value in (extra or {}).items():
        if name in arrays:
            raise ValueError(f"save(): extra entry {name!r} would overwrite a weight")
        arrays[name] = value
    return write_npz(path, arrays)


META_FIELDS = {"format": str, "model": str, "config": dict, "dtype": str}


def read_meta(arrays: dict, path="checkpoint") -> dict:
    """The checkpoint's description (format, model kind, configuration, dtype), checked.

    Every way a hand-edited or foreign file can be wrong (not JSON, a missing
    entry, an entry of the wrong type, an unknown format or dtype) is a
    ``CheckpointError`` naming the file and what is wrong.
    """
    key = f"{META}/meta"
    if key not in arrays:
        raise CheckpointError(
            f"{path} is an .npz archive but not a tinyvit checkpoint (no {key} entry); "
            "official Google ViT weights load with tinyvit.interop.load_official()"
        )
    try:
        meta = json.loads(str(arrays[key]))
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{path}: its {key} entry is not valid JSON ({error.msg} at character "
            f"{error.pos}); the file was edited or damaged"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path}: its {key} entry must be a JSON object, not {type(meta).__name__}"
        )
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT!r})"
        )
    for name, kind in META_FIELDS.items():
        if name not in meta:
            raise CheckpointError(f"{path}: its {key} entry has no {name!r}")
        if not isinstance(meta[name], kind):
            raise CheckpointError(
                f"{path}: {name!r} in its {key} entry must be a JSON "
                f"{'object' if kind is dict else 'string'}, not {meta[name]!r}"
            )
    try:
        dtype = np.dtype(meta["dtype"])
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind != "f":
        raise CheckpointError(
            f"{path}: 'dtype' in its {key} entry must name a floating-point type "
            f"such as 'float32', not {meta['dtype']!r}"
        )
    if "preprocessing" in meta:
        try:
            Preprocessing.from_dict(meta["preprocessing"], f"{path}: its preprocessing")
        except ValueError as error:
            raise CheckpointError(str(error)) from None
    classes = meta.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        raise CheckpointError(f"{path}: 'classes' in its {key} entry must be a list of names")
    return meta


def check_finite(arrays: dict, path="checkpoint") -> None:
    """A ``CheckpointError`` naming the first floating-point array that holds NaN or
    infinite values: weights saved from a run whose loss had diverged."""
    for name, value in arrays.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = int(value.size - np.isfinite(value).sum())
            raise CheckpointError(
                f"{path}: {name} holds {bad:,} NaN or infinite value(s) of {value.size:,}; "
                "these weights come from a run whose loss diverged and cannot be used"
            )


def load(path, device="cpu"):
    """Rebuild the model saved at ``path``, load its weights (on ``device``), and return it
    in evaluation mode, as a loaded model is used: no dropout, every patch token
    (``model.train()`` before fine-tuning it). Weights with NaN or infinite values are
    refused (``check_finite``). ``model.preprocessing`` and ``model.classes`` are the
    checkpoint's (for an older one: CIFAR-10's preprocessing, no names)."""
    from .models import KINDS, from_saved  # a ViT or a hybrid, as the checkpoint says

    arrays = read_npz(path)
    meta = read_meta(arrays, path)
    kind = meta["model"]
    if kind not in KINDS:
        raise CheckpointError(
            f"{path}: unknown model kind {kind!r} (expected one of {', '.join(map(repr, KINDS))})"
        )
    try:
        model = from_saved(kind, meta["config"]).to(dtype=np.dtype(meta["dtype"]))
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: its configuration does not build a {kind}: {error}"
        ) from None
    weights = {k: v for k, v in arrays.items() if k in dict(model.named_parameters())}
    check_finite(weights, path)
    try:
        model.load_state_dict(weights)
    except ValueError as error:
        raise CheckpointError(
            f"{path}: the weights do not fit its configuration: {error}"
        ) from None
    if meta.get("classes") is not None and len(meta["classes"]) != model.config.num_classes:
        raise CheckpointError(
            f"{path}: it names {len(meta['classes'])} classes but its head has "
            f"{model.config.num_classes}"
        )
    if "preprocessing" in meta:
        model.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    else:  # written before checkpoints kept it: a model tinyvit trained on CIFAR-10
        model.preprocessing = cifar10_preprocessing(model.config.image_size)
    model.classes = tuple(meta["classes"]) if meta.get("classes") is not None else None
    return model.to(device).eval()
