"""Your own images: a folder with one subfolder per class, decoded once into a cached array.

The layout is torchvision's ``ImageFolder``: the name of the folder an image
lies in is its class, and the classes are the subfolders' names in sorted
order (their labels 0, 1, 2, ...).

    FOLDER/cat/0001.jpg                 FOLDER/train/cat/0001.jpg
    FOLDER/cat/0002.png       or        FOLDER/train/dog/0001.jpg
    FOLDER/dog/0001.jpg                 FOLDER/val/cat/0107.jpg
    ...                                 FOLDER/val/dog/0093.jpg

With ``train/`` and ``val/`` inside it the split is the folder's own; else
``VAL_FRACTION`` of each class's images are held out for testing, chosen by
a seeded hash of each file's name, so every run (and every machine) holds
out the same files, and adding an image moves no other.

Training reads every image once per epoch, and decoding a JPEG costs more
than a training step of a small model, so the images are decoded once
(``tinyvit.images.read_image``), resized and center-cropped to the model's
resolution (``resize_and_crop``) and kept as one ``uint8`` array ``(N, 3,
H, W)``, CIFAR-10's form, which everything downstream (augmentation,
batches, the trainer) already takes. The array is cached beside the
images, in ``FOLDER/.tinyvit/``, one file per resolution, and reused while
the files are unchanged: the cache is keyed on every file's name, size and
modification time, and on the resizing; a file added, removed or edited
decodes the folder again.

A file with an image's suffix that does not decode is skipped and named in
one line with the count; other files (a ``README.txt``, hidden files) are
ignored. A folder without images, with one class, or with an empty class is
a ``DataError``. The images' normalization is the folder's own: the mean
and standard deviation of each color channel over the training images,
kept in the data set's ``preprocessing`` (and so in the model's checkpoint,
for ``predict`` and the evaluation to use the same).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from .. import files
from .. import progress as bars
from ..checks import as_pair
from ..images import ImageError, Preprocessing, read_image, resize_and_crop
from .cifar10 import ARCHIVE, FOLDER, find_folder
from .errors import DataError

# torchvision's image suffixes (IMG_EXTENSIONS), and GIF: any case.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                  ".gif")  # fmt: skip
SPLITS = ("train", "val")  # the folders of a split made by hand
VAL_FRACTION = 0.2  # of each class's images held out for testing, without val/
SPLIT_SEED = 0
CACHE_FOLDER = ".tinyvit"  # inside the image folder; hidden, so never taken for a class
CACHE_VERSION = 1  # raised when the cache's contents change meaning
SHOWN_SKIPPED = 10  # unreadable files named in the one line, at most
SHOWN_CLASSES = 12  # class names in the log line, at most


class ImageFolder(NamedTuple):
    """A folder of images as arrays: the fields of ``data.CIFAR10``, and the preprocessing."""

    x_train: np.ndarray  # (N, 3, H, W) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray  # (M, 3, H, W) uint8
    y_test: np.ndarray  # (M,) int64
    classes: tuple  # the class folders' names, sorted: label i is classes[i]
    preprocessing: Preprocessing  # how a photo became a row of x: size, resizing, mean, std


# ---------------------------------------------------------------------------
# What a folder holds
# ---------------------------------------------------------------------------


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def is_image(path: Path) -> bool:
    """Whether ``path`` is a visible file with an image's suffix."""
    return path.is_file() and _visible(path) and path.suffix.lower() in IMAGE_SUFFIXES


def _images_in(folder: Path) -> list[Path]:
    """The image files in ``folder`` and below it (hidden files and folders left out), in
    sorted order."""
    found = []
    for path in sorted(folder.rglob("*")):
        inside = path.relative_to(folder).parts
        if is_image(path) and all(not part.startswith(".") for part in inside):
            found.append(path)
    return found


