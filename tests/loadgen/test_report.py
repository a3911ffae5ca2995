"""Reports from saved result files: the table's numbers are the files' numbers; plots; refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest

from engine.profiles import CompareSettings, default_scenario_text
from loadgen.cli.main import main
from loadgen.generator.histogram import Histogram
from loadgen.harness.compare import QUICK
from loadgen.harness.search import SearchResult, Trial
from loadgen.report.data import MixedInputs, apply_ns_per_transfer, build
from loadgen.report.markdown import cost_text, to_markdown
from loadgen.report.writer import write_report
from loadgen.results.compare import COMPARE_SCHEMA_VERSION, CompareSummary, ProfileSearch, RunRef, save_summary
from loadgen.results.run import ResultVersionError, load, resolved_settings, save

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
    # Without a search there is no maximum and no cost: only the highest sustained run, named so.
    assert by_profile["baseline"].max_sustainable_tps is None and not by_profile["baseline"].searched
    assert by_profile["baseline"].highest_sustained_tps == 300_000
    assert by_profile["full"].cost_pct is None

    md = to_markdown(data)
    table = {r["profile"]: r for r in _table(md, "| profile | offered TPS")}
    assert table["full"]["p99 ms"] == f"{full.summary.p99_ms:.2f}"
    assert table["baseline"]["p50 ms"] == f"{files['baseline'].latency.p50_ms:.2f}"
    assert table["echo"]["offered TPS"] == "600,000"
    main_table = {r["profile"].split(" ")[0]: r for r in _table(md, "| profile | max sustainable")}
    assert "wallet_limits 101" in main_table["full"]["per-hook ns/transfer at 300,000/s"]
    assert main_table["full"]["cost: throughput lost vs baseline [range]"] == "n/a (no search)"
    assert main_table["baseline"]["max sustainable TPS [range over repeats]"] == (
        "no search; highest sustained run 300,000"
    )


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


def _variant(src: Path, folder: Path, name: str, changes: dict[str, object]) -> Path:
    """A copy of the result file ``src`` with dotted fields changed ("environment.cpu_model")."""
    doc = json.loads(src.read_bytes())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[leaf] = value
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / name
    out.write_text(json.dumps(doc))
    return out


@pytest.mark.parametrize(
    ("field", "value", "dimension", "said"),
    [
        ("environment.cpu_model", "AMD EPYC 7B13", "cpu", "different CPUs"),
        ("summary.accounts", 2, "accounts", "different accounts"),
        ("scenario", "mine.toml", "scenario", "different scenario"),
    ],
)
def test_mixed_inputs_are_refused_or_split(
    tmp_path: Path, field: str, value: object, dimension: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files from two machines (one a 2-account run) were once mixed into one table silently."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BASELINE, folder / BASELINE.name)
    _variant(FULL, folder, "other.json", {field: value})
    with pytest.raises(MixedInputs, match=f"{said}.*--split-by {dimension}"):
        build([folder])
    assert main(["report", str(folder), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert said in err and f"--split-by {dimension}" in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()
    assert main(["report", str(folder), "--out", str(tmp_path / "split"), "--split-by", dimension]) == 0
    groups = sorted(p for p in (tmp_path / "split").iterdir() if p.is_dir())
    assert len(groups) == 2 and all((g / "report.md").is_file() for g in groups)
    titles = {(g / "report.md").read_text().splitlines()[0] for g in groups}
    assert len(titles) == 2  # each report names what its group shares


def test_each_run_is_drawn_by_its_own_verdict_and_a_single_run_is_never_judged(tmp_path: Path) -> None:
    """A run with p99 178 ms was drawn as a sustained dot; a single run was called "+98.3%: different"."""
    folder = tmp_path / "in"
    _variant(BASELINE, folder, "b1.json", {"summary.p99_ms": 6.0, "latency.p99_ms": 6.0})
    _variant(BASELINE, folder, "b2.json", {"summary.p99_ms": 7.0, "latency.p99_ms": 7.0})
    _variant(FULL, folder, "slow.json", {"summary.p99_ms": 178.0, "latency.p99_ms": 178.0})
    data, _, _ = build([folder])
    slow = [pt for pt in data.points if pt.profile == "full"]
    assert len(slow) == 1 and not slow[0].sustained and slow[0].verdict.startswith("verdict: not sustained")
    assert all(pt.sustained for pt in data.points if pt.profile == "baseline")
    full = next(r for r in data.latency if r.profile == "full")
    assert full.runs == 1 and full.p99_verdict == "not judged (single run)"
    assert full.sustained_runs == 0
    # Nothing was searched: no maximum and no cost for anyone, and no bar in cost.png.
    assert all(r.max_sustainable_tps is None and r.cost_pct is None for r in data.profiles)
    assert next(r for r in data.profiles if r.profile == "full").highest_sustained_tps is None


def test_a_cost_is_throughput_lost_with_one_sign_everywhere(tmp_path: Path) -> None:
    """report.md once said +32.1% where the README and the plot said -32%."""
    data, _, _ = build([_summary_dir(tmp_path)])
    full = next(r for r in data.profiles if r.profile == "full")
    assert full.cost_pct is not None and full.cost_pct > 0  # slower than baseline: a positive cost
    assert full.cost_low_pct is not None and full.cost_high_pct is not None
    assert 0 < full.cost_low_pct <= full.cost_pct <= full.cost_high_pct
    md = to_markdown(data)
    row = {r["profile"]: r for r in _table(md, "| profile | max sustainable")}["full"]
    cost = row["cost: throughput lost vs baseline [range]"]
    assert cost.startswith(f"{full.cost_pct:.1f}% [") and "+" not in cost and "-" not in cost.split(":")[0]
    assert cost_text(full.cost_pct, 0) == f"{full.cost_pct:.0f}%"


def test_one_scenario_under_two_paths_is_one_scenario(tmp_path: Path) -> None:
    """Version 2 files name their scenario by content: a copy of the shipped file is the shipped scenario."""
    copy = tmp_path / "copy-of-default.toml"
    copy.write_bytes(default_scenario_text())
    folder = tmp_path / "in"
    for src, scenario in ((BASELINE, None), (FULL, str(copy))):
        r = load(src)
        settings = resolved_settings(r.summary.profile, scenario, CompareSettings())
        save(msgspec.structs.replace(r, scenario=scenario, settings=settings), folder)
    data, runs, _ = build([folder])
    assert len(runs) == 2 and {r.profile for r in data.profiles} == {"baseline", "full"}
