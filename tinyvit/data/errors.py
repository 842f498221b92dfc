"""The one error of the data package: a data set that is missing, incomplete or wrong.

Every reader and downloader raises ``DataError`` with a message that says
what is wrong (the path, the size, the checksum) and what to do about it, so
a command line can print it as one line and stop. Where the advice names a
Python argument (``root``, ``download=True``), the error also carries it in
the command line's words (``--data-dir``, ``--no-download``).
"""

from __future__ import annotations


class DataError(RuntimeError):
    """The data set is missing, incomplete, or not what it should be.

    ``str(error)`` speaks the Python API's language; ``error.command_line``
    is the same message for a command line to print (the message itself
    when it names no argument).
    """

    def __init__(self, message: str, command_line: str | None = None):
        super().__init__(message)
        self.command_line = message if command_line is None else command_line


__all__ = ["DataError"]
