"""An exponential moving average of a model's weights, for evaluation.

Not in the ViT paper; a habit of fast training recipes (the CNN speed-runs on
CIFAR-10, timm's ``ModelEmaV3``). Late in a run, each step moves the weights
a little along a noisy gradient; their running average sits nearer the
middle of the region the steps wander in, and often tests better than the
last weights. After every optimizer step:

    avg  <-  decay_t * avg + (1 - decay_t) * weights,    decay_t = min(decay, (1 + t) / (10 + t))

The warm-up of ``decay_t`` (``t`` counts the updates) lets the average
follow the weights closely at the start, when they are far from where they
will end, instead of remembering the random initialization for thousands of
steps. ``with ema.applied_to(model):`` puts the averaged weights into the
model (for evaluation, or saving) and the trained ones back afterwards.

One array for all the averages. The weights live in one buffer (the
optimizer's, ``optim.FlatParameters``; without an optimizer the average
gathers them into one), and the averages in one array of the same layout,
so an update is three whole-array operations, whatever the number of
parameters. The average needs no map of that layout, which is the
optimizer's business: to read or write the average of one named weight it
puts the averages into the buffer for a moment and goes through the
parameter's own view.
"""

from __future__ import annotations

import contextlib

from . import backend
from .checks import FRACTION
from .optim import gather, restore_view, whole_buffer


class ModelEMA:
    """The moving average of every parameter of ``model`` (the same names, shapes and device).

    ``update`` and ``applied_to`` take that same model.
    """

    def __init__(self, model, decay=0.999):
        FRACTION.check("ModelEMA: decay", decay)
        self.decay = decay
        self.updates = 0
        named = list(model.named_parameters())
        self._names = [name for name, _ in named]
        self._params = [p for _, p in named]
        self._weights = whole_buffer(p.data for p in self._params)  # (all parameters,)
        if self._weights is None:  # in no buffer yet: gathered into one
            self._weights, _ = gather(self._params, "ModelEMA")
        self._views = [p.data for p in self._params]  # each parameter's view of the buffer
        self._average = self._weights.copy()  # (all parameters,): laid out as the weights

    def decay_now(self) -> float:
        """``decay_t`` of the next update: the warm-up's ``(1 + t) / (10 + t)``, capped at decay."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    def update(self, model) -> None:
        """Move every average towards the model's weights (after an optimizer step)."""
        keep = self.decay_now()
        weights = self._follow(model)
        self._average *= keep
        self._average += (1.0 - keep) * weights
        self.updates += 1

    def _follow(self, model):
        """The buffer that holds the model's weights, after catching up with what was done
        to the parameters since the last look: moved into another buffer (an optimizer made
        after the average: the averages move to its layout), or an array put in place of a
        view (copied into the view, as the optimizer does)."""
        params = model.parameters()
        if len(params) != len(self._params) or any(
            a is not b for a, b in zip(params, self._params)
        ):
            raise ValueError("ModelEMA: this is not the model the average was made of")
        if all(p.data is view for p, view in zip(params, self._views)):
            return self._weights
        moved = whole_buffer(p.data for p in params)
        if moved is not None:
            averages = self.averages
            self._weights, self._views = moved, [p.data for p in params]
            self._write(averages)
        else:
            for p, view in zip(params, self._views):
                if p.data is not view:
                    restore_view(p, view, "ModelEMA")
        return self._weights

    @contextlib.contextmanager
    def applied_to(self, model):
        """Inside the block ``model`` has the averaged weights; after it, the trained ones."""
        weights, views = self._follow(model), list(self._views)
        trained = weights.copy()
        weights[...] = self._average  # the parameters' views show the averages
        try:
            yield model
        finally:
            for p, view in zip(self._params, views):  # whatever the block put in their place
                p.data = view
            weights[...] = trained

    @property
    def averages(self) -> dict:
        """``{name: array}``: a copy of each parameter's average, of its shape, on its device."""
        trained = self._weights.copy()
        self._weights[...] = self._average
        averages = {name: view.copy() for name, view in zip(self._names, self._views)}
        self._weights[...] = trained
        return averages

    def _write(self, averages):
        """Make ``averages`` (``{name: array}``, on any device) the averages."""
        trained = self._weights.copy()
        device = backend.device_of(self._weights)
        for name, view in zip(self._names, self._views):
            view[...] = backend.to_device(averages[name], device).astype(view.dtype)
        self._average = self._weights.copy()
        self._weights[...] = trained

    def state_dict(self) -> dict:
        """``{"updates": ..., name: NumPy array}``, for a checkpoint."""
        state = {name: backend.to_numpy(a) for name, a in self.averages.items()}
        state["updates"] = self.updates
        return state

    def load_state_dict(self, state) -> None:
        missing = [name for name in self._names if name not in state]
        if missing or "updates" not in state:
            raise ValueError(f"ModelEMA state: missing {missing or ['updates']}")
        for name, view in zip(self._names, self._views):
            if tuple(state[name].shape) != view.shape:
                raise ValueError(
                    f"ModelEMA state: {name} has shape {tuple(state[name].shape)}, "
                    f"expected {view.shape}"
                )
        self._write(state)
        self.updates = int(state["updates"])
