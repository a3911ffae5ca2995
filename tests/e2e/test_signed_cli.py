"""``--validators`` on ``compare`` and ``load`` (issue 19): one option, defined once, passed on or checked."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from loadgen.cli import compare as compare_cli
from loadgen.cli.main import build_parser, main
from loadgen.harness.calibration import ED25519_RATE
from loadgen.results.run import load
from tests.support.servers import TEST_SEED, StartServer


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key registries and signed pools go to the test's directory."""
    monkeypatch.setenv("CBDC_CACHE_DIR", str(tmp_path / "cache"))


def test_load_signs_for_a_signed_server_and_checks_its_validation_tier(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st = start_server(profile="signed", validators="0")
    target = f"127.0.0.1:{st.address[1]}"
    argv = ["load", "--target", target, "--seed", str(TEST_SEED), "--rate", "1000", "--seconds", "1", "--warmup", "0.2"]
    argv += ["--drain", "3", "--json", "--out", str(tmp_path)]
    assert main([*argv, "--validators", "2"]) == 2
    err = capsys.readouterr().err
    assert "the server's validation tier is 0 (inline)" in err and "serve --validators 2" in err
    assert st.call(lambda: st.server.metrics.counters["submits"]) == 0  # refused before any load

    main([*argv, "--validators", "0"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["audit_ok"] is True
    counters = st.call(lambda: dict(st.server.metrics.counters))
    assert counters["submits"] > 0
    assert counters.get("bad_signatures", 0) == counters.get("unsigned_refused", 0) == 0  # signed, and verified
    assert st.call(st.server.stats)["validators"]["transfers"] > 0
    calibration = load(summary["result_file"]).environment.calibration
    assert calibration is not None and calibration.rates[ED25519_RATE] > 0  # signed runs carry the Ed25519 rate


def test_compare_passes_validators_to_every_server(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run_compare(scenario: str | None, **kwargs: Any) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(compare_cli, "run_compare", fake_run_compare)
    assert main(["compare", "--profiles", "signed", "--validators", "2", "--quick"]) == 0
    assert seen["server_args"][-2:] == ("--validators", "2")
    assert seen["profiles"] == ["signed"]
    assert main(["compare", "--validators", "two"]) == 2  # refused before anything starts


@pytest.mark.parametrize("command", ["run", "compare", "load"])
def test_validators_option_is_the_same_everywhere(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if a.dest == "validators")
    assert action.option_strings == ["--validators"] and action.metavar == "SPEC" and action.default is None
