"""Tensor: an array that remembers how it was made, and reverse-mode autodiff.

This file is the whole autograd engine. A ``Tensor`` wraps one NumPy or CuPy
array (``.data``). Every op computes its result on those arrays and records,
in the result, which tensors it came from (``_parents``) and a small closure
(``_backward``) that turns the gradient of the result into the gradients of
those parents: the chain rule, one op at a time.

``loss.backward()`` then walks the graph from the loss back to the leaves in
reverse topological order, so that each node has received the gradient from
every one of its uses before it passes its own on, and it adds the gradients
up in the leaves' ``.grad``. Nothing here is specific to Vision
Transformers; the ViT's own layers (linear, softmax attention, LayerNorm,
GELU) live in ``functional.py`` as single ops with hand-written backwards.

A backward closure returns one gradient per parent, shaped like that parent
(``None`` where the parent needs none), in the parent's dtype.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from . import backend
from .backend import xp_of
from .dispatch import replaceable
from .special import erf as _erf

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Inside ``with no_grad():`` ops record no graph (evaluation, optimizer steps)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


def _graph_freed(g):
    raise RuntimeError(
        "backward() went through a part of the graph that an earlier backward() has "
        "already freed; pass retain_graph=True to the first call to go through it twice"
    )


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the backward of NumPy broadcasting.

    A (3,) bias added to (2, 3) activations was used twice, once per row, so
    its gradient is the sum of the two rows' gradients.
    """
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    return grad.sum(axis=axes).reshape(shape)


@replaceable
def add_arrays(a, b):
    """``a + b`` of two arrays, NumPy's broadcasting and all: the sum of ``Tensor.__add__``
    (a residual connection), and where the backward adds up the gradients of a tensor
    used several times. An op a device may replace: NumPy adds on one core, and the
    CPU's kernel adds large arrays of one shape on all of them."""
    return a + b


def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim for a in axes)


def _expand(grad, shape, axis, keepdims):
    """The backward of a reduction: spread ``grad`` back over the reduced axes."""
    xp = xp_of(grad)
    if not keepdims:
        grad = xp.expand_dims(grad, _normalize_axis(axis, len(shape)))
    out = xp.empty(shape, dtype=grad.dtype)
    out[...] = grad  # a real array, not a broadcast view
    return out


