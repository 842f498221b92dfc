"""Optimizers, learning-rate schedules and gradient clipping.

The paper trains its ViTs with Adam and fine-tunes with SGD with momentum
(Section 4.1, Appendix B.1), with a linear warm-up followed by a cosine (or
linear) decay of the learning rate and global gradient-norm clipping at 1.
From-scratch training on small data sets works best with AdamW, Adam with
*decoupled* weight decay (Loshchilov & Hutter, 2019): the weights shrink by
``lr * weight_decay`` each step directly, instead of through the gradient,
so the decay is not rescaled by Adam's per-coordinate step sizes.

Updates run in place on the parameters' arrays, under no graph.

One buffer for all the parameters. An update is the same elementwise maths
for every parameter, so an optimizer keeps its parameters' values in one
contiguous array and their gradients in another (``FlatParameters``): each
parameter's ``.data`` is a view of the first and its ``.grad`` a view of the
second. The maths is written once, ``_update(group, data, grad, state)`` on
arrays, and a step calls it once per parameter group, on the group's
stretch of the two buffers, with the group's state (moment estimates) laid
out the same way. Fewer, larger operations: an AdamW step is about a dozen
whole-array operations per group instead of a dozen per parameter (on a GPU
each is a kernel launch, which costs the host the same few microseconds
however small its array), and clipping is one dot product and one scale.
Being elementwise, the update gives the numbers of a per-parameter update to
the bit.

The gradient buffer is the optimizer's, and works as PyTorch's gradients do
with ``zero_grad(set_to_none=False)``:

* ``zero_grad()`` zeroes the buffer (one operation) and points every
  ``.grad`` back at its view; ``backward()`` adds each gradient into it, as
  it adds into any leaf's ``.grad`` that exists.
* A parameter that no gradient reaches keeps zeros and is updated with a
  zero gradient: weight decay and momentum still move it.
* ``step()`` first brings back anything put in place of a view: a ``.grad``
  set by hand is copied into the buffer (``None`` counts as zero), and so is
  a ``.data`` replaced by an array of the same shape, dtype and device.
  (``Module.load_state_dict`` copies into the views and needs nothing.)

The parameters of one optimizer share a device and a dtype, since one
buffer holds them: move or cast a model (``model.to(...)``) before making
its optimizer, as PyTorch asks too; a parameter moved afterwards is an
error at the next step.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .backend import xp_of
from .dispatch import replaceable

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


# ---------------------------------------------------------------- one buffer


def whole_buffer(arrays):
    """The one array that ``arrays`` are distinct views of, together as large as it;
    else None. For the views a ``FlatParameters`` makes, that is its buffer."""
    arrays = list(arrays)
    base = getattr(arrays[0], "base", None) if arrays else None
    if base is None or base.ndim != 1 or any(a.base is not base for a in arrays):
        return None
    if len({id(a) for a in arrays}) != len(arrays) or sum(a.size for a in arrays) != base.size:
        return None
    return base


def gather(params, owner):
    """Copy the values of ``params`` into one new 1-D array, one after another, and make
    each ``p.data`` its view of it (of its shape); return ``(array, views)``.

    ``owner`` (``"AdamW"``, ``"ModelEMA"``) names the caller in the errors: the
    parameters must be distinct and share one device and dtype.
    """
    params = list(params)
    if len({id(p) for p in params}) != len(params):
        raise ValueError(f"{owner}: a parameter appears more than once")
    kinds = {(p.device, str(p.dtype)) for p in params}
    if len(kinds) > 1:
        raise ValueError(
            f"{owner}: the parameters must share one device and dtype to share a buffer, "
            f"got {', '.join(f'{d} {t}' for d, t in sorted(kinds))}; move or cast the "
            "model first (model.to(...))"
        )
    xp = xp_of(*(p.data for p in params))
    dtype = params[0].dtype if params else backend.DEFAULT_DTYPE
    offsets = np.cumsum([0] + [p.size for p in params]).tolist()
    buffer = xp.empty(offsets[-1], dtype=dtype)  # (all parameters,)
    views = []
    for p, start, stop in zip(params, offsets, offsets[1:]):
        view = buffer[start:stop].reshape(p.shape)
        view[...] = p.data
        p.data = view
        views.append(view)
    return buffer, views


def restore_view(param, view, owner):
    """Make ``param.data`` the buffer's ``view`` again, copying in the array that was put
    in its place; an array of another shape, dtype or device is an error."""
    was = (view.shape, view.dtype, backend.device_of(view))
    now = (param.shape, param.dtype, param.device)
    if now != was:
        raise ValueError(
            f"{owner}: a parameter of shape {was[0]} ({was[1]} on {was[2]}) became "
            f"{now[0]} ({now[1]} on {now[2]}) after the {owner} was made; move or cast the "
            f"model (model.to(...)) before making its {owner}"
        )
    view[...] = param.data
    param.data = view


class FlatParameters:
    """Parameters whose values live in one contiguous array, and their gradients in another.

    ``FlatParameters(params)`` copies each parameter's values into its stretch of
    ``self.data`` and its gradient (zeros if it has none) into its stretch of
    ``self.grad``, and makes ``p.data`` and ``p.grad`` views of them (of the
    parameter's shape), in the order given.
    """

    def __init__(self, params, owner="optimizer"):
        self.params = list(params)
        self.owner = owner
        self.data, self.data_views = gather(self.params, owner)  # (all parameters,)
        self.offsets = np.cumsum([0] + [p.size for p in self.params]).tolist()
        self.grad = xp_of(self.data).zeros_like(self.data)  # (all gradients,)
        self.grad_views = self.views_of(self.grad)
        for p, view in zip(self.params, self.grad_views):
            if p.grad is None:
                p.grad = view
        self.collect()  # the gradients computed before: copied in

    def stretch(self, first, last):
        """``(data, grad)``: 1-D views of parameters ``first .. last - 1`` in the buffers."""
        start, stop = self.offsets[first], self.offsets[last]
        return self.data[start:stop], self.grad[start:stop]

    def views_of(self, flat, first=0, last=None):
        """One view of ``flat`` per parameter ``first .. last - 1`` (of its shape), for an
        array laid out as their stretch of the buffers."""
        last = len(self.params) if last is None else last
        base = self.offsets[first]
        return [
            flat[self.offsets[i] - base : self.offsets[i + 1] - base].reshape(p.shape)
            for i, p in enumerate(self.params[first:last], first)
        ]

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    def zero_grad(self):
        """Zero every gradient: the buffer, at once; every ``.grad`` points at its view."""
        self.grad.fill(0)
        for p, view in zip(self.params, self.grad_views):
            p.grad = view

    def collect(self):
        """Bring into the buffers what was put in place of a view since: a ``.data`` of the
        same shape, dtype and device, a ``.grad`` set by hand (``None``: zero)."""
        for p, view, grad in zip(self.params, self.data_views, self.grad_views):
            if p.data is not view:
                restore_view(p, view, self.owner)
            if p.grad is grad:
                continue
            if p.grad is None:
                grad.fill(0)
            elif p.grad.shape != grad.shape:
                raise ValueError(
                    f"{self.owner}: a gradient of shape {p.grad.shape} was set for a "
                    f"parameter of shape {grad.shape}"
                )
            else:
                xp_of(grad, p.grad, names=("the parameter", "the gradient set by hand"))
                grad[...] = p.grad
            p.grad = grad


class Optimizer:
    """Parameter groups, their state, and saving both.

    ``params`` is a list of parameters, a list of ``{"params": [...], ...}``
    groups (entries override the defaults, as in PyTorch), or a module or
    ``named_parameters()``, which the subclass may split into groups. The
    parameters move into one buffer, each group a stretch of it
    (``FlatParameters``; the module docstring says why and what it means for
    ``.grad`` and ``.data``). A group's state (``group_states``) is one set of
    arrays over its stretch and its counters (AdamW's step count).
    """

    def __init__(self, params, defaults):
        if hasattr(params, "named_parameters"):
            params = params.parameters()
        params = list(params)
        if params and isinstance(params[0], tuple):  # (name, parameter) pairs
            params = [p for _, p in params]
        if params and isinstance(params[0], dict):
            self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in params]
        else:
            self.param_groups = [{**defaults, "params": params}]
        everything = [p for g in self.param_groups for p in g["params"]]
        self.flat = FlatParameters(everything, type(self).__name__)
        self.group_states = [{} for _ in self.param_groups]
        self.steps = 0

    def _groups(self):
        """``(group, first, last, state)``: each group, the indices of its parameters in
        the buffer (``first .. last - 1``) and its state."""
        first = 0
        for group, state in zip(self.param_groups, self.group_states):
            last = first + len(group["params"])
            yield group, first, last, state
            first = last

    def zero_grad(self):
        """Zero the gradient buffer (every ``.grad`` a view of it again)."""
        self.flat.zero_grad()

    def set_lr(self, lr):
        """Set every group's learning rate (a schedule calls this each step)."""
        for group in self.param_groups:
            group["lr"] = lr

    def step(self):
        """``_update`` once per group, on its stretch of the parameter and gradient buffers."""
        self.steps += 1
        self.flat.collect()
        for group, first, last, state in self._groups():
            if first < last:
                data, grad = self.flat.stretch(first, last)
                self._update(group, data, grad, state)

    def _update(self, group, data, grad, state):
        """One update of ``data`` (in place) from ``grad``, with ``state`` (a dict, in place)."""
        raise NotImplementedError

    @property
    def state(self) -> list:
        """Each parameter's state, in buffer order: views of its stretch of its group's
        arrays (of the parameter's shape), and the group's counters."""
        out = []
        for _, first, last, state in self._groups():
            arrays = {k: v for k, v in state.items() if _is_array(v)}
            views = {k: self.flat.views_of(v, first, last) for k, v in arrays.items()}
            for j in range(last - first):
                out.append({k: views[k][j] if k in views else v for k, v in state.items()})
        return out

    # -- saving -------------------------------------------------------------

    def state_dict(self) -> dict:
        """Flat ``{name: array}``, ready for an ``.npz``: the step count, every group's
        hyper-parameters and every parameter's state (``state{i}.exp_avg`` ...)."""
        out = {"steps": np.array(self.steps)}
        for g, group in enumerate(self.param_groups):
            for key, value in group.items():
                if key != "params":
                    out[f"group{g}.{key}"] = np.array(value)
        for i, state in enumerate(self.state):
            for key, value in state.items():
                out[f"state{i}.{key}"] = value if _is_array(value) else np.array(value)
        return out

    def load_state_dict(self, state_dict):
        """Load what ``state_dict`` saved (this optimizer's, or one that kept a state per
        parameter): each parameter's arrays go into its stretch of its group's, whose
        counters its parameters must agree on. Nothing changes unless all of it fits."""
        per_parameter = [{} for _ in self.flat.params]
        for key, value in state_dict.items():
            index, _, name = key.removeprefix("state").partition(".")
            if key.startswith("state") and index.isdigit():
                if int(index) >= len(per_parameter):
                    raise ValueError(
                        f"optimizer state {key}: this optimizer has {len(per_parameter)} "
                        "parameters"
                    )
                per_parameter[int(index)][name] = value
        group_states = [
            self._group_state(g, first, per_parameter[first:last])
            for g, (_, first, last, _) in enumerate(self._groups())
        ]
        hyper = [
            {key: state_dict[f"group{g}.{key}"] for key in group if key != "params"}
            for g, group in enumerate(self.param_groups)
        ]
        self.steps = int(state_dict["steps"])
        for group, values in zip(self.param_groups, hyper):
            for key, value in values.items():
                group[key] = tuple(value.tolist()) if np.ndim(value) else value.item()
        self.group_states = group_states

    def _group_state(self, g, first, states):
        """Group ``g``'s state from its parameters' saved states (``first``: its first)."""
        if not any(states):
            return {}
        keys = sorted(states[0])
        if any(sorted(s) != keys for s in states):
            raise ValueError(f"optimizer state: the parameters of group {g} differ in entries")
        merged = {}
        for key in keys:
            values = [s[key] for s in states]
            if np.ndim(values[0]) == 0:  # a counter, which the group's parameters share
                counts = {np.asarray(v).item() for v in values}
                if len(counts) != 1:
                    raise ValueError(
                        f"optimizer state: the parameters of group {g} differ in {key} "
                        f"({sorted(counts)}); this optimizer keeps one per group"
                    )
                merged[key] = counts.pop()
                continue
            for i, (value, p) in enumerate(zip(values, self.flat.params[first:]), first):
                if tuple(value.shape) != p.shape:
                    raise ValueError(
                        f"optimizer state state{i}.{key} has shape {tuple(value.shape)}, "
                        f"but its parameter has shape {p.shape}"
                    )
            host = np.concatenate([backend.to_numpy(v).reshape(-1) for v in values])
            merged[key] = backend.to_device(host, self.flat.device).astype(
                self.flat.data.dtype, copy=True
            )
        return merged


def _is_array(value) -> bool:
    return hasattr(value, "shape")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and Nesterov momentum, as in PyTorch.

    ``g = grad + weight_decay * p`` (L2, coupled); ``b = momentum * b + g``;
    step along ``b``, or along ``g + momentum * b`` with ``nesterov=True``.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        if nesterov and momentum <= 0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay),
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

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if hasattr(params, "named_parameters"):
            params = param_groups(params, weight_decay)
        else:
            params = list(params)
            if params and isinstance(params[0], tuple):
                params = param_groups(params, weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _update(self, group, data, grad, state):
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp_of(data).zeros_like(data)
            state["exp_avg_sq"] = xp_of(data).zeros_like(data)
        state["step"] += 1
        adamw_update(
            data, grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
            group["lr"], group["betas"], group["eps"], group["weight_decay"],
        )  # fmt: skip


@replaceable
def adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    """One AdamW step of step count ``step`` on arrays, in place: ``param``, ``exp_avg``
    (m) and ``exp_avg_sq`` (v) are updated from ``grad``.

    The reference: a dozen whole-array operations. On the CPU a kernel runs
    it as one loop over the elements (``kernels/cpu.py``), through
    ``dispatch`` as the ops of ``functional`` run theirs.
    """
    b1, b2 = betas
    if weight_decay:
        param *= 1.0 - lr * weight_decay
    exp_avg *= b1
    exp_avg += (1.0 - b1) * grad
    exp_avg_sq *= b2
    exp_avg_sq += (1.0 - b2) * (grad * grad)
    step_size = lr / (1.0 - b1**step)
    denom = xp_of(exp_avg_sq).sqrt(exp_avg_sq)
    denom *= 1.0 / math.sqrt(1.0 - b2**step)
    denom += eps
    param -= step_size * (exp_avg / denom)


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
    gradients are together one whole array (an optimizer's gradient buffer,
    given exactly its parameters: ``whole_buffer``), the norm and the scale
    are one operation each on that array.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    whole = whole_buffer(grads)
    if whole is not None:
        grads = [whole]  # (all parameters,): every gradient, in one array
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
