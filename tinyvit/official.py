"""The paper's own checkpoints by name, from Google's public bucket.

The weights of the paper (and of "How to train your ViT", the augreg
study) are ``.npz`` files in the ``vit_models`` bucket: ``imagenet21k/ViT-B_16.npz``
(pre-trained on ImageNet-21k), ``imagenet21k+imagenet2012/ViT-B_16.npz``
(then fine-tuned on ImageNet at 384 x 384), ``augreg/<run>.npz``. A name is
the file's path in the bucket without ``.npz``; the paper's model names
(``ViT-B/16``, ..., ``ViT-H/14``) stand for the checkpoints of its Table 2.

``download_official`` fetches a file into tinyvit's cache
(``$TINYVIT_DATA/vit_models``, else ``~/.cache/tinyvit/vit_models``) with the
machinery of the CIFAR-10 download (``tinyvit.data.download``): resumed
after a cut, size and MD5 checked before the file gets its name, a bad file
set aside. The bucket publishes each file's size and MD5 in the headers of
its answer (``x-goog-hash``); they are read once and kept beside the file,
which is checked against them again at each load.
``interop.load_official`` then reads it.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

from . import files
from .data import DataError, Release, default_root, download_release
from .hub import PretrainedError
from .images import Preprocessing

OFFICIAL_URL = "https://storage.googleapis.com/vit_models/"
CHECKPOINTS = {
    "imagenet21k": ("ViT-B_16", "ViT-B_32", "ViT-L_16", "ViT-L_32", "ViT-H_14"),
    "imagenet21k+imagenet2012": (
        "ViT-B_16", "ViT-B_16-224", "ViT-B_32", "ViT-L_16", "ViT-L_16-224", "ViT-L_32",
    ),
}  # fmt: skip
NAMES = tuple(f"{folder}/{model}" for folder, models in CHECKPOINTS.items() for model in models)
# The paper's names for its models, as fine-tuned on ImageNet (ViT-H/14: pre-trained only).
PAPER_NAMES = {
    "ViT-B/16": "imagenet21k+imagenet2012/ViT-B_16",
    "ViT-B/32": "imagenet21k+imagenet2012/ViT-B_32",
    "ViT-L/16": "imagenet21k+imagenet2012/ViT-L_16",
    "ViT-L/32": "imagenet21k+imagenet2012/ViT-L_32",
    "ViT-H/14": "imagenet21k/ViT-H_14",
}
AUGREG = re.compile(r"augreg/[A-Za-z0-9][A-Za-z0-9_.+\-]*")  # a run of the augreg study
HYBRID = re.compile(r"(imagenet21k|imagenet21k\+imagenet2012)/R\d+\+ViT-.*")


def official_key(name: str) -> str | None:
    """The bucket path (without ``.npz``) that ``name`` stands for, or None when it names no
    official checkpoint; a hybrid (ResNet + ViT) one is refused by name."""
    name = PAPER_NAMES.get(name, name)
    key = name[: -len(".npz")] if name.endswith(".npz") else name
    if HYBRID.fullmatch(key):
        raise PretrainedError(
            f"{name} is a hybrid: a ResNet computes the patches' features before the "
            "Transformer, a layout tinyvit does not build (its patches are pixels)"
        )
    return key if key in NAMES or AUGREG.fullmatch(key) else None


def official_preprocessing(image_size) -> Preprocessing:
    """How the official code feeds its models: the photo resized to the input size (both
    sides, bilinear), values scaled to [-1, 1]."""
    return Preprocessing(
        image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0, "bilinear", crop_mode="squash"
    )


def _md5_of(headers) -> str | None:
    """The hex MD5 of ``x-goog-hash: crc32c=..., md5=<base64>`` headers, if they give one."""
    for header in headers.get_all("x-goog-hash") or []:
        for part in header.split(","):
            kind, _, value = part.strip().partition("=")
            if kind == "md5":
                return base64.b64decode(value).hex()
    return None


def _ask_bucket(url: str, timeout: float) -> tuple[int, str]:
    """``(size, md5)`` of the file at ``url``, from the headers of a HEAD request."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            headers = response.headers
            length = headers.get("x-goog-stored-content-length") or headers.get("Content-Length")
            md5 = _md5_of(headers)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise PretrainedError(
                f"{url} does not exist (404): no such official checkpoint"
            ) from None
        raise PretrainedError(f"could not ask {url} for its size and MD5 ({error})") from None
    except (urllib.error.URLError, OSError) as error:
        raise PretrainedError(
            f"could not reach {url} ({getattr(error, 'reason', error)}) to download it"
        ) from None
    if length is None or md5 is None:
        raise PretrainedError(
            f"{url} gave no size or MD5 in its headers: the download could not be verified"
        )
    return int(length), md5


def release_of(key: str, root: Path, base_url: str, timeout: float) -> Release:
    """The ``Release`` of an official checkpoint: its size and MD5 as the bucket gave them,
    kept in ``<file>.release.json`` beside it from the first download on."""
    folder, _, stem = key.rpartition("/")
    url, name = f"{base_url}{key}.npz", f"{stem}.npz"
    record = root / folder / f"{name}.release.json"
    try:
        kept = json.loads(record.read_text())
        if kept.get("url") == url:
            return Release(url, name, int(kept["size"]), str(kept["md5"]), f"ViT {key}")
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or damaged: ask the bucket again
    size, md5 = _ask_bucket(url, timeout)
    files.atomic_write(
        record, lambda f: f.write(json.dumps({"url": url, "size": size, "md5": md5}).encode())
    )
    return Release(url, name, size, md5, f"ViT {key}")


def download_official(
    name: str, root=None, *, base_url: str | None = None, progress=None, timeout: float = 60.0
) -> Path:
    """The official checkpoint ``name`` in the cache, downloaded (or resumed) and verified.

    ``root`` is the cache (default ``$TINYVIT_DATA/vit_models``, else
    ``~/.cache/tinyvit/vit_models``); ``base_url`` the bucket (default
    ``OFFICIAL_URL``, read when called). A failure is a
    ``PretrainedError`` that says what happened and how to do it by hand.
    """
    key = official_key(name)
    if key is None:
        raise PretrainedError(
            f"{name!r} is not an official checkpoint; known: {', '.join(PAPER_NAMES)}, "
            f"{', '.join(NAMES)}, augreg/<file>"
        )
    root = Path(root) if root is not None else default_root() / "vit_models"
    release = release_of(key, root, base_url or OFFICIAL_URL, timeout)
    by_hand = (
        f"download {release.url} yourself and pass its path to tinyvit.from_pretrained "
        "(or --model)"
    )
    try:
        return download_release(
            release, root / key.rpartition("/")[0], by_hand=by_hand, progress=progress,
            timeout=timeout,
        )  # fmt: skip
    except DataError as error:
        raise PretrainedError(str(error)) from None


__all__ = [
    "CHECKPOINTS",
    "NAMES",
    "OFFICIAL_URL",
    "PAPER_NAMES",
    "download_official",
    "official_key",
    "official_preprocessing",
    "release_of",
]
