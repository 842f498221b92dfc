"""The trainer: it learns, it resumes exactly, it stops cleanly on Ctrl-C and on
a diverging loss, and its command line runs end to end on CIFAR-10."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyvit
from tinyvit.data import CIFAR10
from tinyvit.train import RunError, TrainConfig, Trainer, TrainingDiverged, main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-bin"
TINY = dict(patch_size=8, dim=16, depth=1, heads=2, mlp_dim=32)


def synthetic_cifar(n_train=256, n_test=64, classes=4, seed=0):
    """Images whose class is a fixed colored pattern under noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (classes, 3, 32, 32))

    def make(n):
        labels = rng.integers(0, classes, n)
        noise = rng.normal(0, 40, (n, 3, 32, 32))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        return images, labels.astype(np.int64)

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    return CIFAR10(xtr, ytr, xte, yte, tuple(f"class {i}" for i in range(classes)))


def tiny_config(**changes):
    base = dict(
        model_overrides=TINY,
        epochs=2,
        batch_size=32,
        lr=3e-3,
        warmup_epochs=0.5,
        augment="basic",
        eval_batch_size=64,
        tta="none",
    )
    if "steps" in changes or "time_budget" in changes:  # another length than the epochs
        del base["epochs"]
    return TrainConfig(**{**base, **changes})


def weights(trainer):
    return trainer.model.state_dict()


def test_training_loss_falls_well_below_its_start(tmp_path):
    trainer = Trainer(
        tiny_config(epochs=6, lr=1e-2, augment="none", label_smoothing=0.0),
        synthetic_cifar(),
        tmp_path,
        progress=False,
    )
    first = []
    original = trainer.train_on_batch

    def spy(x, y):
        loss, correct = original(x, y)
        first.append(loss)
        return loss, correct

    trainer.train_on_batch = spy
    history = trainer.fit()
    assert len(history) == 6
    assert history[-1]["train_loss"] < 0.25 * first[0]
    assert history[-1]["test_acc"] > 0.9  # four patterns under noise
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 6
    assert (tmp_path / "curves.png").stat().st_size > 5000
    model = tinyvit.load(tmp_path / "model.npz")
    np.testing.assert_array_equal(model.head.weight.data, trainer.model.head.weight.data)


EVERY_OPTION = dict(
    ema=0.9,
    tta="flip",
    model_overrides={**TINY, "dropout": 0.1, "pool": "mean", "pos_embed": "sincos",
                     "patch_dropout": 0.25},
)  # fmt: skip


@pytest.mark.parametrize("options", ["plain", "every option"])
@pytest.mark.parametrize("stop_at", [8, 5])  # an epoch boundary (8 steps per epoch), and mid-epoch
def test_an_interrupted_and_resumed_run_ends_with_the_same_weights(stop_at, options, tmp_path):
    extra = EVERY_OPTION if options == "every option" else {}
    config = tiny_config(
        mixup=0.5, cutmix=0.5, **{"model_overrides": {**TINY, "dropout": 0.1}, **extra}
    )
    dataset = synthetic_cifar()
    straight = Trainer(config, dataset, tmp_path / "straight", progress=False)
    straight.fit()

    first = Trainer(config, dataset, tmp_path / "resumed", progress=False)
    original = first.train_on_batch

    def interrupt(x, y):
        result = original(x, y)
        if first.step + 1 == stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, caught by the trainer
        return result

    first.train_on_batch = interrupt
    first.fit()
    assert first.stop.requested and first.step == stop_at
    second = Trainer(config, dataset, tmp_path / "resumed", progress=False)
    second.fit(resume=True)
    assert second.step == straight.step == 16
    for key, value in weights(straight).items():
        np.testing.assert_array_equal(weights(second)[key], value, err_msg=key)
    assert [r["test_acc"] for r in second.history] == [r["test_acc"] for r in straight.history]
    assert [r["train_loss"] for r in second.history] == pytest.approx(
        [r["train_loss"] for r in straight.history], rel=1e-12
    )
    if options == "every option":  # the moving average, and the final flipped test
        for key, value in straight.ema.averages.items():
            np.testing.assert_array_equal(second.ema.averages[key], value, err_msg=key)
        assert second.history[-1]["test_acc_tta"] == straight.history[-1]["test_acc_tta"]


