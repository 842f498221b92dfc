"""CIFAR-10 (Krizhevsky 2009): the official binary release, its reader and its download.

The paper fine-tunes on CIFAR-10 (Section 4.1); tinyvit also trains on it
from scratch. The binary release (``cifar-10-binary.tar.gz``) unpacks to a
folder ``cifar-10-batches-bin/`` of six files, ``data_batch_1.bin`` …
``data_batch_5.bin`` (training) and ``test_batch.bin``, each 10,000 records
of 3,073 bytes: one label byte, then the 32×32 image as 1,024 red, 1,024
green and 1,024 blue bytes, each plane row by row. So a whole file is one
``(10000, 3073)`` byte matrix, and the images are its last 3,072 columns
reshaped to ``(3, 32, 32)``: no decoding at all.

    data = load_cifar10()                    # or load_cifar10("../shared/data")
    x_train, y_train, x_test, y_test, classes = data

When the data is missing, ``load_cifar10`` fetches the official archive
(``tinyvit.data.download``: resumed, size and MD5 checked before anything
else touches it, only plain files unpacked, and only inside the data
folder). A folder put there by hand is taken as it is. Only the default
folder (``$TINYVIT_DATA``, else ``~/.cache/tinyvit``) is created: a folder
named by the caller must exist, so a misspelled name is an error rather
than a new folder with 170 MB downloaded into it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..images import CIFAR10_MEAN, CIFAR10_STD
from .download import Release, download_release, extract_folder
from .errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
SIZE = 170_052_171  # bytes
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TITLE = "CIFAR-10"  # in messages and on the progress bar

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

# Per-channel mean and standard deviation of the training images, on the 0..1 scale:
# declared in tinyvit.images, with the preprocessing that tinyvit's models keep.
MEAN, STD = CIFAR10_MEAN, CIFAR10_STD


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
    files made by tests. Every label must be a class, 0..9.
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
    wrong = np.flatnonzero(labels >= len(CLASSES))
    if wrong.size:
        raise DataError(
            f"{path}: record {wrong[0]:,} has label {labels[wrong[0]]} ({wrong.size:,} of "
            f"{records:,} records are out of range), but CIFAR-10's labels go 0..9, one per "
            "class: the file is damaged or not a CIFAR-10 batch file; replace it with the one "
            "from the official archive"
        )
    images = np.ascontiguousarray(raw[:, 1:]).reshape(records, *IMAGE_SHAPE)  # (N, 3, 32, 32)
    return images, labels


def read_classes(path) -> tuple[str, ...]:
    """The 10 class names in ``batches.meta.txt``, one a line (blank lines ignored).

    The file must be UTF-8 text naming 10 different classes, one per label
    0..9 of the batch files; anything else is a ``DataError``. A folder
    without the file gets the official names.
    """
    path = Path(path)
    if not path.is_file():
        return CLASSES
    expected = (
        f"expected the names of CIFAR-10's {len(CLASSES)} classes (the labels 0..9 of the "
        f"batch files) as UTF-8 text, one a line; replace it with the official {META_FILE}, "
        "or delete it to use the official names"
    )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is dropped
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
            f"{error.start:,}): {expected}"
        ) from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    unprintable = [name for name in names if not name.isprintable()]
    if unprintable:
        raise DataError(f"{path} is not plain text ({unprintable[0]!r}): {expected}")
    if len(names) != len(CLASSES):
        raise DataError(
            f"{path} names {len(names)} classes, but CIFAR-10 has {len(CLASSES)}: {expected}"
        )
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DataError(f"{path} names {', '.join(map(repr, twice))} more than once: {expected}")
    return names


def load_cifar10(root=None, download: bool = True, *, records: int = RECORDS_PER_FILE) -> CIFAR10:
    """Read CIFAR-10 from ``root`` (default: ``default_root()``), downloading it if missing.

    ``root`` may be the folder that contains ``cifar-10-batches-bin/`` (or
    the archive, to be unpacked) or that folder itself; it must exist. Only
    the default root is created when it is missing. ``records`` is the
    number of records per file the reader insists on (10,000; tests pass
    smaller numbers for small files).
    """
    root = check_root(root)
    folder = find_folder(root)
    if folder is None:
        if not download:
            raise _data_error(
                lambda w: f"no CIFAR-10 data under {root} (looked for "
                f"{root / FOLDER / TRAIN_FILES[0]}) and the download is off: {w.download} to "
                f"download it ({SIZE / 1e6:.0f} MB) into {root}, or install it by hand: "
                f"{_by_hand(root, w.root)}"
            )
        folder = download_cifar10(root)

    classes = read_classes(folder / META_FILE)
    train = [read_batch(folder / name, records) for name in TRAIN_FILES]
    x_test, y_test = read_batch(folder / TEST_FILE, records)
    x_train = np.concatenate([images for images, _ in train])  # (5 * records, 3, 32, 32)
    y_train = np.concatenate([labels for _, labels in train])
    return CIFAR10(x_train, y_train, x_test, y_test, classes)


# ---------------------------------------------------------------------------
# Where the data is: the two ways of naming it
# ---------------------------------------------------------------------------


class _Words(NamedTuple):
    """How a caller names the data folder, the default one and the download."""

    root: str
    default: str
    download: str


# The Python API's words, and the command lines' (python -m tinyvit.train, the lessons).
_PYTHON = _Words("the root argument", "pass root=None", "pass download=True")
_COMMAND_LINE = _Words("--data-dir", "leave --data-dir out", "run again without --no-download")


def _data_error(say) -> DataError:
    """The DataError ``say(words)`` in the Python API's words, and in the command line's
    as its ``command_line``."""
    return DataError(say(_PYTHON), say(_COMMAND_LINE))


def check_root(root=None) -> Path:
    """The folder ``load_cifar10(root)`` reads or downloads into, checked, before any work.

    A root that is a file is a ``DataError``; so is a root named by the caller
    that does not exist (no misspelled folder is created and downloaded
    into). ``None`` is ``default_root()``, which may be missing: it is
    created when the data is downloaded.
    """
    named = root is not None
    root = Path(root).expanduser() if named else default_root()
    holds = (
        f"a folder that holds {FOLDER}/ or the archive {ARCHIVE} (or, for your own images, "
        "one subfolder of images per class)"
    )
    default = f"the default data folder {default_root()} ($TINYVIT_DATA, else ~/.cache/tinyvit)"
    if root.exists() and not root.is_dir():
        raise _data_error(
            lambda w: (f"{root} ({w.root})" if named else default)
            + f" is a file, not a folder: expected {holds}"
        )
    if named and not root.is_dir():
        raise _data_error(
            lambda w: f"no folder {root} ({w.root}): expected {holds}; nothing was created or "
            f"downloaded. To download CIFAR-10 into it, create the folder first; or "
            f"{w.default} to use {default}, which is created and downloaded into"
        )
    return root


# ---------------------------------------------------------------------------
# Downloading, verifying and unpacking the official archive
# ---------------------------------------------------------------------------


def _by_hand(root: Path, root_words: str = "the root argument (--data-dir)") -> str:
    """How to put the files in place without this module's download."""
    return (
        f"on a machine with internet, download {URL}, unpack it, and put the folder "
        f"{FOLDER}/ it contains (data_batch_1.bin ... data_batch_5.bin, test_batch.bin, "
        f"{META_FILE}) at {Path(root) / FOLDER}; or point $TINYVIT_DATA or {root_words} "
        "at a folder that holds it"
    )


