"""Figures: how the lessons show what the numbers say.

Everything here draws with matplotlib's file-only ``Agg`` backend (no screen
needed) and writes PNG files atomically: a half-written figure never
replaces a good one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def save_figure(fig, path, dpi=130) -> Path:
    """Write ``fig`` to ``path`` (PNG) through a temporary file and a rename; close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)
    return path
