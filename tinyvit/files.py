"""Files written all at once or not at all, and folders checked before a long run.

A training run writes the same few files again and again (the checkpoint,
the metrics, the curves), and it can be stopped at any moment: by Ctrl-C, by
the operating system, by a full disk. The rule that keeps a learner's work
safe is the same for every file: write the new contents to a temporary file
*beside* the target, push them to the disk (``fsync``), and only then rename
the temporary file over the target. A rename within one folder is atomic, so
the target is always either the old file or the new one, never half of each.

* ``atomic_write(path, write)`` is that rule; ``write_bytes`` and
  ``write_text`` are its two common uses. Every file tinyvit saves goes
  through it: checkpoints (``tinyvit.checkpoint``), figures
  (``tinyvit.viz.save_figure``) and the trainer's ``metrics.jsonl``.
* A process killed in the middle of a write (``SIGKILL``, a power cut) leaves
  its temporary file behind: ``.<name>.<8 random characters>.tmp``.
  ``remove_leftovers`` deletes those of the files a run owns when the next
  run in that folder starts.
* ``check_writable`` creates a folder and proves that a file can be written
  in it, so a run fails at its first second, not after its first epoch.

Failures raise ``WriteError`` (an ``OSError``) whose message names the path
and says whether the old file survived.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file or folder that could not be written; the message names it and says why."""


def plain_permissions(path) -> None:
    """Give a temporary file the permissions of a plain ``open()`` (0666 minus the umask).

    ``tempfile.mkstemp`` creates files readable by their owner alone; the
    checkpoints and figures it stages are meant to be shared like any other.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def _sync_folder(folder: Path) -> None:
    """Push a rename in ``folder`` to the disk too (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write(path, write) -> Path:
    """Write ``path`` through ``write(file)`` (a binary file object), all at once or not at all.

    The contents go to ``.<name>.XXXXXXXX.tmp`` beside ``path``, are flushed
    and synced, get plain permissions, and replace ``path`` by a rename. If
    anything fails or is interrupted (Ctrl-C included), the temporary file is
    removed and ``path`` is as it was. An ``OSError`` (a full disk, a folder
    that cannot be written) comes back as a ``WriteError`` naming ``path``.
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
        )
    except OSError as error:
        raise WriteError(f"cannot write {path}: {_reason(error)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        plain_permissions(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            kept = f"; the earlier {path.name} is untouched" if existed else ""
            raise WriteError(f"could not write {path}: {_reason(error)}{kept}") from None
        raise
    _sync_folder(path.parent)
    return path


def write_bytes(path, data: bytes) -> Path:
    """``atomic_write`` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """``atomic_write`` of ``text``."""
    return write_bytes(path, text.encode(encoding))


def _leftover_pattern(name: str) -> re.Pattern:
    """The temporary files a killed ``atomic_write`` of ``name`` leaves, and earlier
    tinyvit versions' figure temporaries (``.curves-XXXXXXXX.png``)."""
    stem, suffix = os.path.splitext(name)
    return re.compile(
        rf"\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}{re.escape(TEMPORARY_SUFFIX)}"
        rf"|\.{re.escape(stem)}-[A-Za-z0-9_]{{8}}{re.escape(suffix)}"
        rf"|\.{re.escape(name)}{re.escape(TEMPORARY_SUFFIX)}"
    )


def leftovers(folder, names) -> list[Path]:
    """The temporary files in ``folder`` that killed writes of the files ``names`` left."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [_leftover_pattern(name) for name in names]
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and any(pattern.fullmatch(p.name) for pattern in patterns)
    )  # fmt: skip


def remove_leftovers(folder, names) -> list[Path]:
    """Delete ``leftovers(folder, names)``; returns what was removed.

    Call it only where no other process is writing those files (the trainer
    calls it as a run starts in its own folder).
    """
    removed = []
    for path in leftovers(folder, names):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as error:
            raise WriteError(
                f"cannot remove the leftover temporary file {path}: {_reason(error)}"
            ) from None
        removed.append(path)
    return removed


def _first_file_on_the_way(folder: Path) -> Path | None:
    """The first existing ancestor of ``folder`` (or itself) that is not a folder."""
    for part in [*reversed(folder.parents), folder]:
        if part.exists() and not part.is_dir():
            return part
    return None


def check_writable(folder) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it (then remove it).

    Raises ``WriteError`` naming the folder: a file stands where the folder
    (or one of its parents) should be, permission is denied, the disk is
    read-only or full.
    """
    folder = Path(folder)
    blocker = _first_file_on_the_way(folder)
    if blocker is not None:
        where = "" if blocker == folder else f" (on the way to the folder {folder})"
        raise WriteError(f"cannot use {blocker} as a folder: it is a file{where}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"cannot create the folder {folder}: {_reason(error)}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", suffix=TEMPORARY_SUFFIX, dir=folder)
    except OSError as error:
        raise WriteError(f"cannot write in the folder {folder}: {_reason(error)}") from None
    try:
        os.write(fd, b"tinyvit write probe\n")
        os.fsync(fd)
    except OSError as error:
        raise WriteError(f"cannot write in the folder {folder}: {_reason(error)}") from None
    finally:
        os.close(fd)
        try:
            os.remove(probe)
        except OSError:
            pass
    return folder


__all__ = [
    "WriteError",
    "atomic_write",
    "check_writable",
    "leftovers",
    "plain_permissions",
    "remove_leftovers",
    "write_bytes",
    "write_text",
]