def download_cifar10(
    root=None, url=URL, size=SIZE, md5=MD5, progress=None, timeout: float = 60.0
) -> Path:
    """Download, verify and unpack the official archive into ``root``; return the batch folder.

    The bytes go to ``cifar-10-binary.tar.gz.part`` first; an interrupted
    download resumes from where it stopped (an HTTP ``Range`` request). The
    size and MD5 are checked before the file is renamed to its final name or
    unpacked; an archive that fails is moved aside to ``….bad-<md5 prefix>``
    and never used (``tinyvit.data.download``).
    """
    root = Path(root).expanduser() if root is not None else default_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the data folder {root} ({error.strerror}): point $TINYVIT_DATA "
            "or the root argument (--data-dir) at a folder that exists or can be created"
        ) from None
    if (root / FOLDER).is_dir():
        return root / FOLDER
    release = Release(url=url, name=ARCHIVE, size=size, md5=md5, title=TITLE)
    archive = download_release(
        release, root, by_hand=_by_hand(root), progress=progress, timeout=timeout
    )
    return extract_cifar10(archive, root)


def extract_cifar10(archive, root) -> Path:
    """Unpack ``archive`` into ``root`` and return ``root/cifar-10-batches-bin``.

    Only plain files and folders are unpacked, each only if its path stays
    inside ``root``; anything else (absolute paths, ``..``, links, devices)
    refuses the whole archive. Files go to a temporary folder inside ``root``
    first and the batch folder is renamed into place at the end, so a
    half-unpacked folder is never mistaken for a good one.
    """
    return extract_folder(archive, root, FOLDER, must_hold=TRAIN_FILES[0], title=TITLE)


__all__ = [
    "ARCHIVE",
    "CIFAR10",
    "CLASSES",
    "FILE_BYTES",
    "FOLDER",
    "IMAGE_SHAPE",
    "MD5",
    "MEAN",
    "META_FILE",
    "RECORDS_PER_FILE",
    "RECORD_BYTES",
    "SIZE",
    "STD",
    "TEST_FILE",
    "TITLE",
    "TRAIN_FILES",
    "URL",
    "check_root",
    "default_root",
    "download_cifar10",
    "extract_cifar10",
    "find_folder",
    "load_cifar10",
    "read_batch",
    "read_classes",
]
