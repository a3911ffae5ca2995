"""Reports from saved result files: the table's numbers are the files' numbers; plots; refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest

from engine.profiles import CompareSettings
from loadgen.cli.main import main
from loadgen.generator.histogram import Histogram
from loadgen.harness.compare import QUICK
from loadgen.harness.search import SearchResult, Trial
from loadgen.report.data import apply_ns_per_transfer, build
from loadgen.report.markdown import to_markdown
from loadgen.report.writer import write_report
from loadgen.results.compare import COMPARE_SCHEMA_VERSION, CompareSummary, ProfileSearch, RunRef, save_summary
from loadgen.results.run import ResultVersionError, load

FIXTURES = Path(__file__).parent / "fixtures" / "results"
BASELINE = FIXTURES / "20261122T090419Z-run-baseline-300000tps.json"
FULL = FIXTURES / "20261122T090455Z-run-full-300000tps.json"
ECHO = FIXTURES / "20261122T090509Z-run-echo-600000tps.json"


def _table(markdown: str, header_start: str) -> list[dict[str, str]]:
    """The Markdown table whose header row starts with ``header_start``, as dicts."""
    lines = markdown.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def test_the_tables_numbers_are_the_result_files_numbers() -> None:
    data, runs, summary = build([FIXTURES])
    assert summary is None and len(runs) == 3
    files = {p.stem.split("-")[2]: load(p) for p in (BASELINE, FULL, ECHO)}
    rows = {r.profile: r for r in data.latency}
    for profile, result in files.items():
        row = rows[profile]
        assert row.offered_tps == result.summary.offered_tps
        # One run per profile: the merged histogram is that run's histogram.
        assert row.p50_ms == pytest.approx(result.latency.p50_ms)
        assert row.p99_ms == pytest.approx(result.summary.p99_ms)
        assert row.p999_ms == pytest.approx(result.latency.p999_ms)
    assert data.reference_tps == 300_000
    by_profile = {r.profile: r for r in data.profiles}
    full = files["full"]
    for hook, cost in full.server.hooks.items():
        assert by_profile["full"].hook_ns_per_transfer[hook].median == pytest.approx(cost["ns_per_transfer"])
    s0, s1 = full.server.stats_start, full.server.stats_end
    expected_apply = (s1["engine_s"] - s0["engine_s"]) * 1e9 / (s1["ledger"]["transfers"] - s0["ledger"]["transfers"])
    assert by_profile["full"].apply_ns_per_transfer is not None
    assert by_profile["full"].apply_ns_per_transfer.median == pytest.approx(expected_apply)
    assert apply_ns_per_transfer(full) == pytest.approx(expected_apply)
    # Without a search, "max" is the highest sustained run (both sustain 300k/s at p99 < 20 ms).
    assert by_profile["baseline"].max_sustainable_tps is not None
    assert by_profile["baseline"].max_sustainable_tps.median == 300_000
    assert not by_profile["baseline"].searched

    md = to_markdown(data)
    table = {r["profile"]: r for r in _table(md, "| profile | offered TPS")}
    assert table["full"]["p99 ms"] == f"{full.summary.p99_ms:.2f}"
    assert table["baseline"]["p50 ms"] == f"{files['baseline'].latency.p50_ms:.2f}"
    assert table["echo"]["offered TPS"] == "600,000"
    main_table = {r["profile"].split(" ")[0]: r for r in _table(md, "| profile | max sustainable")}
    assert "wallet_limits 101" in main_table["full"]["per-hook ns/transfer at 300,000/s"]
    assert "not judged" in main_table["full"]["cost vs baseline [range]"]


def test_merged_percentiles_come_from_merged_histograms(tmp_path: Path) -> None:
    for i in range(2):
        shutil.copy(BASELINE, tmp_path / f"b{i}.json")
    shutil.copy(FULL, tmp_path / "f.json")
    data, _, _ = build([tmp_path])
    row = next(r for r in data.latency if r.profile == "baseline")
    h = load(BASELINE).latency_histogram.histogram()
    doubled = Histogram.merged([h, h])
    assert row.runs == 2
    assert row.p99_ms == doubled.value_at(99.0) / 1e6
    assert row.p99_band.low == row.p99_band.high == load(BASELINE).summary.p99_ms


def _summary_dir(tmp_path: Path) -> Path:
    """A comparison directory around the fixtures: two searches per profile with known trials."""
    runs = tmp_path / "cmp" / "runs"
    runs.mkdir(parents=True)
    refs = []
    for src in (BASELINE, FULL):
        shutil.copy(src, runs / src.name)
        result = load(src)
        refs.append(
            RunRef(
                file=f"runs/{src.name}",
                profile=result.summary.profile,
                repeat=1,
                stage="equal-load",
                phase="equal",
                offered_tps=result.summary.offered_tps,
                # What version 1 stored: replies received in the window (above the offered rate here).
                settled_tps=json.loads(src.read_bytes())["summary"]["achieved_tps"],
                p99_ms=result.summary.p99_ms,
                sustained=True,
                generator_kept_schedule=True,
            )
        )

    def search(profile: str, repeat: int, found: float, failed: float) -> ProfileSearch:
        trials = [Trial(found, found, 5.0, True, "bisect"), Trial(failed, failed * 0.9, 50.0, False, "bisect")]
        return ProfileSearch(
            profile, repeat, 300_000.0, SearchResult(found, 20.0, True, "confirmed", trials), found, failed, False
        )

    searches = [
        search("baseline", 1, 2_000_000, 2_100_000),
        search("baseline", 2, 1_900_000, 2_000_000),
        search("full", 1, 1_000_000, 1_050_000),
        search("full", 2, 1_100_000, 1_150_000),
    ]
    summary = CompareSummary(
        created_utc="2026-11-22T09:00:00Z",
        command="cbdc-bench compare --quick",
        scenario=None,
        profiles=["baseline", "full"],
        seed=1,
        plan=QUICK,
        settings=CompareSettings(common_rates_tps=(300_000.0,)),
        order=[["full", "baseline"], ["baseline", "full"]],
        equal_order=[["baseline", "full"]],
        common_rates_tps=[300_000.0],
        searches=searches,
        runs=refs,
        environment=load(BASELINE).environment,
        duration_s=1.0,
        notes=["synthetic summary around fixture runs"],
    )
    save_summary(summary, tmp_path / "cmp" / "compare.json")
    return tmp_path / "cmp"


def test_a_comparison_summary_gives_searched_maxima_bands_and_verdicts(tmp_path: Path) -> None:
    folder = _summary_dir(tmp_path)
    data, runs, summary = build([folder])
    assert summary is not None and len(runs) == 2
    rows = {r.profile: r for r in data.profiles}
    base, full = rows["baseline"].max_sustainable_tps, rows["full"].max_sustainable_tps
    assert base is not None and full is not None
    # Medians of the searches; bands span every repeat's [highest sustained, lowest failed].
    assert (base.median, base.low, base.high) == (1_950_000, 1_900_000, 2_100_000)
    assert (full.median, full.low, full.high) == (1_050_000, 1_000_000, 1_150_000)
    assert rows["full"].cost_pct == pytest.approx(100 * (1 - 1_050_000 / 1_950_000))
    assert rows["full"].cost_low_pct == pytest.approx(100 * (1 - 1_150_000 / 1_900_000))
    assert rows["full"].cost_high_pct == pytest.approx(100 * (1 - 1_000_000 / 2_100_000))
    # Medians 900k apart, bands 200k and 150k wide: a difference.
    assert rows["full"].cost_verdict == "different"
    assert rows["full"].confirmed == "2/2"
    md = to_markdown(data)
    assert "1,950,000 [1,900,000-2,100,000]" in md
    # The settled share comes from each result's own figures, never above 100%, even where the
    # summary's ref stored the old "replies received in the window" rate (300,009/s at 300,000/s).
    assert max(r.ref.settled_tps / r.offered_tps for r in runs if r.ref) > 1.0
    assert data.latency and all(r.settled_ratio <= 1.0 for r in data.latency)


def test_report_writes_markdown_json_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _summary_dir(tmp_path)
    assert main(["report", str(folder), "--overwrite"]) == 0
    for name in ("elbow", "cost", "spectrum", "timeseries"):
        png = folder / f"{name}.png"
        assert png.stat().st_size > 20_000, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "report.md").read_text()
    assert "![elbow](elbow.png)" in md and "Intel" in md
    data = json.loads((folder / "report.json").read_bytes())
    assert {r["profile"] for r in data["profiles"]} == {"baseline", "full"}
    # Paths in a report are relative to it: a committed report names no machine's directories.
    assert data["files"] and all(not Path(f).is_absolute() for f in data["files"])
    assert all((folder / f).is_file() for f in data["files"])
    out = tmp_path / "elsewhere"
    written = write_report([BASELINE, FULL], out)
    assert {p.name for p in written} >= {"report.md", "elbow.png"}


def test_report_of_a_directory_writes_a_new_directory_unless_told_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _summary_dir(tmp_path)
    (folder / "report.md").write_text("compare's own report")
    assert main(["report", str(folder)]) == 0
    assert main(["report", str(folder)]) == 0
    made = sorted(p for p in folder.iterdir() if p.name.startswith("report-"))
    assert len(made) == 2 and all((p / "report.md").is_file() for p in made)
    assert (folder / "report.md").read_text() == "compare's own report"
    # --out onto an existing report is refused, in one line, unless --overwrite.
    capsys.readouterr()
    assert main(["report", str(folder), "--out", str(made[0])]) == 2
    err = capsys.readouterr().err
    assert "already holds a report" in err and "--overwrite" in err and err.count("\n") == 1
    assert main(["report", str(folder), "--out", str(made[0]), "--overwrite"]) == 0
    assert main(["report", str(folder), "--overwrite"]) == 0
    assert (folder / "report.md").read_text() != "compare's own report"


@pytest.mark.parametrize("version", [0, 99])
def test_unknown_result_versions_are_refused_naming_the_version(
    tmp_path: Path, version: int, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(BASELINE.read_bytes())
    doc["schema_version"] = version
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ResultVersionError, match=f"schema_version {version}"):
        build([bad, FULL])
    assert main(["report", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert f"schema_version {version}" in capsys.readouterr().err


def test_unknown_summary_versions_are_refused(tmp_path: Path) -> None:
    folder = _summary_dir(tmp_path)
    doc = json.loads((folder / "compare.json").read_bytes())
    doc["schema_version"] = COMPARE_SCHEMA_VERSION + 1
    (folder / "compare.json").write_text(json.dumps(doc))
    with pytest.raises(
        ResultVersionError, match=f"comparison summary with schema_version {COMPARE_SCHEMA_VERSION + 1}"
    ):
        build([folder])


def test_a_summary_missing_a_listed_run_is_an_error(tmp_path: Path) -> None:
    folder = _summary_dir(tmp_path)
    next((folder / "runs").glob("*full*")).unlink()
    with pytest.raises(FileNotFoundError, match="listed in"):
        build([folder])
    assert msgspec.json.decode((folder / "compare.json").read_bytes())["kind"] == "compare-summary"
