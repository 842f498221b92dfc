"""Optimisers, learning-rate schedules and gradient clipping.

The paper trains its ViTs with Adam and fine-tunes with SGD with momentum
(Section 4.1, Appendix B.1), with a linear warm-up followed by a cosine (or
linear) decay of the learning rate and global gradient-norm clipping at 1.
From-scratch training on small data sets works best with AdamW, Adam with
*decoupled* weight decay (Loshchilov & Hutter, 2019): the weights shrink by
``lr * weight_decay`` each step directly, instead of through the gradient,
so the decay is not rescaled by Adam's per-coordinate step sizes.

Updates run in place on the parameters' arrays, under no graph.

One buffer for all the parameters. Each update is the same elementwise
maths for every parameter, so an optimizer gathers its parameters into one
contiguous array and their gradients into another (``FlatParameters``):
every parameter's ``data`` becomes a view of the first, and ``backward()``
writes its gradient straight into its view of the second. An AdamW step is
then ~13 whole-array operations per parameter group instead of ~13 per
parameter (on a GPU each is a kernel launch of several microseconds however
small the array: ~26 launches instead of ~1,200 for ViT-Lite-7/4), and
clipping is a dot product and a scale of one array. The maths is written
once, ``_update(group, data, grad, state)`` on arrays: the flat step calls
it on each group's stretch of the buffers, the per-parameter step on each
parameter. The per-parameter step remains for the cases the buffers cannot
take: a parameter without a gradient this step (it must not move), a
gradient set by hand, or parameters moved to another device after the
optimizer was made. Both give the same numbers to the bit.
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from . import backend
from .backend import xp_of

# Parameters that by convention get no weight decay: biases and LayerNorm
# gains (1-D), the position embedding and the class token.
NO_DECAY_NAMES = ("pos_embed", "cls_token")


def decays(name, param) -> bool:
    """Whether AdamW's default grouping decays this parameter."""
    return param.ndim > 1 and name.split(".")[-1] not in NO_DECAY_NAMES


