"""Photos from files (tinyvit.images.read_image), the model's preprocessing (Preprocessing,
prepare), and the checkpoint that keeps it. Every image here is written by the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_pretrained import timm_or_skip  # a test helper (tests/ is on sys.path)

import tinyvit
from tinyvit import checkpoint
from tinyvit.checkpoint import META, CheckpointError, read_npz, write_npz
from tinyvit.images import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    ImageError,
    Preprocessing,
    cifar10_preprocessing,
    prepare,
    preprocessing_of,
    read_image,
    resize_and_crop,
)
from tinyvit.lesson import SHIPPED_MODEL
from tinyvit.vit import ViT


def pattern(height=12, width=20):
    """An RGB picture with a different color in each corner, ``(H, W, 3)`` uint8."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack(
        [rows * 255 // (height - 1), cols * 255 // (width - 1), (rows + cols) % 7 * 30], axis=-1
    ).astype(np.uint8)


# ---------------------------------------------------------------------------
# read_image: formats, orientation, color modes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_formats_read_back_exactly(tmp_path, suffix):
    picture = pattern()
    path = tmp_path / f"picture{suffix}"
    Image.fromarray(picture).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (12, 20, 3)
    np.testing.assert_array_equal(got, picture)


def test_jpeg_reads_back_close_and_gif_gives_its_first_frame(tmp_path):
    picture = np.kron(np.array([[[200, 30, 30], [30, 200, 30]]], np.uint8), np.ones((16, 16, 1)))
    picture = picture.astype(np.uint8)  # two 16 x 16 blocks, red and green
    Image.fromarray(picture).save(tmp_path / "a.jpg", quality=95)
    got = read_image(tmp_path / "a.jpg")
    assert got.shape == (16, 32, 3)
    for block in (np.s_[4:12, 4:12], np.s_[4:12, 20:28]):  # away from the edge JPEG blurs
        assert np.abs(got[block].astype(int) - picture[block]).max() < 8
    frames = [Image.new("RGB", (8, 6), color) for color in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    first = read_image(tmp_path / "a.gif")
    assert first.shape == (6, 8, 3) and (first == (255, 0, 0)).all()


def test_exif_orientation_stands_the_photo_up(tmp_path):
    picture = np.zeros((2, 4, 3), np.uint8)
    picture[0, 0] = 255  # the top left pixel, white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(picture).save(tmp_path / "portrait.png", exif=exif.tobytes())
    got = read_image(tmp_path / "portrait.png")
    assert got.shape == (4, 2, 3)  # upright: taller than wide
    np.testing.assert_array_equal(got, np.rot90(picture, -1))
    assert got[0, 1].tolist() == [255, 255, 255]  # the top left went to the top right


def test_every_color_mode_becomes_rgb(tmp_path):
    gray = np.array([[0, 128, 255]], np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png").tolist() == [[[0] * 3, [128] * 3, [255] * 3]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").tolist() == [[[10, 20, 30], [200, 100, 0]]]
    palette.info["transparency"] = 0  # color 0 transparent: laid on white
    palette.save(tmp_path / "palette_t.png", transparency=0)
    assert read_image(tmp_path / "palette_t.png").tolist() == [[[255, 255, 255], [200, 100, 0]]]
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    got = read_image(tmp_path / "rgba.png")[0]
    assert got[0].tolist() == [255, 0, 0] and got[1].tolist() == [255, 255, 255]
    assert np.abs(got[2].astype(int) - 127).max() <= 1  # black, half transparent, on white
    Image.new("LA", (1, 1), (0, 0)).save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").tolist() == [[[255, 255, 255]]]
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")  # red in ink
    assert (read_image(tmp_path / "cmyk.tif") == (255, 0, 0)).all()
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - (255, 0, 0)).max() < 8
    deep = np.array([[0, 32896, 65535]], np.uint16)  # 16-bit gray
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert read_image(tmp_path / "deep.png")[0, :, 0].tolist() == [0, 128, 255]
    Image.new("1", (2, 1), 1).save(tmp_path / "bits.png")
    assert read_image(tmp_path / "bits.png").tolist() == [[[255] * 3] * 2]


# ---------------------------------------------------------------------------
# read_image: files that are not images
# ---------------------------------------------------------------------------


