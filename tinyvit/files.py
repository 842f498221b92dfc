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
* ``FolderLock`` keeps a second process out of a folder while one works in
  it: two runs writing one checkpoint would each overwrite the other's.

Failures raise ``WriteError`` (an ``OSError``) whose message names the path
and says whether the old file survived.
"""

from __future__ import annotations

import os
import re
import sys
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


class FolderBusy(WriteError):
    """Another process holds the folder's lock."""


class FolderLock:
    """A lock on a folder that one process at a time can hold: ``with FolderLock(folder):``.

    The lock is the operating system's lock on the file ``.lock`` in the
    folder (``flock`` on Linux and macOS, ``msvcrt.locking`` on Windows): it
    is released when the process ends, however it ends, so a run killed with
    ``SIGKILL`` leaves no stale lock behind. The file holds the holder's
    process id, for the message a second process gets (``FolderBusy``), and
    is removed on release. (A process that opened the file just before it
    was removed would lock a file no longer in the folder; so a lock counts
    only once the file it holds is still the one at ``.lock``.) Taking the
    lock again in the same ``FolderLock`` nests.
    """

    NAME = ".lock"

    def __init__(self, folder):
        self.path = Path(folder) / self.NAME
        self._fd, self._depth = None, 0

    def acquire(self) -> FolderLock:
        if self._depth:
            self._depth += 1
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise WriteError(
                    f"cannot create the lock file {self.path}: {_reason(error)}"
                ) from None
            if not _try_lock(fd):
                try:
                    holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                except OSError:  # Windows refuses to read a locked byte
                    holder = "unknown"
                os.close(fd)
                raise FolderBusy(
                    f"another process (id {holder}) is working in {self.path.parent}; wait for "
                    "it to end, or use another folder"
                )
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder before us removed it as we opened it: again
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd, self._depth = fd, 1
        return self

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth == 0:
            try:
                self.path.unlink()  # still holding the lock: nobody else has it now
            except OSError:  # Windows: an open file cannot be removed; it stays, unlocked
                pass
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._depth > 0

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _same_file(fd, path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _try_lock(fd) -> bool:
    """Lock the open file ``fd`` for this process without waiting; False if it is taken."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


__all__ = [
    "FolderBusy",
    "FolderLock",
    "WriteError",
    "atomic_write",
    "check_writable",
    "leftovers",
    "plain_permissions",
    "remove_leftovers",
    "write_bytes",
    "write_text",
]
