"""Command-line options derived from typed dataclass configs: one place defines a default and its help."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


def _help_comments(cls: type) -> dict[str, str]:
    """Field -> the trailing `# comment` on its line in the class source (the config's documentation)."""
    import inspect

    out: dict[str, str] = {}
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return out
    for line in src.splitlines():
        s = line.strip()
        if ":" in s and "#" in s and not s.startswith("#"):
            name = s.split(":", 1)[0].strip()
            if name.isidentifier():
                out[name] = s.split("#", 1)[1].strip()
    return out


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add --field-name for every field of the dataclass, typed by its annotation."""
    hints = typing.get_type_hints(cls)
    helps = _help_comments(cls)
    for f in dataclasses.fields(cls):
        tp, default = hints[f.name], f.default
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": f"{helps.get(f.name, '')} (default: {default})"}
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):  # X | None
            tp = next(a for a in get_args(tp) if a is not type(None))
            origin = get_origin(tp)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif origin is Literal:
            parser.add_argument(flag, choices=get_args(tp), **kw)
        elif origin is tuple:
            elem = get_args(tp)[0]
            parser.add_argument(flag, type=lambda s, e=elem: tuple(e(v) for v in s.split(",") if v), metavar="A,B,...", **kw)
        else:
            parser.add_argument(flag, type=tp, **kw)


def dataclass_from_args(cls: type, ns: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})
