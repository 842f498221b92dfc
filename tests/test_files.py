"""Atomic writes: a failed or killed write leaves the old file and (after cleanup) no
litter; a full disk is a WriteError naming the file; folders are proven writable
before a run, with errors that name the path."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from tinyvit import files
from tinyvit.files import WriteError


def test_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = files.write_text(tmp_path / "notes.txt", "first\n")
    files.write_bytes(path, b"second\n")
    assert path.read_text() == "second\n"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = files.write_text(tmp_path / "a.txt", "old")

    def broken(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(path, broken)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_a_full_disk_is_a_write_error_that_names_the_file(tmp_path):
    path = files.write_text(tmp_path / "checkpoint.npz", "old")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError) as info:
        files.atomic_write(path, full)
    message = str(info.value)
    assert str(path) in message and "No space left on device" in message
    assert "the earlier checkpoint.npz is untouched" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one clear error
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["checkpoint.npz"]


def test_written_files_get_plain_permissions(tmp_path):
    """Staged through mkstemp (owner-only), but landing with 0666 minus the umask."""
    mask = os.umask(0o022)
    try:
        path = files.write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from tinyvit import files

    def write(f):
        f.write(b"x" * 100_000)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the write

    files.atomic_write(sys.argv[1], write)
    """
)


def test_a_killed_writer_leaves_a_temporary_file_that_cleanup_removes(tmp_path):
    target = tmp_path / "checkpoint.npz"
    target.write_bytes(b"the good old checkpoint")
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], timeout=60)
    assert result.returncode == -9  # SIGKILL
    left = files.leftovers(tmp_path, ["checkpoint.npz"])
    assert len(left) == 1 and left[0].name.startswith(".checkpoint.npz.")
    assert left[0].stat().st_size == 100_000
    (tmp_path / ".curves-abcd1234.png").write_bytes(b"an older version's figure temporary")
    (tmp_path / ".keep.me.tmp").write_text("not a file of the run")
    (tmp_path / "notes.txt").write_text("the learner's own file")
    removed = files.remove_leftovers(tmp_path, ["checkpoint.npz", "curves.png"])
    assert sorted(p.name for p in removed) == sorted([left[0].name, ".curves-abcd1234.png"])
    assert sorted(os.listdir(tmp_path)) == [".keep.me.tmp", "checkpoint.npz", "notes.txt"]
    assert target.read_bytes() == b"the good old checkpoint"


def test_check_writable_creates_the_folder_and_leaves_no_probe(tmp_path):
    folder = files.check_writable(tmp_path / "a" / "b")
    assert folder.is_dir() and os.listdir(folder) == []


def test_a_file_where_a_folder_should_be_is_named(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    with pytest.raises(WriteError, match=f"cannot use {blocker} as a folder: it is a file$"):
        files.check_writable(blocker)
    on_the_way = f"cannot use {blocker} as a folder: it is a file \\(on the way to the folder "
    with pytest.raises(WriteError, match=on_the_way + f"{blocker}/run\\)"):
        files.check_writable(blocker / "run")


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(WriteError, match=f"cannot write in the folder {tmp_path}: Permission"):
        files.check_writable(tmp_path)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'x.txt'}: Permission"):
        files.write_text(tmp_path / "x.txt", "x")
