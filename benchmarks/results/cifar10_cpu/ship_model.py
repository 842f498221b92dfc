"""Ship a CPU run's model with the lessons, with its provenance beside it.

Copies ``RUN/model.npz`` to ``lessons/models/NAME.npz`` (by default
``vit_cifar_tiny.npz``, the default CPU run's) and writes ``NAME.json``: the
command, the commit, the data's checksums, the run's length and accuracies
(read from its ``metrics.jsonl`` and log), the CPU, and the accuracy on the
first 1,000 test images that ``tests/test_shipped_model.py`` checks again. Run
from the repository root once the run has finished:

    python benchmarks/results/cifar10_cpu/ship_model.py RUN_FOLDER RUN_LOG --commit SHA
    python benchmarks/results/cifar10_cpu/ship_model.py RUN_FOLDER RUN_LOG --commit SHA \
        --name hybrid_cifar_2x3 --command "python -m tinyvit.train --recipe hybrid ..."
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import subprocess
from pathlib import Path

import numpy as np

import tinyvit
from tinyvit import data
from tinyvit.files import atomic_write
from tinyvit.lesson import SHIPPED_MODEL
from tinyvit.loop import evaluate

COMMAND = "python -m tinyvit.train --data-dir ../shared/data --out runs/cifar10"


def cpu_model() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = re.search(r"Model name:\s*(.+)", text)
    cores = re.search(r"^CPU\(s\):\s*(\d+)", text, re.M)
    return f"{name.group(1).strip() if name else platform.processor()}, {cores.group(1)} cores"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("log", type=Path)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--name", default=SHIPPED_MODEL.stem, help="its name in lessons/models")
    parser.add_argument("--command", default=COMMAND, help="the command that trained it")
    args = parser.parse_args()
    target = SHIPPED_MODEL.with_name(f"{args.name}.npz")

    rows = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    log = args.log.read_text()
    done = re.search(r"final test accuracy ([\d.]+)%, ([\d.]+)% with flips", log)
    wall = re.search(r"^([\d.]+) s wall$", log, re.M)
    kernels = re.search(r"kernels: .*", log)  # the run's header line
    model = tinyvit.load(args.run / "model.npz")
    dataset = data.load_cifar10(args.data_dir, download=False)
    first = evaluate(model, dataset.x_test[:1000], dataset.y_test[:1000])
    folder = args.data_dir / "cifar-10-batches-bin"
    provenance = {
        "command": args.command,
        "commit": args.commit,
        "data": "CIFAR-10 in the official binary layout, the offline rebuild of ../shared/data "
        "(labels and order official; the first 1,017 records of every file exact, the "
        "others JPEG-decoded)",
        "data_md5": {p.name: md5(p) for p in sorted(folder.glob("*.bin"))},
        "steps": rows[-1]["step"],
        "epochs": round(rows[-1]["step"] / (rows[0]["step"] / rows[0]["epoch"]), 2),
        "test_accuracy": float(done.group(2)) / 100,  # the final test, with flips
        "test_accuracy_without_flips": float(done.group(1)) / 100,
        "first_1000_test_accuracy": first.accuracy,  # plain, as tests/test_shipped_model.py
        "training_minutes": rows[-1]["elapsed_seconds"] / 60,
        "wall_minutes": float(wall.group(1)) / 60 if wall else None,
        "cpu": cpu_model(),
        "numpy": np.__version__,
        "kernels": kernels.group(0) if kernels else tinyvit.kernels.describe(),  # the run's
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    weights = (args.run / "model.npz").read_bytes()
    atomic_write(target, lambda file: file.write(weights))
    text = json.dumps(provenance, indent=2) + "\n"
    atomic_write(target.with_suffix(".json"), lambda file: file.write(text.encode()))
    print(text, end="")


if __name__ == "__main__":
    main()
