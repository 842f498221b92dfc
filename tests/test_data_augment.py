"""The augmentations (tinyvit.data.transforms, image_ops, randaugment, augment) on NumPy,
and on CuPy where a GPU (or the stand-in) is present: checked against Pillow where it has
the op, and RandAugment's batched rounds against its ops one at a time."""

from __future__ import annotations

import numpy as np
import pytest

try:  # Pillow (a dependency of matplotlib) is the reference for the color ops
    from PIL import Image, ImageEnhance, ImageOps
except ImportError:
    Image = ImageEnhance = ImageOps = None

from tinyvit import backend
from tinyvit import data as D


def images_on(xp, n=8, seed=0, size=32):
    return xp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), np.uint8))


def host(a):
    return backend.to_numpy(a)


def test_normalize(xp):
    x = images_on(xp)
    out = D.normalize(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    mean, std = np.array(D.MEAN).reshape(1, 3, 1, 1), np.array(D.STD).reshape(1, 3, 1, 1)
    assert np.allclose(host(out), (host(x) / 255 - mean) / std, atol=1e-5)
    assert D.normalize(x, dtype=np.float64).dtype == np.float64


def test_random_crop_takes_real_windows_of_the_padded_image(xp):
    x = images_on(xp, n=6)
    out = D.random_crop(x, 4, np.random.default_rng(3))
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(host(x), ((0, 0), (0, 0), (4, 4), (4, 4)))
    offsets = []
    for b in range(6):
        found = [
            (i, j)
            for i in range(9)
            for j in range(9)
            if np.array_equal(host(out)[b], padded[b, :, i : i + 32, j : j + 32])
        ]
        assert len(found) == 1, f"image {b}: not one window of the padded image"
        offsets += found
    assert len(set(offsets)) > 1  # the windows differ from image to image
    again = D.random_crop(x, 4, np.random.default_rng(3))
    assert np.array_equal(host(again), host(out))
    assert not np.array_equal(host(D.random_crop(x, 4, np.random.default_rng(4))), host(out))


def test_horizontal_flip_mirrors_some_images(xp):
    x = images_on(xp, n=32)
    out = host(D.horizontal_flip(x, np.random.default_rng(0)))
    mirrored = [np.array_equal(o, i[..., ::-1]) for o, i in zip(out, host(x))]
    kept = [np.array_equal(o, i) for o, i in zip(out, host(x))]
    assert all(m != k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < 32
    assert np.array_equal(
        host(D.horizontal_flip(x, np.random.default_rng(0), p=1.0)), host(x)[..., ::-1]
    )
    assert np.array_equal(host(D.horizontal_flip(x, np.random.default_rng(0), p=0.0)), host(x))


def test_rand_augment_keeps_shape_and_dtype_and_follows_its_seed(xp):
    x = images_on(xp, n=16)
    out = D.rand_augment(x, np.random.default_rng(5))
    assert out.shape == x.shape and out.dtype == np.uint8
    assert np.array_equal(host(D.rand_augment(x, np.random.default_rng(5))), host(out))
    assert not np.array_equal(host(D.rand_augment(x, np.random.default_rng(6))), host(out))
    assert not np.array_equal(host(out), host(x))
    every = D.rand_augment(x, np.random.default_rng(0), num_ops=3, magnitude=30)
    assert every.shape == x.shape and every.dtype == np.uint8


def test_rand_augment_with_only_identity_changes_nothing(xp):
    x = images_on(xp)
    out = D.rand_augment(x, np.random.default_rng(0), num_ops=3, ops=["identity"])
    assert np.array_equal(host(out), host(x))
    assert out is not x  # a new array, as from any other draw


def test_rand_augment_refuses_bad_arguments(xp):
    x = images_on(xp)
    with pytest.raises(ValueError, match="unknown RandAugment ops"):
        D.rand_augment(x, np.random.default_rng(0), ops=["cutout"])
    with pytest.raises(ValueError, match="magnitude 31"):
        D.rand_augment(x, np.random.default_rng(0), magnitude=31)
    with pytest.raises(TypeError, match="uint8"):
        D.rand_augment(x.astype(np.float32), np.random.default_rng(0))


ENHANCE = ("brightness", "color", "contrast", "sharpness")  # Pillow's ImageEnhance classes
PILLOW_CASES = [("equalize",), ("autocontrast",), ("solarize", 100), ("posterize", 3)] + [
    (op, factor) for op in ENHANCE for factor in (0.0, 0.37, 1.0, 1.81)
]


def pillow(op, image, *args):
    """The same op through Pillow, on one (H, W, 3) image."""
    if op in ENHANCE:
        return getattr(ImageEnhance, op.capitalize())(image).enhance(*args)
    return getattr(ImageOps, op)(image, *args)


@pytest.mark.skipif(Image is None, reason="Pillow is not installed")
@pytest.mark.parametrize("case", PILLOW_CASES, ids=lambda case: "-".join(map(str, case)))
def test_color_ops_match_pillow_exactly(xp, case):
    op, *args = case
    x = images_on(xp, n=4, size=12)
    x[1] = x[1] // 4 + 100  # a low-contrast image, and a flat one
    x[2] = 77
    out = getattr(D, op)(x, *args)
    assert out.dtype == np.uint8
    expected = [
        np.asarray(pillow(op, Image.fromarray(im.transpose(1, 2, 0)), *args)) for im in host(x)
    ]
    assert np.array_equal(host(out), np.stack(expected).transpose(0, 3, 1, 2))


def test_neutral_arguments_leave_images_alone(xp):
    x = images_on(xp)
    for out in (
        D.brightness(x, 1.0),
        D.color(x, 1.0),
        D.contrast(x, 1.0),
        D.sharpness(x, 1.0),
        D.posterize(x, 8),
        D.solarize(x, 256),
        D.rotate(x, 0.0),
        D.shear_x(x, 0.0),
        D.shear_y(x, 0.0),
        D.translate_x(x, 0),
        D.translate_y(x, 0),
    ):
        assert out.dtype == np.uint8 and np.array_equal(host(out), host(x))


def test_geometric_ops_move_pixels_where_they_say(xp):
    x = images_on(xp)
    assert np.array_equal(host(D.rotate(x, 90)), np.rot90(host(x), 1, axes=(2, 3)))  # counter-
    assert np.array_equal(host(D.rotate(x, -90)), np.rot90(host(x), -1, axes=(2, 3)))  # clockwise
    right = host(D.translate_x(x, 3, fill=9))
    assert np.array_equal(right[..., 3:], host(x)[..., :-3]) and (right[..., :3] == 9).all()
    up = host(D.translate_y(x, -2))
    assert np.array_equal(up[:, :, :-2], host(x)[:, :, 2:]) and (up[:, :, -2:] == 0).all()
    sheared = host(D.shear_x(x, 0.25))  # the row 4 below the center row moves 1 pixel right
    assert np.array_equal(sheared[:, :, 20, 1:], host(x)[:, :, 20, :-1])
    per_image = host(D.translate_x(x, np.arange(8)))  # one shift per image
    assert all(np.array_equal(per_image[b, ..., b:], host(x)[b, ..., : 32 - b]) for b in range(8))


def test_the_flip_policy_only_mirrors(xp):
    images = xp.asarray(np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4))
    out = D.augment_batch(images, np.random.default_rng(0), "flip")
    for original, flipped in zip(host(images), host(out)):
        assert np.array_equal(flipped, original) or np.array_equal(flipped, original[:, :, ::-1])


def rand_augment_one_op_at_a_time(images, rng, num_ops=2, magnitude=9, fill=128):
    """RandAugment as its definition reads: each op of ``RAND_AUGMENT_OPS`` on the images
    that drew it, one op after another (the reference of the batched form)."""
    xp = backend.xp_of(images)
    names = tuple(D.RAND_AUGMENT_OPS)
    m, n = magnitude / 30, images.shape[0]
    out = images.copy()
    for _ in range(num_ops):
        choice = rng.integers(0, len(names), size=n)
        signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        for k, name in enumerate(names):
            chosen = np.flatnonzero(choice == k)
            if chosen.size:
                index = xp.asarray(chosen)
                out[index] = D.RAND_AUGMENT_OPS[name](out[index], m, signs[chosen], fill)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_rand_augment_equals_one_op_at_a_time(xp, seed):
    """Three passes a round (one affine map, one blend, one table per image, the identity
    for images that drew another family) give every image exactly the pixels of its op."""
    x = images_on(xp, n=64)
    want = rand_augment_one_op_at_a_time(x, np.random.default_rng(seed), num_ops=3,
                                         magnitude=17)  # fmt: skip
    got = D.rand_augment(x, np.random.default_rng(seed), num_ops=3, magnitude=17)
    assert np.array_equal(host(got), host(want))


def test_the_op_table_holds_torchvision_ranges():
    """Each op's argument, written once in ``RAND_AUGMENT_OPS``: none at magnitude 0 for
    the ops that go both ways, torchvision's ends at the full magnitude (32 x 20 images)."""
    ops = D.RAND_AUGMENT_OPS
    assert len(ops) == 14 and [op.name for op in ops.values()] == list(ops)
    full = {name: op.argument(1.0, 1.0, 20, 32) for name, op in ops.items() if op.argument}
    assert full == pytest.approx({
        "shear_x": 0.3, "shear_y": 0.3, "translate_x": 150 / 331 * 32,
        "translate_y": 150 / 331 * 20, "rotate": 30.0, "brightness": 1.9, "color": 1.9,
        "contrast": 1.9, "sharpness": 1.9, "posterize": 4, "solarize": 0.0,
    })  # fmt: skip
    assert ops["rotate"].argument(0.5, -1.0, 20, 32) == -15.0  # the other way
    assert ops["brightness"].argument(1.0, -1.0, 20, 32) == pytest.approx(0.1)
    none = {name: op.argument(0.0, 1.0, 20, 32) for name, op in ops.items() if op.argument}
    assert none["posterize"] == 8 and none["solarize"] == 255.0 and none["rotate"] == 0.0
    assert {n for n, op in ops.items() if op.argument is None} == {
        "identity", "autocontrast", "equalize"
    }
    assert D.GEOMETRIC == ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
    assert D.BLENDS == ("brightness", "color", "contrast", "sharpness")
    assert D.TABLES == ("posterize", "solarize", "autocontrast", "equalize")
    with pytest.raises(ValueError, match="family must be one of"):
        D.RandAugmentOp("blur", "filter", D.identity)


def test_the_batched_rounds_read_their_arguments_from_the_table(xp, monkeypatch):
    """A table entry changed to rotate by 90 degrees either way: RandAugment's batched
    draw follows it, each image turned a quarter one way or the other."""
    quarter = D.RandAugmentOp(
        "rotate", "geometric", D.rotate, lambda m, s, h, w: 90.0 * s,
        D.RAND_AUGMENT_OPS["rotate"].maps,
    )  # fmt: skip
    monkeypatch.setitem(D.RAND_AUGMENT_OPS, "rotate", quarter)
    x = images_on(xp, n=16)
    out = host(D.rand_augment(x, np.random.default_rng(0), num_ops=1, ops=["rotate"]))
    left = np.rot90(host(x), 1, axes=(2, 3))
    right = np.rot90(host(x), -1, axes=(2, 3))
    turned = [np.array_equal(o, lt) - np.array_equal(o, rt) for o, lt, rt in zip(out, left, right)]
    assert 0 not in turned and len(set(turned)) == 2, turned  # each image one way, both seen
