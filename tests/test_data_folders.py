"""Your own images (tinyvit.data.folders): class subfolders of real image files, written here."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tinyvit import data
from tinyvit.data import folders

COLORS = {"cat": (200, 60, 40), "dog": (40, 60, 200), "fox": (60, 180, 60)}


def write_images(folder, count=6, classes=COLORS, size=(40, 52), seed=0):
    """``count`` JPEG and PNG files a class in ``folder/CLASS/``, each a noisy patch of
    the class's color (a different size each, so every one is resized)."""
    rng = np.random.default_rng(seed)
    for name, color in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[0] + i, size[1], 3)
            pixels = np.clip(rng.normal(color, 25, shape), 0, 255).astype(np.uint8)
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(folder / name / f"{name}_{i}.{suffix}")
    return folder


def load(root, lines=None, **options):
    return data.load_image_folder(root, 16, log=(lines.append if lines is not None else
                                                  lambda line: None), **options)  # fmt: skip


def test_class_subfolders_are_the_classes_and_each_image_is_decoded_at_the_size(tmp_path):
    root = write_images(tmp_path / "pets")
    (root / "README.txt").write_text("not an image, and not in a class folder")
    (root / "cat" / ".hidden.jpg").write_text("a hidden file is not an image of the set")
    (root / ".thumbnails").mkdir()  # a hidden folder is not a class
    lines = []
    ds = load(root, lines)
    assert ds.classes == ("cat", "dog", "fox")
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape[1:] == (3, 16, 16)
    assert len(ds.y_train) + len(ds.y_test) == 18 and len(ds.y_test) == 3  # 20% of 6 each
    assert sorted(np.bincount(ds.y_test)) == [1, 1, 1]
    # the pixels are the class's color: the red channel of cats, the blue one of dogs
    cats, dogs = ds.x_train[ds.y_train == 0], ds.x_train[ds.y_train == 1]
    assert cats[:, 0].mean() > 170 and dogs[:, 2].mean() > 170
    # the folder's own normalization, kept in its preprocessing
    p = ds.preprocessing
    assert p.image_size == 16 and p.crop_pct == 1.0 and p.interpolation == "bicubic"
    expected = ds.x_train.astype(np.float64).mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(p.mean, expected, atol=1e-4)
    assert all(0.05 < s < 0.5 for s in p.std)
    assert lines[0].startswith(f"images: {root}, 3 classes (cat, dog, fox), 15 training and 3 "
                               "test images at 16 x 16, decoded")  # fmt: skip
    assert lines[1].startswith("split: no train/ and val/ folders: 20% of each class's")
    assert data.data_kind(root) == "folder"


def test_a_train_and_val_split_is_the_folders_own(tmp_path):
    root = tmp_path / "split"
    write_images(root / "train", 4)
    write_images(root / "val", 2, classes={"cat": (200, 60, 40), "fox": (60, 180, 60)})
    lines = []
    ds = load(root, lines)
    assert ds.classes == ("cat", "dog", "fox")  # train/'s
    assert list(ds.y_train) == [0] * 4 + [1] * 4 + [2] * 4
    assert list(ds.y_test) == [0, 0, 2, 2]  # val/ may leave a class out
    assert lines[-1] == "split: train/ and val/ as given"
    (root / "val" / "owl").mkdir()
    with pytest.raises(data.DataError, match=r"class folders that .*train lacks \(owl\)"):
        load(root)


def test_the_seeded_split_is_stable(tmp_path):
    """The held-out files are chosen by a seeded hash of their names: the same every load,
    wherever the folder is, and adding an image moves no other one."""
    root = write_images(tmp_path / "a", 10)

    def held(root, seed=0):
        layout = data.find_images(root, seed=seed)
        return {p.relative_to(root).as_posix() for p, _, test in layout.files if test}

    first = held(root)
    assert len(first) == 6 and held(root) == first
    os.rename(root, tmp_path / "b")
    assert held(tmp_path / "b") == first
    for name in COLORS:  # one more image a class
        Image.new("RGB", (20, 20)).save(tmp_path / "b" / name / "new.png")
    after = held(tmp_path / "b")
    assert len(after) == 6
    assert after - first <= {f"{name}/new.png" for name in COLORS}  # no old file moved in
    assert held(tmp_path / "b", seed=1) != after


