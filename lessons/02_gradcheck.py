# %% [markdown]
# # Lesson 2: checking gradients
#
# Every layer of tinyvit's ViT has a backward written by hand: the linear
# projection, softmax attention, LayerNorm, GELU, the loss. A wrong sign or a
# forgotten term does not crash anything; the model just learns worse, or not
# at all. So each backward is checked against the definition of the
# derivative. This lesson shows how to make that check trustworthy, runs it
# on every layer, and watches it catch a broken backward.
#
# Run: ``python lessons/02_gradcheck.py [--out DIR] [--quick] [--device cuda]``

# %%
import numpy as np

import tinyvit.functional as F
from tinyvit import GradcheckError, Tensor, backend, gradcheck
from tinyvit.gradcheck import check_every_layer
from tinyvit.lesson import lesson_arguments
from tinyvit.viz import plt, save_figure

args = lesson_arguments("02_gradcheck", "Checking gradients, and catching a broken one.")
xp = backend.module_for(args.device)

# %% [markdown]
# ## 1. Why float64, and which step
#
# The central difference ``(f(x+h) - f(x-h)) / 2h`` has two errors pulling
# in opposite directions. Its truncation error shrinks like ``h^2``; its
# rounding error grows like ``eps / h``, where ``eps`` is the precision of
# the numbers (about 1e-7 in float32, 1e-16 in float64). The figure plots
# the total error of the derivative of ``tanh`` at ``x = 0.7`` against ``h``.
# The float32 curve is noisy and lies orders of magnitude above the float64
# one; below ``h = 3e-8``, ``x + h`` rounds back to ``x`` and the estimate is
# zero. At ``h = 1e-6`` the float32 error is about 1e-2, as large as many
# real bugs, while float64 is within about 1e-11. Hence: check in float64,
# with ``h`` around 1e-6.

# %%
steps = np.logspace(-12, -1, 23 if args.quick else 89)
exact = 1 - np.tanh(0.7) ** 2
fig, ax = plt.subplots(figsize=(6.5, 4))
for dtype, color in ((np.float32, "C3"), (np.float64, "C0")):
    x0 = dtype(0.7)
    errors = []
    for h in steps:
        h = dtype(h)
        estimate = (np.tanh(x0 + h) - np.tanh(x0 - h)) / (dtype(2) * h)
        errors.append(max(abs(float(estimate) - exact), 1e-17))
    ax.loglog(steps, errors, "o-", ms=3, color=color, label=np.dtype(dtype).name)
    best = int(np.argmin(errors))
    print(f"{np.dtype(dtype).name}: smallest error {errors[best]:.1e} at h = {steps[best]:.0e}")
ax.axvline(1e-6, color="0.7", ls="--", lw=1)
ax.text(1.3e-6, 1e-13, "h = 1e-6, gradcheck's default", color="0.4", fontsize=8)
ax.set_xlabel("step h")
ax.set_ylabel("|central difference − exact derivative|")
ax.set_title("Error of a central difference: d tanh(x)/dx at x = 0.7")
ax.legend(title="computed in", frameon=False)
print("wrote", save_figure(fig, args.out / "central_difference_error.png"))

# %% [markdown]
# ## 2. Why a random weighting R
#
# A gradient check needs one number to differentiate. ``sum(f(x))`` looks
# natural, and it is a trap: the rows of a softmax always sum to one, so
# ``sum(softmax(x))`` is a constant, its gradient is zero, and a softmax
# whose backward returns zeros passes. ``gradcheck`` differentiates
# ``sum(f(x) * R)`` with a random ``R`` instead, which weights every output
# differently, so no entry of the Jacobian can hide.


# %%
def softmax_with_a_zero_backward(x):
    y = F.softmax(x).data
    return Tensor.from_op(y, (x,), lambda g: (g * 0.0,))


x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 5))), requires_grad=True)
naive = gradcheck(lambda t: softmax_with_a_zero_backward(t).sum(), (x,), raise_on_failure=False)
weighted = gradcheck(softmax_with_a_zero_backward, (x,), raise_on_failure=False)
print(f"\nzero backward, checked on sum(f(x)):     passes = {naive.ok}")
print(f"zero backward, checked on sum(f(x) * R): passes = {weighted.ok}")

# %% [markdown]
# ## 3. Every layer of the ViT
#
# The same check, on small random float64 inputs, for each layer with a
# hand-written backward. ``python -m tinyvit`` prints the same tables.

# %%
reports = check_every_layer(seed=0, device=args.device)
for report in reports:
    print(report, end="\n\n")

labels, errors = [], []
for report in reports:
    for row in report.rows:
        labels.append(f"{report.title}: {row.name}")
        errors.append(max(row.max_abs_error, 1e-16))

# %% [markdown]
# ## 4. A broken backward, caught
#
# LayerNorm divides by a standard deviation that itself depends on ``x``.
# Forget that path in the backward, keeping only the one through the mean,
# and the gradient is off by about as much as its own size, with nothing to
# show for it but a model that trains badly. The check names the input, the
# coordinate and both values.


# %%
def layer_norm_without_the_variance_term(x):
    xc = x.data - x.data.mean(-1, keepdims=True)
    rstd = 1 / xp.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-6)

    def backward(g):  # the correct one also subtracts xhat * mean(g * xhat)
        return (rstd * (g - g.mean(-1, keepdims=True)),)

    return Tensor.from_op(xc * rstd, (x,), backward)


x = Tensor(xp.asarray(np.random.default_rng(1).standard_normal((3, 6))), requires_grad=True)
try:
    gradcheck(layer_norm_without_the_variance_term, (x,), names=["x"])
except GradcheckError as error:
    print(str(error).splitlines()[0])
broken = gradcheck(layer_norm_without_the_variance_term, (x,), raise_on_failure=False)
labels.append("broken layer_norm: x")
errors.append(broken.rows[0].max_abs_error)

fig, ax = plt.subplots(figsize=(7, 0.32 * len(labels) + 1.2))
colors = ["C0"] * (len(labels) - 1) + ["C3"]
ax.barh(range(len(labels)), errors, color=colors)
ax.set_yticks(range(len(labels)), labels, fontsize=8)
ax.invert_yaxis()
ax.set_xscale("log")
ax.axvline(1e-6, color="0.3", ls="--", lw=1)
ax.text(1.2e-6, len(labels) - 1.5, "tolerance", fontsize=8, color="0.3")
ax.set_xlabel("largest |backward() − central difference| (float64)")
ax.set_title("Every layer's backward against the numerical gradient")
print("wrote", save_figure(fig, args.out / "every_layer.png"))
