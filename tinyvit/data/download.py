"""Downloading a released file safely: resume, verify, set aside, unpack.

A data set's release is one file at a URL with a known size and MD5
(``Release``). ``download_release`` fetches it the careful way:

* the bytes go to ``<name>.part`` first, and an interrupted download resumes
  where it stopped (an HTTP ``Range`` request; a server that ignores it
  sends the whole file, and the part starts over);
* the size and the MD5 are checked before the file gets its final name, and
  a file that fails is moved aside to ``<name>.bad-<md5 prefix>``, kept for
  inspection and never used;
* a file kept from an earlier run is checked again before it is trusted.

``extract_folder`` unpacks a tar archive that holds one folder: only plain
files and folders, each only if its path stays inside the target; anything
else (absolute paths, ``..``, links, devices) refuses the whole archive.
Files go to a hidden staging folder first, and the folder is renamed into
place at the end, so a half-unpacked folder is never mistaken for a good one.

Every failure is a ``DataError`` that says what happened and how to put the
files in place by hand (the caller's ``by_hand`` text).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .. import progress as bars
from .errors import DataError

CHUNK = 1 << 20  # bytes per read while downloading, hashing and unpacking


@dataclass(frozen=True)
class Release:
    """One released file: where it is, what it is called, and what it must be.

    ``title`` names the data set in messages and on the progress bar
    ("CIFAR-10"); ``size`` is in bytes, ``md5`` a hex digest.
    """

    url: str
    name: str
    size: int
    md5: str
    title: str


def md5sum(path) -> str:
    """The MD5 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_release(
    release: Release, root: Path, *, by_hand: str, progress=None, timeout: float = 60.0
) -> Path:
    """``root / release.name``, downloaded (or resumed) and verified; DataError if it cannot be.

    ``by_hand`` says how to put the file's contents in place without this
    download; every error ends with it.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / release.name
    if final.is_file():  # kept from an earlier run: check it again before trusting it
        _verify(final, release, by_hand)
        return final
    part = root / (release.name + ".part")
    if not part.is_file() or part.stat().st_size < release.size:  # else: all there, verify
        _fetch(release, part, by_hand, progress, timeout)
    _verify(part, release, by_hand)
    os.replace(part, final)
    return final


def _fetch(release: Release, part: Path, by_hand: str, progress, timeout: float) -> None:
    """Append the rest of the release to ``part`` (or start it afresh); errors say what to do."""
    url = release.url
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
            bar = bars.bar(
                total=expected or release.size,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=release.title,
                progress=progress,
            )
            with open(part, "ab" if have else "wb") as f, bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after byte `have`: the part is whole already
            return  # (or too long); the size and MD5 check judges it
        raise _download_failed(release, part, by_hand, error) from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise _download_failed(release, part, by_hand, error) from error
    got = part.stat().st_size
    if expected is not None and got < expected:
        raise DataError(
            f"the download from {url} stopped after {got:,} of {expected:,} bytes; "
            f"{part} is kept and the next try resumes from there"
        )


def _download_failed(release: Release, part: Path, by_hand: str, error) -> DataError:
    """The error for a download that could not run: what happened, and the way by hand."""
    kept = (
        f" The partial download {part} is kept; the next try resumes it." if part.is_file() else ""
    )
    return DataError(
        f"could not download {release.title} from {release.url} ({error}).{kept} "
        f"To install it by hand: {by_hand}."
    )


def _verify(path: Path, release: Release, by_hand: str) -> None:
    """Check size and MD5; a file that fails is moved aside (never used) and reported."""
    got_size = path.stat().st_size
    got_md5 = md5sum(path)
    if got_size != release.size:
        problem = f"{got_size:,} bytes where {release.size:,} were expected"
    elif got_md5 != release.md5:
        problem = f"MD5 {got_md5} where {release.md5} was expected"
    else:
        return
    bad = path.with_name(f"{release.name}.bad-{got_md5[:8]}")
    os.replace(path, bad)
    raise DataError(
        f"the archive downloaded from {release.url} is not the expected {release.title} "
        f"release: it has {problem}. It was moved aside to {bad} (kept for inspection, never "
        f"used) and nothing was unpacked. Run again to download it afresh, or install it by "
        f"hand: {by_hand}."
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


def _unpack(archive: Path, into: Path) -> None:
    """Every member of the tar ``archive`` into ``into``, after ``_member_target`` allows it."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            target = _member_target(member, archive, into)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)


def extract_folder(archive, root, folder: str, *, must_hold: str, title: str) -> Path:
    """Unpack the tar ``archive`` into ``root`` and return ``root / folder``.

    The archive must hold ``folder/must_hold`` (else it is not ``title``'s
    release), and ``root / folder`` must not exist yet; see the module's
    docstring for what is refused and why.
    """
    archive, root = Path(archive), Path(root)
    target = root / folder
    prefix = f".{title.lower()}-unpacking-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        _unpack(archive, staging)
        unpacked = staging / folder
        if not (unpacked / must_hold).is_file():
            raise DataError(f"{archive} holds no {folder}/{must_hold}: it is not {title}")
        if target.exists():
            raise DataError(f"{target} appeared while {archive} was being unpacked; left as it is")
        os.replace(unpacked, target)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"could not unpack {archive} into {root}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


__all__ = ["CHUNK", "Release", "download_release", "extract_folder", "md5sum"]
