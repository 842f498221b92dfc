# %% [markdown]
# # Lesson 0: an autograd engine from nothing
#
# Every later lesson stands on ``tinyvit.Tensor`` and its ``backward()``.
# Here we write such an engine ourselves, in a few dozen lines of NumPy, grow
# it until it can run one encoder block of a Vision Transformer (Eq. 2-3 of
# the paper), take gradient steps with it, and then hold it against
# ``tinyvit.Tensor`` and against central differences. At the end, one
# backward is derived by hand on the page, LayerNorm's, from the chain rule to
# the closed form that ``tinyvit/functional.py`` uses, each step checked
# numerically by our engine.
#
# Run: ``python lessons/00_engine_from_scratch.py [--out DIR] [--quick]``
# (NumPy only: the engine of this lesson knows nothing of GPUs).

# %%
import math
import sys

import numpy as np

from tinyvit.lesson import lesson_arguments

args = lesson_arguments("00_engine_from_scratch", "An autograd engine from nothing.")

# %% [markdown]
# ## 1. A value that remembers where it came from
#
# A ``Node`` holds an array, and once ``backward()`` has run, the gradient of
# the final number with respect to that array. A node made by an operation
# also remembers its *parents* (the operation's inputs) and a *closure* that
# turns the gradient of the node into the gradients of its parents: the
# chain rule for that one operation, nothing more.
#
# ``backward()`` needs one thing to get right: a node may pass its gradient
# on only after *every* node that used it has handed it their share. A
# topological order (each node after every node made from it, read from the
# output back) guarantees that, and then one loop does all the work: pop a
# node, ask its closure for its parents' shares, add each share into the
# parent's gradient.


# %%
class Node:
    def __init__(self, data, parents=(), backward=None):
        self.data = np.asarray(data, dtype=np.float64)
        self.grad = None  # d(output)/d(self), filled by backward()
        self.parents = parents  # the nodes this one was computed from
        self.backward_fn = backward  # gradient of self -> gradients of the parents

    def backward(self):
        order, seen = [], set()

        def visit(node):  # depth first: a node goes in after everything it was made from
            if id(node) not in seen:
                seen.add(id(node))
                for parent in node.parents:
                    visit(parent)
                order.append(node)

        visit(self)
        self.grad = np.ones_like(self.data)  # d(self)/d(self)
        for node in reversed(order):  # the output first, the inputs last
            if node.backward_fn is None:
                continue
            for parent, share in zip(node.parents, node.backward_fn(node.grad)):
                parent.grad = share if parent.grad is None else parent.grad + share


# %% [markdown]
# That is the whole engine. What is left is operations, each a forward on
# arrays and a closure with its derivative. Broadcasting needs one rule: a
# ``(D,)`` bias added to ``(B, N, D)`` activations was used ``B * N`` times, so
# its gradient is the sum of those uses (``unbroadcast``). Matrix products
# take their batch axes from NumPy's ``@``; the derivative of ``A @ B`` is
# ``g @ B^T`` for ``A`` and ``A^T @ g`` for ``B``.


# %%
def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes along which a value of ``shape`` was broadcast."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


def node(x):
    return x if isinstance(x, Node) else Node(x)


def add(a, b):
    a, b = node(a), node(b)
    return Node(
        a.data + b.data,
        (a, b),
        lambda g: (unbroadcast(g, a.data.shape), unbroadcast(g, b.data.shape)),
    )


def mul(a, b):
    a, b = node(a), node(b)
    return Node(
        a.data * b.data,
        (a, b),
        lambda g: (unbroadcast(g * b.data, a.data.shape), unbroadcast(g * a.data, b.data.shape)),
    )


def matmul(a, b):
    a, b = node(a), node(b)

    def backward(g):
        ga = g @ np.swapaxes(b.data, -1, -2)
        gb = np.swapaxes(a.data, -1, -2) @ g
        return unbroadcast(ga, a.data.shape), unbroadcast(gb, b.data.shape)

    return Node(a.data @ b.data, (a, b), backward)


