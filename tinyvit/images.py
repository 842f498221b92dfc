"""Photos from files, and the preprocessing that makes one a model's input.

A ViT takes a fixed-size batch of normalized floats; a photo is a file of
any size, color mode and orientation. Two steps lead from one to the other:

* ``read_image(path)`` decodes the file with Pillow (JPEG, PNG, WebP, BMP,
  GIF's first frame, TIFF) into a ``uint8`` array ``(H, W, 3)``, RGB: the
  camera's EXIF orientation applied (a portrait shot stands upright), and
  every color mode made RGB: gray and palette images, transparency laid on
  white, CMYK, 16-bit gray scaled to 8 bits.
* ``prepare(images, model)`` applies the model's ``Preprocessing``: the
  photo is resized so that its shorter side is ``image_size / crop_pct``
  (with the model's interpolation), its center ``image_size`` cropped, its
  values scaled to [0, 1], the mean subtracted and divided by the standard
  deviation, channel by channel, and the channels put first: a float32
  batch ``(B, 3, H, W)``. These are the steps, and the rounding, of timm's
  evaluation transform (``transforms_imagenet_eval``), on Pillow's
  resampling as there, so a model pre-trained with timm sees what it saw
  in its evaluation.

A pre-trained model's preprocessing comes with its weights (``tinyvit.hub``
reads it from the model's configuration); a model trained by tinyvit keeps
its own in its checkpoint: CIFAR-10's mean and standard deviation at its
input size (``cifar10_preprocessing``), the numbers declared here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import checks
from .checks import POSITIVE, as_pair, parse_image_size
from .settings import check_settings, setting

# Per-channel mean and standard deviation of CIFAR-10's training images on the 0..1
# scale: what tinyvit's own models are trained with (tinyvit.data normalizes by them).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Pillow's resampling filters under timm's names for them.
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
CROP_MODES = ("center", "squash")
CROP_FRACTION = checks.Range(float, low=0, high=1, low_open=True)


class ImageError(ValueError):
    """A file that is not an image tinyvit can read, or an image that is not RGB."""


# ---------------------------------------------------------------------------
# the model's preprocessing
# ---------------------------------------------------------------------------


def _three_numbers(name: str, value, kind: checks.Range) -> tuple[float, float, float]:
    """Three numbers, one per color channel, each checked against ``kind``."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"{name} must be three numbers (red, green, blue), got {value!r}")
    return tuple(kind.check(f"{name}[{i}]", v) for i, v in enumerate(value))


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes a model's input, in the words of timm's ``pretrained_cfg``.

    ``Preprocessing(image_size=224, mean=(0.5,) * 3, std=(0.5,) * 3,
    crop_pct=0.9, interpolation="bicubic")``. ``crop_mode="center"`` resizes
    the shorter side to ``image_size / crop_pct`` and keeps the center;
    ``"squash"`` resizes both sides to it (the aspect ratio is not kept, and
    with ``crop_pct=1`` nothing is cut off). Construction checks every value.
    """

    image_size: int | tuple[int, int] = setting(
        kind=None, help="the model's input size: a side N (N x N) or H x W",
        metavar="N|HxW", parse=parse_image_size,
    )  # fmt: skip
    mean: tuple[float, float, float] = setting(
        kind=None, help="the per-channel mean subtracted, on the 0..1 scale"
    )
    std: tuple[float, float, float] = setting(
        kind=None, help="the per-channel standard deviation divided by, on the 0..1 scale"
    )
    crop_pct: float = setting(
        1.0, CROP_FRACTION, "the share of the resized photo kept by the crop, (0, 1]"
    )
    interpolation: str = setting("bicubic", tuple(INTERPOLATIONS), "the resampling filter")
    crop_mode: str = setting(
        "center", CROP_MODES, "center (keep the aspect ratio, crop) or squash (resize both sides)"
    )

    def __post_init__(self):
        checked = check_settings(self, prefix="Preprocessing: ")
        checked["image_size"] = checks.image_size("Preprocessing: image_size", self.image_size)
        checked["mean"] = _three_numbers("Preprocessing: mean", self.mean, checks.Range(float))
        checked["std"] = _three_numbers("Preprocessing: std", self.std, POSITIVE)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """The fields as JSON takes them."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, where: str = "preprocessing") -> Preprocessing:
        """A ``Preprocessing`` from ``to_dict``'s output; a ValueError names ``where`` and
        what is wrong."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(values, dict) or set(values) - set(names):
            unknown = sorted(set(values) - set(names)) if isinstance(values, dict) else values
            raise ValueError(f"{where}: not a preprocessing ({unknown!r}; known: {names})")
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None

    def replace(self, **changes) -> Preprocessing:
        """A copy with ``changes`` (``image_size=384`` for a model fine-tuned at 384)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """The steps in words: "the photo's shorter side resized to 248 pixels (bicubic),
        its center 224 x 224 cropped, normalized by mean (...) and std (...)"."""
        H, W = as_pair(self.image_size)
        scale_h, scale_w = math.floor(H / self.crop_pct), math.floor(W / self.crop_pct)
        if self.crop_mode == "squash":
            resize = f"the photo resized to {scale_h} x {scale_w} (aspect ratio not kept"
        elif scale_h == scale_w:
            resize = f"the photo's shorter side resized to {scale_h} pixels ("
        else:
            resize = f"the photo resized to just cover {scale_h} x {scale_w} ("
        crop = "" if (scale_h, scale_w) == (H, W) and self.crop_mode == "squash" else (
            f", its center {H} x {W} cropped"
        )
        sep = "; " if self.crop_mode == "squash" else ""
        return (
            f"{resize}{sep}{self.interpolation}){crop}, normalized by mean "
            f"{self.mean} and std {self.std}"
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The ``(width, height)`` a ``width x height`` photo is resized to before the crop.

        As timm: a square input resizes the shorter side to ``floor(side /
        crop_pct)`` and the longer one in proportion, rounded down (PyTorch's
        ``Resize(int)``); a rectangular one scales the photo by one factor so
        that it just covers ``floor(H / crop_pct) x floor(W / crop_pct)``,
        rounded to the nearest pixel (timm's ``ResizeKeepRatio``).
        """
        H, W = as_pair(self.image_size)
        scale_h, scale_w = math.floor(H / self.crop_pct), math.floor(W / self.crop_pct)
        if self.crop_mode == "squash":
            return scale_w, scale_h
        if scale_h == scale_w:
            if width <= height:
                return scale_w, int(scale_w * height / width)
            return int(scale_h * width / height), scale_h
        ratio = min(height / scale_h, width / scale_w)
        return round(width / ratio), round(height / ratio)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width x height`` photo the model sees: ``(left, top, right,
        bottom)`` in the photo's own pixels."""
        new_w, new_h = self.resized_size(width, height)
        left, top = _crop_offsets(new_w, new_h, *as_pair(self.image_size)[::-1])
        H, W = as_pair(self.image_size)
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + W) * sx, (top + H) * sy)
        return (max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height))


