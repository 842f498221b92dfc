"""Numerical gradient checking: trust a backward because it matches the definition.

A derivative is a limit, ``df/dx = lim (f(x + h) - f(x - h)) / 2h``, and a
computer can evaluate the right-hand side for a small ``h``. ``gradcheck``
does exactly that for every coordinate of every tensor it is asked about,
and compares with what ``backward()`` computed.

Two details make the check worth its name:

* It runs in float64. With ``h = 1e-6`` the central difference is accurate to
  about 1e-10 there; in float32 rounding alone would swamp it.
* It differentiates ``sum(f(x) * R)`` for a random ``R``, never ``sum(f(x))``.
  The rows of a softmax always sum to one, so ``sum(softmax(x))`` is constant
  and its gradient is zero: a softmax whose backward returns zeros would pass
  a check on ``sum(f(x))``. A random ``R`` weights every output differently,
  so every entry of the Jacobian shows.

Run ``python -m tinyvit`` to check every layer of the ViT and print the errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import backend
from .backend import xp_of
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """``backward()`` disagrees with the numerical gradient."""


@dataclass
class GradcheckRow:
    """The comparison for one tensor."""

    name: str
    shape: tuple
    checked: int  # coordinates compared
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple
    analytic: float  # the two gradients at the worst coordinate
    numerical: float
    ok: bool


@dataclass
class GradcheckReport:
    rows: list[GradcheckRow] = field(default_factory=list)
    title: str = ""

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def __str__(self) -> str:
        header = (
            f"{'tensor':<28} {'shape':<18} {'checked':>7} "
            f"{'max abs err':>12} {'max rel err':>12}  ok"
        )
        lines = [self.title] if self.title else []
        lines += [header, "-" * len(header)]
        for r in self.rows:
            lines.append(
                f"{r.name:<28} {str(r.shape):<18} {r.checked:>7} {r.max_abs_error:>12.2e} "
                f"{r.max_rel_error:>12.2e}  {'yes' if r.ok else 'NO'}"
            )
        return "\n".join(lines)


def _scalar(fn, inputs, weights):
    """sum(fn(*inputs) * weights) as a Python float, without building a graph."""
    with no_grad():
        out = fn(*inputs)
    data = out.data if isinstance(out, Tensor) else out
    return float((data * weights).sum())


def _tensors_to_check(inputs, params, names):
    """``(name, tensor)`` for each input with ``requires_grad`` and each of ``params``."""
    labels = list(names) if names is not None else [f"input {i}" for i in range(len(inputs))]
    named = [
        (label, t) for label, t in zip(labels, inputs) if isinstance(t, Tensor) and t.requires_grad
    ]
    if isinstance(params, dict):
        params = params.items()
    for i, item in enumerate(params):
        named.append(item if isinstance(item, tuple) else (f"param {i}", item))
    if not named:
        raise ValueError(
            "gradcheck: nothing to check; give inputs with requires_grad=True or params"
        )
    for name, t in named:
        if t.dtype != np.float64:
            raise TypeError(
                f"gradcheck needs float64 tensors, but {name} is {t.dtype}: central differences "
                "in float32 are too coarse to judge a gradient. Use .astype(numpy.float64)."
            )
    return named


def _analytic_gradients(fn, inputs, named, rng):
    """The random weights ``R`` and, per checked tensor, the gradient of ``sum(f * R)``
    that ``backward()`` computes (as NumPy); the tensors' own ``.grad`` are left as they were.
    """
    # The analytic gradient of sum(f * R) is the backward of f with upstream gradient R.
    out = fn(*inputs)
    if not isinstance(out, Tensor) or not out.requires_grad:
        raise ValueError("gradcheck: fn must return a Tensor that depends on the checked tensors")
    xp = xp_of(out.data)
    weights = xp.asarray(rng.standard_normal(out.shape), dtype=out.dtype)
    saved = [t.grad for _, t in named]
    for _, t in named:
        t.grad = None
    out.backward(weights)
    analytic = [
        backend.to_numpy(t.grad) if t.grad is not None else np.zeros(t.shape) for _, t in named
    ]
    for (_, t), g in zip(named, saved):
        t.grad = g
    return weights, analytic


def _numerical_gradient(fn, inputs, weights, t, flat, eps):
    """Central differences of ``sum(fn(*inputs) * weights)`` at the flat indices ``flat`` of
    ``t``, each coordinate nudged by ``+-eps`` in place and put back."""
    numerical = np.empty(len(flat))
    for j, f in enumerate(flat):
        index = np.unravel_index(f, t.shape)
        original = t.data[index].item()
        t.data[index] = original + eps
        plus = _scalar(fn, inputs, weights)
        t.data[index] = original - eps
        minus = _scalar(fn, inputs, weights)
        t.data[index] = original
        numerical[j] = (plus - minus) / (2 * eps)
    return numerical


def _compare(name, t, grad, flat, numerical, atol, rtol) -> GradcheckRow:
    """The row of the report for ``t``: its analytic gradient ``grad`` against ``numerical``."""
    ana = grad.reshape(-1)[flat]
    err = np.abs(ana - numerical)
    scale = np.maximum(np.abs(ana), np.abs(numerical))
    rel = np.divide(err, scale, out=np.zeros_like(err), where=scale > 0)
    worst = int(np.argmax(err - (atol + rtol * np.abs(numerical)))) if len(flat) else 0
    return GradcheckRow(
        name=name,
        shape=tuple(t.shape),
        checked=len(flat),
        max_abs_error=float(err.max(initial=0.0)),
        max_rel_error=float(rel.max(initial=0.0)),
        worst_index=tuple(int(i) for i in np.unravel_index(flat[worst], t.shape))
        if len(flat)
        else (),
        analytic=float(ana[worst]) if len(flat) else 0.0,
        numerical=float(numerical[worst]) if len(flat) else 0.0,
        ok=bool(np.all(err <= atol + rtol * np.abs(numerical))),
    )


def _mismatch(report) -> GradcheckError:
    """The error that names each failing tensor, where it fails, and both gradients there."""
    bad = [r for r in report.rows if not r.ok]
    detail = "; ".join(
        f"{r.name} {r.shape}: at index {r.worst_index} backward() gives {r.analytic:.6g} "
        f"but the numerical gradient is {r.numerical:.6g}"
        for r in bad
    )
    return GradcheckError(f"gradient mismatch: {detail}\n{report}")


def gradcheck(
    fn,
    inputs,
    params=(),
    *,
    names=None,
    eps=1e-6,
    atol=1e-6,
    rtol=1e-5,
    max_coords=None,
    seed=0,
    raise_on_failure=True,
) -> GradcheckReport:
    """Compare ``backward()`` with central differences of ``sum(fn(*inputs) * R)``.

    ``inputs`` are passed to ``fn`` as they are; those that are Tensors with
    ``requires_grad`` are checked, and so are ``params`` (a list of tensors,
    or a dict or ``named_parameters()``-style pairs of name and tensor), for
    functions that close over weights; ``names`` labels the inputs in the
    report. Every checked tensor must be float64.
    ``max_coords`` caps the coordinates compared per tensor (sampled at
    random); ``None`` compares all. A coordinate fails when
    ``|analytic - numerical| > atol + rtol * |numerical|``.

    Returns a ``GradcheckReport`` (printable); raises ``GradcheckError`` on a
    mismatch unless ``raise_on_failure=False``. ``fn`` must be deterministic:
    use ``dropout`` with ``training=False`` or a freshly seeded generator.
    """
    inputs = tuple(inputs)
    named = _tensors_to_check(inputs, params, names)
    rng = np.random.default_rng(seed)
    weights, analytic = _analytic_gradients(fn, inputs, named, rng)
    report = GradcheckReport()
    for (name, t), grad in zip(named, analytic):
        if max_coords is None or t.size <= max_coords:
            flat = np.arange(t.size)
        else:
            flat = rng.choice(t.size, size=max_coords, replace=False)
        numerical = _numerical_gradient(fn, inputs, weights, t, flat, eps)
        report.rows.append(_compare(name, t, grad, flat, numerical, atol, rtol))
    if raise_on_failure and not report.ok:
        raise _mismatch(report)
    return report


def check_every_layer(seed=0, device="cpu") -> list[GradcheckReport]:
    """Gradient-check each layer of the ViT on small random float64 inputs."""
    from . import functional as F

    xp = backend.module_for(device)
    rng = np.random.default_rng(seed)

    def param(*shape, positive=False):
        a = rng.standard_normal(shape)
        if positive:
            a = np.abs(a) + 0.5
        return Tensor(xp.asarray(a), requires_grad=True)

    target = xp.asarray(rng.integers(0, 5, size=4))
    qkv = (param(2, 2, 5, 3), param(2, 2, 5, 3), param(2, 2, 5, 3))  # (B, heads, N, head_dim)
    cases = [
        ("linear", F.linear, (param(2, 3, 4), param(5, 4), param(5)), ("x", "weight", "bias")),
        ("softmax", F.softmax, (param(3, 6),), ("x",)),
        ("log_softmax", F.log_softmax, (param(3, 6),), ("x",)),
        (
            "cross_entropy (label smoothing 0.1)",
            lambda z: F.cross_entropy(z, target, label_smoothing=0.1),
            (param(4, 5),),
            ("logits",),
        ),
        ("layer_norm", F.layer_norm, (param(2, 3, 6), param(6), param(6)), ("x", "weight", "bias")),
        ("gelu (exact)", F.gelu, (param(3, 7),), ("x",)),
        ("gelu (tanh)", lambda x: F.gelu(x, approximate="tanh"), (param(3, 7),), ("x",)),
        ("scaled_dot_product_attention", F.scaled_dot_product_attention, qkv, ("q", "k", "v")),
    ]
    reports = []
    for title, fn, inputs, names in cases:
        report = gradcheck(fn, inputs, names=names, raise_on_failure=False)
        report.title = title
        reports.append(report)
    return reports
