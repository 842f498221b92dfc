"""CUDA kernels: reference ops of ``functional.py`` in fewer kernel launches, on CuPy.

On a GPU every whole-array operation is a kernel launch, a fixed cost on the
host however small the array; a training step of a small ViT is bound by
the number of launches, not by arithmetic. The reference ops run on CuPy as
they are (one launch per NumPy-style operation), and most take a handful.
One does not: the exact GELU's ``Phi`` comes from the package's ``erf``, a
twelve-term fit evaluated by Horner's rule, a launch per operation. CUDA has
the Gaussian CDF built in (``normcdf``, as CuPy's
``cupyx.scipy.special.ndtr``): one launch for the whole of ``Phi``.

    gelu    y = x Phi(x), Phi by CUDA's normcdf; the tanh form as the reference has it

Only CuPy's own ufuncs are used (no hand-written CUDA source), so nothing
here can fail to compile that CuPy itself does not compile. The test suite
checks each kernel against its reference in float32 and float64, values and
gradients, on the ``"cuda"`` device (a real GPU, or the CuPy stand-in).
``KERNELS`` is registered for the ``"cuda"`` device by ``kernels/__init__.py``.
"""

from __future__ import annotations

import math

from .. import backend, dispatch
from ..tensor import Tensor, as_tensor

INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu(x, approximate="none") -> Tensor:
    """The exact GELU with CUDA's Gaussian CDF; the tanh form as the reference has it."""
    if approximate != "none":
        return dispatch.reference("gelu")(x, approximate)  # a few launches already
    x = as_tensor(x)
    a = x.data
    cdf = backend.cupyx.scipy.special.ndtr(a)  # Phi(x), one launch
    y = a * cdf

    def backward(g):
        d = a * a  # the derivative Phi(x) + x phi(x), with phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        d *= -0.5
        backend.cupy.exp(d, out=d)
        d *= a * INV_SQRT_2PI
        d += cdf
        d *= g
        return (d,)

    return Tensor.from_op(y, (x,), backward, "gelu")


KERNELS = {"gelu": gelu}