def test_a_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(epochs=3), synthetic_cifar(), tmp_path, progress=False)
    original = trainer.train_on_batch

    def poison(x, y):
        if trainer.step == 10:  # in the second epoch
            trainer.model.head.bias.data[:] = np.nan
        return original(x, y)

    trainer.train_on_batch = poison
    with pytest.raises(
        TrainingDiverged, match=r"nan at epoch 2, step 10.*checkpoint.npz.*untouched"
    ):
        trainer.fit()
    state = json.loads(
        str(tinyvit.checkpoint.read_npz(tmp_path / "checkpoint.npz")["trainer/state"])
    )
    assert state["epoch"] == 1 and state["step"] == 8  # the end of the first epoch
    good = tinyvit.load(tmp_path / "checkpoint.npz")
    assert np.all(np.isfinite(good.head.bias.data))


def test_resuming_with_other_settings_is_refused(tmp_path):
    Trainer(tiny_config(epochs=1), synthetic_cifar(), tmp_path, progress=False).fit()
    other = Trainer(tiny_config(epochs=1, lr=0.1), synthetic_cifar(), tmp_path, progress=False)
    with pytest.raises(RunError, match=r"lr: checkpoint 0.003, now 0.1"):
        other.fit(resume=True)


def test_bad_settings():
    with pytest.raises(RunError, match="larger than the 256"):
        Trainer(tiny_config(batch_size=512), synthetic_cifar(), "unused", progress=False)
    with pytest.raises(RunError, match="'adam'"):
        Trainer(tiny_config(optimizer="adam"), synthetic_cifar(), "unused", progress=False)