def test_the_decoded_images_are_cached_and_decoded_again_when_a_file_changes(
    tmp_path, monkeypatch
):
    root = write_images(tmp_path / "pets")
    decoded = []
    real = folders.read_image
    monkeypatch.setattr(folders, "read_image", lambda p: decoded.append(p) or real(p))
    first = load(root)
    assert len(decoded) == 18
    cached = root / ".tinyvit" / "images-16x16-bicubic-crop1.npz"
    assert cached.is_file() and not list((root / ".tinyvit").glob("*.tmp"))
    lines = []
    again = load(root, lines)
    assert len(decoded) == 18  # nothing decoded: read from the cache
    assert f"from the cache {cached}" in lines[0]
    np.testing.assert_array_equal(again.x_train, first.x_train)
    assert again.preprocessing == first.preprocessing
    # another size is another cache file, decoded once
    data.load_image_folder(root, 8, log=lambda line: None)
    assert len(decoded) == 36 and len(list((root / ".tinyvit").iterdir())) == 2
    # a file edited: the folder is decoded again, with the new pixels
    def white(ds):
        images = np.concatenate([ds.x_train, ds.x_test])
        return int((images == 255).all(axis=(1, 2, 3)).sum())

    Image.fromarray(np.full((30, 30, 3), 255, np.uint8)).save(root / "dog" / "dog_1.png")
    changed = load(root)
    assert len(decoded) == 36 + 18 and white(first) == 0 and white(changed) == 1
    # a file removed: decoded again, one image fewer
    (root / "fox" / "fox_5.png").unlink()
    fewer = load(root)
    assert len(fewer.y_train) + len(fewer.y_test) == 17 and len(decoded) == 54 + 17
    # cache=False neither reads nor writes it
    load(root, cache=False)
    assert len(decoded) == 54 + 34


def test_unreadable_files_are_skipped_and_named_in_one_line(tmp_path):
    root = write_images(tmp_path / "pets")
    (root / "cat" / "notes.jpg").write_text("a text file named like a photo")
    whole = (root / "dog" / "dog_0.jpg").read_bytes()
    (root / "dog" / "cut.jpg").write_bytes(whole[: len(whole) // 3])  # truncated
    for source in ("decoded", "from the cache"):  # the same line either way
        lines = []
        ds = load(root, lines)
        assert source in lines[1]
        assert lines[0] == (
            "skipped 2 unreadable files: cat/notes.jpg (not an image), dog/cut.jpg (truncated "
            "or damaged)"
        )
        assert len(ds.y_train) + len(ds.y_test) == 18
    many = [[f"x/{i}.jpg", "not an image"] for i in range(13)]
    assert folders.skipped_line(many).endswith("x/9.jpg (not an image), and 3 more")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: (root / "cat").mkdir(parents=True) or (root / "dog").mkdir(),
         "no images in {root}: its class folders (cat, dog) hold no files ending in .jpg"),
        (lambda root: write_images(root, classes={"cat": (1, 2, 3)}),
         "{root} has one class (cat): a classifier needs at least two class folders"),
        (lambda root: write_images(root) and (root / "owl").mkdir(),
         "the class folder owl in {root} holds no images"),
        (lambda root: write_images(root, classes={"a": (1, 2, 3)}) and
         write_images(root, 2, classes={"b": (1, 2, 3)}) and
         [p.write_text("x") for p in (root / "b").iterdir()],
         "no readable training image of b in {root}"),
    ],
    ids=["no images", "one class", "an empty class", "a class of unreadable files"],
)  # fmt: skip
def test_a_folder_that_cannot_train_a_classifier_is_a_data_error(tmp_path, make, message):
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(data.DataError) as info:
        load(root)
    assert str(info.value).startswith(message.format(root=root)), str(info.value)


def test_what_a_data_folder_holds(tmp_path):
    assert data.data_kind(tmp_path) == "cifar10"  # empty: CIFAR-10 is downloaded there
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"")
    assert data.data_kind(tmp_path) == "cifar10"
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.png")
    with pytest.raises(data.DataError) as info:
        data.data_kind(loose)
    assert str(info.value).startswith(
        f"{loose} holds neither CIFAR-10 (cifar-10-batches-bin/ or cifar-10-binary.tar.gz) nor "
        "one subfolder per class of images (1 image files but no subfolders)"
    )


