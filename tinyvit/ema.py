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

When the model's parameters live in an optimizer's buffer
(``optim.FlatParameters``), the averages live in one array of the same
layout, and an update is three whole-array operations instead of three per
parameter: the same numbers, far fewer kernel launches on a GPU.
"""

from __future__ import annotations

import contextlib

from . import backend
from .checks import FRACTION
from .optim import flat_parameters_of
from .tensor import no_grad


class ModelEMA:
    """The moving average of every parameter of ``model`` (the same names, shapes and device)."""

    def __init__(self, model, decay=0.999):
        FRACTION.check("ModelEMA: decay", decay)
        self.decay = decay
        self.updates = 0
        named = list(model.named_parameters())
        self._flat = flat_parameters_of(p for _, p in named)  # the model's buffer, if any
        if self._flat is not None and self._flat.relink():
            self._flat_average = self._flat.data.copy()  # (all parameters,): one array
            where = {id(p): i for i, p in enumerate(self._flat.params)}
            offsets = self._flat.offsets
            self.averages = {
                name: self._flat_average[offsets[where[id(p)]] : offsets[where[id(p)] + 1]]
                .reshape(p.shape)
                for name, p in named
            }  # each a view of the one array
        else:
            self._flat = self._flat_average = None
            self.averages = {name: p.data.copy() for name, p in named}

    def decay_now(self) -> float:
        """``decay_t`` of the next update: the warm-up's ``(1 + t) / (10 + t)``, capped at decay."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    def update(self, model) -> None:
        """Move every average towards the model's weights (after an optimizer step)."""
        keep = self.decay_now()
        with no_grad():
            if self._flat is not None and self._flat.relink():  # all at once
                self._flat_average *= keep
                self._flat_average += (1.0 - keep) * self._flat.data
            else:
                for name, p in model.named_parameters():
                    average = self.averages[name]
                    average *= keep
                    average += (1.0 - keep) * p.data
        self.updates += 1

    @contextlib.contextmanager
    def applied_to(self, model):
        """Inside the block ``model`` has the averaged weights; after it, the trained ones."""
        if self._flat is not None and self._flat.relink():
            # The parameters stay views of the optimizer's buffer: the values are swapped.
            trained = self._flat.data.copy()
            self._flat.data[...] = self._flat_average
            try:
                yield model
            finally:
                self._flat.relink()  # in case the block put other arrays in
                self._flat.data[...] = trained
            return
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