def data_kind(root) -> str:
    """What a data folder holds: ``"cifar10"`` (``cifar-10-batches-bin/`` or the archive,
    or nothing yet: CIFAR-10 is downloaded there) or ``"folder"`` (subfolders: one per
    class); a ``DataError`` saying both for anything else."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return "cifar10"  # data.check_root says what is wrong with it
    if find_folder(root) is not None or (root / ARCHIVE).is_file():
        return "cifar10"
    entries = [p for p in root.iterdir() if _visible(p)]
    if not entries:
        return "cifar10"
    if _subfolders(root):
        return "folder"
    loose = [p.name for p in entries if is_image(p)]
    seen = f"{len(loose)} image files but no subfolders" if loose else "no subfolders"
    raise DataError(
        f"{root} holds neither CIFAR-10 ({FOLDER}/ or {ARCHIVE}) nor one subfolder per class "
        f"of images ({seen}): put each class's images in a folder named after the class, "
        f"{root}/CLASS/IMAGE.jpg (train/ and val/ above them for a split of your own)"
    )


class _Layout(NamedTuple):
    """Where the images of a folder are: ``(file, class index, held out)`` each, sorted."""

    classes: tuple
    files: list  # of (Path, int, bool)
    split: str  # how the split was made, in words


def _class_folders(folder: Path, what: str) -> list[Path]:
    classes = _subfolders(folder)
    if not classes:
        raise DataError(
            f"no class subfolders in {folder}{what}: expected one folder of images per class, "
            f"{folder}/CLASS/IMAGE.jpg"
        )
    return classes


def _check_classes(folder: Path, found: dict, what: str = "") -> None:
    """A ``DataError`` for a folder without images, with one class, or an empty class."""
    if not any(found.values()):
        raise DataError(
            f"no images in {folder}{what}: its class folders ({', '.join(found)}) hold no "
            f"files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    empty = [name for name, paths in found.items() if not paths]
    if empty:
        raise DataError(
            f"the class folder{'s' * (len(empty) > 1)} {', '.join(map(str, empty))} in "
            f"{folder}{what} hold{'s' * (len(empty) == 1)} no images: give every class at "
            "least one, or remove its folder"
        )
    if len(found) < 2:
        raise DataError(
            f"{folder}{what} has one class ({', '.join(found)}): a classifier needs at least "
            "two class folders of images"
        )


def held_out(name: str, seed: int = SPLIT_SEED) -> int:
    """A file's place in the seeded order that picks the held-out images: a hash of its
    name (path inside its class folder) and the seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "big")


def _split_by_hash(paths: list, folder: Path, fraction: float, seed: int) -> set:
    """The files of one class held out for testing: the ``round(fraction * n)`` (at least
    one of two or more) first in the seeded order of ``held_out``."""
    count = min(len(paths) - 1, max(1, round(fraction * len(paths)))) if len(paths) > 1 else 0
    ranked = sorted(paths, key=lambda p: held_out(p.relative_to(folder).as_posix(), seed))
    return set(ranked[:count])


