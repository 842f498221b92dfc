"""Optimisers, learning-rate schedules and gradient clipping.

The paper trains its ViTs with Adam and fine-tunes with SGD with momentum
(Section 4.1, Appendix B.1), with a linear warm-up followed by a cosine (or
linear) decay of the learning rate and global gradient-norm clipping at 1.
From-scratch training on small data sets works best with AdamW, Adam with
*decoupled* weight decay (Loshchilov & Hutter, 2019): the weights shrink by
``lr * weight_decay`` each step directly, instead of through the gradient,
so the decay is not rescaled by Adam's per-coordinate step sizes.

Updates run in place on the parameters' arrays, under no graph.
"""

from __future__ import annotations

import math

import numpy as np

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


class Optimizer:
    """Parameter groups, per-parameter state, and saving both.

    ``params`` is a list of parameters, a list of ``{"params": [...], ...}``
    groups (entries override the defaults, as in PyTorch), or a module or
    ``named_parameters()``, which the subclass may split into groups.
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
        self.state = [{} for g in self.param_groups for _ in g["params"]]
        self.steps = 0

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
        for group, p, state in self._params():
            if p.grad is not None:
                self._update(group, p, state)

    def _update(self, group, p, state):
        raise NotImplementedError

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
                    state[key[len(prefix) :]] = xp_of(p.data).asarray(value, dtype=p.dtype)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and Nesterov momentum, as in PyTorch.

    ``g = grad + weight_decay * p`` (L2, coupled); ``b = momentum * b + g``;
    step along ``b``, or along ``g + momentum * b`` with ``nesterov=True``.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        if nesterov and momentum <= 0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")
        super().__init__(
            params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        )

    def _update(self, group, p, state):
        g = p.grad
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p.data
        if group["momentum"]:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.copy()
            else:
                buf = state["momentum_buffer"]
                buf *= group["momentum"]
                buf += g
            buf = state["momentum_buffer"]
            g = g + group["momentum"] * buf if group["nesterov"] else buf
        p.data -= group["lr"] * g


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
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        )

    def _update(self, group, p, state):
        xp = xp_of(p.data)
        g = p.grad
        b1, b2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if group["weight_decay"]:
            p.data *= 1.0 - group["lr"] * group["weight_decay"]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        step_size = group["lr"] / (1.0 - b1**t)
        denom = xp.sqrt(v)
        denom *= 1.0 / math.sqrt(1.0 - b2**t)
        denom += group["eps"]
        p.data -= step_size * (m / denom)


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


def clip_grad_norm(parameters, max_norm) -> float:
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``.

    Returns the norm before clipping (``inf`` or ``nan`` pass through unscaled,
    so the caller can see them).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    xp = xp_of(grads[0])
    total = math.sqrt(float(sum(xp.vdot(g.ravel(), g.ravel()) for g in grads)))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= scale
    return total
