"""Checkpoints: bit-identical round trips, atomic writes, and clear errors for
files that are truncated, of another kind, or hold pickled objects."""

from __future__ import annotations

import os

import numpy as np
import pytest

import tinyvit
from tinyvit import ViT, manual_seed
from tinyvit.checkpoint import CheckpointError, read_npz, write_npz

SMALL = dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=2, heads=2, mlp_dim=16)


@pytest.mark.parametrize(
    "overrides,dtype",
    [
        ({}, np.float32),
        ({"pool": "mean", "gelu": "tanh"}, np.float64),
        ({"representation_size": 4}, np.float32),
    ],
)
def test_save_load_is_bit_identical(overrides, dtype, tmp_path):
    manual_seed(0)
    model = ViT(**SMALL, **overrides).to(dtype)
    path = tinyvit.save(model, tmp_path / "model.npz")
    loaded = tinyvit.load(path)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert a.dtype == b.dtype == dtype
        assert np.array_equal(a.data, b.data), name
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(dtype)
    assert np.array_equal(model(x).data, loaded(x).data)


def test_extra_arrays_travel_with_the_weights(tmp_path):
    model = ViT(**SMALL)
    path = tinyvit.save(model, tmp_path / "m.npz", extra={"step": np.array(12)})
    assert int(read_npz(path)["step"]) == 12
    with pytest.raises(ValueError, match="overwrite"):
        tinyvit.save(model, tmp_path / "m.npz", extra={"head.bias": np.zeros(3)})


def test_a_truncated_checkpoint_is_named_with_its_size(tmp_path):
    path = tinyvit.save(ViT(**SMALL), tmp_path / "model.npz")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as info:
            tinyvit.load(path)
        assert str(path) in str(info.value)
        if cut == len(data) // 2:
            assert f"{cut:,} bytes" in str(info.value) and "truncated" in str(info.value)


def test_a_file_of_another_kind(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not an .npz archive but a file of another kind"):
        tinyvit.load(text)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a tinyvit checkpoint.*load_official"):
        tinyvit.load(other)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, thing=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="Python objects"):
        tinyvit.load(pickled)
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*missing.npz"):
        tinyvit.load(tmp_path / "missing.npz")


def test_a_failed_write_leaves_the_old_file_and_no_litter(tmp_path, monkeypatch):
    path = tinyvit.save(ViT(**SMALL), tmp_path / "model.npz")
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        write_npz(path, {"x": np.zeros(2)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def test_saving_needs_a_configuration(tmp_path):
    with pytest.raises(TypeError, match="configuration"):
        tinyvit.save(tinyvit.nn.Linear(2, 3), tmp_path / "x.npz")


def test_written_files_get_plain_permissions(tmp_path):
    """Staged through mkstemp (owner-only), but landing with 0666 minus the umask."""
    import stat

    from tinyvit.viz import plt, save_figure

    mask = os.umask(0o022)
    try:
        npz = write_npz(tmp_path / "a.npz", {"x": np.zeros(3, np.float32)})
        png = save_figure(plt.figure(), tmp_path / "a.png")
    finally:
        os.umask(mask)
    for path in (npz, png):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def edited(tmp_path, change):
    """A saved checkpoint whose description (the JSON meta entry) ``change`` rewrites."""
    path = tinyvit.save(ViT(**SMALL), tmp_path / "model.npz")
    arrays = read_npz(path)
    key = "__tinyvit__/meta"
    arrays[key] = np.array(change(str(arrays[key])))
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda meta: meta[:-5], r"__tinyvit__/meta entry is not valid JSON"),
        (lambda meta: "[1, 2]", r"must be a JSON object, not list"),
        (lambda meta: meta.replace('"model": "ViT", ', ""), r"has no 'model'"),
        (lambda meta: meta.replace('"dtype": "float32"', '"dtype": 32'), r"'dtype'.*JSON string"),
        (lambda meta: meta.replace('"dtype": "float32"', '"dtype": "int8"'), r"floating-point"),
        (lambda meta: meta.replace('"dtype": "float32"', '"dtype": "bogus"'), r"'bogus'"),
        (lambda meta: meta.replace('"config": {', '"config": [{').replace("}, ", "}], ", 1),
         r"'config'.*JSON object"),
        (lambda meta: meta.replace('"model": "ViT"', '"model": "ResNet"'), r"unknown model kind"),
        (lambda meta: meta.replace('"tinyvit-checkpoint-1"', '"v9"'), r"unknown checkpoint format"),
        (lambda meta: meta.replace('"depth": 2', '"depth": -1'),
         r"does not build a ViT: ViT: depth must be an integer >= 1, got -1"),
        (lambda meta: meta.replace('"depth": 2', '"depth": 3'), r"weights do not fit"),
        (lambda meta: meta.replace('"heads": 2', '"layers": 2'), r"does not build a ViT"),
    ],
)
def test_a_hand_edited_description_is_named(tmp_path, change, message):
    path = edited(tmp_path, change)
    with pytest.raises(CheckpointError, match=message) as info:
        tinyvit.load(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- loaded models


def test_a_loaded_model_is_in_evaluation_mode_and_answers_the_same_twice(tmp_path):
    """A model trained with PatchDropout drops half of each image's patches in training
    mode; loaded, it must see them all, every time (and its attention covers every patch)."""
    manual_seed(0)
    model = ViT(**{**SMALL, "image_size": 16, "patch_dropout": 0.5})
    path = tinyvit.save(model, tmp_path / "model.npz")
    loaded = tinyvit.load(path)
    assert not loaded.training
    images = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    with tinyvit.no_grad():
        first, second = loaded(images).data, loaded(images).data
        np.testing.assert_array_equal(first, second)
        np.testing.assert_array_equal(first, model.eval()(images).data)
    _, attention = tinyvit.inspection.attend(loaded, images)
    assert all(a.shape == (4, 2, 17, 17) for a in attention)  # all 16 patches, and the class
    _, attention = tinyvit.inspection.attend(loaded.train(), images)  # to fine-tune it
    assert loaded.training and all(a.shape == (4, 2, 17, 17) for a in attention)


def test_weights_with_nan_are_refused_with_their_name(tmp_path):
    manual_seed(0)
    model = ViT(**SMALL)
    model.head.bias.data[1] = np.nan
    path = tinyvit.save(model, tmp_path / "model.npz")
    with pytest.raises(CheckpointError, match=r"head.bias holds 1 NaN or infinite value\(s\) of 3"):
        tinyvit.load(path)
