"""Modules: layers that own their parameters, and the Transformer encoder block.

A ``Module`` is an object whose attributes may be ``Parameter``s, other
modules, or lists of modules. That is all the structure there is: the
parameters are found by walking the attributes in the order they were set,
and named by the path that reaches them (``blocks.0.attn.qkv.weight``), the
same names timm gives, so weights move between the two as plain arrays.

The layers of the encoder (Dosovitskiy et al., ICLR 2021):

* ``Attention``: multi-head self-attention, Eq. 5-8 of Appendix A. One fused
  ``qkv`` projection (U_qkv, with bias) computes queries, keys and values for
  all heads at once; the heads' outputs are concatenated and projected by
  ``proj`` (U_msa).
* ``Mlp``: two linear layers with a GELU between them (the MLP of Eq. 3).
* ``Block``: the pre-norm encoder block, Eq. 2 and 3:
  ``z' = MSA(LN(z)) + z`` and ``z = MLP(LN(z')) + z'``.

And the layers of a small CNN, for the hybrid's stem (Section 3.1):
``Conv2d``, ``ReLU``, ``MaxPool2d`` and ``GroupNorm``, PyTorch's names,
arguments and initialization, on the ops of ``conv.py``.
"""

from __future__ import annotations

import numpy as np

from . import backend, checks, conv
from . import functional as F
from .tensor import Tensor


class Parameter(Tensor):
    """A tensor that a module learns: it always requires grad."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True)


class Buffer(Tensor):
    """A tensor that a module keeps but does not learn (fixed 2-D sin-cos position
    embeddings): ``to()`` moves and casts it with the parameters, but it is not a
    parameter, needs no gradient and is not saved (it is made from the configuration)."""

    def __init__(self, data):
        super().__init__(data, requires_grad=False)


def trunc_normal(shape, std=0.02, dtype=backend.DEFAULT_DTYPE):
    """Normal(0, std) samples redrawn until they lie within two standard deviations.

    timm initializes ViTs with ``trunc_normal_(std=.02)``, whose cut-off is
    at +-2 in absolute value and so, at this std, never bites; here the cut
    is at two standard deviations, as a truncated normal is meant to be.
    Drawn on the CPU from the generator that ``tinyvit.manual_seed`` seeds.
    """
    rng = backend.default_generator("cpu")
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return (values * std).astype(dtype)


def _dtype_and_device(obj):
    """Split ``to()``'s arguments into a device name and a dtype (either may be None)."""
    if obj is None:
        return None, None
    if isinstance(obj, str) and obj in backend.DEVICES:
        return obj, None
    return None, np.dtype(obj)


