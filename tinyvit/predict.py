"""``python -m tinyvit.predict IMAGE [IMAGE ...]``: what a ViT sees in your photos.

For each photo: the model's ``--top`` classes with their probabilities, one
block per photo, and a figure (in ``--out``) of the part of the photo the
model sees, at the photo's own resolution, with the attention rollout over
it (Abnar & Zuidema; the paper's Figure 6) and the map of each head of the
last layer (what the class token, or the patch tokens' average, takes from
each patch).

``--model`` is anything ``tinyvit.from_pretrained`` reads: a timm name on
the Hugging Face Hub (``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``),
an official checkpoint (``ViT-B/16``), a path. Without it, the CIFAR-10
model shipped with the lessons answers, offline, at once: a model of 32 x
32 pictures and ten classes, which says so. Each photo is resized and
center-cropped as the model's preprocessing says (``tinyvit.images``);
``--image-size`` runs the model at another resolution (its position
embeddings resampled in 2-D, a rectangle such as ``224x320`` included).
A file that cannot be read, a model that cannot be had: one ``error:`` line
each, and nothing else is done.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from . import backend, files, kernels, viz
from .checkpoint import CheckpointError
from .checks import POSITIVE_INT, as_pair, parse_image_size
from .cli import ArgumentParser, fail, flag_type, folder_type
from .images import ImageError, prepare, preprocessing_of, read_image
from .inspection import attend, attention_rollout, cls_attention
from .labels import class_names
from .lesson import SHIPPED_MODEL
from .pretrained import from_pretrained

DEFAULT_OUT = Path("runs") / "predict"
FIGURE_SIDE = 1024  # pixels: a larger photo is drawn at this size (a figure shows no more)
EXAMPLE_MODEL = "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"


def parse_args(argv=None):
    parser = ArgumentParser(
        prog="python -m tinyvit.predict",
        description="Classify photos with a ViT and show where it looks: the top classes, "
        "and a figure of the attention rollout and the last layer's heads over each photo.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--model", metavar="NAME|PATH",
        help=f"a timm name on the Hugging Face Hub ({EXAMPLE_MODEL}), an official checkpoint "
        "(ViT-B/16, imagenet21k/ViT-B_16, ...) or a file; default: the CIFAR-10 model "
        "shipped with the lessons (32 x 32 pictures, 10 classes)",
    )  # fmt: skip
    parser.add_argument(
        "--top", type=flag_type(POSITIVE_INT), default=5, metavar="K",
        help="how many classes to print for each photo (default: 5)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=folder_type, default=DEFAULT_OUT,
        help=f"folder for the figures (default: {DEFAULT_OUT})",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", choices=backend.DEVICES)
    parser.add_argument(
        "--image-size", type=parse_image_size, metavar="N|HxW",
        help="run the model at this input size (its position embeddings resampled in 2-D)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        backend.check_device_name(args.device)
        files.check_writable(args.out)
    except (backend.DeviceError, files.WriteError) as error:
        fail(str(error))
    return args


def read_photos(paths) -> dict:
    """``{path: (H, W, 3) uint8}`` for every file; one ``error:`` line per file that cannot
    be read, and exit status 2 if any cannot."""
    photos, errors = {}, []
    for path in paths:
        try:
            photos[path] = read_image(path)
        except (ImageError, OSError) as error:
            errors.append(str(error))
    if errors:
        for message in errors[:-1]:
            print(f"error: {message}", file=sys.stderr)
        fail(errors[-1])
    return photos


def load_model(args):
    """The model of ``--model`` (default: the shipped CIFAR-10 model) and a line about it."""
    name = args.model
    if name is None:
        if not SHIPPED_MODEL.is_file():
            fail(
                f"no --model given, and the CIFAR-10 model shipped with the lessons "
                f"({SHIPPED_MODEL}) is not here (it comes with a source checkout): pass "
                f"--model, such as --model {EXAMPLE_MODEL}"
            )
        name = SHIPPED_MODEL
    try:
        model = from_pretrained(name, image_size=args.image_size, device=args.device)
    except (CheckpointError, OSError, ValueError) as error:
        fail(str(error))
    return model, name


def describe(model, name, shipped: bool) -> str:
    """Which model answers, what it sees and knows; for the shipped one, what it is."""
    c = model.config
    H, W = as_pair(c.image_size)
    names = class_names(model)
    shape = (
        f"ViT, {c.depth} block{'s' * (c.depth != 1)} of width {c.dim} with {c.heads} "
        f"head{'s' * (c.heads != 1)}, {H} x {W} input in "
        f"{c.patch_size} x {c.patch_size} patches, {c.num_classes} classes"
    )
    lines = [f"model: {name} ({shape})"]
    if shipped:
        lines.append(
            f"  the CIFAR-10 model shipped with the lessons: it sees {H} x {W} pictures and "
            f"knows 10 classes ({', '.join(names)}), so a photo is shrunk to {H} x {W} first; "
            f"for ImageNet's 1000 classes: --model {EXAMPLE_MODEL}"
        )
    lines.append(f"  input: {preprocessing_of(model).describe()}")
    return "\n".join(lines)


def top_classes(logits, k: int) -> list[tuple[int, float]]:
    """The ``k`` most probable classes of one image's logits, ``(index, probability)``."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i])) for i in order]


