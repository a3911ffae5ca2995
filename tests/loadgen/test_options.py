"""One option vocabulary (issue 12, item 5): spellings, defaults, suffixes and deprecated aliases."""

from __future__ import annotations

import argparse

import pytest

from engine.options import parse_count, parse_rate, parse_seconds
from loadgen.cli.common_args import target_of
from loadgen.cli.main import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (nested) subcommand's parser by its full name ("trove bench")."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out[name] = child
                out |= {f"{name} {k}": v for k, v in _subparsers(child).items()}
    return out


COMMANDS = _subparsers(build_parser())


@pytest.mark.parametrize(
    ("text", "value"),
    [("300000", 300_000), ("300k", 300_000), ("1.2M", 1_200_000), ("1.4e9", 1_400_000_000), ("1400M", 1_400_000_000),
     ("1,400,000", 1_400_000), ("2G", 2_000_000_000)],
)  # fmt: skip
def test_counts_take_suffixes(text: str, value: int) -> None:
    assert parse_count(text) == value
    assert parse_rate(text) == float(value)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30", 30.0), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("500ms", 0.5), ("0.3", 0.3)]
)
def test_durations_take_suffixes(text: str, seconds: float) -> None:
    assert parse_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1.5", "3m", "lots", "1e400", ""])
def test_a_count_that_is_not_whole_or_not_a_number_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"whole number|finite"):
        parse_count(text)


def test_a_duration_with_an_unknown_unit_is_refused_with_examples() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"not a duration \(examples: 30, 30s, 2m"):
        parse_seconds("3 days")


def test_run_parses_the_human_spellings() -> None:
    args = build_parser().parse_args(
        ["run", "--rate", "300k", "--seconds", "30s", "--warmup", "500ms", "--accounts", "1400M"]
    )
    assert (args.rate, args.seconds, args.warmup, args.accounts) == (300_000.0, 30.0, 0.5, 1_400_000_000)


def test_load_and_run_share_every_load_default() -> None:
    parser = build_parser()
    run = vars(parser.parse_args(["run"]))
    load = vars(parser.parse_args(["load", "--target", "127.0.0.1:7480"]))
    shared = ("rate", "seconds", "warmup", "operators", "processes", "arrival", "tick_us", "max_batch", "drain", "seed")
    assert {k: run[k] for k in shared} == {k: load[k] for k in shared}
    assert run["out"] == load["out"] == "results"


@pytest.mark.parametrize(
    ("argv", "dest", "value", "old"),
    [
        (["run", "--batch-max", "100"], "max_batch", 100, "--batch-max"),
        (["load", "--target", "h:1", "--batch-max", "100"], "max_batch", 100, "--batch-max"),
        (["engine", "--batch", "512"], "max_batch", 512, "--batch"),
        (["run", "--host", "0.0.0.0"], "listen", "0.0.0.0", "--host"),
        (["serve", "--host", "0.0.0.0"], "host", "0.0.0.0", "--host"),
        (["run", "s.toml"], "scenario", "s.toml", "positional scenario"),
        (["compare", "s.toml"], "scenario", "s.toml", "positional scenario"),
    ],
)
def test_old_spellings_still_work_with_one_deprecation_line(
    argv: list[str], dest: str, value: object, old: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and old in err[0] and "deprecated" in err[0], err


def test_old_spellings_are_hidden_from_help() -> None:
    for name, old in [("run", "--batch-max"), ("run", "--host"), ("load", "--port"), ("engine", "--batch")]:
        assert old not in COMMANDS[name].format_help(), (name, old)


def test_load_connects_with_target_and_keeps_host_port_as_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert target_of(parser.parse_args(["load", "--target", "10.0.0.1:7481"])) == ("10.0.0.1", 7481)
    assert target_of(parser.parse_args(["load", "--target", "7481"])) == ("127.0.0.1", 7481)
    assert target_of(parser.parse_args(["load", "--host", "10.0.0.2", "--port", "9"])) == ("10.0.0.2", 9)
    assert capsys.readouterr().err.count("deprecated, use --target HOST:PORT") == 2
    with pytest.raises(ValueError, match="--target HOST:PORT"):
        target_of(parser.parse_args(["load"]))


def test_load_without_a_target_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", "--seconds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--target HOST:PORT" in err, err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_default_is_shown_and_help_has_no_rest_markup(name: str) -> None:
    parser = COMMANDS[name]
    text = parser.format_help()
    assert "`" not in text, name
    formatter = parser._get_formatter()
    chosen = {a for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions}
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings or action.nargs == 0 or action in chosen:
            continue  # hidden aliases, positionals, switches (-h, --json), one of a required choice
        shown = formatter._get_help_string(action)  # type: ignore[attr-defined]
        assert "default" in shown, f"{name} {action.option_strings[0]}: {shown!r}"


def test_one_spelling_per_concept_across_commands() -> None:
    visible = {
        name: {s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        for name, p in COMMANDS.items()
    }
    everywhere = set().union(*visible.values())
    assert not everywhere & {"--batch", "--batch-max", "--host"}
    assert {"--max-batch", "--scenario"} <= visible["run"] & visible["engine"] & visible["serve"]
    assert "--listen" in visible["run"] & visible["serve"]
    assert "--target" in visible["load"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("cbdc-bench ")