class Module:
    """Base class of every layer: parameters, state, modes, devices."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    # -- walking the tree ---------------------------------------------------

    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and isinstance(value[0], Module):
                for i, module in enumerate(value):
                    yield f"{name}.{i}", module

    def modules(self):
        """This module and every module inside it, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def _named_tensors(self, kind, prefix):
        """``(dotted name, tensor)`` for every attribute of class ``kind`` down the tree,
        in the order the attributes were set."""
        for name, value in vars(self).items():
            if isinstance(value, kind):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value._named_tensors(kind, f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)) and value and isinstance(value[0], Module):
                for i, module in enumerate(value):
                    yield from module._named_tensors(kind, f"{prefix}{name}.{i}.")

    def named_parameters(self, prefix=""):
        """``(dotted name, Parameter)`` pairs, in the order the attributes were set."""
        return self._named_tensors(Parameter, prefix)

    def named_buffers(self, prefix=""):
        """``(dotted name, Buffer)`` pairs, in the order the attributes were set."""
        return self._named_tensors(Buffer, prefix)

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        """The number of learned scalars."""
        return sum(p.size for p in self.parameters())

    # -- state ----------------------------------------------------------------

    def state_dict(self) -> dict:
        """``{name: NumPy array}``: a copy of every parameter, on the CPU."""
        return {name: backend.to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict, strict=True) -> None:
        """Copy arrays into the parameters of the same names.

        Values may be NumPy or CuPy arrays, or anything ``numpy.asarray``
        takes (a CPU ``torch.Tensor`` from timm included); each is cast to the
        parameter's dtype, moved to its device and copied into its array. A
        misshaped array is always an error; with ``strict`` (the default)
        missing and unexpected names are errors too. Nothing is changed unless everything fits.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        arrays = {}
        for name, param in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.data if isinstance(value, Tensor) else value
            shape = tuple(getattr(value, "shape", np.shape(value)))
            if shape != param.shape:
                problems.append(f"{name}: expected shape {param.shape}, got {shape}")
                continue
            arrays[name] = value
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for name, value in arrays.items():
            param = own[name]
            if not backend.is_cuda_array(value):
                value = np.asarray(value)
            # Copied into the parameter's own array, which may be a view of an optimizer's
            # buffer (optim.FlatParameters): it stays there.
            param.data[...] = backend.to_device(value, param.device).astype(param.dtype)
            param.grad = None

    # -- modes, devices, gradients -----------------------------------------

    def train(self, mode=True):
        """Training mode (dropout active); returns self."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        """Evaluation mode (dropout off); returns self."""
        return self.train(False)

    def to(self, device_or_dtype=None, dtype=None):
        """Move every parameter and buffer to a device (``"cpu"``/``"cuda"``) and/or cast
        it; returns self.

        ``model.to("cuda")``, ``model.to(numpy.float64)``, ``model.to("cpu", numpy.float32)``.
        """
        device, first_dtype = _dtype_and_device(device_or_dtype)
        dtype = np.dtype(dtype) if dtype is not None else first_dtype
        for p in self.parameters() + self.buffers():
            if device is not None:
                p.data = backend.to_device(p.data, device)
            if dtype is not None and p.dtype != dtype:
                p.data = p.data.astype(dtype)
            p.grad = None
        return self

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # -- printing -----------------------------------------------------------

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not children:
            return head + ")"
        lines = [head]
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


# ---------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------


class Linear(Module):
    """``y = x W^T + b`` with ``weight`` (out, in); weights trunc-normal(0.02), bias 0."""

    def __init__(self, in_features, out_features, bias=True):
        checks.POSITIVE_INT.check("Linear: in_features", in_features)
        checks.POSITIVE_INT.check("Linear: out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(trunc_normal((out_features, in_features)))
        self.bias = Parameter(np.zeros(out_features, dtype=backend.DEFAULT_DTYPE)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class LayerNorm(Module):
    """LayerNorm over the last axis (Eq. 2-4's LN); weight 1, bias 0, eps 1e-6."""

    def __init__(self, dim, eps=1e-6):
        checks.POSITIVE_INT.check("LayerNorm: dim", dim)
        checks.POSITIVE.check("LayerNorm: eps", eps)
        self.dim, self.eps = dim, eps
        self.weight = Parameter(np.ones(dim, dtype=backend.DEFAULT_DTYPE))
        self.bias = Parameter(np.zeros(dim, dtype=backend.DEFAULT_DTYPE))

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    def __init__(self, p=0.0):
        self.p = checks.FRACTION.check("Dropout: p", p)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', not {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Mlp(Module):
    """The MLP of Eq. 3: ``fc2(dropout(GELU(fc1(x))))``, then dropout."""

    def __init__(self, dim, hidden_dim, dropout=0.0, gelu="none"):
        checks.POSITIVE_INT.check("Mlp: hidden_dim", hidden_dim)
        self.fc1 = Linear(dim, hidden_dim)
        self.act = GELU(gelu)
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = Dropout(dropout)

    def forward(self, x):  # (B, N, D) -> (B, N, hidden) -> (B, N, D)
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(Module):
    """Multi-head self-attention (Appendix A, Eq. 5-8).

    ``[q, k, v] = z U_qkv`` (Eq. 5) for every head at once with the fused
    ``qkv`` projection; per head ``A = softmax(q k^T / sqrt(D_h))`` (Eq. 6) and
    ``SA(z) = A v`` (Eq. 7); the heads are concatenated and projected by
    ``proj``, U_msa (Eq. 8).

    Set ``keep_attention = True`` to keep the last forward's attention
    probabilities in ``self.attention``, a ``(B, heads, N, N)`` array.
    """

    def __init__(self, dim, heads, dropout=0.0):
        checks.POSITIVE_INT.check("Attention: dim", dim)
        checks.POSITIVE_INT.check("Attention: heads", heads)
        if dim % heads:
            raise ValueError(f"Attention: dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)
        self.drop = Dropout(dropout)
        self.keep_attention = False
        self.attention = None

    def forward(self, x):
        qkv = self.qkv(x)  # (B, N, 3D): [q | k | v] = z U_qkv, Eq. 5
        # Eq. 6-7 for every head, each with its own q, k, v of width D_h; the heads'
        # outputs come back side by side, [SA_1; ...; SA_k]: (B, N, D).
        out, attn = F.self_attention(qkv, self.heads, need_weights=True)
        self.attention = attn if self.keep_attention else None  # (B, heads, N, N)
        return self.drop(self.proj(out))  # Eq. 8

    def extra_repr(self):
        return f"dim={self.dim}, heads={self.heads}"


class Block(Module):
    """The pre-norm Transformer encoder block, Eq. 2-3.

    ``z' = MSA(LN(z)) + z`` then ``z = MLP(LN(z')) + z'``.
    """

    def __init__(self, dim, heads, mlp_dim, dropout=0.0, gelu="none"):
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, dropout, gelu)

    def forward(self, z):  # (B, N, D) -> (B, N, D)
        z = self.attn(self.norm1(z)) + z  # Eq. 2
        return self.mlp(self.norm2(z)) + z  # Eq. 3


# ---------------------------------------------------------------------------
# a CNN's layers (the hybrid's stem, Section 3.1)
# ---------------------------------------------------------------------------


def kaiming_uniform(shape, fan_in, dtype=backend.DEFAULT_DTYPE):
    """PyTorch's default initialization of a convolution (and of its bias): uniform in
    ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (``kaiming_uniform_(a=sqrt(5))``), drawn from the
    generator that ``tinyvit.manual_seed`` seeds."""
    bound = 1.0 / np.sqrt(fan_in)
    uniform = backend.default_generator("cpu").random(shape)  # in [0, 1)
    return ((2.0 * uniform - 1.0) * bound).astype(dtype)


class Conv2d(Module):
    """``torch.nn.Conv2d`` with ``groups=1``: ``weight (out, in, kh, kw)``, ``bias (out,)``.

    ``kernel_size``, ``stride`` and ``padding`` are ints or pairs. Both
    parameters start uniform in ``+-1/sqrt(in kh kw)``, as PyTorch's do.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        checks.POSITIVE_INT.check("Conv2d: in_channels", in_channels)
        checks.POSITIVE_INT.check("Conv2d: out_channels", out_channels)
        self.kernel_size = conv.pair_of("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = conv.pair_of("Conv2d", "stride", stride, 1)
        self.padding = conv.pair_of("Conv2d", "padding", padding, 0)
        self.in_channels, self.out_channels = in_channels, out_channels
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.weight = Parameter(
            kaiming_uniform((out_channels, in_channels, *self.kernel_size), fan_in)
        )
        self.bias = Parameter(kaiming_uniform(out_channels, fan_in)) if bias else None

    def forward(self, x):  # (B, in, H, W) -> (B, out, H_out, W_out)
        return conv.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


class ReLU(Module):
    def forward(self, x):
        return conv.relu(x)


class MaxPool2d(Module):
    """``torch.nn.MaxPool2d(kernel_size, stride=None, padding=0)``: stride defaults to the
    kernel."""

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = conv.pair_of("MaxPool2d", "kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else conv.pair_of(
            "MaxPool2d", "stride", stride, 1
        )
        self.padding = conv.pair_of("MaxPool2d", "padding", padding, 0)

    def forward(self, x):  # (B, C, H, W) -> (B, C, H_out, W_out)
        return conv.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GroupNorm(Module):
    """``torch.nn.GroupNorm(num_groups, num_channels, eps=1e-5)``: weight 1, bias 0."""

    def __init__(self, num_groups, num_channels, eps=1e-5):
        checks.POSITIVE_INT.check("GroupNorm: num_groups", num_groups)
        checks.POSITIVE_INT.check("GroupNorm: num_channels", num_channels)
        if num_channels % num_groups:
            raise ValueError(
                f"GroupNorm: num_groups ({num_groups}) must divide num_channels ({num_channels})"
            )
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = Parameter(np.ones(num_channels, dtype=backend.DEFAULT_DTYPE))
        self.bias = Parameter(np.zeros(num_channels, dtype=backend.DEFAULT_DTYPE))

    def forward(self, x):
        return conv.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


__all__ = [
    "Attention",
    "Block",
    "Buffer",
    "Conv2d",
    "Dropout",
    "GELU",
    "GroupNorm",
    "LayerNorm",
    "Linear",
    "MaxPool2d",
    "Mlp",
    "Module",
    "Parameter",
    "ReLU",
    "kaiming_uniform",
    "trunc_normal",
]
