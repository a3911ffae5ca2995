"""Command-line options generated from a config Struct: each field is spelled once, on the Struct.

A field's ``msgspec.Meta(description=...)`` is its ``--help`` text; ``{default}`` and any
``context`` key in it are filled in, and ``(default X)`` is appended unless the text already says
what the default is. ``Meta(extra={"metavar": ...})`` names the value in the usage line. The flag
is the field name with dashes (``max_batch`` -> ``--max-batch``); a bool field is a switch.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, get_args, get_origin

import msgspec

_S = TypeVar("_S", bound=msgspec.Struct)


def _meta(annotation: Any) -> tuple[Any, msgspec.Meta | None]:
    """(the bare type, its Meta) of a field annotation."""
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        return base, next((m for m in extras if isinstance(m, msgspec.Meta)), None)
    return annotation, None


def _value_type(annotation: Any) -> type:
    """int, float, str or bool: the type argparse converts to (``T | None`` gives ``T``)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _show(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def add_struct_arguments(
    parser: argparse.ArgumentParser, struct: type[msgspec.Struct], *, context: Mapping[str, str] | None = None
) -> None:
    """One ``--option`` per field of ``struct``, with its default and help text."""
    for field in msgspec.structs.fields(struct):
        base, meta = _meta(field.type)
        kind = _value_type(base)
        default = field.default
        text = (meta.description or "") if meta is not None else ""
        text = text.format(default=default, **(context or {}))
        extra = (meta.extra or {}) if meta is not None else {}
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=default, help=text)
            continue
        if default is not None and "(default" not in text:
            text = f"{text} (default {_show(default)})"
        options: dict[str, Any] = {"default": default, "help": text}
        if kind is not str:
            options["type"] = kind
        if "metavar" in extra:
            options["metavar"] = extra["metavar"]
        parser.add_argument(flag, **options)


def struct_from_args(struct: type[_S], args: argparse.Namespace) -> _S:
    """The ``struct`` that the parsed options of ``add_struct_arguments`` describe (validated)."""
    return struct(**{f.name: getattr(args, f.name) for f in msgspec.structs.fields(struct)})