def test_sgd_trains_too(tmp_path):
    trainer = Trainer(
        tiny_config(optimizer="sgd", lr=0.05), synthetic_cifar(), tmp_path, progress=False
    )
    history = trainer.fit()
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(
        [
            "--quick",
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--no-download",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.fixture
def no_fetch(monkeypatch):
    """A download fails the test: the command line must not start one."""

    def fetch(*args, **kwargs):
        pytest.fail("a download was started")

    monkeypatch.setattr(tinyvit.data.download, "_fetch", fetch)
    monkeypatch.setattr(tinyvit.data.cifar10, "download_release", fetch)


def test_a_misspelled_data_dir_creates_nothing_and_downloads_nothing(tmp_path, no_fetch, capsys):
    typo, out = tmp_path / "dta", tmp_path / "run"
    code, _, err = run_cli(["--quick", "--data-dir", str(typo), "--out", str(out)], capsys)
    assert code == 2
    assert_one_error_line(
        err, f"no folder {typo} (--data-dir)", "cifar-10-batches-bin/", "cifar-10-binary.tar.gz",
        "create the folder", "leave --data-dir out", "$TINYVIT_DATA", "~/.cache/tinyvit",
    )  # fmt: skip
    assert "root argument" not in err[0] and "root=None" not in err[0]  # Python's words
    assert list(tmp_path.iterdir()) == []  # neither the data folder nor the run's


def test_a_data_dir_that_is_a_file_is_one_error_line(tmp_path, no_fetch, capsys):
    blocker = tmp_path / "cifar-10-binary.tar.gz"
    blocker.write_bytes(b"an archive, not a folder")
    code, _, err = run_cli(
        ["--quick", "--data-dir", str(blocker), "--out", str(tmp_path / "run")], capsys
    )
    assert code == 2 and not (tmp_path / "run").exists()
    assert_one_error_line(err, f"{blocker} (--data-dir) is a file, not a folder")


def test_no_download_speaks_the_command_lines_language(tmp_path, no_fetch, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    code, _, err = run_cli(
        ["--quick", "--data-dir", str(empty), "--no-download", "--out", str(tmp_path / "run")],
        capsys,
    )
    assert code == 2 and list(empty.iterdir()) == []
    assert_one_error_line(err, "run again without --no-download", "--data-dir", str(empty))
    assert "download=True" not in err[0] and "root argument" not in err[0]


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_one_error_line(out, tmp_path, fake_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([*FAST, "--out", out], capsys)
    assert code == 2 and fake_data == []
    assert_one_error_line(err, "argument --out", "must name a folder", repr(out), "pass .")
    assert list(tmp_path.iterdir()) == []  # nothing trained into the current folder


@pytest.mark.skipif(not SHARED.is_dir(), reason="no CIFAR-10 copy beside the repository")
def test_the_command_line_quick_run_on_cifar10(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyvit.train",
            "--quick",
            "--data-dir",
            str(SHARED),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch   2/2" in result.stdout and "done: final test accuracy" in result.stdout
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert (
        len(history) == 2 and history[-1]["test_acc"] > 0.15
    )  # better than chance after 2 tiny epochs
    for name in ("checkpoint.npz", "model.npz", "curves.png"):
        assert (out / name).exists()


# ---------------------------------------------------------------------------
# the command line, in process: settings, folders, failures (issue 13)
# ---------------------------------------------------------------------------

FAST = ["--quick", "--epochs", "1", "--train-limit", "128", "--test-limit", "64",
        "--batch-size", "32", "--eval-batch-size", "64", "--no-progress"]  # fmt: skip


@pytest.fixture
def fake_data(monkeypatch):
    """CIFAR-10 replaced by the small synthetic set; the list records every load."""
    loads = []

    def load(root=None, download=True):
        loads.append(root)
        return synthetic_cifar()

    monkeypatch.setattr(tinyvit.data, "load_cifar10", load)
    return loads


def run_cli(argv, capsys):
    """``(exit status, stdout, stderr lines)`` of ``main(argv)``."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def assert_one_error_line(err, *words):
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], (word, err[0])


BAD_FLAGS = [
    (["--heads", "5"], ["heads 5 does not divide dim 96"]),
    (["--patch-size", "5"], ["patch_size 5 does not divide image_size 32", "1, 2, 4, 8, 16"]),
    (["--patch-size", "0"], ["--patch-size", "integer >= 1", "'0'"]),
    (["--batch-size", "0"], ["--batch-size", "integer >= 1"]),
    (["--test-limit", "0"], ["--test-limit", "integer >= 1"]),
    (["--train-limit", "-5"], ["--train-limit", "'-5'"]),
    (["--dim", "0"], ["--dim", "integer >= 1"]),
    (["--depth", "-1"], ["--depth", "integer >= 1", "'-1'"]),
    (["--mlp-dim", "0"], ["--mlp-dim"]),
    (["--dropout", "2"], ["--dropout", "[0, 1)", "'2'"]),
    (["--seed", "-1"], ["--seed", "integer >= 0"]),
    (["--model", "vit_bogus"], ["--model", "unknown model 'vit_bogus'", "vit_cifar_tiny"]),
    (["--augment", "bogus"], ["--augment", "'bogus'"]),
    (["--pool", "avg"], ["--pool", "'avg'"]),
    (["--gelu", "erf"], ["--gelu", "'erf'"]),
    (["--label-smoothing", "2"], ["--label-smoothing", "[0, 1)"]),
    (["--eval-batch-size", "0"], ["--eval-batch-size"]),
    (["--epochs", "0"], ["--epochs", "integer >= 1"]),
    (["--lr", "-1"], ["--lr", "number > 0", "'-1'"]),
    (["--lr", "nan"], ["--lr", "'nan'"]),
    (["--lr", "fast"], ["--lr", "'fast'"]),
    (["--min-lr", "-1"], ["--min-lr", "number >= 0"]),
    (["--weight-decay", "-0.1"], ["--weight-decay"]),
    (["--momentum", "1"], ["--momentum", "[0, 1)"]),
    (["--warmup-epochs", "-1"], ["--warmup-epochs"]),
    (["--clip-grad", "-1"], ["--clip-grad"]),
    (["--mixup", "-1"], ["--mixup", "number >= 0"]),
    (["--cutmix", "inf"], ["--cutmix"]),
    (["--optimizer", "adam"], ["--optimizer", "'adam'"]),
    (["--device", "tpu"], ["--device", "'tpu'"]),
    (["--recipe", "fast"], ["--recipe", "'fast'"]),
    (["--warmup-epochs", "20", "--epochs", "16"], ["warm-up (20 epochs", "run (16 epochs"]),
    (["--min-lr", "0.1"], ["min_lr 0.1 is above lr 0.001"]),
    (["--resume", "--overwrite"], ["--overwrite", "not allowed with argument --resume"]),
    (["--epochs"], ["--epochs", "expected one argument"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
]


@pytest.mark.parametrize("flags,words", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_error_line_before_any_data(flags, words, tmp_path, fake_data, capsys):
    code, _, err = run_cli([*flags, "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert_one_error_line(err, *words)
    assert fake_data == []  # refused before the data set was read
    assert not (tmp_path / "run").exists()  # and before the folder was made


def test_cuda_without_a_gpu_is_refused_before_any_data(tmp_path, fake_data, capsys):
    previous = tinyvit.backend.use_cupy(None)  # as on a machine without CuPy
    try:
        code, _, err = run_cli(["--device", "cuda", "--out", str(tmp_path)], capsys)
    finally:
        tinyvit.backend.use_cupy(*previous)
    assert code == 2 and fake_data == []
    assert_one_error_line(err, "device 'cuda'", "CuPy is not installed", "cupy-cuda12x[ctk]")


def test_bad_flags_in_a_real_process_print_no_traceback(tmp_path):
    for flags in (["--dropout", "2"], ["--heads", "5"], ["--out", str(tmp_path / "f" / "x")]):
        (tmp_path / "f").write_text("a file")
        result = subprocess.run(
            [sys.executable, "-m", "tinyvit.train", *flags, "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_second_run_does_not_replace_the_first(tmp_path, fake_data, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli([*FAST, "--out", str(out)], capsys)
    assert code == 0 and "done" in stdout
    before = {name: (out / name).read_bytes() for name in ("checkpoint.npz", "metrics.jsonl")}
    code, _, err = run_cli([*FAST, "--out", str(out)], capsys)
    assert code == 2
    assert_one_error_line(err, str(out), "already holds a run", "--resume", "--out", "--overwrite")
    assert len(fake_data) == 1  # refused before the data set was read
    for name, content in before.items():
        assert (out / name).read_bytes() == content, name
    code, stdout, _ = run_cli([*FAST, "--out", str(out), "--resume"], capsys)
    assert code == 0 and "resuming" in stdout  # the finished run, continued: nothing to do
    assert (out / "checkpoint.npz").read_bytes() == before["checkpoint.npz"]
    code, stdout, _ = run_cli([*FAST, "--out", str(out), "--overwrite", "--seed", "1"], capsys)
    assert code == 0 and "--overwrite: deleted the earlier run" in stdout
    state = json.loads(str(tinyvit.checkpoint.read_npz(out / "checkpoint.npz")["trainer/state"]))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert state["config"]["seed"] == 1 and metrics == state["history"]  # one run, consistent


def test_resume_without_a_checkpoint_but_with_a_run_is_refused(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    trainer = Trainer(tiny_config(), synthetic_cifar(), tmp_path, progress=False)
    with pytest.raises(RunError, match=r"metrics.jsonl but no checkpoint.npz.*--overwrite"):
        trainer.fit(resume=True)
    with pytest.raises(RunError, match="already holds a run"):
        trainer.fit()


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_an_unusable_out_folder_is_refused_before_any_data(where, tmp_path, fake_data, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    out = blocker / "run" if where == "under a file" else blocker
    code, _, err = run_cli([*FAST, "--out", str(out)], capsys)
    assert code == 2 and fake_data == []
    assert_one_error_line(err, f"cannot use {blocker} as a folder: it is a file")
    assert blocker.read_text() == "not a folder"


def test_a_folder_that_refuses_writes_is_found_before_the_first_step(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    trainer = Trainer(tiny_config(), synthetic_cifar(), tmp_path / "run", progress=False)
    trainer.train_on_batch = None  # a step would fail the test with a TypeError
    monkeypatch.setattr(tinyvit.files.tempfile, "mkstemp", refuse)
    with pytest.raises(tinyvit.files.WriteError, match=r"cannot write in the folder .*run: Perm"):
        trainer.fit()


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(
    tmp_path, fake_data, capsys, monkeypatch
):
    out = tmp_path / "run"
    real_savez, calls = np.savez, []

    def savez(f, **arrays):
        calls.append(1)
        if len(calls) == 1:  # the first epoch's checkpoint is written
            return real_savez(f, **arrays)
        f.write(b"PK\x03\x04 a part of the second")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez)
    code, _, err = run_cli([*FAST, "--epochs", "2", "--out", str(out)], capsys)
    assert code == 2
    assert_one_error_line(
        err, f"could not write {out / 'checkpoint.npz'}: No space left on device",
        "the earlier checkpoint.npz is untouched",
    )  # fmt: skip
    monkeypatch.setattr(np, "savez", real_savez)
    state = json.loads(str(tinyvit.checkpoint.read_npz(out / "checkpoint.npz")["trainer/state"]))
    assert state["epoch"] == 1 and state["step"] == 4  # the end of the first epoch, intact
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "curves.png", "metrics.jsonl"]


def test_leftovers_of_a_killed_write_are_removed_when_a_run_starts(tmp_path):
    litter = [".checkpoint.npz.k1ll3d_x.tmp", ".curves-abcd1234.png", ".metrics.jsonl.tmp",
              ".model.npz.zzzzzzzz.tmp"]  # fmt: skip
    for name in litter:
        (tmp_path / name).write_bytes(b"x" * 1000)
    (tmp_path / "notes.txt").write_text("the learner's")
    lines = []
    Trainer(tiny_config(epochs=1), synthetic_cifar(), tmp_path, progress=False,
            log=lines.append).fit()  # fmt: skip
    assert any("removed 4 temporary file(s) of an interrupted write" in line for line in lines)
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoint.npz", "curves.png", "metrics.jsonl", "model.npz", "notes.txt"
    ]  # fmt: skip


def test_a_second_ctrl_c_during_a_save_lets_the_save_finish(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(), synthetic_cifar(), tmp_path, progress=False)
    original, real_savez = trainer.train_on_batch, np.savez

    def interrupt(x, y):
        result = original(x, y)
        if trainer.step + 1 == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: stop after this step
        return result

    def impatient_savez(f, **arrays):
        os.kill(os.getpid(), signal.SIGINT)  # two more while the checkpoint is written
        os.kill(os.getpid(), signal.SIGINT)
        return real_savez(f, **arrays)

    trainer.train_on_batch = interrupt
    monkeypatch.setattr(np, "savez", impatient_savez)
    trainer.fit()
    monkeypatch.setattr(np, "savez", real_savez)
    assert trainer.stop.requested and trainer.step == 3
    arrays = tinyvit.checkpoint.read_npz(tmp_path / "checkpoint.npz")
    assert json.loads(str(arrays["trainer/state"]))["step"] == 3
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_a_second_ctrl_c_while_training_stops_at_once_in_one_line(
    tmp_path, fake_data, capsys, monkeypatch
):
    original = Trainer.train_on_batch

    def twice(self, x, y):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "train_on_batch", twice)
    code, _, err = run_cli([*FAST, "--out", str(tmp_path)], capsys)
    assert code == 130
    assert_one_error_line(err, "stopped at once by Ctrl-C; nothing was saved")
    assert os.listdir(tmp_path) == []


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    for clip, hint in ((1.0, False), (0.0, True)):
        out = tmp_path / f"clip{clip}"
        trainer = Trainer(tiny_config(clip_grad=clip), synthetic_cifar(), out, progress=False)
        original = trainer.train_on_batch

        def poison(x, y, trainer=trainer, original=original):
            if trainer.step == 2:
                trainer.model.head.bias.data[:] = np.nan
            return original(x, y)

        trainer.train_on_batch = poison
        with pytest.raises(TrainingDiverged) as info:
            trainer.fit()
        message = str(info.value)
        assert "nan at epoch 1, step 2" in message
        assert "No checkpoint had been written yet" in message and "untouched" not in message
        assert ("--clip-grad 1" in message) == hint
        assert not (out / "checkpoint.npz").exists()


def test_the_header_names_the_model_that_is_trained(tmp_path):
    lines = []
    Trainer(tiny_config(epochs=1), synthetic_cifar(), tmp_path, progress=False,
            log=lines.append).fit()  # fmt: skip
    header = next(line for line in lines if "parameters" in line)
    assert header.startswith(
        "vit_cifar_tiny with patch_size=8, dim=16, depth=1, heads=2, mlp_dim=32: "
    )
    assert "kernels" in header or "reference" in header  # kernels.describe() stays


def test_evaluation_shows_progress(tmp_path, capsys):
    Trainer(tiny_config(epochs=1), synthetic_cifar(), tmp_path, progress=True,
            log=lambda line: None).fit()  # fmt: skip
    assert "epoch 1/1: testing" in capsys.readouterr().err


def test_help_lists_every_flag_with_its_real_default():
    from tinyvit.train import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "None" not in text and "(default: 16 (default" not in text
    for flag in ("--overwrite", "--resume", "--epochs", "--lr", "--heads", "--data-dir"):
        assert flag in text
    assert "(default: as many as fit in the time budget; recipes gpu: 200, quick: 2)" in text
    assert ("default: the model's (vit_cifar_tiny: 3, vit_lite_7_4: 4, hybrid_cifar_2x3: 2, "
            "quick recipe: 2)") in text  # fmt: skip
    assert ("(vit_cifar_tiny: cls, vit_lite_7_4: cls, hybrid_cifar_2x3: cls, cpu recipe: mean, "
            "hybrid recipe: mean)") in text  # fmt: skip
    assert "(default: 30m; recipes gpu: none, quick: none)" in text
    assert "--dropout X" in text and "--pool {cls,mean}" in text


def test_a_damaged_trainer_state_is_a_checkpoint_error(tmp_path):
    Trainer(tiny_config(epochs=1), synthetic_cifar(), tmp_path, progress=False).fit()
    arrays = tinyvit.checkpoint.read_npz(tmp_path / "checkpoint.npz")
    state = json.loads(str(arrays["trainer/state"]))
    edits = [
        ('{"config": ', "not valid JSON"),
        ("{}", "incomplete or damaged"),
        ("[1, 2]", "a JSON object was expected"),
        (json.dumps({**state, "total_steps": 0}), "total_steps must be an integer >= 1, got 0"),
        (json.dumps({**state, "step": "8"}), "step must be an integer >= 0, got '8'"),
        (json.dumps({**state, "step": 99}), "step 99 is past total_steps 8"),
        (json.dumps({**state, "sums": {"loss": "x"}}), "sums must hold numbers"),
        (json.dumps({**state, "history": {}}), "history must be a list"),
    ]
    for bad, words in edits:
        arrays["trainer/state"] = np.array(bad)
        np.savez(tmp_path / "checkpoint.npz", **arrays)
        again = Trainer(tiny_config(epochs=1), synthetic_cifar(), tmp_path, progress=False)
        with pytest.raises(tinyvit.checkpoint.CheckpointError, match=words):
            again.fit(resume=True)


def test_a_training_checkpoint_with_nan_weights_is_refused(tmp_path, capsys):
    Trainer(tiny_config(epochs=1), synthetic_cifar(), tmp_path, progress=False).fit()
    arrays = tinyvit.checkpoint.read_npz(tmp_path / "checkpoint.npz")
    arrays["head.weight"] = np.full_like(arrays["head.weight"], np.nan)
    np.savez(tmp_path / "checkpoint.npz", **arrays)
    again = Trainer(tiny_config(epochs=2), synthetic_cifar(), tmp_path, progress=False)
    with pytest.raises(tinyvit.checkpoint.CheckpointError, match="head.weight holds 64 NaN"):
        again.fit(resume=True)


def test_a_loss_that_blows_up_without_nan_is_caught_like_nan(tmp_path):
    """A learning rate far too high sends the loss to thousands, still finite: the run
    stops with the advice it gives for NaN, instead of ending at chance without a word."""
    trainer = Trainer(tiny_config(epochs=3), synthetic_cifar(), tmp_path, progress=False)
    original = trainer.train_on_batch

    def explode(x, y):
        if trainer.step == 10:
            trainer.model.head.weight.data *= 1e5  # confident, wrong, finite
        return original(x, y)

    trainer.train_on_batch = explode
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    message = str(info.value)
    assert "(a diverged run: over 13.9)" in message and "at epoch 2, step 10" in message
    assert "a lower --lr" in message and "checkpoint.npz (step 8), is untouched" in message


def test_progress_bars_only_on_a_terminal(tmp_path, capsys):
    """Standard error here is not a terminal (pytest captures it): no bars by default,
    the epoch lines all the same."""
    lines = []
    Trainer(tiny_config(epochs=1), synthetic_cifar(), tmp_path, log=lines.append).fit()
    assert "\r" not in capsys.readouterr().err and any(line.startswith("epoch") for line in lines)


@pytest.mark.skipif(not SHARED.is_dir(), reason="no CIFAR-10 copy beside the repository")
def test_two_runs_started_together_into_one_folder(tmp_path):
    """Both start at once; one trains, the other stops with one error line before loading
    the data, and the folder holds one run's files, consistent with each other."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "tinyvit.train", "--quick", "--epochs", "1",
               "--data-dir", str(SHARED), "--out", str(out)]  # fmt: skip
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    _, _, err = next(r for r in results if r[0] == 2)
    assert len(err.strip().splitlines()) == 1 and "another process" in err
    state = json.loads(str(tinyvit.checkpoint.read_npz(out / "checkpoint.npz")["trainer/state"]))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics == state["history"] and not (out / ".lock").exists()


@pytest.mark.skipif(not SHARED.is_dir(), reason="no CIFAR-10 copy beside the repository")
def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "tinyvit.train", "--quick", "--epochs", "50",
               "--data-dir", str(SHARED), "--out", str(out)]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in run.stdout:  # the first epoch's line: a run under way
        if line.startswith("epoch"):
            break
    run.send_signal(signal.SIGTERM)
    out_rest, err = run.communicate(timeout=300)
    assert run.returncode == 143, err
    assert "\nSIGTERM: " in out_rest and "--resume" in out_rest  # during a step or a save
    assert "Traceback" not in err
    state = json.loads(str(tinyvit.checkpoint.read_npz(out / "checkpoint.npz")["trainer/state"]))
    assert state["step"] >= 16  # the first epoch at least, and nothing half done


# ---------------------------------------------------------------- a time budget


def test_a_time_budget_plan_fills_the_time_left(tmp_path):
    """100 s, 0.1 s a step, 1 s to test and save after each of its 8-step epochs: the
    largest run that fits is 52 epochs (93.6 s of the 94 s left after the 6% margin)."""
    trainer = Trainer(tiny_config(time_budget=100.0), synthetic_cifar(), tmp_path, progress=False)
    assert not trainer.planned
    trainer._started = __import__("time").perf_counter()  # nothing spent yet
    trainer.plan(0.1, 0.75, 0.25)  # a step, a test, a save
    assert trainer.planned and trainer.total_steps == 416 and trainer.epochs == 52
    assert trainer.schedule.total == 416


def test_a_budgeted_run_plans_once_and_its_steps_repeat_it(tmp_path):
    """The run times itself, fixes its length during the warm-up (one epoch), and the
    ``--steps N`` its log names trains the very same weights."""
    lines = []
    config = tiny_config(time_budget=6.0, warmup_epochs=1.0)
    budgeted = Trainer(
        config, synthetic_cifar(), tmp_path / "budget", progress=False, log=lines.append
    )
    budgeted.fit()
    assert budgeted.planned and budgeted.step == budgeted.total_steps > 8
    plan = next(line for line in lines if line.startswith("time budget"))
    first = next(line for line in lines if line.startswith("epoch"))
    assert first.startswith("epoch   1/?  ")  # the length is not known before the plan
    assert f"--steps {budgeted.total_steps} " in plan and "step for step" in plan
    assert len(budgeted.history) == budgeted.epochs
    again = Trainer(
        tiny_config(steps=budgeted.total_steps, warmup_epochs=1.0),
        synthetic_cifar(),
        tmp_path / "again",
        progress=False,
    )
    again.fit()
    for key, value in weights(budgeted).items():
        np.testing.assert_array_equal(weights(again)[key], value, err_msg=key)


def test_a_run_tests_after_the_first_every_nth_and_the_last_epoch(tmp_path):
    """--test-every 2 over 5 epochs: tests after epochs 1, 2, 4 and 5; the others are
    recorded, printed and drawn without a test, and the run ends as usual."""
    lines = []
    trainer = Trainer(tiny_config(epochs=5, test_every=2, tta="flip"), synthetic_cifar(),
                      tmp_path, progress=False, log=lines.append)  # fmt: skip
    history = trainer.fit()
    assert [("test_acc" in r) for r in history] == [True, True, False, True, True]
    assert "test_loss_tta" in history[-1]
    epoch_lines = [line for line in lines if line.startswith("epoch")]
    assert "not tested" in epoch_lines[2] and "not tested" not in epoch_lines[3]
    best = max(r["test_acc"] for r in history if "test_acc" in r)
    assert f"(best {100 * best:.2f}%)" in lines[-1]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "test_acc" not in records[2] and (tmp_path / "curves.png").stat().st_size > 0


def test_steps_may_end_a_run_inside_an_epoch(tmp_path):
    trainer = Trainer(tiny_config(steps=13), synthetic_cifar(), tmp_path, progress=False)
    history = trainer.fit()
    assert trainer.step == 13 and trainer.epochs == 2
    assert [r["step"] for r in history] == [8, 13]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--time-budget", "30x"], "length of time such as 30m"),
        (["--time-budget", "0"], "length of time"),
        (["--steps", "10", "--time-budget", "1m"], "exclude each other"),
        (["--ema", "1.5"], "--ema"),
        (["--tta", "crop"], "--tta"),
        (["--patch-dropout", "1"], "--patch-dropout"),
        (["--pos-embed", "rope"], "--pos-embed"),
    ],
)
def test_bad_recipe_flags(flags, words, tmp_path, capsys):
    try:  # argparse's checks exit; the run's own return 2
        status = main([*flags, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path)])
    except SystemExit as exit_info:
        status = exit_info.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0]