def model_view(photo, model) -> np.ndarray:
    """The part of ``photo`` the model sees (its preprocessing's crop), at the photo's own
    resolution, made at most ``FIGURE_SIDE`` pixels on its longer side."""
    height, width = photo.shape[:2]
    left, top, right, bottom = preprocessing_of(model).crop_box(width, height)
    view = Image.fromarray(photo).crop((round(left), round(top), round(right), round(bottom)))
    scale = FIGURE_SIDE / max(view.size)
    if scale < 1:
        view = view.resize((round(view.width * scale), round(view.height * scale)), Image.LANCZOS)
    return np.asarray(view)


def figure(path: Path, photo, attentions, model, label: str, out: Path) -> Path:
    """The photo's figure: the model's view of it, the rollout and the last layer's heads."""
    grid, pool = model.patch_embed.grid_size, model.config.pool
    columns = {"rollout\n(all layers)": attention_rollout(attentions, pool=pool, grid=grid)}
    heads = cls_attention(attentions[-1], pool, grid)  # (1, heads, rows, cols)
    depth = len(attentions)
    for h in range(heads.shape[1]):
        columns[f"layer {depth}\nhead {h + 1}"] = heads[:, h]
    view = model_view(photo, model)
    rows, cols = grid
    return viz.plot_attention_overlays(
        view.transpose(2, 0, 1)[None], columns, out, row_labels=[label],
        title=f"{path.name}: where the model looks",
        note=f"the model's view of the photo ({view.shape[1]} x {view.shape[0]} px), in "
        f"{rows} x {cols} patches",
    )  # fmt: skip


def figure_paths(paths, out: Path) -> dict:
    """A PNG in ``out`` per image, named after it (``photo.png``, ``photo-2.png``, ...)."""
    taken, result = set(), {}
    for path in paths:
        stem, n = Path(path).stem, 1
        while (name := f"{stem}.png" if n == 1 else f"{stem}-{n}.png") in taken:
            n += 1
        taken.add(name)
        result[path] = out / name
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    photos = read_photos(args.images)
    kernels.configure_process()
    model, name = load_model(args)
    print(describe(model, name, shipped=args.model is None))
    names = class_names(model)
    for path, out in figure_paths(photos, args.out).items():
        photo = photos[path]
        x = backend.to_device(prepare(photo, model), args.device)  # (1, 3, H, W)
        logits, attentions = attend(model, x)
        best = top_classes(backend.to_numpy(logits)[0], args.top)
        print(f"\n{path} ({photo.shape[1]} x {photo.shape[0]}):")
        for index, probability in best:
            print(f"  {100 * probability:6.2f}%  {names[index]}")
        index, probability = best[0]
        figure(Path(path), photo, attentions, model, f"{names[index]}\n{probability:.1%}", out)
        print(f"  figure: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