def exp(a):
    out = np.exp(a.data)
    return Node(out, (a,), lambda g: (g * out,))


def power(a, p):  # a ** p for a number p
    return Node(a.data**p, (a,), lambda g: (g * p * a.data ** (p - 1),))


def total(a, axis, keepdims=True):  # sum along an axis; its gradient spreads back
    def backward(g):
        g = g if keepdims else np.expand_dims(g, axis)
        return (np.broadcast_to(g, a.data.shape).copy(),)

    return Node(a.data.sum(axis=axis, keepdims=keepdims), (a,), backward)


def reshape(a, shape):
    return Node(a.data.reshape(shape), (a,), lambda g: (g.reshape(a.data.shape),))


def transpose(a, axes):
    inverse = np.argsort(axes)
    return Node(a.data.transpose(axes), (a,), lambda g: (g.transpose(inverse),))


# %% [markdown]
# ## 2. Enough for an encoder block
#
# Everything else is built from those eight operations, and the engine finds
# every derivative by chaining theirs. ``mean`` is a sum times ``1/n``; the
# softmax shifts by the row maximum (a constant: it changes nothing, so no
# gradient needs to flow through it); the tanh GELU of the original ViT code
# uses ``tanh(u) = 2 / (1 + exp(-2u)) - 1``. Then the paper's pre-norm block:
# ``z' = MSA(LN(z)) + z`` (Eq. 2), ``z = MLP(LN(z')) + z'`` (Eq. 3), with the
# multi-head attention of Eq. 5-8.


# %%
def sum_all(a):  # every entry added up: one number
    return total(reshape(a, (-1,)), 0, keepdims=False)


def mean(a, axis):
    return mul(total(a, axis), 1.0 / a.data.shape[axis])


def layer_norm(x, weight, bias, eps=1e-6):
    centered = add(x, mul(mean(x, -1), -1.0))  # x - mean
    variance = mean(mul(centered, centered), -1)  # biased, (..., 1)
    return add(mul(mul(centered, power(add(variance, eps), -0.5)), weight), bias)


def softmax(x):
    shifted = add(x, -x.data.max(axis=-1, keepdims=True))  # a constant: no graph
    e = exp(shifted)
    return mul(e, power(total(e, -1), -1.0))


def gelu_tanh(x):  # x (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3)
    u = mul(add(x, mul(power(x, 3), 0.044715)), math.sqrt(2 / math.pi))
    tanh = add(mul(power(add(exp(mul(u, -2.0)), 1.0), -1.0), 2.0), -1.0)
    return mul(mul(x, add(tanh, 1.0)), 0.5)


def linear(x, weight, bias):  # x W^T + b, weight (out, in)
    return add(matmul(x, transpose(weight, (1, 0))), bias)


def pick(a, i):  # a[i] along the first axis; its gradient is zero elsewhere
    def backward(g):
        full = np.zeros_like(a.data)
        full[i] = g
        return (full,)

    return Node(a.data[i], (a,), backward)


def mlp(p, i):
    return p[f"mlp.fc{i}.weight"], p[f"mlp.fc{i}.bias"]


