"""``cbdc-bench compare`` gives each server of a trove profile its own trove, deleted afterwards."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from loadgen.harness.compare import run_compare
from loadgen.results.run import load
from tests.support.compare import tiny_plan

pytestmark = pytest.mark.slow

SCENARIO = """
[profiles]
surveillance = ["surveillance_log"]

[compare]
common_rates_tps = [3_000]
start_tps = 3_000
min_tps = 3_000
max_tps = 3_000
"""


@pytest.mark.parametrize("keep", [False, True], ids=["deleted", "kept"])
def test_each_compare_server_gets_a_trove_deleted_unless_kept(tmp_path: Path, keep: bool) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    plan = tiny_plan(
        accounts=2_000,
        repeats=1,
        precision=0.5,
        search_warmup_s=0.2,
        search_seconds=0.4,
        equal_warmup_s=0.2,
        equal_seconds=0.4,
    )
    out = tmp_path / "out"
    summary, path = run_compare(
        str(scenario),
        plan=plan,
        seed=5,
        out=out,
        console=Console(file=io.StringIO()),
        make_report=False,
        keep_trove=keep,
    )
    troves = {load(path.parent / ref.file).server.trove for ref in summary.runs}
    dirs = {Path(t.dir) for t in troves if t is not None}
    assert dirs and all(d.parent == out / "troves" for d in dirs) and None not in troves
    assert all(d.is_dir() == keep for d in dirs)


@pytest.mark.parametrize("keep", [False, True], ids=["deleted", "kept"])
def test_compare_journals_each_server_to_its_own_file_when_asked(tmp_path: Path, keep: bool) -> None:
    # Issue 21: the capacity plan fits journalled runs, so its searches journal too.
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO.replace("surveillance = ", "baseline = [] \nsurveillance = "))
    plan = tiny_plan(
        accounts=2_000, repeats=1, precision=0.5, search_warmup_s=0.2, search_seconds=0.4,
        equal_warmup_s=0.2, equal_seconds=0.4,
    )  # fmt: skip
    journals = tmp_path / "journals"
    summary, path = run_compare(
        str(scenario),
        profiles=["baseline"],
        plan=plan,
        seed=5,
        out=tmp_path / "out",
        console=Console(file=io.StringIO()),
        make_report=False,
        journal=journals,
        fsync="interval:10",
        keep_journal=keep,
    )
    results = [load(path.parent / ref.file) for ref in summary.runs]
    assert results and all(r.server.durability.fsync == "interval:10" for r in results)
    by_stage = {
        ref.stage: {a for a in load(path.parent / ref.file).settings.server_args if a.endswith(".cbj")}
        for ref in summary.runs
    }
    files = set().union(*by_stage.values())
    assert files and all(Path(f).parent == journals for f in files)
    # Each session's server journals to a name no earlier one used (a reused name found the last
    # server's snapshots and refused to start, in the first cut of 2026-12-04).
    assert len(by_stage) == 2 and not set.intersection(*by_stage.values())
    assert all(Path(f).is_file() == keep for f in files)
    assert not list(journals.glob("*.lock"))
    if not keep:  # nothing of a journal is left: no segments, no snapshots
        assert not list(journals.iterdir())
