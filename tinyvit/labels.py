"""Class names: what each of a model's outputs is called.

A classifier's head has one output per class, and a prediction is an index
until something names it. ImageNet-1k's thousand classes ship with tinyvit
(``imagenet_classes.txt``, beside this module: each WordNet synset of the
published ImageNet-1k list, in the order of the classifiers' outputs, with
its lemmas), so that any model with a thousand outputs trained on it prints
"golden retriever" rather than 207. Other models name their classes
themselves (``model.classes``: a checkpoint's, or a pre-trained model's
configuration's), tinyvit's own CIFAR-10 models are known by their
preprocessing, and anything else is numbered.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .data import CLASSES as CIFAR10_CLASSES
from .images import CIFAR10_MEAN, preprocessing_of

IMAGENET_FILE = Path(__file__).with_name("imagenet_classes.txt")


@functools.cache
def _imagenet_table() -> tuple[tuple[str, str], ...]:
    """``(synset, lemmas)`` for each of ImageNet-1k's classes, in output order."""
    lines = IMAGENET_FILE.read_text(encoding="utf-8").splitlines()
    table = tuple(tuple(line.split("\t", 1)) for line in lines if line.strip())
    if len(table) != 1000 or any(len(row) != 2 for row in table):
        raise RuntimeError(f"{IMAGENET_FILE} is damaged: reinstall tinyvit")
    return table


def imagenet_synsets() -> tuple[str, ...]:
    """ImageNet-1k's WordNet synsets (``n01440764``, ...), in the classifiers' output order."""
    return tuple(synset for synset, _ in _imagenet_table())


def imagenet_classes() -> tuple[str, ...]:
    """ImageNet-1k's class names, in output order: each synset's first lemma ("tench",
    "goldfish", ..., "toilet tissue")."""
    return tuple(lemmas.split(", ")[0] for _, lemmas in _imagenet_table())


def names_of_synsets(labels) -> tuple[str, ...]:
    """Labels as printed: ImageNet-1k synsets by their name, anything else as it is."""
    known = dict(zip(imagenet_synsets(), imagenet_classes()))
    return tuple(known.get(str(label), str(label)) for label in labels)


def class_names(model) -> tuple[str, ...]:
    """The name of each of ``model``'s outputs.

    ``model.classes`` when the model has them; ImageNet-1k's for a head of
    1000 outputs; CIFAR-10's for a 10-class model with CIFAR-10's
    preprocessing (a model tinyvit trained); else ``"class 0"``, ``"class
    1"``, ...
    """
    own = getattr(model, "classes", None)
    if own is not None:
        return tuple(own)
    count = model.config.num_classes
    if count == 1000:
        return imagenet_classes()
    if count == len(CIFAR10_CLASSES) and preprocessing_of(model).mean == CIFAR10_MEAN:
        return CIFAR10_CLASSES
    return tuple(f"class {i}" for i in range(count))


__all__ = [
    "CIFAR10_CLASSES",
    "IMAGENET_FILE",
    "class_names",
    "imagenet_classes",
    "imagenet_synsets",
    "names_of_synsets",
]
