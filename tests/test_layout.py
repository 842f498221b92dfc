"""The package's layout keeps its promise: data flows one way, low to high, in the order
``tinyvit/__init__.py`` lists the modules; nothing low imports anything high."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tinyvit

PACKAGE = Path(tinyvit.__file__).parent
ORDER = [line.split()[0] for line in tinyvit.__doc__.splitlines() if line.startswith("    ")]


def imports_at_module_level(name):
    path = PACKAGE / f"{name}.py"
    if not path.exists():
        path = PACKAGE / name / "__init__.py"
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_every_module_is_listed():
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")
    }
    unlisted = modules - set(ORDER) - {"__init__", "__main__", "special"}
    assert not unlisted, f"add {sorted(unlisted)} to the list in tinyvit/__init__.py"


@pytest.mark.parametrize("name", ORDER)
def test_nothing_low_imports_anything_high(name):
    higher = set(ORDER[ORDER.index(name) + 1 :])
    wrong = imports_at_module_level(name) & higher
    assert not wrong, f"{name} imports {sorted(wrong)}, listed after it"


def test_figures_need_neither_checkpoints_nor_interop():
    assert not imports_at_module_level("viz") & {"checkpoint", "interop", "train", "finetune"}
