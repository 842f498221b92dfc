"""The command lines with ``--device cuda``, on the CuPy stand-in: the quick training run
with its resume, and every lesson in ``--quick``.

Where CuPy is installed but finds no GPU, ``tests/run_with_standin.py`` runs each in a
process of its own with the stand-in as its CuPy (CuPy's rules, NumPy's arithmetic), so
a NumPy call that would take a device array, a CuPy function that does not exist, or a
silent copy between devices fails here as it would on a GPU. Where a GPU is present they
run on it, as a user would run them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_lessons import FIGURES, LESSONS, NEEDS_DATA, SHARED

from tinyvit import backend

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

pytestmark = pytest.mark.skipif(
    not backend.cuda_available(), reason="no cuda device: neither a GPU nor the CuPy stand-in"
)


def run_on_cuda(args, cwd, timeout=600):
    """``python ARGS`` with device cuda: on the stand-in unless a real GPU is here."""
    real_gpu = backend.cupy is not None and type(backend.cupy).__name__ == "module"
    prefix = [] if real_gpu else [str(TESTS / "run_with_standin.py"), "--counts"]
    return subprocess.run(
        [sys.executable, *prefix, *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_the_quick_run_on_cuda_resumes_where_it_stopped(tmp_path):
    """A quick run cut after its first epoch (``--steps`` of one epoch), resumed to the end
    with two more: the checkpoint's optimizer state goes back to the device."""
    if not SHARED.is_dir():
        pytest.skip("no CIFAR-10 copy beside the repository")
    out = tmp_path / "run"
    common = ["-m", "tinyvit.train", "--quick", "--device", "cuda", "--data-dir", str(SHARED),
              "--out", str(out), "--no-progress", "--ema", "0.9", "--tta", "flip"]  # fmt: skip
    first = run_on_cuda([*common, "--steps", "16"], tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "on cuda" in first.stdout
    second = run_on_cuda([*common, "--steps", "32", "--resume"], tmp_path)
    assert second.returncode != 0 and "steps: checkpoint 16, now 32" in second.stderr
    second = run_on_cuda([*common, "--steps", "16", "--resume"], tmp_path)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "done: final test accuracy" in second.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 16 and "test_acc_tta" in records[-1]
    assert (out / "model.npz").is_file()


@pytest.mark.parametrize("lesson", sorted(FIGURES))
def test_every_lesson_runs_quick_on_cuda(lesson, tmp_path):
    if lesson in NEEDS_DATA and not SHARED.is_dir():
        pytest.skip("no CIFAR-10 copy beside the repository")
    out = tmp_path / "out"
    result = run_on_cuda(
        [str(LESSONS / lesson), "--quick", "--device", "cuda", "--out", str(out),
         "--data-dir", str(SHARED)],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    for figure in FIGURES[lesson]:
        assert (out / figure).stat().st_size > 5000, f"{lesson} did not write {figure}"
