"""The package's layout keeps its promises: data flows one way, low to high, in the order
``tinyvit/__init__.py`` lists the modules (nothing low imports anything high, with no
exception), and every piece stays small enough to read: no module over 700 lines, no
class over 300 (``Tensor``, whose methods are its ops, aside), no function over 80."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tinyvit

PACKAGE = Path(tinyvit.__file__).parent
ORDER = [line.split()[0] for line in tinyvit.__doc__.splitlines() if line.startswith("    ")]
FILES = sorted(PACKAGE.rglob("*.py"))
MODULE_LINES, CLASS_LINES, FUNCTION_LINES = 700, 300, 80
LONG_CLASSES = {"Tensor"}  # its methods are its ops


def unit_of(path: Path) -> str:
    """The entry of ORDER a file belongs to: ``train`` for ``tinyvit/train/trainer.py``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imports_at_module_level(path: Path) -> set[str]:
    """The entries of the package that ``path`` imports when it is imported (not inside a
    function), whatever the depth of the relative import."""
    package = path.relative_to(PACKAGE).parent.parts  # () for tinyvit/x.py
    found = set()
    for node in ast.parse(path.read_text()).body:
        if not (isinstance(node, ast.ImportFrom) and node.level >= 1):
            continue
        base = package[: len(package) - (node.level - 1)]  # where the dots lead
        if node.module:
            found.add((*base, *node.module.split("."))[0])
        elif base:
            found.add(base[0])
        else:
            found.update(alias.name for alias in node.names)
    return found - {unit_of(path)}


def test_every_module_is_listed():
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")
    }
    unlisted = modules - set(ORDER) - {"__init__", "__main__", "special"}
    assert not unlisted, f"add {sorted(unlisted)} to the list in tinyvit/__init__.py"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PACKAGE)) for p in FILES])
def test_nothing_low_imports_anything_high(path):
    name = unit_of(path)
    if name not in ORDER:  # __init__, __main__, special: outside the flow
        return
    higher = set(ORDER[ORDER.index(name) + 1 :])
    wrong = imports_at_module_level(path) & higher
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}, listed after {name}"


def test_figures_need_neither_checkpoints_nor_interop():
    found = imports_at_module_level(PACKAGE / "viz.py")
    assert not found & {"checkpoint", "interop", "train", "finetune"}


def test_the_import_scan_sees_every_depth():
    assert imports_at_module_level(PACKAGE / "train" / "trainer.py") >= {"ema", "loop", "optim"}
    assert "train" not in imports_at_module_level(PACKAGE / "train" / "trainer.py")


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PACKAGE)) for p in FILES])
def test_every_piece_is_short_enough_to_read(path):
    source = path.read_text()
    where = path.relative_to(PACKAGE)
    assert len(source.splitlines()) <= MODULE_LINES, f"{where} is over {MODULE_LINES} lines"
    for node in ast.walk(ast.parse(source)):
        lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
        if isinstance(node, ast.ClassDef) and node.name not in LONG_CLASSES:
            assert lines <= CLASS_LINES, f"class {node.name} in {where}: {lines} lines"
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert lines <= FUNCTION_LINES, f"{node.name} in {where}: {lines} lines"
