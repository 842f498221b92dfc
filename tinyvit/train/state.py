"""What a training checkpoint holds, so that a resumed run is the run that never stopped.

Everything random in a run is a function of the seed and of where the run
is (epoch, batch, step): the order of the examples, each batch's
augmentation, each step's dropout masks. So besides the weights a
checkpoint needs only the optimizer's moments, the moving average of the
weights (when the run keeps one) and that position. One ``.npz`` holds them
all: the model's arrays under their own names (so ``tinyvit.load`` reads a
checkpoint as a model), ``optim/...``, ``ema/...``, and ``trainer/state``, a
JSON text with the settings, the position, the epoch's sums, the history and
the time spent.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .. import checkpoint
from .config import RunError, TrainConfig

STATE = "trainer/state"
POSITION = ("epoch", "batch", "step", "sums", "history")


def save_state(path, model, optimizer, ema, state: dict) -> None:
    """Write the model, ``optimizer``, ``ema`` (or None) and the JSON-able ``state`` to
    ``path``, atomically."""
    extra = {f"optim/{k}": v for k, v in optimizer.state_dict().items()}
    if ema is not None:
        extra.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    extra[STATE] = np.array(json.dumps(state))
    checkpoint.save(model, path, extra=extra)


def _prefixed(arrays, prefix) -> dict:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def read_state(path) -> tuple[dict, dict]:
    """``(arrays, state)`` of a training checkpoint; a ``CheckpointError`` naming the file
    when it is not one, or its state is damaged."""
    path = Path(path)
    arrays = checkpoint.read_npz(path)
    if STATE not in arrays:
        raise checkpoint.CheckpointError(f"{path} has no trainer state: not a training checkpoint")
    try:
        state = _checked(json.loads(str(arrays[STATE])))
    except json.JSONDecodeError as error:
        raise checkpoint.CheckpointError(
            f"{path}: its trainer state is not valid JSON ({error.msg})"
        ) from None
    except (KeyError, TypeError, ValueError) as error:
        raise checkpoint.CheckpointError(
            f"{path}: its trainer state is incomplete or damaged ({type(error).__name__}: "
            f"{error})"
        ) from None
    checkpoint.check_finite(arrays, path)
    return arrays, state


def _checked(state) -> dict:
    """The trainer's state with each entry of the type and range it must have; a
    KeyError, TypeError or ValueError naming the entry otherwise."""
    if not isinstance(state, dict):
        raise TypeError(f"a JSON object was expected, not {type(state).__name__}")
    for key in (*POSITION, "config", "total_steps", "planned", "elapsed"):
        state[key]  # noqa: B018  (each must be there)
    for key, low in (("epoch", 0), ("batch", 0), ("step", 0), ("total_steps", 1)):
        if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {state[key]!r}")
    if state["step"] > state["total_steps"]:
        raise ValueError(f"step {state['step']} is past total_steps {state['total_steps']}")
    sums = state["sums"]
    if not isinstance(sums, dict) or not all(
        isinstance(sums.get(k), int | float) for k in ("loss", "correct", "seen", "seconds")
    ):
        raise ValueError(f"sums must hold numbers loss, correct, seen, seconds; got {sums!r}")
    if not isinstance(state["history"], list) or not all(
        isinstance(record, dict) for record in state["history"]
    ):
        raise ValueError("history must be a list of epoch records")
    if not isinstance(state["config"], dict):
        raise ValueError("config must be a JSON object of settings")
    state["planned"], state["elapsed"] = bool(state["planned"]), float(state["elapsed"])
    return state


def check_same_run(path, saved: dict, config: TrainConfig) -> None:
    """A ``RunError`` naming every setting (but the device) in which ``config`` differs
    from the one the checkpoint at ``path`` was written with."""
    try:
        then = dataclasses.asdict(TrainConfig.from_saved(saved).resolved())
    except TypeError as error:
        raise checkpoint.CheckpointError(f"{path}: its settings are damaged ({error})") from None
    now = dataclasses.asdict(config.resolved())
    differ = {k: (then.get(k), v) for k, v in now.items() if k != "device" and then.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise RunError(f"cannot resume {path}: the run's settings differ ({detail})")


def load_weights(path, arrays, model, optimizer, ema) -> None:
    """Put a training checkpoint's arrays into ``model``, ``optimizer`` and ``ema``."""
    try:
        model.load_state_dict({k: v for k, v in arrays.items() if "/" not in k})
        optimizer.load_state_dict(_prefixed(arrays, "optim/"))
        if ema is not None:
            ema.load_state_dict(_prefixed(arrays, "ema/"))
    except (KeyError, ValueError) as error:
        raise checkpoint.CheckpointError(f"{path}: {error}") from None


__all__ = ["check_same_run", "load_weights", "read_state", "save_state"]
