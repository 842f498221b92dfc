"""The README's promises: its test command is what CI runs."""

from __future__ import annotations

import configparser
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
    # the main job: the hybrid on CIFAR-10, one run shared by two processes (issue 27)
    assert commands[0].endswith("mpiexec -n 2 python -m tinyvit.train --recipe hybrid")
    assert 'pip install -e ".[mpi]"' in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def extra_requirements(name):
    """An extra's requirements in setup.cfg, by package name."""
    from packaging.requirements import Requirement

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.extras_require"][name].splitlines()
    return {r.name: r for r in map(Requirement, filter(None, lines))}


def kept_on(requirement, sys_platform, platform_machine, python_version="3.11"):
    """Whether pip installs ``requirement`` on that platform (its marker, evaluated there)."""
    environment = dict(
        sys_platform=sys_platform, platform_machine=platform_machine,
        python_version=python_version, extra="",
    )  # fmt: skip
    return requirement.marker is None or requirement.marker.evaluate(environment)


def test_the_test_command_installs_on_a_mac_and_on_windows():
    """The test command names no package: the extras hold them, PyTorch and CuPy each
    only where its pinned release has wheels, so that a Mac (no CuPy wheel at all, no
    PyTorch 2.13 for Intel) installs what it can and skips the rest."""
    command = readme_commands()[1]
    assert 'pip install -e ".[test,mpi]" &&' in command
    assert "torch" not in command and "cupy" not in command and "mpich" not in command
    test = extra_requirements("test")
    torch, cupy = test["torch"], test["cupy-cuda12x"]
    assert str(torch.specifier) == "==2.13.0" and str(cupy.specifier) == "==14.2.0"
    for wheels in [("linux", "x86_64"), ("linux", "aarch64"), ("win32", "AMD64")]:
        assert kept_on(torch, *wheels) and kept_on(cupy, *wheels)  # CI: Linux x86_64
    assert kept_on(torch, "darwin", "arm64") and not kept_on(cupy, "darwin", "arm64")
    for none in [("darwin", "x86_64"), ("win32", "ARM64")]:
        assert not kept_on(torch, *none) and not kept_on(cupy, *none)
    assert not kept_on(torch, "linux", "x86_64", "3.15")  # no cp315 wheels of either
    assert not kept_on(cupy, "linux", "x86_64", "3.15")
    gpu = extra_requirements("gpu")["cupy-cuda12x"]
    assert kept_on(gpu, "linux", "x86_64") and not kept_on(gpu, "darwin", "arm64")
    # mpi4py everywhere; MPICH's wheel where it has one (elsewhere the system's MPI, if any)
    mpi = extra_requirements("mpi")
    assert not mpi["mpi4py"].marker
    for wheels in [("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "arm64"),
                   ("darwin", "x86_64")]:  # fmt: skip
        assert kept_on(mpi["mpich"], *wheels)
    assert not kept_on(mpi["mpich"], "win32", "AMD64")


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