def cifar10_preprocessing(image_size=32) -> Preprocessing:
    """The preprocessing of tinyvit's own models: CIFAR-10's mean and standard deviation, the
    whole shorter side kept (``crop_pct=1``), at the model's input size."""
    return Preprocessing(image_size, CIFAR10_MEAN, CIFAR10_STD, crop_pct=1.0)


def preprocessing_of(model) -> Preprocessing:
    """A model's ``Preprocessing`` (``model.preprocessing``), or ``model`` itself when it is
    one; a model without one (built in Python, never saved) gets CIFAR-10's at its size."""
    if isinstance(model, Preprocessing):
        return model
    own = getattr(model, "preprocessing", None)
    if own is not None:
        return own
    if not hasattr(model, "image_size"):
        raise TypeError(
            f"expected a model or a Preprocessing, got {type(model).__name__}"
        )
    return cifar10_preprocessing(model.image_size)


# ---------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------

FORMATS = "JPEG, PNG, WebP, BMP, GIF, TIFF"
_SIXTEEN_BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def _on_white(image: Image.Image) -> Image.Image:
    """An image with transparency laid over a white background, as RGB."""
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> np.ndarray:
    """A Pillow image as ``uint8`` RGB ``(H, W, 3)``: gray and palette images expanded,
    transparency on white, CMYK converted, 16-bit gray scaled to 8 bits."""
    mode = image.mode
    if mode in _SIXTEEN_BIT:  # 16-bit gray (PNG, TIFF): 0..65535 to 0..255
        gray = np.asarray(image).astype(np.float64) * (255.0 / 65535.0)
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    transparent = "A" in mode or "a" in mode or "transparency" in image.info
    rgb = _on_white(image) if transparent else image.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


def _describe_file(path: Path) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
    return f"{path} ({size:,} bytes, starting {head!r})"


