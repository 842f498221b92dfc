"""The README's promises: its test command is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert all(
        c.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
        for c in commands
    )
    assert commands[0].endswith("python -m tinyvit.train")  # the main job: training on CIFAR-10
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def python_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_each_readme_python_example_runs_on_its_own(index, tmp_path, monkeypatch):
    """A reader copies one block at a time: each must run in a fresh namespace."""
    monkeypatch.chdir(tmp_path)  # the examples write files
    exec(compile(python_blocks()[index], f"README.md, python block {index + 1}", "exec"), {})


def test_the_tour_says_true_things_about_dtypes():
    import numpy as np

    from tinyvit import Tensor

    assert Tensor(np.zeros(2)).dtype == np.float64  # an array keeps its dtype
    assert Tensor([1.0, 2.0]).dtype == np.float32  # Python numbers become float32
    tour = python_blocks()[0]
    assert "float32 unless told otherwise" not in tour
