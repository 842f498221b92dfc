"""Drawn on the host, applied on the device: a batch's random parameters, moved in one copy.

Every augmentation here works on a whole batch at once, in uint8 ``(B, 3,
H, W)``, with the array module taken from the images (NumPy or CuPy). The
random *parameters* (offsets, angles, which op, mixing partners) are drawn
on the CPU from a seeded ``numpy.random.Generator``, so a seed gives the
same batches on either device, and a run resumed in the middle of an epoch
sees exactly the batches it would have seen.

Shaped for a GPU, where each operation is a kernel launch and each copy
from the host a round trip through the driver: all of a batch's draws are
made first, into small frozen dataclasses (a *plan*: ``CropPlan``,
``RandAugmentRound``, ``MixupPlan``, ``BatchPlan`` ...) whose NumPy array
fields are computed on the host (RandAugment's per-image affine matrices,
blend factors and lookup tables among them). ``to_device`` then moves every
array of a plan, however deeply nested, to the device in one copy
(``backend.to_device_together``), and the plan's ``apply`` runs on the
images there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from .. import backend


def to_device(plan, device: str):
    """``plan`` (a dataclass, a tuple of them, or None) with every NumPy array inside it on
    ``device``, all moved in one copy; everything else (numbers, names) as it is."""
    arrays = list(_arrays(plan))
    moved = iter(backend.to_device_together(arrays, device))
    return _rebuilt(plan, moved)


def _arrays(value) -> Iterator[np.ndarray]:
    """The NumPy arrays in ``value``, depth first, in the order of the dataclasses' fields."""
    if isinstance(value, np.ndarray):
        yield value
    elif dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            yield from _arrays(getattr(value, field.name))
    elif isinstance(value, tuple):
        for item in value:
            yield from _arrays(item)


def _rebuilt(value, moved: Iterator):
    """``value`` with each NumPy array replaced by the next of ``moved`` (``_arrays``' order)."""
    if isinstance(value, np.ndarray):
        return next(moved)
    if dataclasses.is_dataclass(value):
        names = [field.name for field in dataclasses.fields(value)]
        return dataclasses.replace(value, **{k: _rebuilt(getattr(value, k), moved) for k in names})
    if isinstance(value, tuple):
        return tuple(_rebuilt(item, moved) for item in value)
    return value


__all__ = ["to_device"]
