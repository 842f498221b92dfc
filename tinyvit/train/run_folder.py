"""The folder a run writes into, and the rules that keep a learner's work in it safe.

A run owns four files: ``checkpoint.npz`` (the latest state, to resume),
``model.npz`` (the finished model, for ``tinyvit.load``), ``metrics.jsonl``
(one line per epoch) and ``curves.png``. Before the first step:

* the folder is created if needed and a file is written in it and removed
  (``files.check_writable``), so a bad ``--out`` fails in the first second;
* a folder that already holds a run is continued (``resume``), replaced
  (``overwrite``), or refused with a message that names both ways on;
* the folder is locked (``files.FolderLock``): a second process that tries
  to write the same run is refused instead of overwriting the first's files;
* temporary files that a killed write left behind are removed.

Every file is then written atomically (``tinyvit.files``), so a run stopped
at any moment leaves each file either as it was or as it was meant to be.
"""

from __future__ import annotations

from pathlib import Path

from .. import files
from .config import RunError

CHECKPOINT, MODEL, METRICS, CURVES = "checkpoint.npz", "model.npz", "metrics.jsonl", "curves.png"
RUN_FILES = (CHECKPOINT, MODEL, METRICS, CURVES)


class RunFolder:
    """The output folder of one run: its files' paths, its checks and its lock."""

    def __init__(self, path):
        self.path = Path(path)
        self.lock = files.FolderLock(self.path)

    def __truediv__(self, name) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def model(self) -> Path:
        return self.path / MODEL

    def check(self, resume=False, overwrite=False) -> list[str]:
        """Check that the folder can take this run, before anything is read or trained.

        Creates the folder if needed and proves it writable. Returns the run
        files already there; raises ``RunError`` (a run is there and neither
        ``resume`` nor ``overwrite`` says what to do with it, or ``resume``
        finds run files but no checkpoint) or ``files.WriteError``.
        """
        if resume and overwrite:
            raise RunError(
                "resume and overwrite exclude each other: continue the run, or replace it"
            )
        files.check_writable(self.path)
        present = [name for name in RUN_FILES if (self.path / name).is_file()]
        if resume and present and CHECKPOINT not in present:
            raise RunError(
                f"{self.path} holds {', '.join(present)} but no {CHECKPOINT} to resume from; "
                "start again there with --overwrite, or in a new --out folder"
            )
        if present and not resume and not overwrite:
            raise RunError(
                f"{self.path} already holds a run ({', '.join(present)}); continue it with "
                "--resume, or start a new one with another --out folder or with --overwrite "
                "(which deletes it)"
            )
        return present

    def acquire(self) -> RunFolder:
        """Lock the folder for this process (``files.FolderLock``; nests); a folder that
        another process holds is a ``RunError`` that says so."""
        if not self.lock.held:
            files.check_writable(self.path)  # the folder exists, and takes files
        try:
            self.lock.acquire()
        except files.FolderBusy as error:
            raise RunError(f"{error} (two runs cannot write one folder)") from None
        return self

    def release(self) -> None:
        self.lock.release()

    def prepare(self, resume=False, overwrite=False, log=print) -> None:
        """Lock the folder, check it (``check``), delete a replaced run's files and
        the leftovers of killed writes; ``log`` says what was deleted."""
        self.acquire()
        present = self.check(resume=resume, overwrite=overwrite)
        if overwrite and present:
            for name in present:
                (self.path / name).unlink()
            log(f"--overwrite: deleted the earlier run in {self.path} ({', '.join(present)})")
        removed = files.remove_leftovers(self.path, RUN_FILES)
        if removed:
            names = ", ".join(p.name for p in removed)
            log(f"removed {len(removed)} temporary file(s) of an interrupted write: {names}")


def check_run_folder(out, resume=False, overwrite=False) -> list[str]:
    """``RunFolder(out).check(resume, overwrite)``: the run files already in ``out``."""
    return RunFolder(out).check(resume=resume, overwrite=overwrite)


__all__ = ["CHECKPOINT", "CURVES", "METRICS", "MODEL", "RUN_FILES", "RunFolder", "check_run_folder"]
