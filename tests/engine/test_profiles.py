"""Scenario files, profiles and loading hooks by name."""

from __future__ import annotations

import pytest

from engine.hooks.base import Hook
from engine.hooks.blacklist import Blacklist
from engine.hooks.registry import BUILTIN, load_hook
from engine.ledger import Ledger
from engine.profiles import build_hooks, default_scenario_text, load_scenario, profile_names
from loadgen.cli.main import main

SHIPPED = (
    "baseline",
    "limits",
    "compliance",
    "enforcement",
    "surveillance",
    "full",
    "realistic",
    "privacy",
    "signed",
    "signed-full",
)


def test_shipped_scenario_defines_the_profiles_and_builds_every_one() -> None:
    assert profile_names() == SHIPPED
    names = {p: [h.name for h in build_hooks(p)] for p in SHIPPED}
    assert names["baseline"] == []
    assert names["compliance"] == ["wallet_limits", "blacklist"]
    assert set(names["full"]) == set(BUILTIN) - {"privacy", "risk_model"}
    assert names["realistic"] == [*names["full"], "risk_model"]
    assert "privacy" in names["privacy"] and "surveillance_log" not in names["privacy"]
    for p in SHIPPED:  # every profile attaches to a ledger
        for hook in Ledger(100, balance_fen=10, hooks=build_hooks(p)).hooks:
            hook.close()


def test_shipped_file_spells_out_every_default(tmp_path) -> None:
    # The file users copy must say what the code defaults are, or editing it misleads them.
    from engine.profiles import HookSettings, Scenario

    assert load_scenario().hooks == HookSettings()
    assert isinstance(load_scenario(), Scenario)
    copy = tmp_path / "mine.toml"
    copy.write_bytes(default_scenario_text().replace(b"listed_fraction = 0.02", b"listed_fraction = 0.5"))
    (bl,) = [h for h in build_hooks("compliance", copy) if isinstance(h, Blacklist)]
    assert bl.config.listed_fraction == 0.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[profiles]\nx = ["blacklist"]\n[hooks.blacklist]\nlisted_fraction = 2.0\n',
            r"listed_fraction.*\$\.hooks\.blacklist",
        ),
        ('[profiles]\nx = ["blacklist"]\n[hooks.blackist]\n', r"unknown field `blackist`.*\$\.hooks"),
        ('[profiles]\nx = ["nope"]\n', r"profile 'x': unknown hook 'nope'"),
        ('[profiles]\nx = ["freeze", "freeze"]\n', "lists a hook twice"),
        ("[profiles]\n", "at least one profile"),
        (
            '[profiles]\nx = []\n[hooks.wallet_limits]\nclass_1 = { balance_yuan = "a" }\n',
            r"\$\.hooks\.wallet_limits\.class_1",
        ),
        ('[profiles]\nx = []\n[hooks.audit_chain]\nalgorithm = "md5"\n', r"\$\.hooks\.audit_chain\.algorithm"),
        ("[profiles\n", "not valid TOML"),
    ],
)
def test_bad_scenario_errors_name_the_file_the_field_and_the_problem(tmp_path, text, expected) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=expected) as info:
        build_hooks("x", path)
    assert str(path) in str(info.value)


def test_unknown_profile_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown profile 'fast'.*baseline, limits, compliance"):
        build_hooks("fast")


def test_missing_scenario_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot read scenario file"):
        build_hooks("baseline", tmp_path / "absent.toml")


def test_user_hooks_load_by_module_attribute_with_parameters(tmp_path) -> None:
    hook = load_hook("tests.support.hooks:FailingHook", {"phase": "observe"})
    assert isinstance(hook, Hook) and hook.phase == "observe"
    assert load_hook("tests.support.hooks:make_failing", {"fail_on": [1]}).fail_on == [1]
    path = tmp_path / "user.toml"
    path.write_text(
        '[profiles]\nmine = ["freeze", "tests.support.hooks:FailingHook"]\n'
        '[hooks.custom."tests.support.hooks:FailingHook"]\nphase = "never"\n'
    )
    hooks = build_hooks("mine", path)
    assert [h.name for h in hooks] == ["freeze", "failing"] and hooks[1].phase == "never"


@pytest.mark.parametrize(
    ("spec", "params", "expected"),
    [
        ("no_such_module_xyz:Hook", None, "cannot import module 'no_such_module_xyz'"),
        ("tests.support.hooks:Missing", None, "has no attribute 'Missing'"),
        ("tests.support.hooks:NOT_CALLABLE", None, "is a int, not a Hook class or factory"),
        ("tests.support.hooks:not_a_hook", None, "returned a object, not an engine Hook"),
        ("tests.support.hooks:FailingHook", {"colour": 1}, r"cannot build it with parameters \['colour'\]"),
        ("blacklisted", None, "unknown hook 'blacklisted'"),
        ("blacklist", {"listed_fraction": -1}, "hook blacklist: listed_fraction"),
    ],
)
def test_hook_loading_errors_name_what_was_wrong(spec, params, expected) -> None:
    with pytest.raises(ValueError, match=expected):
        load_hook(spec, params)


def test_engine_cli_reports_per_hook_cost_and_stats(capsys) -> None:
    import json

    code = main(["engine", "--accounts", "20000", "--profile", "full", "--seconds", "0.2", "--warmup", "0", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["audit_ok"]
    assert set(out["hooks"]) == set(BUILTIN) - {"privacy", "risk_model"}
    assert all(v > 0 for v in out["hooks"].values())
    assert out["hook_stats"]["surveillance_log"]["rows_seen"] >= out["transfers"]
    assert 11 <= out["bytes_per_account"] <= 12  # 11 + the side table of balances past 2**32 (docs/design.md)


def test_engine_cli_unknown_profile_is_an_error(capsys) -> None:
    assert main(["engine", "--accounts", "1000", "--profile", "nope", "--seconds", "0.1"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