def param_groups(model_or_named, weight_decay):
    """Two groups: the decayed weights, and the rest with ``weight_decay=0``."""
    named = (
        model_or_named.named_parameters()
        if hasattr(model_or_named, "named_parameters")
        else model_or_named
    )
    decay, no_decay = [], []
    for name, p in named:
        (decay if decays(name, p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class FlatParameters:
    """Parameters whose values live in one contiguous array, and their gradients in another.

    ``FlatParameters(params)`` copies each parameter's values into its
    stretch of ``self.data`` and makes ``p.data`` a view of it (same shape),
    and makes ``p.grad_buffer`` the view of ``self.grad`` that
    ``Tensor.backward`` fills instead of a fresh array. The parameters must
    share a device and a dtype. Anything that later puts another array in
    ``p.data`` (``load_state_dict`` does not: it copies in place) is noticed
    by ``relink``, which copies it back into the buffer.
    """

    def __init__(self, params):
        self.params = list(params)
        xp = xp_of(*(p.data for p in self.params))
        self.dtype = self.params[0].dtype
        self.sizes = [p.size for p in self.params]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.data = xp.empty(self.offsets[-1], dtype=self.dtype)  # (all parameters,)
        self.grad = xp.zeros(self.offsets[-1], dtype=self.dtype)  # (all gradients,)
        self._views = []
        for p, start, stop in zip(self.params, self.offsets, self.offsets[1:]):
            view = self.data[start:stop].reshape(p.shape)
            view[...] = p.data
            p.data = view
            p.grad_buffer = self.grad[start:stop].reshape(p.shape)
            self._views.append(view)
            _OWNERS[id(p.grad_buffer)] = self  # for clip_gradients, which gets parameters

    def stretch(self, first, last):
        """``(data, grad)`` views of parameters ``first .. last - 1``, flat."""
        start, stop = self.offsets[first], self.offsets[last]
        return self.data[start:stop], self.grad[start:stop]

    def relink(self) -> bool:
        """Make every ``p.data`` its view again (copying in values put there since);
        False when one of them has moved to another device, dtype or shape."""
        for p, view in zip(self.params, self._views):
            if p.data is view:
                continue
            if p.data.shape != view.shape or p.dtype != self.dtype or p.device != self.device:
                return False
            view[...] = p.data
            p.data = view
        return True

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    def gradients_in_place(self) -> bool:
        """Whether every gradient is the one ``backward()`` wrote into the buffer."""
        return all(p.grad is not None and p.grad is p.grad_buffer for p in self.params)

    def gradient_of(self, parameters):
        """The whole gradient buffer, if ``parameters`` are exactly these and every gradient
        is in it; else None."""
        if flat_parameters_of(parameters) is not self:
            return None
        return self.grad if self.gradients_in_place() else None


_OWNERS = weakref.WeakValueDictionary()  # id of a parameter's grad_buffer -> its FlatParameters


def flat_parameters_of(parameters) -> FlatParameters | None:
    """The ``FlatParameters`` that holds exactly ``parameters`` (in any order), or None."""
    parameters = list(parameters)
    owner = _OWNERS.get(id(parameters[0].grad_buffer)) if parameters else None
    if owner is None or len(parameters) != len(owner.params):
        return None
    ids = {id(p) for p in parameters}
    return owner if all(id(p) in ids for p in owner.params) else None


def flatten(params):
    """``FlatParameters(params)`` when they can share buffers (one device and dtype, none
    repeated, none already in another buffer), else None."""
    params = list(params)
    if not params or len({id(p) for p in params}) != len(params):
        return None
    if any(p.grad_buffer is not None for p in params):  # another optimizer holds them
        return None
    if len({(p.device, p.dtype) for p in params}) != 1:
        return None
    return FlatParameters(params)


class Optimizer:
    """Parameter groups, per-parameter state, and saving both.

    ``params`` is a list of parameters, a list of ``{"params": [...], ...}``
    groups (entries override the defaults, as in PyTorch), or a module or
    ``named_parameters()``, which the subclass may split into groups.
    ``flat=True`` (the default) gathers the parameters into one buffer
    (``FlatParameters``; the module docstring says why).
    """

    def __init__(self, params, defaults, flat=True):
        if hasattr(params, "named_parameters"):
            params = params.parameters()
        params = list(params)
        if params and isinstance(params[0], tuple):  # (name, parameter) pairs
            params = [p for _, p in params]
        if params and isinstance(params[0], dict):
            self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in params]
        else:
            self.param_groups = [{**defaults, "params": params}]
        self.state = [{} for g in self.param_groups for _ in g["params"]]
        self.steps = 0
        self.flat = flatten(p for g in self.param_groups for p in g["params"]) if flat else None
        # Each group's state as arrays over its stretch of the buffer (the per-parameter
        # states are views of them), once a flat step has run.
        self._group_states = None

    def _params(self):
        """(group, parameter, state) for every parameter, in a fixed order."""
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield group, p, self.state[i]
                i += 1

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def set_lr(self, lr):
        """Set every group's learning rate (a schedule calls this each step)."""
        for group in self.param_groups:
            group["lr"] = lr

    def step(self):
        self.steps += 1
        if self._flat_ready():
            self._flat_step()
            return
        self._group_states = None  # the per-parameter states may part ways now
        for group, p, state in self._params():
            if p.grad is not None:
                self._update(group, p.data, p.grad, state)

    def _update(self, group, data, grad, state):
        """One update of ``data`` (in place) from ``grad``, with ``state`` (a dict, in place)."""
        raise NotImplementedError

    # -- the flat step ---------------------------------------------------------

    def _flat_ready(self) -> bool:
        """Whether this step can run on the buffers: they hold every parameter, every
        gradient was written there, and the states are (or can be made) group-wide."""
        if self.flat is None:
            return False
        if not self.flat.relink():  # the model moved to another device or dtype
            self.flat = None
            return False
        if not self.flat.gradients_in_place():
            return False
        return self._group_states is not None or self._gather_states()

    def _group_ranges(self):
        first = 0
        for group in self.param_groups:
            yield group, first, first + len(group["params"])
            first += len(group["params"])

    def _gather_states(self) -> bool:
        """Make each group's state one set of arrays over its stretch of the buffer.

        Fresh states are empty. Loaded (or per-parameter) states are copied into
        group-wide arrays when every parameter of the group has the same step count
        and the same entries; otherwise the per-parameter step goes on.
        """
        xp = xp_of(self.flat.data)
        group_states = []
        for _, first, last in self._group_ranges():
            states = self.state[first:last]
            if not any(states):
                group_states.append({})
                continue
            keys = set(states[0])
            counters = {k for k, v in states[0].items() if not hasattr(v, "shape")}
            if any(set(s) != keys for s in states) or any(
                s[k] != states[0][k] for s in states for k in counters
            ):
                return False
            merged = {k: states[0][k] for k in counters}
            for key in keys - counters:
                merged[key] = xp.concatenate([s[key].reshape(-1) for s in states])
            group_states.append(merged)
        self._group_states = group_states
        self._share_states()
        return True

    def _share_states(self):
        """Point every parameter's state at its views of its group's state arrays."""
        for (_, first, last), merged in zip(self._group_ranges(), self._group_states):
            for i in range(first, last):
                state = self.state[i]
                for key, value in merged.items():
                    if not hasattr(value, "shape"):
                        state[key] = value
                    elif state.get(key) is None or state[key].base is not value:
                        start = self.flat.offsets[i] - self.flat.offsets[first]
                        stop = self.flat.offsets[i + 1] - self.flat.offsets[first]
                        state[key] = value[start:stop].reshape(self.flat.params[i].shape)

    def _flat_step(self):
        """``_update`` once per group, on its stretch of the parameter and gradient buffers."""
        for (group, first, last), merged in zip(self._group_ranges(), self._group_states):
            if first == last:
                continue
            data, grad = self.flat.stretch(first, last)
            self._update(group, data, grad, merged)
        self._share_states()

    # -- saving -------------------------------------------------------------

    def state_dict(self) -> dict:
        """Flat ``{name: array}``, ready for an ``.npz``: the step count, every group's
        hyper-parameters and every parameter's state (moment estimates)."""
        out = {"steps": np.array(self.steps)}
        for g, group in enumerate(self.param_groups):
            for key, value in group.items():
                if key != "params":
                    out[f"group{g}.{key}"] = np.array(value)
        for i, state in enumerate(self.state):
            for key, value in state.items():
                out[f"state{i}.{key}"] = value if hasattr(value, "shape") else np.array(value)
        return out

    def load_state_dict(self, state_dict):
        self.steps = int(state_dict["steps"])
        for g, group in enumerate(self.param_groups):
            for key in group:
                if key != "params":
                    value = state_dict[f"group{g}.{key}"]
                    group[key] = tuple(value.tolist()) if np.ndim(value) else value.item()
        self._group_states = None  # gathered again, from these, at the next flat step
        for i, (_, p, state) in enumerate(self._params()):
            state.clear()
            prefix = f"state{i}."
            for key, value in state_dict.items():
                if not key.startswith(prefix):
                    continue
                if np.ndim(value) == 0:  # a counter
                    state[key[len(prefix) :]] = value.item()
                else:
                    if tuple(value.shape) != p.shape:
                        raise ValueError(
                            f"optimizer state {key} has shape {tuple(value.shape)}, "
                            f"but its parameter has shape {p.shape}"
                        )
                    state[key[len(prefix) :]] = backend.to_device(value, p.device).astype(
                        p.dtype, copy=True
                    )


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and Nesterov momentum, as in PyTorch.

    ``g = grad + weight_decay * p`` (L2, coupled); ``b = momentum * b + g``;
    step along ``b``, or along ``g + momentum * b`` with ``nesterov=True``.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, flat=True):
        if nesterov and momentum <= 0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay),
            flat,
        )

    def _update(self, group, data, grad, state):
        g = grad
        if group["weight_decay"]:
            g = g + group["weight_decay"] * data
        if group["momentum"]:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.copy()
            else:
                buf = state["momentum_buffer"]
                buf *= group["momentum"]
                buf += g
            buf = state["momentum_buffer"]
            g = g + group["momentum"] * buf if group["nesterov"] else buf
        data -= group["lr"] * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    For each parameter, with gradient ``g`` at step ``t``:

        p  <- p - lr * weight_decay * p                  (decoupled decay)
        m  <- b1 m + (1 - b1) g,     v <- b2 v + (1 - b2) g^2
        p  <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    Given a model (or its ``named_parameters()``), biases, LayerNorm weights,
    the position embedding and the class token get no weight decay.
    """

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, flat=True
    ):
        if hasattr(params, "named_parameters"):
            params = param_groups(params, weight_decay)
        else:
            params = list(params)
            if params and isinstance(params[0], tuple):
                params = param_groups(params, weight_decay)
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay), flat
        )

    def _update(self, group, data, grad, state):
        xp = xp_of(data)
        g = grad
        b1, b2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(data)
            state["exp_avg_sq"] = xp.zeros_like(data)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if group["weight_decay"]:
            data *= 1.0 - group["lr"] * group["weight_decay"]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        step_size = group["lr"] / (1.0 - b1**t)
        denom = xp.sqrt(v)
        denom *= 1.0 / math.sqrt(1.0 - b2**t)
        denom += group["eps"]
        data -= step_size * (m / denom)


class WarmupCosine:
    """Linear warm-up from 0 to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr``.

    ``schedule(step)`` is the learning rate of step ``step`` (counting from 0),
    so the schedule has no state of its own: resuming at step ``t`` resumes it.
    """

    def __init__(self, lr, total_steps, warmup_steps=0, min_lr=0.0):
        if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"WarmupCosine: need 0 <= warmup_steps ({warmup_steps}) "
                f"<= total_steps ({total_steps})"
            )
        self.lr, self.total, self.warmup, self.min_lr = lr, total_steps, warmup_steps, min_lr

    def __call__(self, step) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        progress = min(progress, 1.0)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


def clip_gradients(parameters, max_norm):
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``;
    return the norm before clipping as a 0-d array on the gradients' device.

    Nothing comes back to the host, so on a GPU the host does not wait: the
    scale ``min(1, max_norm / (norm + 1e-6))`` is computed and applied on the
    device, as ``torch.nn.utils.clip_grad_norm_`` does. A norm that is ``inf``
    or ``nan`` leaves the gradients unscaled, for the caller to see. When the
    parameters are those of one ``FlatParameters`` with every gradient in its
    buffer, the norm and the scale each take one operation on that buffer.
    """
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    owner = flat_parameters_of(parameters)
    flat = owner.gradient_of(parameters) if owner is not None else None
    if flat is not None:
        grads = [flat]  # (all parameters,): every gradient, in one array
    xp = xp_of(*grads)
    total = xp.sqrt(sum(xp.vdot(g.reshape(-1), g.reshape(-1)) for g in grads))  # 0-d
    scale = max_norm / (total + 1e-6)
    scale = xp.where(xp.isfinite(total) & (scale < 1.0), scale, 1.0)  # 0-d
    for g in grads:
        g *= scale
    return total


def clip_grad_norm(parameters, max_norm) -> float:
    """``clip_gradients``, returning the norm before clipping as a Python float (``inf``
    or ``nan`` pass through unscaled, so the caller can see them). Reading it waits for
    the device: a training step uses ``clip_gradients`` and reads it with the loss."""
    total = clip_gradients(parameters, max_norm)
    return 0.0 if total is None else float(total)
