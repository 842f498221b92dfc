"""Every lesson runs in --quick mode on the CPU and writes the figures it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
}
NEEDS_DATA = {name for name in FIGURES if "06" <= name[:2] <= "10"}
# What a --quick run is too short to show, said in its output.
QUICK_CAVEATS = {"09_fine_tuning.py": "--quick: 6 steps are too few to show fine-tuning's gain"}


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