def test_a_text_file_named_jpg_is_named_and_described(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, this is not a photo\n")
    with pytest.raises(ImageError, match=r"notes\.jpg \(27 bytes, starting b'hello, this '\) is "
                       "not an image Pillow can read"):  # fmt: skip
        read_image(path)


def test_a_truncated_jpeg_is_named(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg cannot be decoded: the file is truncated"):
        read_image(tmp_path / "cut.jpg")


def test_a_hundred_megapixel_image_is_refused_by_the_bomb_limit(tmp_path):
    Image.new("1", (10_000, 10_000)).save(tmp_path / "huge.png")  # a few kB on disk
    with pytest.raises(ImageError, match=r"huge\.png: 10000 x 10000 = 100,000,000 pixels, more "
                       r"than the limit of 89,478,485 \(a guard against decompression bombs\)"):
        read_image(tmp_path / "huge.png")  # fmt: skip
    Image.new("1", (300, 200)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="60,000 pixels, more than the limit of 1,000"):
        read_image(tmp_path / "small.png", max_pixels=1000)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot read the image .*nope\.png: no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="it is a folder"):
        read_image(tmp_path)


# ---------------------------------------------------------------------------
# the preprocessing, and prepare
# ---------------------------------------------------------------------------


def test_prepare_resizes_the_shorter_side_crops_the_center_and_normalizes():
    photo = np.zeros((4, 8, 3), np.uint8)
    photo[:, :, 0] = np.arange(8) * 10  # each column its own red
    p = Preprocessing(2, mean=(0.0, 0.0, 0.5), std=(1.0, 1.0, 0.25), interpolation="nearest")
    # shorter side 4 -> 2: the photo becomes 2 x 4, each pixel the nearest to its center
    # (columns 1, 3, 5, 7: 10, 30, 50, 70); the center 2 x 2 starts at column
    # round((4 - 2) / 2) = 1: 30 and 50.
    assert p.resized_size(8, 4) == (4, 2)
    x = prepare(photo, p)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], np.array([[30, 50], [30, 50]]) / 255)
    np.testing.assert_allclose(x[0, 2], -2.0)  # (0 - 0.5) / 0.25
    assert resize_and_crop(photo, p)[..., 0].tolist() == [[30, 50], [30, 50]]
    assert p.crop_box(8, 4) == (2.0, 0.0, 6.0, 4.0)  # columns 2..5 of the photo
    squash = p.replace(crop_mode="squash")
    assert squash.resized_size(8, 4) == (2, 2) and squash.crop_box(8, 4) == (0, 0, 8, 4)
    assert Preprocessing(224, (0.5,) * 3, (0.5,) * 3, crop_pct=0.9).resized_size(600, 512) == (
        290, 248,
    )  # fmt: skip  (floor(224 / 0.9) = 248 on the shorter side)


def test_prepare_takes_paths_pillow_images_arrays_lists_and_batches(tmp_path):
    picture = pattern(20, 30)
    Image.fromarray(picture).save(tmp_path / "p.png")
    p = Preprocessing(8, CIFAR10_MEAN, CIFAR10_STD)
    one = prepare(picture, p)
    for same in (tmp_path / "p.png", str(tmp_path / "p.png"), Image.fromarray(picture)):
        np.testing.assert_array_equal(prepare(same, p), one)
    batch = prepare([picture, tmp_path / "p.png", pattern(9, 9)], p)
    assert batch.shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(batch[:2], np.concatenate([one, one]))
    assert prepare(np.stack([picture, picture]), p).shape == (2, 3, 8, 8)
    assert prepare(picture, p, dtype=np.float64).dtype == np.float64


def test_prepare_refuses_images_that_are_not_rgb_naming_them():
    p = cifar10_preprocessing()
    rgba = np.zeros((10, 10, 4), np.uint8)
    with pytest.raises(ImageError, match=r"image 0 has shape \(10, 10, 4\); expected an RGB "
                       r"image \(H, W, 3\): 4 channels"):  # fmt: skip
        prepare(rgba, p)
    with pytest.raises(ImageError, match=r"image 1 has shape \(10, 10\).*1 channel \(gray\)"):
        prepare([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8)], p)
    with pytest.raises(ImageError, match=r"image 0 has shape \(10, 10, 1\).*1 channel"):
        prepare([np.zeros((10, 10, 1), np.uint8)], p)
    with pytest.raises(ImageError, match=r"\(3, 10, 12\).*channels first.*transpose\(1, 2, 0\)"):
        prepare([np.zeros((3, 10, 12), np.uint8)], p)
    with pytest.raises(ImageError, match="image 0 is float32; expected uint8"):
        prepare(np.zeros((10, 10, 3), np.float32), p)
    with pytest.raises(TypeError, match="image 0 is a int"):
        prepare([7], p)
    with pytest.raises(ValueError, match="no images given"):
        prepare([], p)


