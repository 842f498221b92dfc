# %% [markdown]
# # Lesson 1: tensors and autograd by hand
#
# Training a Vision Transformer means following the gradient of a loss with
# respect to some 86 million numbers. Nobody derives that by hand; an
# autograd engine does it by applying the chain rule one operation at a time.
# This lesson builds the intuition on a graph small enough to do on paper,
# then moves to tensors, and each time puts three numbers side by side: the
# derivative worked out by hand, the one ``backward()`` computes, and a
# numerical estimate from the definition of the derivative.
#
# Run: ``python lessons/01_autograd.py [--out DIR] [--quick] [--device cuda]``

# %%
import numpy as np

from tinyvit import Tensor, backend, gradcheck
from tinyvit.lesson import lesson_arguments

args = lesson_arguments("01_autograd", "Tensors and autograd by hand.")
xp = backend.module_for(args.device)


def numerical_derivative(f, x, h=1e-6):
    """The definition of the derivative, as a central difference."""
    return (f(x + h) - f(x - h)) / (2 * h)


# %% [markdown]
# ## 1. A scalar graph
#
# Take ``L = a * tanh(a * b + b)`` at ``a = 0.5``, ``b = -1.5``. Name the
# intermediate values: ``c = a * b``, ``d = c + b``, ``e = tanh(d)``,
# ``L = a * e``. The chain rule, read backwards from ``L``:
#
# * ``dL/de = a`` and, since ``tanh' = 1 - tanh^2``, ``dL/dd = a (1 - e^2)``;
# * ``d`` is ``c + b``, so ``dL/dc = dL/dd`` and ``b`` gets ``dL/dd`` from here;
# * ``c`` is ``a * b``, so ``a`` gets ``dL/dc * b`` and ``b`` gets ``dL/dc * a``;
# * ``a`` is also used directly in ``L = a * e``: it gets ``e`` from there too.
#
# A variable used twice adds up the gradients of both uses; that is the one
# rule the engine has to get right about graphs.

# %%
a = Tensor(xp.asarray(0.5, dtype=np.float64), requires_grad=True)
b = Tensor(xp.asarray(-1.5, dtype=np.float64), requires_grad=True)
c = a * b
d = c + b
e = d.tanh()
L = a * e
L.backward()

av, bv, ev = 0.5, -1.5, float(np.tanh(0.5 * -1.5 - 1.5))
dL_dd = av * (1 - ev**2)
by_hand = {"a": ev + dL_dd * bv, "b": dL_dd * (av + 1)}
numerical = {
    "a": numerical_derivative(lambda t: t * np.tanh(t * bv + bv), av),
    "b": numerical_derivative(lambda t: av * np.tanh(av * t + t), bv),
}
print("\nscalar graph  L = a * tanh(a*b + b)")
print(f"{'':4} {'by hand':>14} {'backward()':>14} {'numerical':>14}")
for name, t in (("a", a), ("b", b)):
    print(f"dL/d{name} {by_hand[name]:14.10f} {float(t.grad):14.10f} {numerical[name]:14.10f}")

# %% [markdown]
# ## 2. Tensors
#
# Nothing changes when the values are arrays, except that each op's
# derivative is now a matrix expression. For a linear model ``y = X w + b``
# with the mean squared error ``L = mean((y - t)^2)`` over ``n`` examples:
#
#     dL/dw = (2/n) X^T (y - t),    dL/db = (2/n) sum(y - t)
#
# ``b`` is one number added to every row: broadcasting used it ``n`` times,
# so its gradient is a sum over the rows. The engine does that for every
# broadcast (``unbroadcast`` in ``tinyvit/tensor.py``).

# %%
rng = np.random.default_rng(0)
n = 8 if args.quick else 64
X = Tensor(xp.asarray(rng.standard_normal((n, 3))))
target = Tensor(xp.asarray(rng.standard_normal(n)))
w = Tensor(xp.asarray(rng.standard_normal(3)), requires_grad=True)
bias = Tensor(xp.asarray([0.3]), requires_grad=True)

residual = X @ w + bias - target
loss = (residual * residual).mean()
loss.backward()

r = residual.numpy()
print("\nlinear model  L = mean((X w + b - t)^2)")
print("dL/dw by hand    ", np.round(2 / n * X.numpy().T @ r, 10))
print("dL/dw backward() ", np.round(backend.to_numpy(w.grad), 10))
print("dL/db by hand    ", round(2 / n * r.sum(), 10), "  backward():", float(bias.grad[0]))

# gradcheck compares backward() with central differences for every coordinate
print(gradcheck(lambda w_, b_: ((X @ w_ + b_ - target) ** 2).mean(), (w, bias), names=["w", "b"]))

# %% [markdown]
# ## 3. One backward, many derivatives
#
# For an elementwise function ``f`` applied to a vector ``x``, the gradient
# of ``sum(f(x))`` is the vector of ``f'(x_i)``: one ``backward()`` gives the
# derivative at every point at once. The figure draws ``f(x) = x^2 tanh(2x)``,
# the derivative from ``backward()`` as a line, and central differences as
# dots on top of it.

# %%
grid = np.linspace(-2, 2, 41 if args.quick else 401)
x = Tensor(xp.asarray(grid), requires_grad=True)
f = x * x * (x * 2.0).tanh()
f.sum().backward()
derivative = backend.to_numpy(x.grad)
dots = grid[:: max(1, len(grid) // 20)]
estimate = numerical_derivative(lambda v: v * v * np.tanh(2 * v), dots)
worst = np.abs(np.interp(dots, grid, derivative) - estimate).max()
print(f"\nf(x) = x^2 tanh(2x): largest gap between backward() and central differences: {worst:.1e}")

from tinyvit.viz import plt, save_figure

fig, ax = plt.subplots(figsize=(6.5, 4))
ax.plot(grid, f.numpy(), color="0.6", label="f(x) = x² tanh(2x)")
ax.plot(grid, derivative, color="C0", lw=2, label="f'(x) from backward()")
ax.plot(dots, estimate, "o", color="C3", ms=5, label="f'(x) by central differences")
ax.axhline(0, color="0.85", lw=0.8, zorder=0)
ax.set_xlabel("x")
ax.set_title("One backward() gives the derivative at every point")
ax.legend(frameon=False)
print("wrote", save_figure(fig, args.out / "derivative.png"))

# %% [markdown]
# ## 4. Gradients are for descending
#
# The reason for all this: step the parameters against their gradient and
# the loss falls. Twenty steps of gradient descent on the linear model,
# with the gradient from ``backward()``, zeroed before each step because
# ``backward()`` *adds* into ``.grad``.

# %%
from tinyvit import no_grad

losses = []
for _ in range(20):
    w.grad = bias.grad = None
    loss = ((X @ w + bias - target) ** 2).mean()
    loss.backward()
    losses.append(loss.item())
    with no_grad():  # the update itself is not part of any graph
        w.data -= 0.1 * w.grad
        bias.data -= 0.1 * bias.grad
print(f"gradient descent: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")

fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(range(1, len(losses) + 1), losses, "o-")
ax.set_xlabel("step")
ax.set_ylabel("mean squared error")
ax.set_title("Gradient descent on y = Xw + b")
print("wrote", save_figure(fig, args.out / "descent.png"))
