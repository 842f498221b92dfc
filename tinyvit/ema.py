"""An exponential moving average of a model's weights, for evaluation.

Not in the ViT paper; a habit of fast training recipes (the CNN speed-runs on
CIFAR-10, timm's ``ModelEmaV3``). Late in a run, each step moves the weights
a little along a noisy gradient; their running average sits nearer the
middle of the region the steps wander in, and often tests better than the
last weights. After every optimizer step:

    avg  <-  decay_t * avg + (1 - decay_t) * weights,    decay_t = min(decay, (1 + t) / (10 + t))

The warm-up of ``decay_t`` (``t`` counts the updates) lets the average
follow the weights closely at the start, when they are far from where they
will end, instead of remembering the random initialisation for thousands of
steps. ``with ema.applied_to(model):`` puts the averaged weights into the
model (for evaluation, or saving) and the trained ones back afterwards.
"""

from __future__ import annotations

import contextlib

from . import backend
from .checks import FRACTION
from .tensor import no_grad


class ModelEMA:
    """The moving average of every parameter of ``model`` (the same names, shapes and device)."""

    def __init__(self, model, decay=0.999):
        FRACTION.check("ModelEMA: decay", decay)
        self.decay = decay
        self.updates = 0
        self.averages = {name: p.data.copy() for name, p in model.named_parameters()}

    def decay_now(self) -> float:
        """``decay_t`` of the next update: the warm-up's ``(1 + t) / (10 + t)``, capped at decay."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    def update(self, model) -> None:
        """Move every average towards the model's weights (after an optimizer step)."""
        keep = self.decay_now()
        with no_grad():
            for name, p in model.named_parameters():
                average = self.averages[name]
                average *= keep
                average += (1.0 - keep) * p.data
        self.updates += 1

    @contextlib.contextmanager
    def applied_to(self, model):
        """Inside the block ``model`` has the averaged weights; after it, the trained ones."""
        params = dict(model.named_parameters())
        trained = {name: p.data for name, p in params.items()}
        for name, p in params.items():
            p.data = self.averages[name]
        try:
            yield model
        finally:
            for name, p in params.items():
                p.data = trained[name]

    def state_dict(self) -> dict:
        """``{"updates": ..., name: NumPy array}``, for a checkpoint."""
        state = {name: backend.to_numpy(a) for name, a in self.averages.items()}
        state["updates"] = self.updates
        return state

    def load_state_dict(self, state) -> None:
        missing = [name for name in self.averages if name not in state]
        if missing or "updates" not in state:
            raise ValueError(f"ModelEMA state: missing {missing or ['updates']}")
        for name, average in self.averages.items():
            value = state[name]
            if tuple(value.shape) != average.shape:
                raise ValueError(
                    f"ModelEMA state: {name} has shape {tuple(value.shape)}, "
                    f"expected {average.shape}"
                )
            device = backend.device_of(average)
            average[...] = backend.to_device(value, device).astype(average.dtype)
        self.updates = int(state["updates"])
