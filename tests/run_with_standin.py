"""Run a lesson or a tinyvit module with its "cuda" device on the CuPy stand-in.

    python tests/run_with_standin.py lessons/07_attention_maps.py --quick --device cuda
    python tests/run_with_standin.py -m tinyvit.train --quick --device cuda --out /tmp/run
    python tests/run_with_standin.py --nudge-ulps 2 --counts -m tinyvit.train --quick ...

The stand-in (``tests/cupy_standin.py``) is installed first, then the script
or module runs in this same process, as ``python SCRIPT ARGS`` or ``python -m
MODULE ARGS`` would run it (``runpy``, ``__name__ == "__main__"``, ``sys.argv``
set to what follows). Options before the script:

``--nudge-ulps K``
    move float32 transcendental results by K ulp (CUDA's documented error);
``--counts``
    print the estimated kernel launches, synchronizations and copies of the
    whole run to stderr at the end.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cupy_standin, beside this file

import cupy_standin  # noqa: E402

USAGE = (
    "usage: python tests/run_with_standin.py [--nudge-ulps K] [--counts] "
    "SCRIPT | -m MODULE [ARGS...]"
)


def main(argv: list[str]) -> None:
    nudge, counts = 0, False
    while argv and argv[0] in ("--nudge-ulps", "--counts"):
        if argv[0] == "--counts":
            counts, argv = True, argv[1:]
        elif len(argv) < 2:
            raise SystemExit(USAGE)
        else:
            nudge, argv = int(argv[1]), argv[2:]
    if not argv or (argv[0] == "-m" and len(argv) < 2):
        raise SystemExit(USAGE)

    cupy_standin.install(nudge=nudge)
    with cupy_standin.counting() as total:
        try:
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                script = Path(argv[0]).resolve()
                sys.argv = [str(script), *argv[1:]]
                sys.path[0] = str(script.parent)  # as `python SCRIPT` puts the script's folder
                runpy.run_path(str(script), run_name="__main__")
        finally:
            if counts:
                print(f"cupy stand-in: {total}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