def _is_basic_index(index) -> bool:
    """True for indices made only of ints, slices, None and Ellipsis (views, no repeats)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)


class Tensor:
    """An n-dimensional array with a gradient.

    ``Tensor(data, requires_grad=False, dtype=None)``: ``data`` is a NumPy or
    CuPy array (kept as it is, on its device), or anything ``numpy.asarray``
    takes; Python floats and lists of floats become ``float32``.
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_op")
    __array_ufunc__ = None  # `ndarray + Tensor` defers to Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        if not (isinstance(data, np.ndarray) or backend.is_cuda_array(data)):
            data = backend.as_array(data)  # a list of device scalars stays on the device
            if dtype is None and data.dtype.kind == "f":
                dtype = backend.DEFAULT_DTYPE
        if dtype is not None and data.dtype != dtype:
            data = data.astype(dtype)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require grad, not {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = None

    # -- building the graph -------------------------------------------------

    @staticmethod
    def from_op(data, parents, backward, op=None):
        """The result of an op: wrap ``data`` and remember how to differentiate it.

        ``parents`` are the op's tensor inputs (``None`` allowed for a missing
        optional input); ``backward(grad)`` returns one gradient per parent.
        Outside ``no_grad()``, and when some parent requires grad, the result
        joins the graph.
        """
        out = Tensor.__new__(Tensor)
        out.data, out.grad, out._op = data, None, op
        if _grad_enabled and any(p is not None and p.requires_grad for p in parents):
            out.requires_grad, out._parents, out._backward = True, tuple(parents), backward
        else:
            out.requires_grad, out._parents, out._backward = False, (), None
        return out

    @property
    def is_leaf(self) -> bool:
        return not self._parents

    def _topological_order(self):
        """Every node that leads to ``self`` and requires grad, ``self`` first."""
        order, visited = [], set()
        stack = [(self, False)]
        while stack:  # iterative depth-first search: a deep graph cannot overflow
            node, inputs_done = stack.pop()
            if inputs_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if parent is not None and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
        order.reverse()  # outputs before the inputs they were made from
        return order

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` is the gradient of some final scalar with respect to ``self``;
        it may be left out when ``self`` holds one number (a loss). Unless
        ``retain_graph``, the graph is freed on the way, as each node is done.
        A leaf's gradient is added in place into its ``.grad`` when it has one
        (an optimizer points them at its gradient buffer), else it becomes a
        fresh array.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of the "
                "computation had requires_grad=True (or it ran inside no_grad())"
            )
        xp = xp_of(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a single-number output, but this "
                    f"tensor has shape {self.shape}. Reduce it first (y.sum().backward()) or "
                    f"pass the upstream gradient: y.backward(grad) with grad of shape {self.shape}"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            xp_of(self.data, grad, names=("the tensor", "the gradient passed to backward()"))
            grad = xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(
                    f"backward(grad): grad has shape {grad.shape}, expected {self.shape}"
                )

        # The gradient that has reached each node so far, keyed by node. A node's
        # turn comes after every node made from it (the topological order), so
        # when it is reached its gradient is complete.
        grads = {id(self): grad}
        for node in self._topological_order():
            g = grads.pop(id(node), None)
            if g is None:  # no path from this node to the output carries a gradient
                continue
            if node._backward is None:  # a leaf: the gradient stops here, added into .grad
                if node.grad is not None:
                    node.grad += g  # in place: .grad may be a view of an optimizer's buffer
                else:
                    node.grad = g.copy()  # the leaf's own array: g may be shared
                continue
            for parent, pg in zip(node._parents, node._backward(g)):  # the chain rule, one op
                if parent is None or pg is None or not parent.requires_grad:
                    continue
                if pg.shape != parent.shape:
                    raise RuntimeError(
                        f"backward of {node._op or 'an op'} returned a gradient of shape "
                        f"{pg.shape} for an input of shape {parent.shape}"
                    )
                # a tensor used several times adds up the gradients of its uses
                grads[id(parent)] = add_arrays(grads[id(parent)], pg) if id(parent) in grads else pg
            if not retain_graph:  # free what this node kept for its backward
                node._parents, node._backward = (), _graph_freed

    # -- plain attributes ---------------------------------------------------

    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = np.array2string(backend.to_numpy(self.data), separator=", ", prefix="tensor(")
        extra = "" if self.dtype == backend.DEFAULT_DTYPE else f", dtype={self.dtype}"
        extra += "" if self.device == "cpu" else f", device='{self.device}'"
        extra += ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({body}{extra})"

    def item(self) -> float:
        return self.data.item()

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU when it lives there)."""
        return backend.to_numpy(self.data)

    def detach(self) -> Tensor:
        """The same data, cut off from the graph."""
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    def to(self, device: str) -> Tensor:
        """This tensor on ``device`` ("cpu" or "cuda"); gradients flow back across."""
        source = self.device
        data = backend.to_device(self.data, device)
        if data is self.data:
            return self
        return Tensor.from_op(data, (self,), lambda g: (backend.to_device(g, source),), "to")

    def astype(self, dtype) -> Tensor:
        """A copy in another dtype; the gradient is cast back to this tensor's dtype."""
        source = self.dtype
        return Tensor.from_op(
            self.data.astype(dtype), (self,), lambda g: (g.astype(source),), "astype"
        )

    # -- elementwise arithmetic ---------------------------------------------

    def _operand(self, other):
        """The other operand of ``self (op) other``, as ``(tensor, values)``.

        A Tensor, or an array (NumPy or CuPy) wrapped in one, must be on this
        tensor's device (else a ``DeviceError`` names both) and, for a Tensor,
        of its dtype; an array is cast to it. A number is no tensor, ``(None,
        the number as a scalar of this dtype)``: it goes into the kernel as it
        is, with nothing copied to the device and no gradient to compute.
        """
        if isinstance(other, Tensor):
            if other.dtype != self.dtype:
                raise TypeError(
                    f"dtype mismatch: {self.dtype} and {other.dtype}; convert one with .astype()"
                    " (tinyvit never promotes silently: a float64 upcast doubles the cost)"
                )
            xp_of(self.data, other.data, names=("the tensor", "the other operand"))
            return other, other.data
        if isinstance(other, (int, float, bool, np.generic)):
            return None, self.dtype.type(other)
        if not (isinstance(other, np.ndarray) or backend.is_cuda_array(other)):
            other = np.asarray(other)  # a list: host data, like a NumPy array
        xp_of(self.data, other, names=("the tensor", "the other operand"))
        other = Tensor(other.astype(self.dtype, copy=False))
        return other, other.data

    def __add__(self, other):
        b, b_data = self._operand(other)
        a_shape, b_shape = self.shape, np.shape(b_data)  # a number's shape is ()

        def backward(g):
            gb = unbroadcast(g, b_shape) if b is not None and b.requires_grad else None
            return unbroadcast(g, a_shape), gb

        return Tensor.from_op(add_arrays(self.data, b_data), (self, b), backward, "add")

    __radd__ = __add__

    def __sub__(self, other):
        b, b_data = self._operand(other)
        a_shape, b_shape = self.shape, np.shape(b_data)

        def backward(g):
            gb = unbroadcast(-g, b_shape) if b is not None and b.requires_grad else None
            return unbroadcast(g, a_shape), gb

        return Tensor.from_op(self.data - b_data, (self, b), backward, "sub")

    def __rsub__(self, other):
        b, b_data = self._operand(other)
        if b is not None:
            return b - self
        return Tensor.from_op(b_data - self.data, (self,), lambda g: (-g,), "rsub")

    def __mul__(self, other):
        b, b_data = self._operand(other)
        a = self

        def backward(g):
            ga = unbroadcast(g * b_data, a.shape) if a.requires_grad else None
            gb = unbroadcast(g * a.data, b.shape) if b is not None and b.requires_grad else None
            return ga, gb

        return Tensor.from_op(a.data * b_data, (a, b), backward, "mul")

    __rmul__ = __mul__

    def __truediv__(self, other):
        b, b_data = self._operand(other)
        a = self
        out = a.data / b_data

        def backward(g):
            ga = unbroadcast(g / b_data, a.shape) if a.requires_grad else None
            gb = (
                unbroadcast(-g * out / b_data, b.shape)
                if b is not None and b.requires_grad
                else None
            )
            return ga, gb  # d(a/b)/db = -a/b**2 = -out/b

        return Tensor.from_op(out, (a, b), backward, "div")

    def __rtruediv__(self, other):
        b, b_data = self._operand(other)
        if b is not None:
            return b / self
        x = self.data
        out = b_data / x
        return Tensor.from_op(out, (self,), lambda g: (-g * out / x,), "rdiv")  # d(c/x) = -c/x**2

    def __neg__(self):
        return Tensor.from_op(-self.data, (self,), lambda g: (-g,), "neg")

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            return self._pow_tensor(self._operand(exponent)[0])
        if not isinstance(exponent, (int, float)):
            raise TypeError(f"exponent must be a number or a Tensor, not {type(exponent).__name__}")
        x = self

        def backward(g):  # d(x**n)/dx = n * x**(n-1)
            return (g * (exponent * x.data ** (exponent - 1)),)

        return Tensor.from_op(x.data**exponent, (x,), backward, "pow")

    def _pow_tensor(self, exponent: Tensor):
        xp = xp_of(self.data, exponent.data)
        a, b = self, exponent
        out = a.data**b.data

        def backward(g):  # d(a**b)/da = b * a**(b-1);  d(a**b)/db = a**b * log(a)
            ga = (
                unbroadcast(g * b.data * a.data ** (b.data - 1), a.shape)
                if a.requires_grad
                else None
            )
            gb = unbroadcast(g * out * xp.log(a.data), b.shape) if b.requires_grad else None
            return ga, gb

        return Tensor.from_op(out, (a, b), backward, "pow")

    def __rpow__(self, base):
        b, b_data = self._operand(base)
        if b is not None:
            return b._pow_tensor(self)
        xp = xp_of(self.data)
        out = b_data**self.data
        return Tensor.from_op(out, (self,), lambda g: (g * out * xp.log(b_data),), "rpow")

    def exp(self):
        xp = xp_of(self.data)
        out = xp.exp(self.data)
        return Tensor.from_op(out, (self,), lambda g: (g * out,), "exp")

    def log(self):
        xp = xp_of(self.data)
        x = self.data
        return Tensor.from_op(xp.log(x), (self,), lambda g: (g / x,), "log")

    def tanh(self):
        xp = xp_of(self.data)
        out = xp.tanh(self.data)
        return Tensor.from_op(out, (self,), lambda g: (g * (1 - out * out),), "tanh")

    def sqrt(self):
        xp = xp_of(self.data)
        out = xp.sqrt(self.data)
        return Tensor.from_op(out, (self,), lambda g: (g * 0.5 / out,), "sqrt")

    def erf(self):
        """The error function (``special.erf``); d erf(x)/dx = 2/sqrt(pi) * exp(-x**2)."""
        xp = xp_of(self.data)
        x = self.data
        return Tensor.from_op(
            _erf(x), (self,), lambda g: (g * (2 / math.sqrt(math.pi)) * xp.exp(-x * x),), "erf"
        )

    # -- reductions ---------------------------------------------------------

    def sum(self, axis=None, keepdims=False):
        shape = self.shape
        out = self.data.sum(axis=axis, keepdims=keepdims)
        out = xp_of(self.data).asarray(out)  # a 0-d array, not a NumPy scalar
        return Tensor.from_op(out, (self,), lambda g: (_expand(g, shape, axis, keepdims),), "sum")

    def mean(self, axis=None, keepdims=False):
        shape = self.shape
        count = math.prod(shape[a] for a in _normalize_axis(axis, self.ndim))
        out = xp_of(self.data).asarray(self.data.mean(axis=axis, keepdims=keepdims))

        def backward(g):
            return (_expand(g / count, shape, axis, keepdims),)

        return Tensor.from_op(out, (self,), backward, "mean")

    def max(self, axis=None, keepdims=False):
        """The largest entries; ties share the gradient equally."""
        xp = xp_of(self.data)
        x = self.data
        top = x.max(axis=axis, keepdims=True)
        out = top if keepdims else xp.asarray(top.squeeze(axis=axis))

        def backward(g):
            if not keepdims:
                g = xp.expand_dims(g, _normalize_axis(axis, x.ndim))
            winners = x == top
            return (winners * (g / winners.sum(axis=axis, keepdims=True, dtype=g.dtype)),)

        return Tensor.from_op(out, (self,), backward, "max")

    # -- shapes -------------------------------------------------------------

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        source = self.shape
        return Tensor.from_op(
            self.data.reshape(shape), (self,), lambda g: (g.reshape(source),), "reshape"
        )

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = axes or tuple(reversed(range(self.ndim)))
        inverse = tuple(np.argsort(axes))
        return Tensor.from_op(
            self.data.transpose(axes), (self,), lambda g: (g.transpose(inverse),), "transpose"
        )

    @property
    def T(self):
        return self.transpose()

    def broadcast_to(self, shape):
        """Repeat along axes of size 1 (and new leading axes) to ``shape``, as NumPy broadcasts."""
        xp = xp_of(self.data)
        source = self.shape
        out = xp.broadcast_to(self.data, shape)
        return Tensor.from_op(out, (self,), lambda g: (unbroadcast(g, source),), "broadcast_to")

    def swapaxes(self, axis1, axis2):
        return Tensor.from_op(
            self.data.swapaxes(axis1, axis2),
            (self,),
            lambda g: (g.swapaxes(axis1, axis2),),
            "swapaxes",
        )

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        items = index if isinstance(index, tuple) else (index,)
        arrays = [i for i in items if hasattr(i, "shape")]  # index arrays: on this device
        xp = xp_of(self.data, *arrays, names=["the tensor"] + ["an index array"] * len(arrays))
        shape, dtype = self.shape, self.dtype
        basic = _is_basic_index(index)

        def backward(g):
            full = xp.zeros(shape, dtype=dtype)
            if basic:  # distinct positions: plain assignment
                full[index] = g
            else:  # integer arrays may repeat a position: add every use
                backend.scatter_add(full, index, g)
            return (full,)

        return Tensor.from_op(self.data[index], (self,), backward, "getitem")

    # -- matrix product -----------------------------------------------------

    def __matmul__(self, other):
        return matmul(self, self._matrix_operand(other))

    def __rmatmul__(self, other):
        return matmul(self._matrix_operand(other), self)

    def _matrix_operand(self, other) -> Tensor:
        b, _ = self._operand(other)
        if b is None:
            raise ValueError(f"matmul needs arrays, not the number {other!r}: use * to scale")
        return b


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Batched matrix product ``(..., m, k) @ (..., k, n) -> (..., m, n)``.

    Leading (batch) axes broadcast as in NumPy. A 1-D operand is a vector, as
    in NumPy: it is treated as one row (left) or one column (right).
    """
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(
            f"matmul needs arrays of at least one axis, got shapes {a.shape} and {b.shape}"
        )
    if a.ndim == 1:
        return matmul(a.reshape(1, -1), b).reshape(*b.shape[:-2], b.shape[-1])
    if b.ndim == 1:
        return matmul(a, b.reshape(-1, 1)).reshape(a.shape[:-1])
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"matmul: shapes {a.shape} and {b.shape} do not fit: the last axis of the left "
            f"operand ({a.shape[-1]}) must equal the second-to-last axis of the right "
            f"({b.shape[-2]})"
        )
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(
            f"matmul: shapes {a.shape} and {b.shape} do not fit: the batch axes "
            f"{a.shape[:-2]} and {b.shape[:-2]} do not broadcast"
        ) from None
    xp = xp_of(a.data, b.data)
    k, n = a.shape[-1], b.shape[-1]
    if b.ndim == 2 and a.ndim > 2:  # (..., m, k) @ (k, n): one big product, not a loop
        out = (a.data.reshape(-1, k) @ b.data).reshape(*a.shape[:-1], n)
    else:
        out = a.data @ b.data

    def backward(g):
        ga = gb = None
        if a.requires_grad:  # dL/da = dL/dout @ b^T
            ga = unbroadcast(g @ xp.swapaxes(b.data, -1, -2), a.shape)
        if b.requires_grad:  # dL/db = a^T @ dL/dout, summed over broadcast batch axes
            if b.ndim == 2 and a.ndim > 2:
                gb = a.data.reshape(-1, k).T @ g.reshape(-1, n)
            else:
                gb = unbroadcast(xp.swapaxes(a.data, -1, -2) @ g, b.shape)
        return ga, gb

    return Tensor.from_op(out, (a, b), backward, "matmul")


def concatenate(tensors, axis=0) -> Tensor:
    """Join tensors along an existing axis (``numpy.concatenate``)."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    xp = xp_of(*(t.data for t in tensors))
    out = xp.concatenate([t.data for t in tensors], axis=axis)
    axis = axis % out.ndim
    bounds = np.cumsum([0] + [t.shape[axis] for t in tensors])

    def backward(g):  # each input gets back its own slice
        lead = (slice(None),) * axis
        return tuple(g[lead + (slice(lo, hi),)] for lo, hi in zip(bounds[:-1], bounds[1:]))

    return Tensor.from_op(out, tensors, backward, "concatenate")


def stack(tensors, axis=0) -> Tensor:
    """Join tensors along a new axis (``numpy.stack``)."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    xp = xp_of(*(t.data for t in tensors))
    out = xp.stack([t.data for t in tensors], axis=axis)
    axis = axis % out.ndim

    def backward(g):
        lead = (slice(None),) * axis
        return tuple(g[lead + (i,)] for i in range(len(tensors)))

    return Tensor.from_op(out, tensors, backward, "stack")


def tensor(data, requires_grad=False, dtype=None, device="cpu") -> Tensor:
    """Make a tensor on ``device``; floats default to float32."""
    t = Tensor(data, dtype=dtype)
    t.data = backend.to_device(t.data, device)
    t.requires_grad = bool(requires_grad)
    if requires_grad and t.dtype.kind != "f":
        raise TypeError(f"only floating-point tensors can require grad, not {t.dtype}")
    return t


def as_tensor(x) -> Tensor:
    """``x`` itself if it is a Tensor, else a Tensor wrapping it (no copy for arrays)."""
    return x if isinstance(x, Tensor) else Tensor(x)
