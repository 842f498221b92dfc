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


def test_normalize_takes_float_images_in_0_to_1_as_they_are(xp):
    x = images_on(xp)
    expected = host(D.normalize(x))
    floats = x.astype(np.float32) / 255  # what plt.imread gives a PNG
    assert np.allclose(host(D.normalize(floats)), expected, atol=1e-5)
    assert np.allclose(host(D.normalize(floats.astype(np.float64))), expected, atol=1e-5)
    assert np.array_equal(host(D.normalize(x.astype(np.int64))), expected)  # ints: 0..255


@pytest.mark.parametrize(
    "scale,shift,words",
    [
        (1.0, 0.0, ["float32 values in [0, 255]", "divided by 255"]),
        (1 / 255, -0.5, ["float32 values in [-0.5, 0.5]", "normalized already"]),
        (2 / 255, 0.0, ["float32 values in [0, 2]"]),
    ],
    ids=["0..255", "centered", "0..2"],
)
def test_normalize_refuses_floats_outside_0_to_1(xp, scale, shift, words):
    x = xp.asarray(np.zeros((2, 3, 4, 4), np.uint8))
    x[0, 0, 0, 0], x[1, 2, 3, 3] = 0, 255
    with pytest.raises(ValueError) as info:
        D.normalize(x.astype(np.float32) * np.float32(scale) + np.float32(shift))
    message = str(info.value)
    assert "integer images 0..255 (uint8) or float images in [0, 1]" in message
    for word in words:
        assert word in message, (word, message)


def test_normalize_refuses_integers_outside_0_to_255_and_booleans():
    with pytest.raises(ValueError, match=r"int16 values in \[-1, 300\]"):
        D.normalize(np.array([-1, 300] * 24, np.int16).reshape(1, 3, 4, 4))
    with pytest.raises(TypeError, match="got bool"):
        D.normalize(np.zeros((1, 3, 4, 4), bool))


def test_normalize_transposes_channels_last_images(xp):
    x = images_on(xp, n=4)
    last = xp.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (B, H, W, C), as imread stacks them
    out = D.normalize(last)
    assert out.shape == (4, 3, 32, 32) and out.flags.c_contiguous
    assert np.array_equal(host(out), host(D.normalize(x)))
    floats = D.normalize(last.astype(np.float32) / 255)
    assert np.allclose(host(floats), host(D.normalize(x)), atol=1e-5)
    gray = np.arange(32, dtype=np.uint8).reshape(2, 4, 4, 1)  # one channel, channels-last
    assert D.normalize(gray, mean=(0.5,), std=(0.25,)).shape == (2, 1, 4, 4)


@pytest.mark.parametrize("shape", [(2, 4, 32, 32), (2, 32, 32, 4), (3, 32, 32), (32, 32, 3)])
def test_normalize_names_both_layouts_for_images_it_cannot_read(shape):
    with pytest.raises(ValueError) as info:
        D.normalize(np.zeros(shape, np.uint8))
    message = str(info.value)
    for words in ("(B, C, H, W)", "channels-last (B, H, W, C)", "C = 3", f"got shape {shape}"):
        assert words in message, (words, message)
    assert ("images[None]" in message) == (len(shape) == 3)


def test_normalize_refuses_a_list_by_name():
    with pytest.raises(TypeError, match="got list; np.asarray"):
        D.normalize(np.zeros((1, 3, 2, 2)).tolist())


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
