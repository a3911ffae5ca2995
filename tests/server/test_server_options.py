"""The ``serve`` options are generated from ``ServerConfig``: every field has a flag, a help text and
its default, and parsing the flags gives back the config they describe."""

from __future__ import annotations

import argparse

import msgspec
import pytest

from engine.options import add_struct_arguments, struct_from_args
from engine.server import ServerConfig

#: Fields whose flag is not their name (issue 12's one vocabulary: a server listens, a client targets).
RENAMED = {"host": "--listen"}


def _flag(name: str) -> str:
    return RENAMED.get(name, "--" + name.replace("_", "-"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_struct_arguments(p, ServerConfig, context={"profiles": "a, b"})
    return p


def test_every_field_has_a_flag_with_help_and_the_struct_default() -> None:
    actions = {a.dest: a for a in _parser()._actions if a.help != argparse.SUPPRESS}
    for field in msgspec.structs.fields(ServerConfig):
        action = actions[field.name]
        assert action.option_strings == [_flag(field.name)]
        assert action.default == field.default
        assert action.help and "{" not in action.help, action.help
    assert struct_from_args(ServerConfig, _parser().parse_args([])) == ServerConfig()


def test_flags_round_trip_to_the_config_they_describe() -> None:
    want = ServerConfig(
        host="0.0.0.0", port=0, profile="full", scenario="s.toml", accounts=77, seed=5, max_batch=100,
        queue_limit=1000, journal="j", fsync="interval:5", secrets="env", frame_timeout_ms=8,
    )  # fmt: skip
    argv: list[str] = []
    for name, value in msgspec.structs.asdict(want).items():
        flag = _flag(name)
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    assert struct_from_args(ServerConfig, _parser().parse_args(argv)) == want
    assert struct_from_args(ServerConfig, _parser().parse_args(["--echo"])).echo


def test_old_host_flag_is_a_hidden_deprecated_alias_of_listen(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    assert "--host" not in parser.format_help()
    assert struct_from_args(ServerConfig, parser.parse_args(["--host", "0.0.0.0"])).host == "0.0.0.0"
    assert capsys.readouterr().err.count("--host is deprecated, use --listen") == 1


def test_counts_take_human_suffixes() -> None:
    config = struct_from_args(ServerConfig, _parser().parse_args(["--accounts", "1.4e3", "--queue-limit", "64k"]))
    assert (config.accounts, config.queue_limit) == (1_400, 64_000)
