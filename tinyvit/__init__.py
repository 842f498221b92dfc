"""tinyvit: a Vision Transformer you can read, from autograd to attention maps.

The package follows the paper's data flow, low to high:

    backend     NumPy or CuPy, taken from the array itself
    checks      argument checks that name the argument, the range and the value
    settings    settings declared once: a field with its range and its help
    files       files written atomically; folders checked before a run
    progress    progress bars on a terminal, and nowhere else
    images      photos from files, and the preprocessing that makes one a model's input
    dispatch    which code runs an op: its reference, or the kernel of its device
    tensor      Tensor, the graph and backward()
    op_checks   the ops' arguments checked, for the reference and the kernels alike
    functional  the ViT's layers as ops with hand-written backwards: the reference
    conv        a CNN's layers (convolution, ReLU, max pooling, GroupNorm) as ops, the same way
    kernels     the same ops made fast for a device, registered in dispatch
    composed    softmax, LayerNorm and GELU built from primitives, for teaching
    gradcheck   numerical gradient checking
    nn          Module, Parameter, Linear, LayerNorm, attention, the encoder block
    vit         the Vision Transformer and its named configurations
    hybrid      Section 3.1's hybrid: a convolutional stem's feature map as the sequence
    models      every model kind by name: the ViT's configurations and the hybrid's
    checkpoint  save() and load() of a model with its configuration
    resample    interpolation: images, attention maps, position embeddings (3.2)
    interop     official Google checkpoints (read and write), new resolutions
    data        CIFAR-10 and folders of your images: reading, batches, augmentation
    labels      class names: ImageNet-1k's (shipped), a model's own, CIFAR-10's
    hub         timm's ViTs on the Hugging Face Hub: configuration and weights, no PyTorch
    official    the paper's checkpoints by name: a verified, resumable download
    pretrained  from_pretrained: a name or a path to a ready model
    optim       SGD, AdamW, warm-up and cosine decay, gradient clipping
    ema         a moving average of the weights, for testing
    loop        the one training step and the one evaluation every loop shares
    distributed several processes, one run: who is who, the all-reduce (MPI, NCCL)
    cli         one-line errors and checked flags for the command lines
    train       the trainer and its command line (python -m tinyvit.train)
    finetune    Section 3.2: a new head, a new resolution; python -m tinyvit.finetune
    pretrain    Section 4.6: masked patch prediction
    fewshot     the paper's few-shot linear probe on frozen features
    inspection  Section 4.5: attention maps, rollout, attention distance, the embeddings
    viz         figures: curves, attention over images, Figure 7
    lesson      the command line the lessons share
    predict     python -m tinyvit.predict: classify photos, show where the model looks
"""

import importlib

from . import backend, composed, functional, kernels, nn, vit
from .backend import manual_seed
from .checkpoint import load, save
from .gradcheck import GradcheckError, gradcheck
from .images import prepare, read_image
from .tensor import Tensor, as_tensor, concatenate, is_grad_enabled, matmul, no_grad, stack
from .vit import ViT

__version__ = "0.1.0"

# Every module of the list above, reachable as ``tinyvit.NAME`` after a plain ``import
# tinyvit``; those not imported yet are imported on first use (the figures bring in
# matplotlib, which ``import tinyvit`` alone need not pay for).
MODULES = tuple(line.split()[0] for line in __doc__.splitlines() if line.startswith("    "))


def __getattr__(name):
    if name in MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "from_pretrained":  # the Hub's and the bucket's machinery, on first use
        return importlib.import_module(".pretrained", __name__).from_pretrained
    raise AttributeError(f"module 'tinyvit' has no attribute {name!r}")


def create(name, pretrained=False, **options):
    """A ViT by name, as timm's ``create_model``.

    ``create("ViT-B/16")``: the named configuration (``tinyvit.vit.CONFIGS``,
    ``ALIASES``, or a hybrid's, ``tinyvit.hybrid.CONFIGS``), freshly initialized,
    with ``options`` overriding its settings. ``create(name, pretrained=True)``:
    the pre-trained weights of that name, exactly as ``from_pretrained(name,
    **options)`` loads them (a timm name, an official checkpoint, a path).
    """
    if pretrained:
        return importlib.import_module(".pretrained", __name__).from_pretrained(name, **options)
    return importlib.import_module(".models", __name__).create(name, **options)

__all__ = [
    "GradcheckError",
    "Tensor",
    "ViT",
    "as_tensor",
    "backend",
    "composed",
    "concatenate",
    "create",
    "from_pretrained",
    "functional",
    "gradcheck",
    "is_grad_enabled",
    "kernels",
    "load",
    "manual_seed",
    "matmul",
    "nn",
    "no_grad",
    "prepare",
    "read_image",
    "save",
    "stack",
    "vit",
]
