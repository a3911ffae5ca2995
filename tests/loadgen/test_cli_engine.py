"""``cbdc-bench engine``: the in-process benchmark runs, reports, and refuses bad input."""

from __future__ import annotations

import json

import pytest

from engine.population import POPULATION_VERSION
from loadgen.cli.main import main
from loadgen.harness.engine_run import run_engine


def test_run_engine_reports_a_conserving_run() -> None:
    r = run_engine(accounts=20_000, batch=1_024, seconds=0.2, warmup=0.05, pool=4)
    assert r.audit_ok
    assert r.transfers > 0 and r.transfers_per_s > 0
    assert sum(r.codes.values()) == r.transfers
    assert r.codes["ok"] > 0.5 * r.transfers
    assert r.ledger_bytes_per_account == pytest.approx(5, abs=0.01)  # uint32 balance + class/flags byte


def test_cli_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["engine", "--accounts", "20000", "--max-batch", "512", "--seconds", "0.1", "--warmup", "0", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    for key in ("profile", "transfers_per_s", "accounts", "bytes_per_account", "hooks", "environment"):
        assert key in out
    assert out["accounts"] == 20_000
    # The build's figures (issue 14): time, peak RSS at least the state it holds, population rule.
    assert out["build_seconds"] > 0 and out["population_version"] == POPULATION_VERSION
    assert out["peak_rss_bytes"] >= out["build_peak_rss_bytes"] >= out["bytes_per_account"] * 20_000


def test_cli_unknown_profile_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["engine", "--accounts", "1000", "--profile", "nope", "--seconds", "0.1"])
    assert rc == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