def test_durations_read_as_seconds():
    from tinyvit.cli import duration_type

    assert duration_type("30m") == 1800.0
    assert duration_type("1800") == duration_type("1800s") == duration_type("0.5h") == 1800.0


def test_an_explicit_length_replaces_the_recipes_budget():
    from tinyvit.train import build_parser, config_from_args

    parse = build_parser().parse_args
    assert config_from_args(parse(["--epochs", "3"])).budget is None
    assert config_from_args(parse(["--steps", "30"])).budget is None
    assert config_from_args(parse(["--time-budget", "2m"])).budget == 120.0
    assert config_from_args(parse(["--recipe", "gpu", "--time-budget", "2m"])).epochs is None
    plain = config_from_args(parse([]))  # the default run: the cpu recipe
    assert plain.budget == 1800.0 and plain.steps is None and plain.tta == "flip"
    assert plain.model_config()["pool"] == "mean"
    assert plain == TrainConfig()  # the defaults are the main command's run


def test_ema_weights_are_tested_and_saved(tmp_path):
    trainer = Trainer(tiny_config(ema=0.5), synthetic_cifar(), tmp_path, progress=False)
    trainer.fit()
    saved = tinyvit.load(tmp_path / "model.npz")
    for name, average in trainer.ema.averages.items():
        np.testing.assert_array_equal(dict(saved.named_parameters())[name].data, average)
    assert trainer.ema.updates == trainer.step