def find_images(root, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> _Layout:
    """The classes of the folder ``root`` and its image files, each with its class and
    whether it is held out for testing (``train/`` and ``val/``, else ``val_fraction``
    of each class by a seeded hash of the file's name)."""
    root = Path(root).expanduser()
    train, val = (root / name for name in SPLITS)
    if train.is_dir() and val.is_dir():
        folders = _class_folders(train, " (train/)")
        classes = tuple(p.name for p in folders)
        found = {p.name: _images_in(p) for p in folders}
        _check_classes(train, found)
        extra = sorted(p.name for p in _subfolders(val) if p.name not in classes)
        if extra:
            raise DataError(
                f"{val} has class folders that {train} lacks ({', '.join(extra)}): the "
                "classes are train/'s, and val/ must use their names"
            )
        tests = [(path, classes.index(p.name), True) for p in _subfolders(val)
                 for path in _images_in(p)]  # fmt: skip
        if not tests:
            raise DataError(f"no images in {val}: the test images go in val/CLASS/")
        files_ = [(path, i, False) for i, name in enumerate(classes) for path in found[name]]
        return _Layout(classes, files_ + tests, "train/ and val/ as given")
    folders = _class_folders(root, "")
    classes = tuple(p.name for p in folders)
    found = {p.name: _images_in(p) for p in folders}
    _check_classes(root, found)
    files_ = []
    for i, folder in enumerate(folders):
        held = _split_by_hash(found[folder.name], folder, val_fraction, seed)
        files_ += [(path, i, path in held) for path in found[folder.name]]
    split = (
        f"no train/ and val/ folders: {val_fraction:.0%} of each class's images held out for "
        f"testing (seeded by {seed}, a hash of each file's name: the same files every run)"
    )
    return _Layout(classes, files_, split)


# ---------------------------------------------------------------------------
# Decoding, and the cache
# ---------------------------------------------------------------------------


def _geometry(preprocessing: Preprocessing) -> dict:
    """What the decoded pixels depend on: the size, the resizing and the crop."""
    p = preprocessing
    return dict(image_size=list(as_pair(p.image_size)), interpolation=p.interpolation,
                crop_pct=p.crop_pct, crop_mode=p.crop_mode)  # fmt: skip


def cache_key(root: Path, layout: _Layout, preprocessing: Preprocessing) -> str:
    """The hex digest that a cache must carry to be reused: every file's name, size and
    modification time, its class and split, the resizing, Pillow's version."""
    entries = []
    for path, label, test in layout.files:
        stat = path.stat()
        entries.append([path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns,
                        label, test])  # fmt: skip
    described = dict(version=CACHE_VERSION, pillow=Image.__version__, classes=layout.classes,
                     geometry=_geometry(preprocessing), files=entries)  # fmt: skip
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


def cache_path(root: Path, preprocessing: Preprocessing) -> Path:
    """``FOLDER/.tinyvit/images-<H>x<W>-<interpolation>-<crop>.npz``: a file per resizing."""
    g = _geometry(preprocessing)
    H, W = g["image_size"]
    crop = "squash" if g["crop_mode"] == "squash" else f"crop{g['crop_pct']:g}"
    return root / CACHE_FOLDER / f"images-{H}x{W}-{g['interpolation']}-{crop}.npz"


def _read_cache(path: Path, key: str):
    """``(images, labels, test, skipped)`` of the cache at ``path`` when it carries ``key``;
    None when it is missing, stale or damaged (it is then made again)."""
    try:
        with np.load(path, allow_pickle=False) as kept:
            if str(kept["key"]) != key:
                return None
            skipped = json.loads(str(kept["skipped"]))
            return kept["images"], kept["labels"], kept["test"], skipped
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _write_cache(path: Path, key: str, images, labels, test, skipped, log) -> None:
    arrays = dict(key=np.array(key), images=images, labels=labels, test=test,
                  skipped=np.array(json.dumps(skipped)))  # fmt: skip

    try:
        files.atomic_write(path, lambda f: np.savez(f, **arrays))  # uncompressed: read fast
    except files.WriteError as error:
        log(f"could not keep the decoded images ({error}): they are decoded again next time")


def decode(layout: _Layout, root: Path, preprocessing: Preprocessing, progress=None):
    """Every file of ``layout`` read, resized and cropped: ``(images (n, 3, H, W) uint8,
    labels (n,) int64, test (n,) bool, skipped [[name, reason], ...])``."""
    H, W = as_pair(preprocessing.image_size)
    images = np.empty((len(layout.files), 3, H, W), np.uint8)
    kept, skipped = [], []
    bar = bars.bar(layout.files, progress=progress, desc=f"decoding {root.name}",
                   unit="image", leave=False)  # fmt: skip
    for n, (path, _, _) in enumerate(bar):
        try:
            rgb = read_image(path)
        except (ImageError, OSError) as error:
            skipped.append([path.relative_to(root).as_posix(), _reason(error)])
            continue
        images[n] = resize_and_crop(rgb, preprocessing).transpose(2, 0, 1)  # (3, H, W)
        kept.append(n)
    labels = np.array([label for _, label, _ in layout.files], np.int64)[kept]
    test = np.array([held for _, _, held in layout.files], bool)[kept]
    return images[kept], labels, test, skipped


def _reason(error: Exception) -> str:
    """Why a file was not read, in a few words."""
    text = str(error)
    if "not an image" in text:
        return "not an image"
    if "truncated" in text or "decoded" in text:
        return "truncated or damaged"
    if "pixels" in text:
        return "too many pixels"
    return type(error).__name__


def skipped_line(skipped) -> str:
    """The one line that names the unreadable files: their count, then the first of them."""
    shown = ", ".join(f"{name} ({why})" for name, why in skipped[:SHOWN_SKIPPED])
    more = f", and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    return f"skipped {len(skipped)} unreadable file{'s' * (len(skipped) != 1)}: {shown}{more}"


# ---------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------


def channel_statistics(images, chunk: int = 1024) -> tuple[tuple, tuple]:
    """The per-channel mean and standard deviation of uint8 images ``(n, 3, H, W)`` on the
    0..1 scale, summed in float64 a chunk at a time."""
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].astype(np.float64) / 255.0  # (k, 3, H, W)
        total += x.sum(axis=(0, 2, 3))
        squares += np.square(x).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std = np.where(std > 1e-3, std, 1.0)  # one flat color per channel: no scaling
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def load_image_folder(
    root, image_size=32, *, interpolation: str = "bicubic", mean=None, std=None,
    val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED, cache: bool = True,
    progress=None, log=print,
) -> ImageFolder:  # fmt: skip
    """The images of the class folders in ``root`` at ``image_size`` (a side, or ``(H, W)``).

    Each image's shorter side is resized to the size (``interpolation``) and
    its center cropped; decoded once and cached in ``root/.tinyvit/`` while
    the files are unchanged (``cache=False``: neither read nor written).
    ``mean`` and ``std`` (three numbers each, on the 0..1 scale) normalize
    the images; by default they are the training images' own. The split is
    ``train/`` and ``val/`` when the folder has them, else ``val_fraction``
    of each class chosen by a hash seeded by ``seed``. ``log`` receives what
    was found, the split, and the files skipped; ``progress``: a bar while
    decoding (None: on a terminal). A folder without images, with one class
    or with an empty class is a ``DataError``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"no folder {root}: expected a folder of class subfolders of images")
    layout = find_images(root, val_fraction, seed)
    geometry = Preprocessing(image_size, (0.5,) * 3, (0.5,) * 3, crop_pct=1.0,
                             interpolation=interpolation)  # fmt: skip
    path = cache_path(root, geometry)
    key = cache_key(root, layout, geometry)
    kept = _read_cache(path, key) if cache else None
    source = f"from the cache {path}"
    if kept is None:
        kept = decode(layout, root, geometry, progress)
        source = "decoded" + (f", kept in {path}" if cache else "")
        if cache:
            _write_cache(path, key, *kept, log=log)
    images, labels, test, skipped = kept
    if skipped:
        log(skipped_line(skipped))
    _check_readable(root, layout, labels, test)
    x_train, y_train = images[~test], labels[~test]
    if mean is None or std is None:
        own_mean, own_std = channel_statistics(x_train)
        mean, std = mean or own_mean, std or own_std
    H, W = as_pair(geometry.image_size)
    names = ", ".join(layout.classes[:SHOWN_CLASSES])
    names += ", ..." if len(layout.classes) > SHOWN_CLASSES else ""
    log(
        f"images: {root}, {len(layout.classes)} classes ({names}), {len(y_train):,} training "
        f"and {int(test.sum()):,} test images at {H} x {W}, {source}"
    )
    log(f"split: {layout.split}")
    preprocessing = geometry.replace(mean=tuple(mean), std=tuple(std))
    return ImageFolder(x_train, y_train, images[test], labels[test], layout.classes,
                       preprocessing)  # fmt: skip


def _check_readable(root: Path, layout: _Layout, labels, test) -> None:
    """A ``DataError`` for a class whose training images were all unreadable, or for no
    test image left."""
    counts = np.bincount(labels[~test], minlength=len(layout.classes))
    empty = [name for name, n in zip(layout.classes, counts) if n == 0]
    if empty:
        raise DataError(
            f"no readable training image of {', '.join(empty)} in {root}: every file of "
            f"{'that class' if len(empty) == 1 else 'those classes'} was skipped"
        )
    if not test.any():
        raise DataError(f"no readable test image in {root}: every held-out file was skipped")


__all__ = [
    "CACHE_FOLDER",
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "SPLITS",
    "VAL_FRACTION",
    "cache_key",
    "cache_path",
    "channel_statistics",
    "data_kind",
    "decode",
    "find_images",
    "held_out",
    "is_image",
    "load_image_folder",
    "skipped_line",
]
