"""``cbdc-bench diff``: change and significance on per-run summaries, single runs never judged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import pytest
from scipy import stats

from loadgen.cli.main import main
from loadgen.results.diff import diff_paths, welch_p_value
from loadgen.results.run import RunResult, load, save

FIXTURE = Path(__file__).parent / "fixtures" / "results" / "20261122T090419Z-run-baseline-300000tps.json"


def _repeats(folder: Path, achieved_tps: list[float], p99_ms: list[float]) -> Path:
    """A directory of results like ``run --repeats`` writes, from the fixture with these figures."""
    base = load(FIXTURE)
    for i, (tps, p99) in enumerate(zip(achieved_tps, p99_ms, strict=True)):
        summary = msgspec.structs.replace(base.summary, achieved_tps=tps, p99_ms=p99)
        result: RunResult = msgspec.structs.replace(base, summary=summary, created_utc=f"2026-11-22T09:00:{i:02d}Z")
        save(result, folder)
    return folder


def test_directories_of_repeats_are_judged_by_a_t_test(tmp_path: Path) -> None:
    a = _repeats(tmp_path / "a", [300_100, 299_800, 300_300, 299_900, 300_050], [5.1, 4.8, 5.3, 4.9, 5.0])
    b = _repeats(tmp_path / "b", [251_000, 249_500, 250_200, 250_900, 249_800], [5.0, 5.3, 4.8, 5.1, 4.9])
    d = diff_paths(a, b)
    rows = {m.metric: m for m in d.metrics}
    assert (d.a_runs, d.b_runs) == (5, 5)
    achieved = rows["achieved"]
    assert achieved.judgement == "worse" and achieved.p_value is not None and achieved.p_value < 1e-6
    assert achieved.change == pytest.approx(250_280 / 300_030 - 1)
    assert rows["p99"].judgement == "no significant change"  # the same five values in another order
    assert rows["p99"].p_value == pytest.approx(1.0)
    assert rows["p50"].judgement == "no significant change"  # identical on both sides: no spread at all
    assert not any("single run" in n for n in d.notes)


def test_welch_p_value_matches_the_formula() -> None:
    a, b = [10.0, 12.0, 11.0, 13.0], [14.0, 15.5, 13.0, 17.0, 16.0]
    va, vb = stats.tvar(a) / len(a), stats.tvar(b) / len(b)
    t = (sum(a) / len(a) - sum(b) / len(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    assert welch_p_value(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert welch_p_value([1.0], b) is None


def test_single_runs_are_compared_but_never_judged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _repeats(tmp_path / "a", [300_000], [5.0])
    b = _repeats(tmp_path / "b", [200_000], [50.0])
    (one_a,), (one_b,) = a.glob("*.json"), b.glob("*.json")
    assert main(["diff", str(one_a), str(one_b), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = {m["metric"]: m for m in d["metrics"]}
    assert rows["achieved"]["change"] == pytest.approx(-1 / 3)
    assert {m["judgement"] for m in d["metrics"]} == {"not judged (single run)"}
    assert any("single run" in n for n in d["notes"])
    assert main(["diff", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "p99 ms" in text and "+900.0%" in text and "significant" not in text.split("note:")[0]


def test_missing_inputs_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no result files"):
        diff_paths(tmp_path / "empty", FIXTURE)
    with pytest.raises(FileNotFoundError, match="no such result file"):
        diff_paths(FIXTURE, tmp_path / "nope.json")