def test_batches_and_evaluation_normalize_by_the_given_statistics(tmp_path):
    """data.batches takes a mean and std (the folder's), and evaluate uses the model's own
    preprocessing's: the same numbers in training and in testing."""
    from tinyvit import ViT
    from tinyvit.loop import evaluate

    ds = load(write_images(tmp_path / "pets"))
    p = ds.preprocessing
    x, _ = next(data.batches(ds.x_train, ds.y_train, 4, augment="none", shuffle=False,
                             mean=p.mean, std=p.std))  # fmt: skip
    expected = (ds.x_train[:4] / np.float32(255) - np.array(p.mean, np.float32)[:, None, None])
    expected /= np.array(p.std, np.float32)[:, None, None]
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    model = ViT(image_size=16, patch_size=8, num_classes=3, dim=12, depth=1, heads=2, mlp_dim=8)
    cifar = evaluate(model, ds.x_test, ds.y_test)
    model.preprocessing = p
    own = evaluate(model, ds.x_test, ds.y_test)
    assert own.loss != cifar.loss  # the model's statistics, not CIFAR-10's


# ---------------------------------------------------------------------------
# python -m tinyvit.train --data-dir FOLDER
# ---------------------------------------------------------------------------


def test_training_on_a_folder_end_to_end_keeps_the_class_names_for_predict(tmp_path):
    """The command line trains on the folder; the model knows the classes by name and the
    folder's normalization, and predict prints the names."""
    import subprocess
    import sys

    import tinyvit

    root = write_images(tmp_path / "pets", 8)
    out = tmp_path / "run"
    run = [sys.executable, "-m", "tinyvit.train", "--quick", "--batch-size", "6", "--data-dir",
           str(root), "--out", str(out)]  # fmt: skip
    result = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"images: {root}, 3 classes (cat, dog, fox), 18 training and 6 test images" \
        in result.stdout and "split: no train/ and val/ folders" in result.stdout  # fmt: skip
    model = tinyvit.load(out / "model.npz")
    assert model.classes == ("cat", "dog", "fox") and model.config.num_classes == 3
    folder = data.load_image_folder(root, 32, log=lambda line: None)
    assert model.preprocessing == folder.preprocessing  # the folder's own mean and std
    assert model.preprocessing.mean != data.MEAN
    again = subprocess.run([*run, "--resume"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0 and "from the cache" in again.stdout, again.stderr[-3000:]
    photo = root / "dog" / "dog_0.jpg"
    shown = subprocess.run(
        [sys.executable, "-m", "tinyvit.predict", str(photo), "--model", str(out / "model.npz"),
         "--top", "3", "--out", str(tmp_path / "figures")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-3000:]
    block = shown.stdout.split(f"{photo} (")[1].splitlines()[1:4]
    assert sorted(line.split()[-1] for line in block) == ["cat", "dog", "fox"]


@pytest.mark.parametrize(
    "make, start",
    [
        (lambda root: (root / "cat").mkdir(parents=True) or (root / "dog").mkdir(),
         "error: no images in {root}"),
        (lambda root: write_images(root, classes={"cat": (1, 2, 3)}),
         "error: {root} has one class (cat)"),
        (lambda root: write_images(root) and (root / "owl").mkdir(),
         "error: the class folder owl in {root} holds no images"),
        (lambda root: root.mkdir() or (root / "photo.jpg").write_bytes(b"x"),
         "error: {root} holds neither CIFAR-10 (cifar-10-batches-bin/ or "
         "cifar-10-binary.tar.gz) nor one subfolder per class of images"),
    ],
    ids=["no images", "one class", "an empty class", "neither"],
)  # fmt: skip
def test_a_folder_that_cannot_train_is_one_error_line_from_the_command_line(
    tmp_path, capsys, make, start
):
    from tinyvit.train import main

    root = tmp_path / "photos"
    make(root)
    status = main(["--quick", "--data-dir", str(root), "--out", str(tmp_path / "run"),
                   "--no-progress"])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(start.format(root=root)), err
