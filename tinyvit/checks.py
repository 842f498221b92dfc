"""Argument checks that say what was expected and what was given.

A constructor or a command line that accepts nonsense fails later, far from
the cause: ``heads=0`` as a division by zero, ``depth=-1`` as a model with no
blocks that trains without complaint. Every argument with a range is checked
here, once, by a ``Range``, and the error names the argument, the range and
the value:

    >>> POSITIVE_INT.check("ViT: depth", -1)
    Traceback (most recent call last):
    ValueError: ViT: depth must be an integer >= 1, got -1

The command lines parse their flags with the same ranges
(``tinyvit.cli.flag_type``), so a flag and the argument it sets can never
disagree about what is allowed.
"""

from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Range:
    """Integers or real numbers between ``low`` and ``high`` (either may be ``None``).

    ``low_open`` / ``high_open`` exclude that end. Real numbers must be finite.
    """

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """The range in words: ``an integer >= 1``, ``a number in [0, 1)``."""
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high}"
        return "a finite number" if self.kind is float else what

    def contains(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def check(self, name: str, value):
        """``value`` as an ``int`` or ``float``, or a ValueError/TypeError naming ``name``."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"{name} must be {self.describe()}, got {value!r} ({type(value).__name__})"
            )
        if self.kind is int and not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be {self.describe()}, got {value!r}")
        number = int(value) if self.kind is int else float(value)
        if not (math.isfinite(number) and self.contains(number)):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        return number


POSITIVE_INT = Range(int, low=1)
NONNEGATIVE_INT = Range(int, low=0)
POSITIVE = Range(float, low=0, low_open=True)
NONNEGATIVE = Range(float, low=0)
FRACTION = Range(float, low=0, high=1, high_open=True)  # dropout, label smoothing, momentum


def image_size(name: str, value):
    """An image size: an integer ``n`` (``n x n``) or a pair ``(H, W)`` of them, each >= 1.

    A pair with equal sides comes back as its one integer, any other pair as a
    tuple (a JSON list included), so that a square is always spelled one way:

    >>> image_size("image_size", [224, 224]), image_size("image_size", (224, 320))
    (224, (224, 320))
    """
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(
                f"{name} must be an integer or a pair (H, W) of integers >= 1, got {value!r}"
            )
        H, W = (POSITIVE_INT.check(f"{name}[{i}]", v) for i, v in enumerate(value))
        return H if H == W else (H, W)
    return POSITIVE_INT.check(name, value)


def as_pair(size) -> tuple[int, int]:
    """``(H, W)`` of an image size, an integer or a pair: ``as_pair(32) == (32, 32)``."""
    return (size, size) if isinstance(size, numbers.Integral) else (int(size[0]), int(size[1]))


def parse_image_size(text: str):
    """An argparse ``type=`` for an image size: ``224`` or ``224x320`` (height x width)."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
        return image_size("size", parts[0] if len(parts) == 1 else parts)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"must be a size in pixels such as 224 or 224x320 (height x width), got {text!r}"
        ) from None


parse_image_size.__name__ = "size"


def one_of(name: str, value, choices):
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        known = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {known}, got {value!r}")
    return value


def uint8_images(images, what: str = "images", *, on_host: bool = True):
    """``images`` itself, after checking it is a uint8 batch of images ``(n, C, H, W)``.

    Images are stored and augmented as bytes and become floats only when
    normalized. ``on_host=True`` (a data set, before batching) insists on a
    NumPy array; ``on_host=False`` (a batch already on its device) accepts
    NumPy or CuPy. The error names ``what``, the expected array and the
    given one:

    >>> uint8_images(np.zeros((2, 32, 32), np.float32), "x")
    Traceback (most recent call last):
    TypeError: x: expected a NumPy uint8 array of images (n, C, H, W), got a numpy.ndarray \
of shape (2, 32, 32), float32
    """
    dtype, ndim = getattr(images, "dtype", None), getattr(images, "ndim", None)
    right_kind = isinstance(images, np.ndarray) or (not on_host and dtype is not None)
    if right_kind and dtype == np.uint8 and ndim == 4:
        return images
    kind, library = type(images), type(images).__module__.split(".")[0]
    given = f"a {kind.__name__}" if library == "builtins" else f"a {library}.{kind.__name__}"
    if dtype is not None:
        given += f" of shape {tuple(images.shape)}, {dtype}"
    expected = "a NumPy uint8 array" if on_host else "a uint8 array (NumPy or CuPy)"
    raise TypeError(f"{what}: expected {expected} of images (n, C, H, W), got {given}")


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order (for hints: which patch sizes fit)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


__all__ = [
    "FRACTION",
    "NONNEGATIVE",
    "NONNEGATIVE_INT",
    "POSITIVE",
    "POSITIVE_INT",
    "Range",
    "as_pair",
    "divisors",
    "image_size",
    "one_of",
    "parse_image_size",
    "uint8_images",
]
