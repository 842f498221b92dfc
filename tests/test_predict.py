"""python -m tinyvit.predict: the top classes of each photo and a figure of where the model
looks, with the shipped CIFAR-10 model offline, or a model from the (offline) Hub cache."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_pretrained import REPO, hub, hub_repo, old_config, random_vit  # noqa: F401  (hub: a fixture)

from tinyvit import predict
from tinyvit.data import CLASSES
from tinyvit.lesson import SHIPPED_MODEL

LINE = re.compile(r"^ +(\d+\.\d\d)%  (.+)$")


def photo(path, height=60, width=90, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def blocks(out: str) -> dict:
    """``{photo line: [(percent, class), ...]}`` of predict's output."""
    found, current = {}, None
    for line in out.splitlines():
        if line.endswith("):") and not line.startswith(" "):
            current = found.setdefault(line, [])
        elif current is not None and (m := LINE.match(line)):
            current.append((float(m.group(1)), m.group(2)))
    return found


def test_the_shipped_model_answers_offline_and_says_what_it_is(tmp_path, capsys):
    path = photo(tmp_path / "street.png")
    assert predict.main([str(path), "--out", str(tmp_path / "out"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "the CIFAR-10 model shipped with the lessons: it sees 32 x 32 pictures and knows 10 " \
        "classes" in out  # fmt: skip
    assert "input: the photo's shorter side resized to 32 pixels (bicubic)" in out
    (header, rows), = blocks(out).items()
    assert header == f"{path} (90 x 60):"
    assert len(rows) == 3 and all(name in CLASSES for _, name in rows)
    percents = [p for p, _ in rows]
    assert percents == sorted(percents, reverse=True) and sum(percents) <= 100.01
    figure = tmp_path / "out" / "street.png"
    assert f"figure: {figure}" in out
    assert Image.open(figure).size[0] > 300


def test_a_hub_model_two_photos_of_one_name_and_a_rectangular_input(hub, tmp_path, capsys):  # noqa: F811
    names = ["cat", "dog", "fox", "owl", "eel"]
    hub_repo(hub, REPO, {**old_config(), "label_names": names}, random_vit().state_dict())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [photo(tmp_path / "a" / "pet.jpg"), photo(tmp_path / "b" / "pet.jpg", 40, 30, 1)]
    out_dir = tmp_path / "figures"
    argv = [*map(str, paths), "--model", REPO, "--top", "2", "--image-size", "32x48",
            "--out", str(out_dir)]  # fmt: skip
    assert predict.main(argv) == 0
    out = capsys.readouterr().out
    assert f"model: {REPO} (ViT, 2 blocks of width 192 with 3 heads, 32 x 48 input" in out
    assert "its center 32 x 48 cropped" in out
    found = blocks(out)
    assert list(found) == [f"{paths[0]} (90 x 60):", f"{paths[1]} (30 x 40):"]
    assert all(len(rows) == 2 and {n for _, n in rows} <= set(names) for rows in found.values())
    assert (out_dir / "pet.png").is_file() and (out_dir / "pet-2.png").is_file()


def test_a_bad_photo_is_one_error_line_and_nothing_else_runs(tmp_path, capsys):
    good = photo(tmp_path / "good.png")
    (tmp_path / "notes.jpg").write_text("not a photo")
    with pytest.raises(SystemExit) as stop:
        predict.main([str(good), str(tmp_path / "notes.jpg"), str(tmp_path / "gone.png"),
                      "--out", str(tmp_path / "out")])  # fmt: skip
    assert stop.value.code == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert "notes.jpg (11 bytes, starting b'not a photo') is not an image" in errors[0]
    assert "gone.png: no such file" in errors[1]
    assert captured.out.strip() == ""  # no model loaded, nothing classified


def test_a_model_that_cannot_be_had_is_one_error_line(hub, tmp_path, capsys):  # noqa: F811
    good = photo(tmp_path / "good.png")
    with pytest.raises(SystemExit) as stop:
        predict.main([str(good), "--model", "timm/none.x", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: timm/none.x: config.json is not in the Hugging Face cache")
    with pytest.raises(SystemExit):
        predict.main([str(good), "--top", "0"])
    assert "argument --top: must be an integer >= 1, got '0'" in capsys.readouterr().err


def test_python_m_tinyvit_predict(tmp_path):
    path = photo(tmp_path / "one.png")
    result = subprocess.run(
        [sys.executable, "-m", "tinyvit.predict", str(path), "--top", "1", "--out",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(next(iter(blocks(result.stdout).values()))) == 1
    assert (tmp_path / "out" / "one.png").is_file()


def test_predict_on_each_device(device, tmp_path, capsys):
    """The model, its input and its attention on the device (the GPU, or the CuPy stand-in
    that keeps CuPy's rules); the figure drawn on the host."""
    path = photo(tmp_path / "p.png")
    out = tmp_path / "out"
    assert predict.main([str(path), "--device", device, "--out", str(out), "--top", "2"]) == 0
    rows = next(iter(blocks(capsys.readouterr().out).values()))
    assert len(rows) == 2 and (out / "p.png").is_file()


def test_the_shipped_hybrid_answers_and_draws_where_it_looks(tmp_path, capsys):
    """The hybrid takes predict's path as a ViT does: prepare, attend, the figure."""
    path = photo(tmp_path / "street.png")
    hybrid = str(SHIPPED_MODEL.with_name("hybrid_cifar_2x3.npz"))
    out = tmp_path / "out"
    assert predict.main([str(path), "--model", hybrid, "--out", str(out), "--top", "2"]) == 0
    [found] = blocks(capsys.readouterr().out).values()
    assert len(found) == 2 and all(name in CLASSES for _, name in found)
    assert (out / "street.png").is_file()