def test_preprocessing_checks_each_value_and_round_trips():
    p = Preprocessing((160, 256), (0.5,) * 3, (0.5,) * 3, 0.9)
    again = Preprocessing.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p and again.image_size == (160, 256)
    assert Preprocessing([32, 32], [0.1] * 3, [1] * 3).image_size == 32
    with pytest.raises(ValueError, match=r"crop_pct must be a number in \(0, 1\], got 1.5"):
        Preprocessing(32, CIFAR10_MEAN, CIFAR10_STD, crop_pct=1.5)
    with pytest.raises(ValueError, match=r"mean must be three numbers.*\(0.5, 0.5\)"):
        Preprocessing(32, (0.5, 0.5), CIFAR10_STD)
    with pytest.raises(ValueError, match=r"std\[1\] must be a number > 0, got 0"):
        Preprocessing(32, CIFAR10_MEAN, (1, 0, 1))
    with pytest.raises(ValueError, match="interpolation must be one of .*'bicubic'.*'area'"):
        Preprocessing(32, CIFAR10_MEAN, CIFAR10_STD, interpolation="area")
    with pytest.raises(ValueError, match=r"here: not a preprocessing \(\['size'\]"):
        Preprocessing.from_dict({"size": 3}, "here")


def test_prepare_equals_timms_evaluation_transform_on_a_real_photo():
    """Same resize, crop, rounding and normalization as timm (to the last bit, as both
    resample with Pillow), for square and rectangular inputs, each crop mode."""
    timm_or_skip()
    from matplotlib import cbook
    from timm.data import create_transform, resolve_data_config

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)  # 512 x 600, RGB
    configs = [
        dict(input_size=(3, 224, 224), crop_pct=0.9, interpolation="bicubic"),
        dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear"),
        dict(input_size=(3, 384, 384), crop_pct=1.0, interpolation="bicubic"),
        dict(input_size=(3, 160, 256), crop_pct=0.9, interpolation="bicubic"),
        dict(input_size=(3, 224, 224), crop_pct=0.95, interpolation="bicubic", crop_mode="squash"),
    ]
    for cfg in configs:
        cfg.update(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        expected = create_transform(**resolve_data_config(cfg))(Image.open(path).convert("RGB"))
        p = Preprocessing(cfg["input_size"][1:], cfg["mean"], cfg["std"], cfg["crop_pct"],
                          cfg["interpolation"], cfg.get("crop_mode", "center"))  # fmt: skip
        got = prepare(path, p)[0]
        assert got.shape == tuple(expected.shape)
        assert np.abs(got - expected.numpy()).max() * 0.229 * 255 < 1.0, cfg  # < a gray level


# ---------------------------------------------------------------------------
# the checkpoint keeps the preprocessing and the class names
# ---------------------------------------------------------------------------


def tiny(**changes):
    return ViT(**{**dict(image_size=16, patch_size=8, num_classes=3, dim=8, depth=1, heads=1,
                         mlp_dim=4), **changes})  # fmt: skip


def test_a_checkpoint_keeps_preprocessing_and_class_names(tmp_path):
    model = tiny()
    assert preprocessing_of(model) == cifar10_preprocessing(16)  # none set: CIFAR-10's
    tinyvit.save(model, tmp_path / "plain.npz")
    back = tinyvit.load(tmp_path / "plain.npz")
    assert back.preprocessing == cifar10_preprocessing(16) and back.classes is None
    model.preprocessing = Preprocessing((16, 16), (0.5,) * 3, (0.25,) * 3, 0.875, "bilinear")
    model.classes = ("cat", "dog", "fox")
    tinyvit.save(model, tmp_path / "named.npz")
    back = tinyvit.load(tmp_path / "named.npz")
    assert back.preprocessing == model.preprocessing and back.classes == ("cat", "dog", "fox")


def test_an_old_checkpoint_loads_with_cifar10s_preprocessing(tmp_path):
    shipped = tinyvit.load(SHIPPED_MODEL)  # written before checkpoints kept it
    meta = json.loads(str(read_npz(SHIPPED_MODEL)[f"{META}/meta"]))
    assert "preprocessing" not in meta
    assert shipped.preprocessing == cifar10_preprocessing(32)
    assert shipped.preprocessing.mean == CIFAR10_MEAN == tinyvit.data.MEAN


def test_a_damaged_preprocessing_or_class_list_is_named(tmp_path):
    model = tiny()
    tinyvit.save(model, tmp_path / "m.npz")
    arrays = read_npz(tmp_path / "m.npz")
    meta = json.loads(str(arrays[f"{META}/meta"]))

    def edited(name, **changes):
        arrays[f"{META}/meta"] = np.array(json.dumps({**meta, **changes}))
        return write_npz(tmp_path / name, arrays)

    bad = {**meta["preprocessing"], "std": [0, 1, 1]}
    with pytest.raises(CheckpointError, match=r"bad\.npz: its preprocessing: .*std\[0\] must be"):
        checkpoint.load(edited("bad.npz", preprocessing=bad))
    with pytest.raises(CheckpointError, match=r"names 2 classes but its head has 3"):
        checkpoint.load(edited("few.npz", classes=["a", "b"]))
    with pytest.raises(CheckpointError, match="'classes' in its .* must be a list of names"):
        checkpoint.load(edited("odd.npz", classes="abc"))
