"""Every lesson runs in --quick mode on the CPU and writes the figures it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-bin"

FIGURES = {
    "01_autograd.py": ["derivative.png", "descent.png"],
    "02_gradcheck.py": ["central_difference_error.png", "every_layer.png"],
    "06_train_cifar10.py": ["curves.png", "confusion.png"],
}
NEEDS_DATA = {"06_train_cifar10.py"}


def test_every_lesson_is_listed():
    assert sorted(p.name for p in LESSONS.glob("[0-9][0-9]_*.py")) == sorted(FIGURES)


@pytest.mark.parametrize("lesson", sorted(FIGURES))
def test_lesson_runs_quick(lesson, tmp_path):
    extra = []
    if lesson in NEEDS_DATA:
        if not SHARED.is_dir():
            pytest.skip("no CIFAR-10 copy beside the repository")
        extra = ["--data-dir", str(SHARED)]
    result = subprocess.run(
        [sys.executable, str(LESSONS / lesson), "--quick", "--out", str(tmp_path), *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    for figure in FIGURES[lesson]:
        path = tmp_path / figure
        assert path.exists() and path.stat().st_size > 5000, f"{lesson} did not write {figure}"
        assert str(path) in result.stdout  # the lesson says where it wrote it
