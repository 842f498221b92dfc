"""Test the final weights of finished training runs four ways, and print a table.

Each run folder holds the trainer's ``checkpoint.npz``: the trained weights and,
when the run kept one (``--ema``), their moving average. Both are tested on the
10,000 CIFAR-10 test images, plain and with flip test-time augmentation, so one
run answers whether EMA and TTA help.

    python evaluate_runs.py --data-dir ../shared/data RUN_FOLDER [RUN_FOLDER ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinyvit import checkpoint, data
from tinyvit.ema import ModelEMA
from tinyvit.loop import evaluate


def evaluate_run(folder, dataset):
    path = Path(folder) / "checkpoint.npz"
    arrays = checkpoint.read_npz(path)
    model = checkpoint.load(path)  # the trained weights
    state = json.loads(str(arrays["trainer/state"]))
    row = {"run": Path(folder).name, "steps": state["step"], "epochs": len(state["history"])}
    row["minutes"] = state["history"][-1]["elapsed_seconds"] / 60 if state["history"] else None
    variants = {"trained": None}
    if any(k.startswith("ema/") for k in arrays):
        ema = ModelEMA(model)
        ema.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("ema/")})
        variants["ema"] = ema
    for name, ema in variants.items():
        for tta in (False, True):
            if ema is None:
                result = evaluate(model, dataset.x_test, dataset.y_test, tta=tta)
            else:
                with ema.applied_to(model):
                    result = evaluate(model, dataset.x_test, dataset.y_test, tta=tta)
            row[f"{name}{' + flips' if tta else ''}"] = result.accuracy
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    dataset = data.load_cifar10(args.data_dir, download=False)
    for folder in args.runs:
        row = evaluate_run(folder, dataset)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
