"""tinyvit: a Vision Transformer you can read, from autograd to attention maps.

The package follows the paper's data flow, low to high:

    backend     NumPy or CuPy, taken from the array itself
    tensor      Tensor, the graph and backward()
    functional  the ViT's layers as ops with hand-written backwards
    composed    the same layers built from primitives, for teaching
    gradcheck   numerical gradient checking
"""

from . import backend, composed, functional
from .backend import manual_seed
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor, as_tensor, concatenate, is_grad_enabled, matmul, no_grad, stack, tensor

__version__ = "0.1.0"

__all__ = [
    "GradcheckError",
    "Tensor",
    "as_tensor",
    "backend",
    "composed",
    "concatenate",
    "functional",
    "gradcheck",
    "is_grad_enabled",
    "manual_seed",
    "matmul",
    "no_grad",
    "stack",
    "tensor",
]
