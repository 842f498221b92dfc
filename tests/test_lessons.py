"""Every lesson runs in --quick mode on the CPU and writes the figures it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-bin"

FIGURES = {
    "00_engine_from_scratch.py": ["engine_descent.png", "layer_norm_paths.png"],
    "01_autograd.py": ["derivative.png", "descent.png"],
    "02_gradcheck.py": ["central_difference_error.png", "every_layer.png"],
    "03_image_as_sequence.py": ["patch_grid.png", "patch_sequence.png", "embedding.png"],
    "04_self_attention.py": ["attention_heads.png", "softmax_scaling.png"],
    "05_the_whole_vit.py": ["residual_updates.png", "parameters.png"],
    "06_train_cifar10.py": ["patch_dropout.png", "curves.png", "confusion.png"],
    "07_attention_maps.py": ["attention_right.png", "attention_wrong.png", "rollout_fusions.png"],
    "08_what_it_learned.py": [
        "embedding_filters.png",
        "position_similarity.png",
        "attention_distance.png",
        "figure7.png",
    ],
    "09_fine_tuning.py": ["pos_embed_resampled.png", "finetune_curves.png"],
    "10_masked_patch_prediction.py": ["pretrain_loss.png", "mpp_examples.png", "comparison.png"],
    "11_kernels.py": ["blocks_and_threads.png", "float32_cdf_error.png", "reference_vs_kernel.png"],
    "12_a_real_vit.py": ["figure6.png", "figure7.png"],
    "13_hybrid.py": ["conv_backward.png", "equal_time.png", "hybrid_attention.png"],
    "14_data_parallel.py": ["shard_gradients.png", "ring_allreduce.png", "scaling.png"],
}
NEEDS_DATA = {name for name in FIGURES if "06" <= name[:2] <= "10"} | {"13_hybrid.py"}
# What a --quick run is too short to show, said in its output.
QUICK_CAVEATS = {
    "09_fine_tuning.py": "--quick: 6 steps are too few to show fine-tuning's gain",
    "12_a_real_vit.py": "--quick: the shipped CIFAR-10 model stands in for the paper's ViT-B/16",
    "13_hybrid.py": "--quick: seconds of training on a slice of the data are too few",
}
# No test reaches the network: every URL goes to a closed port of this machine.
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
              "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
              "NO_PROXY": "", "no_proxy": ""}  # fmt: skip


def test_every_lesson_is_listed():
    assert sorted(p.name for p in LESSONS.glob("[0-9][0-9]_*.py")) == sorted(FIGURES)


@pytest.mark.parametrize("lesson", sorted(FIGURES))
def test_lesson_runs_quick(lesson, tmp_path):
    # Every lesson takes the same flags, --data-dir included (lessons without data ignore it).
    extra = ["--data-dir", str(SHARED)]
    if lesson in NEEDS_DATA and not SHARED.is_dir():
        pytest.skip("no CIFAR-10 copy beside the repository")
    # In a fresh working folder: lessons 7-9 must not find a lesson-6 model
    # left in the repository's runs/ and must train their own short one.
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(LESSONS / lesson), "--quick", "--out", str(out), *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    for figure in FIGURES[lesson]:
        path = out / figure
        assert path.exists() and path.stat().st_size > 5000, f"{lesson} did not write {figure}"
        assert str(path) in result.stdout  # the lesson says where it wrote it
    assert QUICK_CAVEATS.get(lesson, "") in result.stdout


@pytest.mark.parametrize("lesson", sorted(name for name in FIGURES if "07" <= name[:2] <= "09"))
def test_a_mistyped_checkpoint_fails_at_once(lesson, tmp_path):
    """Not a seven-minute training run: one error line naming the file, before any data."""
    missing = tmp_path / "runs" / "lessons" / "06_train_cifar10" / "modle.npz"
    result = subprocess.run(
        [sys.executable, str(LESSONS / lesson), "--checkpoint", str(missing),
         "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: argument --checkpoint: cannot read ")
    assert len(result.stderr.splitlines()) == 1 and str(missing) in result.stderr


def test_an_unusable_out_folder_is_one_error_line(tmp_path):
    blocker = tmp_path / "figures"
    blocker.write_text("a file, not a folder")
    result = subprocess.run(
        [sys.executable, str(LESSONS / "01_autograd.py"), "--quick", "--out", str(blocker / "x")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    expected = f"cannot use {blocker} as a folder: it is a file (on the way to the folder "
    assert result.stderr == f"error: {expected}{blocker / 'x'})\n"


def test_an_empty_out_is_one_error_line(tmp_path, monkeypatch, capsys):
    from tinyvit import lesson

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        lesson.lesson_arguments("01_autograd", "a lesson", ["--quick", "--out", ""])
    err = capsys.readouterr().err.splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: argument --out: must name a folder, got ''"), err
    assert list(tmp_path.iterdir()) == []


def test_a_misspelled_data_dir_is_one_error_line_in_the_command_lines_words(
    tmp_path, monkeypatch, capsys
):
    import argparse

    from tinyvit import data, lesson

    def fetch(*args, **kwargs):
        pytest.fail("a download was started")

    monkeypatch.setattr(data.cifar10, "download_release", fetch)
    typo = tmp_path / "dta"
    with pytest.raises(SystemExit) as info:
        lesson.load_data(argparse.Namespace(data_dir=str(typo)))
    err = capsys.readouterr().err.splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"error: no folder {typo} (--data-dir)"), err
    assert "leave --data-dir out" in err[0] and "root=None" not in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_lesson_in_a_notebook_ignores_the_kernels_arguments(tmp_path, monkeypatch):
    """In Jupyter (or VS Code's cells) sys.argv is the kernel's: the lesson takes its
    defaults instead of failing on ``-f kernel.json``."""
    import types

    from tinyvit import lesson

    class ZMQInteractiveShell:  # what IPython's get_ipython() returns in a kernel
        pass

    fake = types.SimpleNamespace(get_ipython=ZMQInteractiveShell)
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/tmp/kernel-1.json"])
    monkeypatch.chdir(tmp_path)
    args = lesson.lesson_arguments("01_autograd", "a lesson")
    assert args.out == Path("runs") / "lessons" / "01_autograd" and not args.quick
    monkeypatch.delitem(sys.modules, "IPython")  # a plain run: the flags are the lesson's
    with pytest.raises(SystemExit):
        lesson.lesson_arguments("01_autograd", "a lesson")


def test_lessons_look_into_the_main_commands_model_before_the_shipped_one(tmp_path, monkeypatch):
    import argparse

    from tinyvit import lesson

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(checkpoint=None)
    assert lesson.default_model(args) == lesson.SHIPPED_MODEL
    for path in (lesson.MAIN_MODEL, lesson.LESSON6_MODEL):  # each in turn comes first
        path.parent.mkdir(parents=True)
        path.write_bytes(b"a model")
        assert lesson.default_model(args) == path


def test_lessons_pass_over_a_hybrid_in_the_main_commands_folder(tmp_path, monkeypatch):
    """``--recipe hybrid`` writes runs/cifar10 too; lessons 7-10 look into a plain ViT's
    pixel patches, so they take the shipped one instead (a named --checkpoint stays)."""
    import argparse

    from tinyvit import checkpoint, lesson, models

    monkeypatch.chdir(tmp_path)
    small = dict(dim=16, depth=1, heads=2, mlp_dim=32, stem_channels=(4, 8))
    lesson.MAIN_MODEL.parent.mkdir(parents=True)
    checkpoint.save(models.create("hybrid_cifar_2x3", **small), lesson.MAIN_MODEL)
    assert lesson.is_hybrid(lesson.MAIN_MODEL)
    assert lesson.default_model(argparse.Namespace(checkpoint=None)) == lesson.SHIPPED_MODEL
    named = argparse.Namespace(checkpoint=lesson.MAIN_MODEL)
    assert lesson.default_model(named) == lesson.MAIN_MODEL
    checkpoint.save(models.create("vit_cifar_tiny", dim=16, depth=1, heads=2, mlp_dim=32),
                    lesson.MAIN_MODEL)  # fmt: skip
    assert lesson.default_model(argparse.Namespace(checkpoint=None)) == lesson.MAIN_MODEL


def test_import_tinyvit_reaches_every_module():
    code = ("import sys, tinyvit; tinyvit.data.normalize; tinyvit.train.Trainer; "
            "tinyvit.viz.plot_training_curves; tinyvit.interop.load_official; "
            "print('matplotlib' in sys.modules)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"  # loaded when asked for: viz needs it
    plain = subprocess.run([sys.executable, "-c", "import sys, tinyvit; "
                            "print('matplotlib' in sys.modules)"], capture_output=True, text=True)
    assert plain.stdout.strip() == "False"  # and not before


# ---------------------------------------------------------------------------
# Lesson 12: a real ViT, from a Hub cache made here
# ---------------------------------------------------------------------------


def fake_paper_vit(cache):
    """The paper's ViT-B/16 as lesson 12 finds it in the Hub's cache, shrunk: 224 x 224 in
    16 x 16 patches, 1000 classes, two layers of width 192 (random weights)."""
    from test_pretrained import hub_repo, old_config, random_vit

    from tinyvit.lesson import PAPER_VIT_HUB

    source = random_vit(image_size=224, num_classes=1000)
    config = old_config(1000, input_size=[3, 224, 224])
    hub_repo(cache, PAPER_VIT_HUB, config, source.state_dict())
    return source


def test_lesson_12_looks_into_a_real_vit_from_the_hub_cache(tmp_path):
    """Without --quick and without --model: the paper's ViT-B/16 from the Hub's cache (here
    a small stand-in of its shape), read offline, every figure drawn at 224 x 224."""
    import os

    from tinyvit.lesson import PAPER_VIT_HUB

    fake_paper_vit(tmp_path / "hub")
    env = {**os.environ, **NO_NETWORK, "HF_HUB_CACHE": str(tmp_path / "hub"),
           "TINYVIT_DATA": str(tmp_path / "data")}  # fmt: skip
    env.pop("HF_HUB_OFFLINE", None)  # the lesson reads the cache alone by itself
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(LESSONS / "12_a_real_vit.py"), "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"{PAPER_VIT_HUB}: " in result.stdout and "14x14 patches of 16x16" in result.stdout
    assert "stands in" not in result.stdout
    assert "mean attention distance over 10 views of 1 photo(s)" in result.stdout
    for figure in FIGURES["12_a_real_vit.py"]:
        assert (out / figure).stat().st_size > 5000 and str(out / figure) in result.stdout


def test_lesson_12_takes_a_model_and_photos_by_name_quick_and_offline(tmp_path):
    """--quick with --model: the model from its cache alone (a file here), the learner's
    photos; an image that is not one is one error line."""
    from PIL import Image
    from test_pretrained import random_vit

    import tinyvit

    model_path = tinyvit.save(random_vit(image_size=224, num_classes=3), tmp_path / "m.npz")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), np.uint8)).save(photo)
    run = [sys.executable, str(LESSONS / "12_a_real_vit.py"), "--quick", "--model",
           str(model_path), "--out", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run([*run, "--image", str(photo), "--image", str(photo)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count(f"{photo}:") == 2 and "class 0" in result.stdout
    assert "mean attention distance over 4 views of 2 photo(s)" in result.stdout
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    result = subprocess.run([*run, "--image", str(text)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: ") and str(text) in result.stderr


def test_lesson_12_without_network_or_cache_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    from tinyvit import lesson, official

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # empty
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TINYVIT_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(official, "OFFICIAL_URL", "http://127.0.0.1:9/")  # a closed port
    model, name, real = lesson.real_vit()
    lines = capsys.readouterr().out.splitlines()
    assert not real and name == str(lesson.SHIPPED_MODEL) and model.config.image_size == 32
    assert len(lines) == 1 and lines[0].startswith("no network and nothing cached: ")
    assert lesson.PAPER_VIT_HUB in lines[0] and lesson.PAPER_VIT in lines[0]
    assert "HF_HUB_OFFLINE" not in __import__("os").environ  # put back as it was
    fake_paper_vit(tmp_path / "hub")  # now in the cache: found, offline
    model, name, real = lesson.real_vit()
    assert real and name == lesson.PAPER_VIT_HUB and model.config.image_size == 224
    with pytest.raises(SystemExit) as info:  # a model asked for by name must load
        lesson.real_vit("timm/vit_nothing_here.x", quick=True)
    assert info.value.code == 2 and "timm/vit_nothing_here.x" in capsys.readouterr().err