def read_image(path, max_pixels: int | None = None) -> np.ndarray:
    """The image file at ``path`` as a ``uint8`` array ``(H, W, 3)``, RGB.

    Pillow decodes it; the EXIF orientation is applied and every color mode
    made RGB (``to_rgb``). An image of more than ``max_pixels`` pixels
    (default: Pillow's ``Image.MAX_IMAGE_PIXELS``, about 89 million; the guard
    against decompression bombs, small files that unpack to gigabytes) is
    refused; pass a larger number to read it anyway. Every failure is an
    ``ImageError`` (``FileNotFoundError`` for a missing file) that names the
    file and says what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        why = "it is a folder" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"cannot read the image {path}: {why}")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(path) as image:
                width, height = image.size
                if limit and width * height > limit:
                    raise ImageError(
                        f"{path}: {width} x {height} = {width * height:,} pixels, more than "
                        f"the limit of {limit:,} (a guard against decompression bombs); "
                        "read_image(path, max_pixels=...) reads it if you trust the file"
                    )
                return to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:
        raise ImageError(
            f"{path}: {error} Pillow refuses it (twice its limit); "
            "read_image(path, max_pixels=...) does not lift this one"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{_describe_file(path)} is not an image Pillow can read ({FORMATS} and more)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, ImageError):
            raise
        raise ImageError(
            f"{path} cannot be decoded: the file is truncated or damaged "
            f"({type(error).__name__}: {error})"
        ) from None


# ---------------------------------------------------------------------------
# the model's input
# ---------------------------------------------------------------------------


def _crop_offsets(width: int, height: int, crop_w: int, crop_h: int) -> tuple[int, int]:
    """``(left, top)`` of a centered ``crop_w x crop_h`` crop, rounded as torchvision's
    ``CenterCrop`` rounds (Python's ``round``: halves to even)."""
    return int(round((width - crop_w) / 2.0)), int(round((height - crop_h) / 2.0))


def _center_crop(rgb: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """The centered ``(crop_h, crop_w)`` part of ``(h, w, 3)`` pixels; an image smaller than
    the crop is first padded with black, as torchvision pads."""
    h, w = rgb.shape[:2]
    if crop_h > h or crop_w > w:
        dh, dw = max(crop_h - h, 0), max(crop_w - w, 0)
        rgb = np.pad(rgb, ((dh // 2, (dh + 1) // 2), (dw // 2, (dw + 1) // 2), (0, 0)))
        h, w = rgb.shape[:2]
    left, top = _crop_offsets(w, h, crop_w, crop_h)
    return rgb[top : top + crop_h, left : left + crop_w]


def resize_and_crop(image, preprocessing: Preprocessing) -> np.ndarray:
    """A ``uint8`` RGB ``(h, w, 3)`` image resized and cropped to the model's ``(H, W, 3)``,
    still ``uint8``: ``prepare``'s geometry without its normalization."""
    p = preprocessing
    height, width = image.shape[:2]
    new_w, new_h = p.resized_size(width, height)
    resized = Image.fromarray(image).resize((new_w, new_h), INTERPOLATIONS[p.interpolation])
    return _center_crop(np.asarray(resized), *as_pair(p.image_size))


def _as_rgb_array(image, index: int) -> np.ndarray:
    """One of ``prepare``'s images as ``uint8`` ``(H, W, 3)``: a path is read, a Pillow image
    converted, an array checked (named by its place in the batch)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(ImageOps.exif_transpose(image))
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    if shape is None:
        raise TypeError(
            f"prepare: image {index} is a {type(image).__name__}; expected a file path, a "
            "Pillow image or a uint8 array (H, W, 3) as read_image returns"
        )
    hint = ""
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        hint = ": 1 channel (gray); read_image makes any file RGB, np.repeat(...) an array"
    elif len(shape) == 3 and shape[2] == 4:
        hint = ": 4 channels (RGBA?); read_image lays a transparent file on white"
    elif len(shape) == 3 and shape[0] == 3 and shape[2] != 3:
        hint = ": channels first; image.transpose(1, 2, 0) puts them last"
    if len(shape) != 3 or shape[2] != 3:
        raise ImageError(
            f"prepare: image {index} has shape {tuple(shape)}; expected an RGB image "
            f"(H, W, 3){hint}"
        )
    if dtype != np.uint8:
        raise ImageError(
            f"prepare: image {index} is {dtype}; expected uint8 RGB (0..255), as read_image "
            "returns ((image * 255).round().astype(np.uint8) for floats in [0, 1])"
        )
    return np.asarray(image)


def prepare(images, model, dtype=np.float32) -> np.ndarray:
    """The model's input batch ``(B, 3, H, W)`` from photos, by the model's preprocessing.

    ``images`` is one image or a list of them, each a file path, a Pillow
    image or a ``uint8`` array ``(h, w, 3)`` RGB of any size (a 4-D ``uint8``
    batch ``(B, h, w, 3)`` too). ``model`` is a model (its ``preprocessing``,
    ``preprocessing_of``) or a ``Preprocessing``. Each image is resized and
    center-cropped (``resize_and_crop``), scaled to [0, 1] and normalized by
    the mean and standard deviation. Returns a NumPy array of ``dtype``.
    """
    p = preprocessing_of(model)
    single = isinstance(images, (str, Path, Image.Image)) or getattr(images, "ndim", 0) == 3
    batch = [images] if single else list(images)
    if not batch:
        raise ValueError("prepare: no images given (an empty list)")
    crops = [resize_and_crop(_as_rgb_array(image, i), p) for i, image in enumerate(batch)]
    x = np.stack(crops).astype(np.float32) / np.float32(255)  # (B, H, W, 3) in [0, 1]
    x = (x - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=dtype)  # (B, 3, H, W)


__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CROP_MODES",
    "INTERPOLATIONS",
    "ImageError",
    "Preprocessing",
    "cifar10_preprocessing",
    "prepare",
    "preprocessing_of",
    "read_image",
    "resize_and_crop",
    "to_rgb",
]
