"""The one error of the data package: a data set that is missing, incomplete or wrong.

Every reader and downloader raises ``DataError`` with a message that says
what is wrong (the path, the size, the checksum) and what to do about it, so
a command line can print it as one line and stop.
"""


class DataError(RuntimeError):
    """The data set is missing, incomplete, or not what it should be."""


__all__ = ["DataError"]
