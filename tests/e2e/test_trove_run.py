"""``cbdc-bench run`` with a trove profile: the trove holds one row per transfer that reached the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.cli.main import main
from loadgen.cli.trove import stats as trove_stats
from loadgen.results.run import load
from tests.support.servers import scenario_with_slo

pytestmark = pytest.mark.slow


def test_run_writes_the_trove_under_its_output_and_records_its_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A lenient SLO: the trove is under test here, not whether this machine meets 20 ms.
    argv = [
        "run",
        "--scenario",
        scenario_with_slo(tmp_path, "2000.0"),
        "--profile",
        "surveillance",
        "--accounts",
        "20000",
        "--rate",
        "3000",
        "--seconds",
        "1",
    ]
    argv += ["--warmup", "0.3", "--drain", "3", "--out", str(tmp_path), "--json"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured
    said = [line for line in captured.err.splitlines() if line.startswith("trove: ")]
    assert len(said) == 1
    trove = Path(said[0].removeprefix("trove: ").split(" (")[0])
    assert trove.parent == tmp_path and trove.is_dir()
    result = load(json.loads(captured.out.strip().splitlines()[-1])["result_file"])
    outcome = result.server.trove
    assert outcome is not None and outcome.dir == str(trove) and outcome.failure is None
    reached = outcome.transfers
    assert outcome.rows_seen == reached >= result.server.stats_end["ledger"]["transfers"] > 0
    # After the server stopped (its trove flushed at close): one row per transfer that reached the ledger.
    assert trove_stats(str(trove))["rows"] == reached
