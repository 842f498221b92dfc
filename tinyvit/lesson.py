"""The command line every lesson shares: ``--out``, ``--quick``, ``--device``."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import backend


def lesson_arguments(name: str, description: str, argv=None, extra=None) -> argparse.Namespace:
    """Parse a lesson's flags; create its output folder and report it.

    ``--out DIR`` (default ``runs/lessons/<name>``) receives the figures;
    ``--quick`` makes the lesson run in seconds (the tests use it);
    ``--device cuda`` runs it on the GPU. ``extra(parser)`` may add flags.
    """
    parser = argparse.ArgumentParser(prog=f"lessons/{name}.py", description=description)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / "lessons" / name,
        help="folder for the lesson's figures (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="a small, fast run (for tests)")
    parser.add_argument("--device", default="cpu", choices=backend.DEVICES)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    backend.check_device_name(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{name}: figures go to {args.out}/")
    return args