def attention(z, p, heads):  # Eq. 5-8
    B, N, D = z.data.shape
    qkv = reshape(linear(z, p["attn.qkv.weight"], p["attn.qkv.bias"]), (B, N, 3, heads, D // heads))
    qkv = transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, heads, N, D_h)
    q, k, v = (pick(qkv, i) for i in range(3))  # each (B, heads, N, D_h)
    scores = mul(matmul(q, transpose(k, (0, 1, 3, 2))), 1 / math.sqrt(D // heads))
    out = matmul(softmax(scores), v)  # (B, heads, N, D_h): Eq. 6-7
    out = reshape(transpose(out, (0, 2, 1, 3)), (B, N, D))  # heads side by side
    return linear(out, p["attn.proj.weight"], p["attn.proj.bias"])  # Eq. 8


def block(z, p, heads):
    z = add(attention(layer_norm(z, p["norm1.weight"], p["norm1.bias"]), p, heads), z)  # Eq. 2
    h = gelu_tanh(linear(layer_norm(z, p["norm2.weight"], p["norm2.bias"]), *mlp(p, 1)))
    return add(linear(h, *mlp(p, 2)), z)  # Eq. 3


# %% [markdown]
# (``pick`` is the ninth operation: taking one slice along the first axis,
# here to cut queries, keys and values apart. Its backward puts the gradient
# back in its slice and zeros everywhere else.)
#
# ## 3. Against tinyvit and against the definition
#
# The parameters come from a ``tinyvit.nn.Block`` (named as timm names them),
# so the same block can run on both engines. Three ways to the gradient of
# ``L = sum(block(z) * R)`` for a random ``R``: our engine, ``tinyvit.Tensor``,
# and central differences on a few coordinates of each parameter.

# %%
import tinyvit
from tinyvit import Tensor
from tinyvit.nn import Block

B, N, D, HEADS, MLP = (2, 5, 8, 2, 16) if args.quick else (4, 17, 16, 4, 32)
rng = np.random.default_rng(0)
tinyvit.manual_seed(0)
reference = Block(D, HEADS, MLP, gelu="tanh").to(np.float64)
params = {name: Node(value) for name, value in reference.state_dict().items()}
z0 = rng.standard_normal((B, N, D))
R = rng.standard_normal((B, N, D))

ours = block(Node(z0), params, HEADS)
loss = sum_all(mul(ours, R))
loss.backward()

theirs = reference(Tensor(z0, requires_grad=True))
(theirs * Tensor(R)).sum().backward()


def loss_at(name, index, value):
    """L with one coordinate of one parameter set to ``value`` (forward only)."""
    changed = {k: Node(v.data.copy()) for k, v in params.items()}
    changed[name].data[index] = value
    return float((block(Node(z0), changed, HEADS).data * R).sum())


print(f"\none encoder block, B={B} N={N} D={D}, {HEADS} heads: |ours - tinyvit| and vs numerics")
worst_tinyvit = worst_numeric = 0.0
for name, p in reference.named_parameters():
    gap = np.abs(params[name].grad - p.grad).max()
    worst_tinyvit = max(worst_tinyvit, gap)
    for index in [tuple(rng.integers(0, s) for s in p.shape) for _ in range(2)]:
        x0, h = params[name].data[index], 1e-6
        numeric = (loss_at(name, index, x0 + h) - loss_at(name, index, x0 - h)) / (2 * h)
        worst_numeric = max(worst_numeric, abs(numeric - params[name].grad[index]))
    print(f"  {name:<16} {str(p.shape):<10} largest |ours - tinyvit| {gap:.1e}")
print(f"largest gap to tinyvit {worst_tinyvit:.1e}; to central differences {worst_numeric:.1e}")
assert np.allclose(ours.data, theirs.data) and worst_tinyvit < 1e-9 and worst_numeric < 1e-6

# %% [markdown]
# ## 4. Training with it
#
# Gradients are for descending. A task with a known answer: a *teacher* block
# with larger weights maps random sequences to outputs, and our block, the
# *student*, starts from its small initial weights and must learn to produce
# the same outputs (every token's, so attention, LayerNorm and the MLP all
# have to move). Plain gradient descent, every gradient from our engine.

# %%
from tinyvit.viz import plt, save_figure

teacher = {k: Node(v.data * 15 if v.data.ndim > 1 else v.data) for k, v in params.items()}
x_train = rng.standard_normal((8, N, D))
target = block(Node(x_train), teacher, HEADS).data
losses = []
for _ in range(40 if args.quick else 200):
    for p in params.values():
        p.grad = None
    error = add(block(Node(x_train), params, HEADS), -target)
    mse = mul(sum_all(mul(error, error)), 1 / error.data.size)
    mse.backward()
    losses.append(float(mse.data))
    for p in params.values():
        p.data -= 0.5 * p.grad
print(f"\ngradient descent with our engine: loss {losses[0]:.4f} -> {losses[-1]:.4f}")

fig, ax = plt.subplots(figsize=(6.2, 3.4))
ax.plot(range(1, len(losses) + 1), losses)
ax.set_xlabel("step")
ax.set_ylabel("mean squared error")
ax.set_yscale("log")
ax.set_title("A student block learns a teacher block, with our engine")
print("wrote", save_figure(fig, args.out / "engine_descent.png"))

# %% [markdown]
# ## 5. Where tinyvit's engine differs, and why
#
# ``tinyvit/tensor.py`` has the same shape: ``Tensor.from_op`` is our
# ``Node(data, parents, backward)``, and ``backward()`` is a topological
# order and one loop. The differences are about cost and safety:
#
# * **Hand-fused layers.** Our LayerNorm is a dozen nodes (counted below),
#   each keeping its inputs alive until the backward; tinyvit's is one op whose backward is the
#   closed form derived in section 6. Fewer nodes, fewer arrays kept, fewer
#   passes over memory.
# * **dtype rules.** Ours computes in float64. tinyvit keeps float32 by
#   default (half the memory and twice the speed), keeps every op in its
#   input's dtype, and refuses to mix dtypes instead of promoting silently.
# * **Freeing the graph.** After ``backward()``, tinyvit drops each node's
#   closure as soon as it has run, so the activations it held are freed
#   during the backward, not after it.
# * **No recursion.** Our ``visit`` calls itself once per node along a chain;
#   Python stops at about a thousand nested calls, and a deep graph breaks
#   it. tinyvit walks the graph with an explicit stack.


# %%
def graph_nodes(root):
    seen, stack = set(), [root]
    while stack:
        n = stack.pop()
        if id(n) not in seen and n.backward_fn is not None:
            seen.add(id(n))
            yield n
            stack.extend(n.parents)


ln = layer_norm(Node(z0), params["norm1.weight"], params["norm1.bias"])
ours_nodes = sum(1 for _ in graph_nodes(ln))


print(f"\nLayerNorm: {ours_nodes} nodes in our engine, 1 op in tinyvit's")
chain = Node(np.ones(3))
x = chain
for _ in range(3 * sys.getrecursionlimit()):
    x = add(x, 1.0)
try:
    x.backward()
    print("a chain of", 3 * sys.getrecursionlimit(), "additions: our backward() worked")
except RecursionError:
    print(f"a chain of {3 * sys.getrecursionlimit()} additions: our backward() hits RecursionError")
deep = t = Tensor(np.ones(3), requires_grad=True)
for _ in range(3 * sys.getrecursionlimit()):
    t = t + 1.0
t.sum().backward()
print(f"the same chain in tinyvit: d/dx = {deep.grad[0]:.0f}, as it should be")

# %% [markdown]
# ## 6. One backward derived on the page: LayerNorm
#
# Per row of ``D`` numbers: ``mu = mean(x)``, ``s = mean((x - mu)^2)``,
# ``r = (s + eps)^(-1/2)``, ``xhat = (x - mu) r``, ``y = xhat * w + b``.
# Let ``g = dL/dy`` and follow the chain rule back, one intermediate at a time:
#
# 1. ``dL/dxhat = h = g * w``.
# 2. ``xhat_i = (x_i - mu) r``: ``dL/dr = sum_j h_j (x_j - mu)``.
# 3. ``r = (s + eps)^(-1/2)``: ``dL/ds = dL/dr * (-1/2) r^3``.
# 4. ``s = mean((x - mu)^2)``: ``ds/dx_i = 2 (x_i - mu) / D`` (its path
#    through ``mu`` vanishes, because ``sum_j (x_j - mu) = 0``).
# 5. ``mu``: ``dL/dmu = -r sum_j h_j`` (``xhat`` depends on ``mu`` directly),
#    and ``dmu/dx_i = 1 / D``.
# 6. Add up the three paths to ``x_i``, directly through ``xhat``, through
#    ``mu`` and through ``s``:
#    ``dL/dx_i = r h_i + dL/dmu / D + dL/ds * 2 (x_i - mu) / D``.
#    Substituting and using ``xhat = (x - mu) r``:
#
#        dL/dx = r * (h - mean(h) - xhat * mean(h * xhat))
#
#    the formula in ``functional.layer_norm``'s docstring.
#
# Our engine keeps the gradient of every intermediate node, so each step can
# be checked against what the chain of primitives computed.

# %%
row_x = rng.standard_normal((1, D)) * 2 + 1
weight_ = rng.standard_normal(D) * 0.5 + 1
g = rng.standard_normal((1, D))
eps = 1e-6
x_node = Node(row_x)
mu_node = mean(x_node, -1)
centered = add(x_node, mul(mu_node, -1.0))
s_node = mean(mul(centered, centered), -1)
r_node = power(add(s_node, eps), -0.5)
xhat_node = mul(centered, r_node)
y_node = add(mul(xhat_node, weight_), 0.0)
sum_all(mul(y_node, g)).backward()

mu, s = row_x.mean(), ((row_x - row_x.mean()) ** 2).mean()
r = (s + eps) ** -0.5
xhat = (row_x - mu) * r
h = g * weight_
dL_dr = (h * (row_x - mu)).sum()
dL_ds = dL_dr * -0.5 * r**3
dL_dmu = -r * h.sum()
direct = r * h  # the three paths of step 6, each (1, D)
through_mu = np.full_like(h, dL_dmu / D)
through_s = dL_ds * 2 * (row_x - mu) / D
closed_form = r * (h - h.mean() - xhat * (h * xhat).mean())
steps = [
    ("1. dL/dxhat = g w", h, xhat_node.grad),
    ("2. dL/dr", dL_dr, r_node.grad),
    ("3. dL/ds", dL_ds, s_node.grad),
    ("5. dL/dmu", dL_dmu, mu_node.grad),
    ("6. dL/dx, three paths", direct + through_mu + through_s, x_node.grad),
    ("6. dL/dx, closed form", closed_form, x_node.grad),
]
print("\nLayerNorm's backward, step by step (by hand vs our engine's chain of primitives)")
for label, by_hand, by_engine in steps:
    gap = np.abs(np.asarray(by_hand) - by_engine).max()
    print(f"  {label:<26} largest difference {gap:.1e}")
    assert gap < 1e-9

from tinyvit import functional as F

fused = Tensor(row_x, requires_grad=True)
F.layer_norm.reference(fused, Tensor(weight_), None).backward(g)
print(
    f"  functional.layer_norm      largest difference {np.abs(fused.grad - closed_form).max():.1e}"
)

fig, ax = plt.subplots(figsize=(7, 3.5))
i = np.arange(D)
ax.bar(i - 0.27, direct[0], 0.27, label="directly, through xhat: r h")
ax.bar(i, through_mu[0], 0.27, label="through the mean")
ax.bar(i + 0.27, through_s[0], 0.27, label="through the variance")
ax.plot(i, x_node.grad[0], "k_", ms=14, mew=2, label="dL/dx (the sum)")
ax.axhline(0, color="0.8", lw=0.8)
ax.set_xlabel("coordinate i of one row")
ax.set_ylabel("share of dL/dx_i")
ax.set_title("LayerNorm's gradient: three paths from x to the loss")
ax.legend(fontsize=7, ncol=2)
print("wrote", save_figure(fig, args.out / "layer_norm_paths.png"))
