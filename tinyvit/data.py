"""CIFAR-10: download, verify, read, batch and augment.

Reading. The official binary release (``cifar-10-binary.tar.gz``) unpacks to
a folder ``cifar-10-batches-bin/`` of six files, ``data_batch_1.bin`` …
``data_batch_5.bin`` (training) and ``test_batch.bin``, each 10,000 records
of 3,073 bytes: one label byte, then the 32×32 image as 1,024 red, 1,024
green and 1,024 blue bytes, each plane row by row. So a whole file is one
``(10000, 3073)`` byte matrix, and the images are its last 3,072 columns
reshaped to ``(3, 32, 32)``: no decoding at all.

    data = load_cifar10()                    # or load_cifar10("../shared/data")
    x_train, y_train, x_test, y_test, classes = data

Downloading. When the folder is missing, ``load_cifar10`` fetches the
official archive (resuming a partial download), checks its size and MD5
before anything else touches it, and unpacks only plain files that land
inside the data folder. A folder put there by hand is taken as it is.

Batches and augmentation. ``batches`` shuffles, augments and normalises on
the device of the run; every augmentation here works on a whole batch at
once, in uint8 ``(B, 3, H, W)``, with the array module taken from the images
(NumPy or CuPy). Random *parameters* (offsets, angles, which op) are drawn
on the CPU from a seeded ``numpy.random.Generator``, so a seed gives the same
batches on either device, and a run resumed in the middle of an epoch sees
exactly the batches it would have seen.

Shaped for a GPU, where each operation is a kernel launch and each copy from
the host a round trip through the driver: a batch's random parameters are
all drawn first (``draw_augmentation``), as a few small arrays computed on
the host (RandAugment's per-image affine matrices, blend factors and lookup
tables among them), and they travel to the device with the labels in one
copy (``backend.to_device_together``); the images travel in another. Then
RandAugment applies each round to the whole batch in three passes, one per
family of ops: the geometric ones are one affine resampling (an image that
drew another op gets the identity map), the blends one blend (factor 1 for
the others), the lookup-table ops one table lookup (the identity table for
the others). Each image gets the same pixels as if its op ran on it alone:
about 150 launches for a RandAugment batch instead of about 640.

    for images, targets in batches(x_train, y_train, 128, seed=0, epoch=3):
        ...   # images (128, 3, 32, 32) float32, targets (128,) int64
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import math
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from . import backend
from .backend import device_of, xp_of

# ---------------------------------------------------------------------------
# The official release
# ---------------------------------------------------------------------------

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
SIZE = 170_052_171  # bytes
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"

TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"

IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32  # a label byte, then 3,072 pixel bytes
RECORDS_PER_FILE = 10_000
FILE_BYTES = RECORDS_PER_FILE * RECORD_BYTES  # 30,730,000

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# Per-channel mean and standard deviation of the training images, on the 0..1 scale.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

_CHUNK = 1 << 20  # bytes per read while downloading, hashing and unpacking


class DataError(RuntimeError):
    """The data set is missing, incomplete, or not what it should be."""


class CIFAR10(NamedTuple):
    """The whole data set as NumPy arrays; unpacks as a 5-tuple."""

    x_train: np.ndarray  # (50000, 3, 32, 32) uint8
    y_train: np.ndarray  # (50000,) int64
    x_test: np.ndarray  # (10000, 3, 32, 32) uint8
    y_test: np.ndarray  # (10000,) int64
    classes: tuple  # 10 class names


# ---------------------------------------------------------------------------
# Reading the binary files
# ---------------------------------------------------------------------------


def default_root() -> Path:
    """Where the data lives unless told otherwise: ``$TINYVIT_DATA``, else ``~/.cache/tinyvit``."""
    return Path(os.environ.get("TINYVIT_DATA") or Path.home() / ".cache" / "tinyvit").expanduser()


def find_folder(root) -> Path | None:
    """The folder that holds the batch files under ``root``, or None if there is none yet.

    That is ``root/cifar-10-batches-bin``, or ``root`` itself when it is that
    folder or already holds ``data_batch_1.bin``.
    """
    root = Path(root).expanduser()
    if (root / FOLDER).is_dir():
        return root / FOLDER
    if (root.name == FOLDER and root.is_dir()) or (root / TRAIN_FILES[0]).is_file():
        return root
    return None


def read_batch(path, records: int | None = RECORDS_PER_FILE) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of one batch file.

    The file must hold exactly ``records`` records (10,000, as every official
    file does); ``records=None`` accepts any whole number of them, for small
    files made by tests.
    """
    path = Path(path)
    if not path.is_file():
        size = f" ({records * RECORD_BYTES:,} bytes)" if records else ""
        raise DataError(
            f"missing CIFAR-10 batch file {path}{size}; copy it from the official archive's "
            f"{FOLDER}/ folder"
        )
    size = path.stat().st_size
    if records is None:
        if size == 0 or size % RECORD_BYTES:
            raise DataError(
                f"{path} has {size:,} bytes, not a whole number of {RECORD_BYTES:,}-byte records"
            )
        records = size // RECORD_BYTES
    if size != records * RECORD_BYTES:
        raise DataError(
            f"{path} has {size:,} bytes, expected {records * RECORD_BYTES:,} "
            f"({records:,} records of {RECORD_BYTES:,} bytes): the file is truncated "
            "or not a CIFAR-10 batch file; replace it with the one from the official archive"
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(records, RECORD_BYTES)
    labels = raw[:, 0].astype(np.int64)  # (N,)
    images = np.ascontiguousarray(raw[:, 1:]).reshape(records, *IMAGE_SHAPE)  # (N, 3, 32, 32)
    return images, labels


def read_classes(path) -> tuple[str, ...]:
    """The class names in ``batches.meta.txt``, one a line (blank lines ignored).

    A folder without the file gets the official names.
    """
    path = Path(path)
    if not path.is_file():
        return CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise DataError(f"{path} lists no class names")
    return names


def load_cifar10(root=None, download: bool = True, *, records: int = RECORDS_PER_FILE) -> CIFAR10:
    """Read CIFAR-10 from ``root`` (default: ``default_root()``), downloading it if missing.

    ``root`` may be the folder that contains ``cifar-10-batches-bin/`` or
    that folder itself. ``records`` is the number of records per file the
    reader insists on (10,000; tests pass smaller numbers for small files).
    """
    root = Path(root).expanduser() if root is not None else default_root()
    folder = find_folder(root)
    if folder is None:
        if not download:
            raise DataError(
                f"no CIFAR-10 data under {root} (looked for {root / FOLDER / TRAIN_FILES[0]}). "
                f"Pass download=True to fetch it, or install it by hand: {_by_hand(root)}"
            )
        folder = download_cifar10(root)

    classes = read_classes(folder / META_FILE)
    train = [read_batch(folder / name, records) for name in TRAIN_FILES]
    x_test, y_test = read_batch(folder / TEST_FILE, records)
    x_train = np.concatenate([images for images, _ in train])  # (5 * records, 3, 32, 32)
    y_train = np.concatenate([labels for _, labels in train])
    for name, labels in (("training", y_train), ("test", y_test)):
        if labels.max() >= len(classes):
            raise DataError(
                f"the {name} labels in {folder} go up to {labels.max()}, but "
                f"{folder / META_FILE} names only {len(classes)} classes"
            )
    return CIFAR10(x_train, y_train, x_test, y_test, classes)


# ---------------------------------------------------------------------------
# Downloading, verifying and unpacking the official archive
# ---------------------------------------------------------------------------


def _by_hand(root: Path) -> str:
    """How to put the files in place without this module's download."""
    return (
        f"on a machine with internet, download {URL}, unpack it, and put the folder "
        f"{FOLDER}/ it contains (data_batch_1.bin ... data_batch_5.bin, test_batch.bin, "
        f"{META_FILE}) at {Path(root) / FOLDER}; or point $TINYVIT_DATA or the root "
        "argument (--data-dir) at a folder that holds it"
    )


def md5sum(path) -> str:
    """The MD5 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_cifar10(
    root=None, url=URL, size=SIZE, md5=MD5, progress: bool = True, timeout: float = 60.0
) -> Path:
    """Download, verify and unpack the official archive into ``root``; return the batch folder.

    The bytes go to ``cifar-10-binary.tar.gz.part`` first; an interrupted
    download resumes from where it stopped (an HTTP ``Range`` request). The
    size and MD5 are checked before the file is renamed to its final name or
    unpacked; an archive that fails is moved aside to ``….bad-<md5 prefix>``
    and never used.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    root.mkdir(parents=True, exist_ok=True)
    if (root / FOLDER).is_dir():
        return root / FOLDER
    archive = root / ARCHIVE
    if not archive.is_file():
        part = root / (ARCHIVE + ".part")
        if not part.is_file() or part.stat().st_size < size:  # else: all there, just verify
            _fetch(url, part, size, progress, timeout, root)
        _verify(part, url, size, md5, root)
        os.replace(part, archive)
    else:  # kept from an earlier run: check it again before trusting it
        _verify(archive, url, size, md5, root)
    return extract_cifar10(archive, root)


def _fetch(url, part: Path, size: int, progress: bool, timeout: float, root: Path) -> None:
    """Append the rest of ``url`` to ``part`` (or start it afresh); errors say what to do."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    expected = None  # the length the server promised, when it said
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 206:  # the whole file (the server ignored Range): start over
                have = 0
            length = response.headers.get("Content-Length")
            if length is not None:
                expected = have + int(length)
            bar = tqdm(
                total=expected or size,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="CIFAR-10",
                disable=not progress,
            )
            with open(part, "ab" if have else "wb") as f, bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after byte `have`: the part is whole already
            return  # (or too long); the size and MD5 check judges it
        raise _download_failed(url, part, root, error) from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise _download_failed(url, part, root, error) from error
    got = part.stat().st_size
    if expected is not None and got < expected:
        raise DataError(
            f"the download from {url} stopped after {got:,} of {expected:,} bytes; "
            f"{part} is kept and the next try resumes from there"
        )


def _download_failed(url, part: Path, root: Path, error) -> DataError:
    """The error for a download that could not run: what happened, and the way by hand."""
    kept = (
        f" The partial download {part} is kept; the next try resumes it." if part.is_file() else ""
    )
    return DataError(
        f"could not download CIFAR-10 from {url} ({error}).{kept} "
        f"To install it by hand: {_by_hand(root)}."
    )


def _verify(path: Path, url: str, size: int, md5: str, root: Path) -> None:
    """Check size and MD5; a file that fails is moved aside (never used) and reported."""
    got_size = path.stat().st_size
    got_md5 = md5sum(path)
    if got_size != size:
        problem = f"{got_size:,} bytes where {size:,} were expected"
    elif got_md5 != md5:
        problem = f"MD5 {got_md5} where {md5} was expected"
    else:
        return
    bad = path.with_name(f"{ARCHIVE}.bad-{got_md5[:8]}")
    os.replace(path, bad)
    raise DataError(
        f"the archive downloaded from {url} is not the expected CIFAR-10 release: it has "
        f"{problem}. It was moved aside to {bad} (kept for inspection, never used) and "
        f"nothing was unpacked. Run again to download it afresh, or install it by hand: "
        f"{_by_hand(root)}."
    )


def _member_target(member: tarfile.TarInfo, archive: Path, into: Path) -> Path:
    """Where a tar member goes inside ``into``; DataError for anything but a safe file or folder."""
    name = member.name
    if not (member.isfile() or member.isdir()):
        kind = (
            "a symbolic link"
            if member.issym()
            else "a hard link"
            if member.islnk()
            else "a device or other special file"
        )
        raise DataError(
            f"{archive} holds {name!r}, {kind}: refusing to unpack an archive with anything "
            "but plain files and folders"
        )
    path = PurePosixPath(name.replace("\\", "/"))
    target = (into / path).resolve()
    if path.is_absolute() or ".." in path.parts or not target.is_relative_to(into.resolve()):
        raise DataError(
            f"{archive} holds {name!r}, which would land outside the folder it is unpacked "
            "into: refusing to unpack it"
        )
    return target


def extract_cifar10(archive, root) -> Path:
    """Unpack ``archive`` into ``root`` and return ``root/cifar-10-batches-bin``.

    Only plain files and folders are unpacked, each only if its path stays
    inside ``root``; anything else (absolute paths, ``..``, links, devices)
    refuses the whole archive. Files go to a temporary folder inside ``root``
    first and the batch folder is renamed into place at the end, so a
    half-unpacked folder is never mistaken for a good one.
    """
    archive, root = Path(archive), Path(root)
    folder = root / FOLDER
    staging = Path(tempfile.mkdtemp(prefix=".cifar-10-unpacking-", dir=root))
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                target = _member_target(member, archive, staging)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
        unpacked = staging / FOLDER
        if not (unpacked / TRAIN_FILES[0]).is_file():
            raise DataError(f"{archive} holds no {FOLDER}/{TRAIN_FILES[0]}: it is not CIFAR-10")
        if folder.exists():
            raise DataError(f"{folder} appeared while {archive} was being unpacked; left as it is")
        os.replace(unpacked, folder)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"could not unpack {archive} into {root}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------
# From bytes to network inputs
# ---------------------------------------------------------------------------


def normalize(images, mean=MEAN, std=STD, dtype=np.float32):
    """uint8 images ``(B, C, H, W)`` to ``(x / 255 - mean) / std`` per channel, in ``dtype``."""
    xp = xp_of(images)
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"images have {channels} channels, but mean/std have {len(mean)}/{len(std)}"
        )
    scale, shift = _normalisation(xp, np.dtype(dtype), tuple(mean), tuple(std))
    out = images.astype(dtype)  # (B, C, H, W)
    out *= scale
    out += shift
    return out


@functools.lru_cache(maxsize=16)
def _normalisation(xp, dtype, mean, std):
    """``normalize``'s scale and shift, ``(1, C, 1, 1)`` each, made once per device and dtype
    (on a GPU, not copied over again with every batch)."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    # One multiply and one add: x * 1/(255 std) - mean/std.
    scale = xp.asarray(1.0 / (255.0 * std), dtype=dtype).reshape(1, len(mean), 1, 1)
    shift = xp.asarray(-mean / std, dtype=dtype).reshape(1, len(mean), 1, 1)
    return scale, shift


def _per_image(value, n: int, dtype=np.float32) -> np.ndarray:
    """A number, or one number per image, as a NumPy array of length ``n``."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=dtype), (n,)))


def _check_uint8(images) -> None:
    if images.ndim != 4 or images.dtype != np.uint8:
        raise TypeError(
            f"expected uint8 images (B, C, H, W), got shape {tuple(images.shape)}, {images.dtype}"
        )


# ---------------------------------------------------------------------------
# The basic augmentation: random crop of a padded image, horizontal flip
# ---------------------------------------------------------------------------


def random_crop(images, padding: int, rng: np.random.Generator, fill: int = 0):
    """Pad each image by ``padding`` pixels of ``fill`` and cut a random window of the old size.

    No loop over images: a strided *view* holds every window position of
    the padded batch, ``(B, C, 2p+1, 2p+1, H, W)``, without copying, and one
    fancy index picks a position per image.
    """
    xp = xp_of(images)
    b = images.shape[0]
    p = int(padding)
    if p == 0:
        return images.copy()
    top, left = _draw_crop(rng, b, p)
    top, left, rows = (xp.asarray(a) for a in (top, left, np.arange(b)))
    return _crop(images, p, top, left, rows, fill)


def _draw_crop(rng, n, padding):
    """``random_crop``'s draw: the top and the left corner of each image's window."""
    offsets = rng.integers(0, 2 * padding + 1, size=(2, n))
    return offsets[0], offsets[1]


def _crop(images, p, top, left, rows, fill=0):
    """``random_crop`` with its draws made: ``top``, ``left`` and ``rows`` (``0 .. B-1``) are
    arrays on the images' device."""
    xp = xp_of(images)
    b, c, h, w = images.shape
    padded = xp.pad(images, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    sb, sc, sh, sw = padded.strides  # (B, C, H + 2p, W + 2p)
    windows = xp.lib.stride_tricks.as_strided(
        padded, shape=(b, c, 2 * p + 1, 2 * p + 1, h, w), strides=(sb, sc, sh, sw, sh, sw)
    )
    return xp.ascontiguousarray(windows[rows, :, top, left])  # (B, C, H, W)


def horizontal_flip(images, rng: np.random.Generator, p: float = 0.5):
    """Mirror each image left-right with probability ``p``."""
    flip = xp_of(images).asarray(_draw_flip(rng, images.shape[0], p))  # (B,)
    return _flip(images, flip)


def _draw_flip(rng, n, p=0.5):
    """``horizontal_flip``'s draw: which of ``n`` images are mirrored, ``(n,)`` bool."""
    return rng.random(n) < p


def _flip(images, flip):
    """``horizontal_flip`` with its draw made: ``flip`` is ``(B,)`` bool on the images' device."""
    return xp_of(images).where(flip[:, None, None, None], images[..., ::-1], images)


# ---------------------------------------------------------------------------
# RandAugment's operations, each on a uint8 batch (B, C, H, W).
#
# A per-image argument is a number, or a NumPy array with one value per image.
# The colour operations follow Pillow's ImageOps / ImageEnhance (integer grey
# levels, results truncated to uint8), as torchvision and timm do.
# ---------------------------------------------------------------------------


def _gray(images, xp):
    """Pillow's luma, ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``: int32 ``(B, H, W)``."""
    rgb = images.astype(xp.int32)
    return (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16


def _blend(degenerate, images, factor):
    """``degenerate + factor * (images - degenerate)``, clipped and truncated to uint8.

    factor 1 gives the images back, 0 the degenerate image, and > 1
    extrapolates away from it (more contrast, more colour, sharper).
    """
    xp = xp_of(images)
    if not isinstance(factor, xp.ndarray):  # numbers from the host (a batch's plan is there)
        factor = xp.asarray(_per_image(factor, images.shape[0]))
    factor = factor.reshape(-1, 1, 1, 1)
    degenerate = degenerate.astype(xp.float32)  # never float64
    out = degenerate + factor * (images.astype(xp.float32) - degenerate)
    return xp.clip(out, 0, 255).astype(xp.uint8)


def identity(images):
    """The images as they are (RandAugment draws it like any other op)."""
    return images


def brightness(images, factor):
    """Scale every pixel by ``factor``: 0 is black, 1 the image, 2 twice as bright."""
    xp = xp_of(images)
    return _blend(xp.zeros((1, 1, 1, 1), xp.float32), images, factor)


def color(images, factor):
    """Saturation: blend with the image's grey version (0 grey, 1 the image, 2 more vivid)."""
    xp = xp_of(images)
    return _blend(_gray(images, xp)[:, None], images, factor)  # grey (B, 1, H, W)


def contrast(images, factor):
    """Blend with the mean grey level of each image (0 flat grey, 1 the image)."""
    return _blend(_mean_gray(_gray(images, xp_of(images))), images, factor)


def _mean_gray(gray):
    """Each image's mean grey level ``(B, 1, 1, 1)``, rounded half up as Pillow does."""
    xp = xp_of(gray)
    pixels = gray.shape[1] * gray.shape[2]
    total = gray.sum(axis=(1, 2), dtype=xp.int64)
    return ((2 * total + pixels) // (2 * pixels)).reshape(-1, 1, 1, 1)


def sharpness(images, factor):
    """Blend with a smoothed image (0 blurred, 1 the image, 2 sharper); borders stay as they are.

    The smoothing is Pillow's SMOOTH filter: weight 5 at the centre, 1 on the
    eight neighbours, divided by 13 and rounded.
    """
    return _blend(_smooth(images), images, factor)


def _smooth(images):
    """Pillow's SMOOTH filter on the inside of each channel, int32 ``(B, C, H, W)``."""
    xp = xp_of(images)
    x = images.astype(xp.int32)
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]  # (B, C, H-2, W): vertical 3-sums
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (B, C, H-2, W-2): 3x3 sums
    total = box + 4 * x[:, :, 1:-1, 1:-1]  # centre weight 5 = 1 in the box + 4
    smooth = x.copy()
    smooth[:, :, 1:-1, 1:-1] = (2 * total + 13) // 26  # total / 13, rounded half up
    return smooth


def posterize(images, bits):
    """Keep the top ``bits`` bits of every value (8 keeps the image, 1 leaves two levels)."""
    xp = xp_of(images)
    bits = _per_image(bits, images.shape[0], np.int64)
    mask = ((0xFF << (8 - bits)) & 0xFF).astype(np.uint8)  # (B,)
    return images & xp.asarray(mask).reshape(-1, 1, 1, 1)


def solarize(images, threshold):
    """Invert every value at or above ``threshold`` (256 keeps the image, 0 inverts it all)."""
    xp = xp_of(images)
    threshold = xp.asarray(_per_image(threshold, images.shape[0])).reshape(-1, 1, 1, 1)
    return xp.where(images >= threshold, 255 - images, images)


def _lut_index(images):
    """``channel * 256 + value`` for every pixel: int64 ``(B*C, H*W)``, one row per channel."""
    xp = xp_of(images)
    b, c, h, w = images.shape
    return _channel_rows(xp, b * c) + images.reshape(b * c, h * w).astype(xp.int64)


@functools.lru_cache(maxsize=16)
def _channel_rows(xp, channels):
    """``channel * 256`` for each of ``channels`` channels, ``(channels, 1)`` int64, made once."""
    return xp.arange(channels, dtype=xp.int64)[:, None] * 256


def _apply_lut(images, lut, index):
    """Each pixel's new value from its channel's row of ``lut`` ``(B*C, 256)``."""
    xp = xp_of(images)
    lut = xp.clip(lut, 0, 255).astype(xp.uint8)
    return lut.ravel()[index].reshape(images.shape)  # (B, C, H, W)


def autocontrast(images):
    """Stretch each channel of each image so its darkest value is 0 and its brightest 255.

    As Pillow's ``ImageOps.autocontrast``: a lookup table per channel,
    ``lut[v] = int(v * scale + offset)`` with ``scale = 255 / (high - low)``
    and ``offset = -low * scale``; a flat channel stays as it is.
    """
    return _apply_lut(images, _autocontrast_lut(images), _lut_index(images))


def _autocontrast_lut(images):
    """``autocontrast``'s lookup tables, int64 ``(B*C, 256)``."""
    xp = xp_of(images)
    b, c, _, _ = images.shape
    low = images.min(axis=(2, 3)).reshape(b * c, 1).astype(xp.float64)  # (B*C, 1)
    high = images.max(axis=(2, 3)).reshape(b * c, 1).astype(xp.float64)
    flat = high <= low
    scale = 255.0 / xp.where(flat, 1.0, high - low)
    offset = -low * scale
    value = xp.arange(256, dtype=xp.float64)[None, :]  # (1, 256); the table is float64, tiny
    return xp.where(flat, value, value * scale + offset).astype(xp.int64)  # truncated


def equalize(images):
    """Histogram equalisation of each channel of each image (Pillow's ``ImageOps.equalize``).

    All B*C histograms come from one ``bincount`` over ``channel * 256 +
    value``; the same index then reads each pixel's new value from its
    channel's lookup table.
    """
    index = _lut_index(images)  # (B*C, H*W)
    return _apply_lut(images, _equalize_lut(images, index), index)


def _equalize_lut(images, index):
    """``equalize``'s lookup tables, int64 ``(B*C, 256)``, from ``_lut_index(images)``."""
    xp = xp_of(images)
    b, c, h, w = images.shape
    hist = xp.bincount(index.ravel(), minlength=b * c * 256).reshape(b * c, 256)
    # Pillow: step = (pixels - count of the brightest value present) // 255,
    # lut[v] = (pixels below v + step // 2) // step, and no change where step is 0.
    brightest = images.reshape(b * c, h * w).max(axis=1).astype(xp.int64)  # (B*C,)
    last = xp.take_along_axis(hist, brightest[:, None], axis=1)[:, 0]
    step = (h * w - last) // 255  # (B*C,)
    below = xp.cumsum(hist, axis=1) - hist  # (B*C, 256): pixels darker than each value
    lut = (below + (step // 2)[:, None]) // xp.maximum(step, 1)[:, None]
    return xp.where(step[:, None] > 0, lut, xp.arange(256)[None, :])


@functools.lru_cache(maxsize=16)
def _pixel_grid(xp, b, c, h, w):
    """Constants of ``affine`` for ``(B, C, H, W)`` images, made once per device and shape.

    ``x`` ``(1, W)`` and ``y`` ``(H, 1)``: pixel positions from the image centre;
    ``centre`` ``(1, 2, 1, 1)``: the centre's own position, x then y; ``size``
    ``(1, 2, 1, 1)``: the width and height; ``planes`` ``(B, C, 1, 1)``: where
    each channel of each image starts in the flat batch.
    """
    y = xp.arange(h, dtype=xp.float32)[:, None] - (h - 1) / 2  # (H, 1)
    x = xp.arange(w, dtype=xp.float32)[None, :] - (w - 1) / 2  # (1, W)
    centre = xp.asarray([(w - 1) / 2, (h - 1) / 2], dtype=xp.float32).reshape(1, 2, 1, 1)
    size = xp.asarray([w, h], dtype=xp.int32).reshape(1, 2, 1, 1)
    planes = xp.arange(b * c, dtype=xp.int32).reshape(b, c, 1, 1) * (h * w)
    return x, y, centre, size, planes


def affine(images, matrices, fill: int = 0):
    """Resample each image through its own affine map (nearest neighbour).

    ``matrices`` is ``(B, 2, 3)`` (or one ``(2, 3)`` for all), a NumPy array
    or one on the images' device: output pixel ``(x, y)``, measured from the
    image centre, takes its value from input point ``matrices @ (x, y, 1)``,
    also from the centre. Points that fall outside the image get ``fill``.
    """
    xp = xp_of(images)
    b, c, h, w = images.shape
    if not isinstance(matrices, xp.ndarray):  # from the host
        matrices = xp.asarray(
            np.ascontiguousarray(np.broadcast_to(np.asarray(matrices, np.float32), (b, 2, 3)))
        )
    x, y, centre, size, planes = _pixel_grid(xp, b, c, h, w)
    m = matrices[:, :, :, None, None]  # (B, 2, 3, 1, 1) to broadcast over the pixel grid
    # Both source coordinates at once, x then y: (B, 2, H, W).
    source = m[:, :, 0] * x + m[:, :, 1] * y + m[:, :, 2] + centre
    nearest = xp.floor(source + 0.5).astype(xp.int32)  # (B, 2, H, W)
    inside = ((nearest >= 0) & (nearest < size)).all(axis=1)  # (B, H, W)
    nearest = xp.clip(nearest, 0, size - 1)
    pixel = nearest[:, 1] * w + nearest[:, 0]  # (B, H, W): row * W + column
    out = images.reshape(-1).take(planes + pixel[:, None])  # (B, C, H, W)
    return xp.where(inside[:, None], out, images.dtype.type(fill))


def _matrices(n, a=0.0, b=0.0, c=0.0, d=0.0, e=0.0, f=0.0):
    """Per-image inverse maps ``[[a, b, c], [d, e, f]]`` as a NumPy array ``(n, 2, 3)``."""
    rows = [_per_image(v, n, np.float64) for v in (a, b, c, d, e, f)]
    return np.stack(rows, axis=-1).reshape(n, 2, 3)


def rotate(images, degrees, fill: int = 0):
    """Rotate counter-clockwise (as seen on screen) by ``degrees`` about the centre."""
    t = np.radians(_per_image(degrees, images.shape[0], np.float64))
    cos, sin = np.cos(t), np.sin(t)
    return affine(images, _matrices(len(t), cos, -sin, 0, sin, cos, 0), fill)


def shear_x(images, factor, fill: int = 0):
    """Slide each row sideways by ``factor`` times its distance below the centre row."""
    return affine(images, _matrices(images.shape[0], 1, -np.asarray(factor), 0, 0, 1, 0), fill)


def shear_y(images, factor, fill: int = 0):
    """Slide each column down by ``factor`` times its distance right of the centre column."""
    return affine(images, _matrices(images.shape[0], 1, 0, 0, -np.asarray(factor), 1, 0), fill)


def translate_x(images, pixels, fill: int = 0):
    """Move the picture right by ``pixels`` (left if negative)."""
    return affine(images, _matrices(images.shape[0], 1, 0, -np.asarray(pixels), 0, 1, 0), fill)


def translate_y(images, pixels, fill: int = 0):
    """Move the picture down by ``pixels`` (up if negative)."""
    return affine(images, _matrices(images.shape[0], 1, 0, 0, 0, 1, -np.asarray(pixels)), fill)


# RandAugment (Cubuk et al. 2020) with torchvision's ranges: op(images, m, signs,
# fill), where m in [0, 1] is the magnitude's fraction of its range and signs
# holds +1 or -1 per image for the ops that go both ways.
RAND_AUGMENT_OPS = {
    "identity": lambda x, m, s, fill: identity(x),
    "shear_x": lambda x, m, s, fill: shear_x(x, 0.3 * m * s, fill),
    "shear_y": lambda x, m, s, fill: shear_y(x, 0.3 * m * s, fill),
    "translate_x": lambda x, m, s, fill: translate_x(x, 150 / 331 * x.shape[3] * m * s, fill),
    "translate_y": lambda x, m, s, fill: translate_y(x, 150 / 331 * x.shape[2] * m * s, fill),
    "rotate": lambda x, m, s, fill: rotate(x, 30.0 * m * s, fill),
    "brightness": lambda x, m, s, fill: brightness(x, 1 + 0.9 * m * s),
    "color": lambda x, m, s, fill: color(x, 1 + 0.9 * m * s),
    "contrast": lambda x, m, s, fill: contrast(x, 1 + 0.9 * m * s),
    "sharpness": lambda x, m, s, fill: sharpness(x, 1 + 0.9 * m * s),
    "posterize": lambda x, m, s, fill: posterize(x, 8 - int(round(4 * m))),
    "solarize": lambda x, m, s, fill: solarize(x, 255.0 * (1 - m)),
    "autocontrast": lambda x, m, s, fill: autocontrast(x),
    "equalize": lambda x, m, s, fill: equalize(x),
}


def rand_augment(
    images,
    rng: np.random.Generator,
    num_ops: int = 2,
    magnitude: float = 9,
    num_magnitude_bins: int = 31,
    fill: int = 128,
    ops=None,
):
    """RandAugment: ``num_ops`` rounds, each applying one random op to each image.

    Each image draws its own op every round (uniformly from ``ops``, default
    all 14 of ``RAND_AUGMENT_OPS``); every op then runs once on the images
    that drew it. The strength is ``magnitude`` on torchvision's scale of
    ``num_magnitude_bins - 1`` steps (9 of 30: rotations of 9 degrees);
    timm and the paper count to 10, which is ``num_magnitude_bins=11``.
    Geometric ops fill uncovered pixels with ``fill`` (128, grey, is about 0
    once normalised).
    """
    _check_uint8(images)
    plan = _draw_rand_augment(rng, images.shape, num_ops, magnitude, num_magnitude_bins, ops)
    return _apply_rand_augment(images, plan, _on_device(plan, images), fill)


def _on_device(plan, images):
    """A plan's arrays, on the images' device in one copy: ``{name: array}``."""
    names = list(plan["arrays"])
    moved = backend.to_device_together([plan["arrays"][k] for k in names], device_of(images))
    return dict(zip(names, moved))


GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
BLENDS = ("brightness", "color", "contrast", "sharpness")
TABLES = ("posterize", "solarize", "autocontrast", "equalize")


def _draw_rand_augment(rng, shape, num_ops, magnitude, num_magnitude_bins, ops, prefix="ra"):
    """RandAugment's draws for a batch of ``shape``, and each round as per-image arrays.

    Round ``r`` is ``{prefix}{r}.matrix`` ``(B, 2, 3)`` (the geometric op's
    map, the identity for other images), ``.factor`` ``(B,)`` (the blend's,
    1 for others), ``.color``, ``.contrast``, ``.sharpness`` ``(B, 1, 1, 1)``
    (which blend), ``.table`` ``(B, 256)`` uint8 (posterize's or solarize's
    lookup table, the identity for others), ``.autocontrast`` and
    ``.equalize`` ``(B, 1, 1)`` (whose tables come from the image). All
    computed here, on the host, with the ops' own formulas.
    """
    names = tuple(RAND_AUGMENT_OPS) if ops is None else tuple(ops)
    unknown = [name for name in names if name not in RAND_AUGMENT_OPS]
    if unknown or not names:
        raise ValueError(
            f"unknown RandAugment ops {unknown}: choose from {tuple(RAND_AUGMENT_OPS)}"
        )
    if not 0 <= magnitude <= num_magnitude_bins - 1:
        raise ValueError(f"magnitude {magnitude} is outside 0..{num_magnitude_bins - 1}")
    m = magnitude / (num_magnitude_bins - 1)
    n, _, h, w = shape
    arrays, rounds = {}, []
    for r in range(num_ops):
        choice = rng.integers(0, len(names), size=n)  # (B,) one op per image
        signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)  # (B,)
        drawn = {name: np.flatnonzero(choice == k) for k, name in enumerate(names)}
        drawn = {name: chosen for name, chosen in drawn.items() if chosen.size}
        matrix = np.broadcast_to(np.eye(2, 3), (n, 2, 3)).copy()  # (B, 2, 3)
        factor = np.ones(n, dtype=np.float32)
        table = np.broadcast_to(np.arange(256, dtype=np.uint8), (n, 256)).copy()
        for name, chosen in drawn.items():
            s = signs[chosen]
            if name in GEOMETRIC:
                matrix[chosen] = _geometric_matrices(name, m, s, h, w)
            elif name in BLENDS:
                factor[chosen] = _per_image(1 + 0.9 * m * s, chosen.size)
            elif name == "posterize":
                bits = 8 - int(round(4 * m))
                table[chosen] = np.arange(256, dtype=np.uint8) & ((0xFF << (8 - bits)) & 0xFF)
            elif name == "solarize":
                value = np.arange(256, dtype=np.uint8)
                flipped = value >= np.float32(255.0 * (1 - m))
                table[chosen] = np.where(flipped, 255 - value, value)
        key = f"{prefix}{r}."
        arrays[key + "matrix"] = matrix.astype(np.float32)
        arrays[key + "factor"] = factor
        arrays[key + "table"] = table
        for name in ("color", "contrast", "sharpness", "autocontrast", "equalize"):
            mask = np.zeros(n, dtype=bool)
            mask[drawn.get(name, [])] = True
            arrays[key + name] = mask.reshape(n, 1, 1) if name in TABLES else mask.reshape(
                n, 1, 1, 1
            )
        rounds.append({name: name in drawn for name in names})
    return {"rounds": rounds, "prefix": prefix, "arrays": arrays}


def _geometric_matrices(name, m, s, h, w):
    """The per-image maps of a geometric op of RandAugment, float64 ``(len(s), 2, 3)``,
    as ``RAND_AUGMENT_OPS`` and the op itself compute them."""
    if name == "shear_x":
        return _matrices(len(s), 1, -np.asarray(0.3 * m * s), 0, 0, 1, 0)
    if name == "shear_y":
        return _matrices(len(s), 1, 0, 0, -np.asarray(0.3 * m * s), 1, 0)
    if name == "translate_x":
        return _matrices(len(s), 1, 0, -np.asarray(150 / 331 * w * m * s), 0, 1, 0)
    if name == "translate_y":
        return _matrices(len(s), 1, 0, 0, 0, 1, -np.asarray(150 / 331 * h * m * s))
    t = np.radians(_per_image(30.0 * m * s, len(s), np.float64))  # rotate
    cos, sin = np.cos(t), np.sin(t)
    return _matrices(len(t), cos, -sin, 0, sin, cos, 0)


def _apply_rand_augment(images, plan, on_device, fill):
    """Each round of a drawn RandAugment on the whole batch: one affine resampling, one
    blend and one table lookup (each skipped when no image drew an op of its family)."""
    xp = xp_of(images)
    b, c, _, _ = images.shape
    out = images.copy()
    for r, drawn in enumerate(plan["rounds"]):
        key = f"{plan['prefix']}{r}."
        a = {k[len(key) :]: v for k, v in on_device.items() if k.startswith(key)}  # this round's
        if any(drawn.get(name) for name in GEOMETRIC):
            out = affine(out, a["matrix"], fill)
        if any(drawn.get(name) for name in BLENDS):
            degenerate = xp.zeros((1, 1, 1, 1), xp.int32)  # brightness blends with black
            if drawn.get("color") or drawn.get("contrast"):
                gray = _gray(out, xp)  # (B, H, W)
                if drawn.get("color"):
                    degenerate = xp.where(a["color"], gray[:, None], degenerate)
                if drawn.get("contrast"):
                    degenerate = xp.where(a["contrast"], _mean_gray(gray), degenerate)
            if drawn.get("sharpness"):
                degenerate = xp.where(a["sharpness"], _smooth(out), degenerate)
            out = _blend(degenerate, out, a["factor"])
        if any(drawn.get(name) for name in TABLES):
            lut = a["table"][:, None, :]  # (B, 1, 256): the same table for every channel
            index = _lut_index(out)  # (B*C, H*W)
            if drawn.get("autocontrast"):
                lut = xp.where(a["autocontrast"], _autocontrast_lut(out).reshape(b, c, 256), lut)
            if drawn.get("equalize"):
                equalized = _equalize_lut(out, index).reshape(b, c, 256)
                lut = xp.where(a["equalize"], equalized, lut)
            lut = xp.broadcast_to(lut, (b, c, 256)).reshape(b * c, 256)  # (B*C, 256)
            out = _apply_lut(out, lut, index)
    return out


# ---------------------------------------------------------------------------
# Mixing two images and their labels
# ---------------------------------------------------------------------------


def one_hot(labels, num_classes: int, dtype=np.float32):
    """Integer labels ``(B,)`` to rows of a ``(B, num_classes)`` identity matrix."""
    xp = xp_of(labels)
    return xp.eye(num_classes, dtype=dtype)[labels]


def _as_targets(labels, num_classes: int, dtype):
    """Integer labels ``(B,)`` as one-hot rows, or probabilities ``(B, K)`` as they are."""
    return labels.astype(dtype) if labels.ndim == 2 else one_hot(labels, num_classes, dtype)


def _float_type(images):
    """The scalar type for mixing weights: the images' own float type, else float32."""
    return images.dtype.type if images.dtype.kind == "f" else np.float32


def mixup(images, labels, alpha: float, rng: np.random.Generator, num_classes: int = 10):
    """Mixup (Zhang et al. 2018): ``lam x + (1 - lam) x[perm]`` with ``lam ~ Beta(alpha, alpha)``.

    ``images`` are floats (normalised); ``labels`` are integers ``(B,)`` or
    probabilities ``(B, K)``. The targets come back as probabilities
    ``(B, num_classes)`` mixed with the same lam and the same partners.
    """
    lam, perm = _draw_mixup(rng, images.shape[0], alpha)
    return _mixup(images, labels, lam, xp_of(images).asarray(perm), num_classes)


def _draw_mixup(rng, n, alpha):
    """Mixup's draws: the mixing weight and each image's partner (host)."""
    lam = float(rng.beta(alpha, alpha))
    return lam, rng.permutation(n)


def _mixup(images, labels, lam, perm, num_classes):
    """``mixup`` with its draws made (``perm`` on the images' device)."""
    if images.dtype.kind != "f":
        raise TypeError(f"mixup needs float images (normalise first), not {images.dtype}")
    real = _float_type(images)
    mixed = images * real(lam) + images[perm] * real(1 - lam)  # (B, C, H, W)
    targets = _as_targets(labels, num_classes, real)  # (B, K)
    return mixed, targets * real(lam) + targets[perm] * real(1 - lam)


def cutmix(images, labels, alpha: float, rng: np.random.Generator, num_classes: int = 10):
    """CutMix (Yun et al. 2019): paste a box from another image of the batch.

    The box covers about ``1 - lam`` of the image (``lam ~ Beta(alpha,
    alpha)``), centred anywhere and clipped at the borders; the targets mix
    by the area the box really covers. Works on uint8 or float images.
    """
    box, perm = _draw_cutmix(rng, images.shape, alpha)
    return _cutmix(images, labels, box, xp_of(images).asarray(perm), num_classes)


def _draw_cutmix(rng, shape, alpha):
    """CutMix's draws: the box ``(y0, y1, x0, x1)`` and each image's partner (host)."""
    b, _, h, w = shape
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(b)  # each image's partner
    cut = math.sqrt(1.0 - lam)  # the box's side, as a fraction of the image's
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))  # the box's centre
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    return (y0, y1, x0, x1), perm


def _cutmix(images, labels, box, perm, num_classes):
    """``cutmix`` with its draws made (``perm`` on the images' device)."""
    _, _, h, w = images.shape
    y0, y1, x0, x1 = box
    real = _float_type(images)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area that is still the image's own
    out = images.copy()
    out[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
    targets = _as_targets(labels, num_classes, real)  # (B, K)
    return out, targets * real(lam) + targets[perm] * real(1 - lam)


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------

AUGMENTS = ("none", "flip", "basic", "randaugment")


def augment_batch(images, rng, policy: str = "basic", *, num_ops: int = 2, magnitude: float = 9):
    """Augment a uint8 batch by one of the ``AUGMENTS`` policies.

    "none" leaves it alone; "flip" is a horizontal flip alone (the mildest,
    for short runs); "basic" is a random crop (padding 4) and a horizontal
    flip; "randaugment" is ``rand_augment``, then crop and flip. Every draw is
    made first (``draw_augmentation``) and sent to the images' device in one copy.
    """
    plan = draw_augmentation(rng, images.shape, policy, num_ops=num_ops, magnitude=magnitude)
    return apply_augmentation(images, plan, _on_device(plan, images))


CROP_PADDING = 4  # the random crop of "basic" and "randaugment"


def draw_augmentation(rng, shape, policy: str, *, num_ops: int = 2, magnitude: float = 9):
    """Every random draw of ``policy`` for a batch of ``shape``, in the order the ops make
    them: ``{"policy", "rounds", "prefix", "arrays"}``, ``arrays`` being host arrays."""
    if policy not in AUGMENTS:
        raise ValueError(f"unknown augmentation {policy!r}: expected one of {AUGMENTS}")
    plan = {"policy": policy, "rounds": [], "prefix": "ra", "arrays": {}}
    if policy == "randaugment":
        plan.update(_draw_rand_augment(rng, shape, num_ops, magnitude, 31, None))
    n = shape[0]
    if policy in ("basic", "randaugment"):  # random_crop's draw, padding 4
        top, left = _draw_crop(rng, n, CROP_PADDING)
        plan["arrays"].update({"crop.top": top, "crop.left": left, "crop.rows": np.arange(n)})
    if policy != "none":  # horizontal_flip's draw
        plan["arrays"]["flip"] = _draw_flip(rng, n)
    return plan


def apply_augmentation(images, plan, on_device):
    """A drawn augmentation on uint8 ``images``; ``on_device`` holds ``plan["arrays"]`` on
    the images' device."""
    _check_uint8(images)
    if plan["policy"] == "none":
        return images
    if plan["policy"] == "randaugment":
        images = _apply_rand_augment(images, plan, on_device, fill=128)
    if "crop.top" in on_device:
        images = _crop(images, CROP_PADDING, on_device["crop.top"], on_device["crop.left"],
                       on_device["crop.rows"])  # fmt: skip
    return _flip(images, on_device["flip"])


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """How many batches ``n`` examples make (a last partial one counts unless dropped)."""
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x,
    y,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    augment: str = "basic",
    mixup: float = 0.0,
    cutmix: float = 0.0,
    num_classes: int = 10,
    device: str = "cpu",
    dtype=np.float32,
    drop_last: bool = True,
    start: int = 0,
    num_ops: int = 2,
    magnitude: float = 9,
):
    """Yield ``(images, targets)`` for one epoch: normalised images ``(B, 3, H, W)`` on ``device``.

    Targets are int64 labels ``(B,)``, or probabilities ``(B, num_classes)``
    when ``mixup`` or ``cutmix`` (their Beta alphas) is above 0; with both,
    each batch uses one of them, 50/50. The order comes from a generator
    seeded with ``(seed, epoch)`` and batch i's augmentation from one seeded
    with ``(seed, epoch, i)``, so ``start=k`` resumes exactly where batch k
    of the same epoch would have been. For evaluation use ``shuffle=False,
    augment="none", drop_last=False``.
    """
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4):
        shape, dtype_ = getattr(x, "shape", None), getattr(x, "dtype", None)
        raise TypeError(f"x must be a NumPy uint8 array (N, C, H, W), not {shape}, {dtype_}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)} labels")
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augmentation {augment!r}: expected one of {AUGMENTS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    count = num_batches(n, batch_size, drop_last)
    if not 0 <= start <= count:
        raise ValueError(f"start={start} is outside the epoch's {count} batches")
    backend.check_device_name(device)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    y = np.asarray(y, dtype=np.int64)

    def generate():
        for i in range(start, count):
            index = order[i * batch_size : (i + 1) * batch_size]
            rng = np.random.default_rng([seed, epoch, i])
            images = backend.to_device(x[index], device)  # (B, C, H, W) uint8: one copy
            plan = draw_augmentation(rng, images.shape, augment, num_ops=num_ops,
                                     magnitude=magnitude)  # fmt: skip
            mixing = _draw_mix(rng, images.shape, mixup, cutmix)
            arrays = {"labels": y[index], **plan["arrays"], **mixing["arrays"]}
            # The labels and every drawn parameter: the second copy.
            moved = dict(zip(arrays, backend.to_device_together(list(arrays.values()), device)))
            images = apply_augmentation(images, plan, moved)
            images = normalize(images, dtype=dtype)  # (B, C, H, W) float
            yield _apply_mix(images, moved["labels"], mixing, moved, num_classes)

    return generate()


def _draw_mix(rng, shape, mixup_alpha, cutmix_alpha):
    """Mixup's or CutMix's draws as asked (one of them at random when both are on)."""
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_mixup = rng.random() < 0.5
    elif mixup_alpha > 0 or cutmix_alpha > 0:
        use_mixup = mixup_alpha > 0
    else:
        return {"kind": None, "arrays": {}}
    if use_mixup:
        lam, perm = _draw_mixup(rng, shape[0], mixup_alpha)
        return {"kind": "mixup", "lam": lam, "arrays": {"mix.perm": perm}}
    box, perm = _draw_cutmix(rng, shape, cutmix_alpha)
    return {"kind": "cutmix", "box": box, "arrays": {"mix.perm": perm}}


def _apply_mix(images, labels, mixing, on_device, num_classes):
    """The drawn mixup or CutMix (or nothing): ``(images, targets)``."""
    if mixing["kind"] == "mixup":
        return _mixup(images, labels, mixing["lam"], on_device["mix.perm"], num_classes)
    if mixing["kind"] == "cutmix":
        return _cutmix(images, labels, mixing["box"], on_device["mix.perm"], num_classes)
    return images, labels
