"""Command-line options generated from a config Struct: each field is spelled once, on the Struct.

A field's ``msgspec.Meta(description=...)`` is its ``--help`` text; ``{default}`` and any
``context`` key in it are filled in, and ``(default X)`` is appended unless the text already says
what the default is. ``Meta(extra={"metavar": ...})`` names the value in the usage line. The flag
is the field name with dashes (``max_batch`` -> ``--max-batch``) unless ``extra={"flag": ...}``
renames it; ``extra={"aliases": (...)}`` keeps old spellings as hidden, deprecated flags. A bool
field is a switch.

Numbers take human suffixes everywhere (``parse_count``, ``parse_rate``, ``parse_seconds``):
``--accounts 1.4e9`` or ``1400M``, ``--rate 300k``, ``--seconds 2m``. They live here, beside the
generator of ``serve``'s options, because the engine may not import ``loadgen`` and the client
commands (``loadgen.cli.common_args``) use the same parsers.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, TypeVar, get_args, get_origin

import msgspec

_S = TypeVar("_S", bound=msgspec.Struct)


#: Multipliers of counts and rates. Lower-case ``m`` is not among them (milli or mega?).
_COUNT_SUFFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9}
#: Multipliers of durations, in seconds; a bare number is seconds.
_TIME_SUFFIXES = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"^\s*([-+]?(?:\d[\d_,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([a-zA-Z]*)\s*$")


def _scaled(text: str, suffixes: Mapping[str, float], what: str, examples: str) -> float:
    """``text`` as a number times its suffix's multiplier; a specific ``ArgumentTypeError`` if it is not one."""
    m = _NUMBER.match(str(text))
    if m is None or m.group(2) not in suffixes:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} (examples: {examples})")
    value = float(m.group(1).replace("_", "").replace(",", "")) * suffixes[m.group(2)]
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite {what}")
    return value


def parse_count(text: str) -> int:
    """A whole number: ``1400000``, ``1,400,000``, ``1.4e9``, ``1400M``, ``300k``, ``2G``."""
    value = _scaled(text, _COUNT_SUFFIXES, "a whole number", "20000, 1.4e9, 1400M, 300k")
    if value != round(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ({value:g})")
    return round(value)


def parse_rate(text: str) -> float:
    """A rate (per second): ``300000``, ``300k``, ``1.2M``, ``2.5e5``."""
    return _scaled(text, _COUNT_SUFFIXES, "a rate", "300000, 300k, 1.2M")


def parse_seconds(text: str) -> float:
    """A duration in seconds: ``30``, ``30s``, ``2m``, ``1h``, ``500ms``."""
    return _scaled(text, _TIME_SUFFIXES, "a duration", "30, 30s, 2m, 500ms")


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: hidden from ``--help``, stores into the new option's ``dest``,
    and says once on stderr which spelling replaces it (kept for one version)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        kwargs.setdefault("help", argparse.SUPPRESS)
        kwargs.setdefault("default", argparse.SUPPRESS)  # leave the new option's default alone
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        print(
            f"{parser.prog}: {option or self.option_strings[0]} is deprecated, use {self.new} "
            "(the old spelling goes away in the next version)",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser, old: str, *, new: str, dest: str, type: Any = None, switch: bool = False
) -> None:
    """Keep ``old`` working as ``new`` (same ``dest``), hidden from help, with a deprecation line."""
    options: dict[str, Any] = {"dest": dest, "new": new, "action": DeprecatedAlias}
    if switch:
        options["nargs"] = 0
    elif type is not None:
        options["type"] = type
    parser.add_argument(old, **options)


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


#: What a field of this type parses with: counts and rates take suffixes (``64k``, ``1.4e9``).
_PARSERS: dict[type, Any] = {int: parse_count, float: parse_rate}


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
        flag = "--" + extra.get("flag", field.name.replace("_", "-"))
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action="store_true", default=default, help=text)
            for old in extra.get("aliases", ()):
                add_deprecated_alias(parser, old, new=flag, dest=field.name, switch=True)
            continue
        if default is not None and "(default" not in text:
            text = f"{text} (default {_show(default)})"
        options: dict[str, Any] = {"dest": field.name, "default": default, "help": text}
        if kind is not str:
            options["type"] = _PARSERS.get(kind, kind)
        if "metavar" in extra:
            options["metavar"] = extra["metavar"]
        parser.add_argument(flag, **options)
        for old in extra.get("aliases", ()):
            add_deprecated_alias(parser, old, new=flag, dest=field.name, type=options.get("type"))


def struct_from_args(struct: type[_S], args: argparse.Namespace) -> _S:
    """The ``struct`` that the parsed options of ``add_struct_arguments`` describe (validated)."""
    return struct(**{f.name: getattr(args, f.name) for f in msgspec.structs.fields(struct)})
