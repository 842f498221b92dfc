"""Settings declared once: a dataclass field that carries its range and its help.

A model's or a run's configuration is a dataclass, and each of its settings
is one ``setting(...)`` field: the default, what the value may be (a
``checks.Range``, or a tuple of choices) and one line of help. Everything
else is read off those fields: the checks (``check_settings``), the command
line's flags and their ``--help`` (``tinyvit.cli.add_setting_flags``), the
JSON that a checkpoint keeps. Adding a setting is adding one field; there is
no second table to keep in step with the first.

    @dataclass(frozen=True)
    class Example:
        depth: int = setting(6, POSITIVE_INT, "the number of blocks")
        pool: str = setting("cls", ("cls", "mean"), "how the tokens become one vector")
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING

from . import checks


def setting(
    default=MISSING,
    kind=None,
    help: str = "",
    *,
    optional: bool = False,
    factory=MISSING,
    **cli,
):
    """A dataclass field with what it may be and what it is for.

    ``kind`` is a ``checks.Range``, a tuple of allowed values, or ``None``
    (checked elsewhere). ``optional=True`` also allows ``None``. ``factory``
    makes a mutable default (a dict). ``cli`` holds hints for the command
    line (``metavar``, ``aliases``, ``parse``, ``show``, ``none``, ``flag``);
    ``tinyvit.cli.add_setting_flags`` reads them.
    """
    metadata = {"kind": kind, "help": help, "optional": optional, "cli": cli}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(cls_or_obj) -> list[dataclasses.Field]:
    """The fields declared with ``setting`` (those that carry help)."""
    return [f for f in dataclasses.fields(cls_or_obj) if "help" in f.metadata]


def check_value(field: dataclasses.Field, value, prefix: str = ""):
    """``value`` checked against ``field``'s kind (a number comes back as ``int`` or
    ``float``, so NumPy scalars become plain Python ones); a ValueError or TypeError
    names the setting, what it must be and what it is."""
    kind, name = field.metadata.get("kind"), f"{prefix}{field.name}"
    if value is None and field.metadata.get("optional"):
        return None
    if isinstance(kind, checks.Range):
        return kind.check(name, value)
    if isinstance(kind, tuple):
        return checks.one_of(name, value, kind)
    return value


def check_settings(obj, prefix: str = "") -> dict:
    """Every declared setting of ``obj`` checked (``check_value``); returns
    ``{name: checked value}``."""
    return {f.name: check_value(f, getattr(obj, f.name), prefix) for f in declared(obj)}


__all__ = ["check_settings", "check_value", "declared", "setting"]
