"""Result files: round trip, version refusal, schema, per-hook cost over the window."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from engine.profiles import CompareSettings, default_scenario_text, load_scenario, profile_hooks
from loadgen.cli.output import format_summary
from loadgen.generator.gateway import LoadConfig
from loadgen.generator.histogram import Histogram
from loadgen.harness.measured import hook_cost
from loadgen.results.compare import loads_summary
from loadgen.results.environment import collect
from loadgen.results.run import (
    SCHEMA_VERSION,
    AuditOutcome,
    Durability,
    ResultVersionError,
    build_result,
    journal_bytes_per_payment,
    json_schema,
    load,
    loads,
    resolved_settings,
    save,
)

MS = 1_000_000
SEED = 99


def _result(tmp_path: Path | None = None):  # type: ignore[no-untyped-def]
    """A result built from a synthetic measurement (no network): 3 s at 1,000/s, 1 s warm-up."""
    print(f"seed {SEED}")
    rng = np.random.default_rng(SEED)
    config = LoadConfig(rate_tps=1_000, seconds=2.0, warmup=1.0, operators=1, drain=1.0)
    m = config.new_measurement()
    schedule = np.arange(3_000, dtype=np.int64) * MS
    m.scheduled = 3_000
    m.scheduled_measured = 2_000
    for a in range(0, 3_000, 100):
        frame = schedule[a : a + 100]
        sent_at = int(frame[-1]) + MS
        m.on_sent(frame, sent_at)
        codes = (rng.random(100) < 0.05).astype(np.uint8) * 15  # 5% insufficient funds
        m.on_results(frame, codes, sent_at + int(rng.integers(1, 20)) * MS)
    m.generator_cpu_s = 0.5
    m.bytes_sent, m.bytes_received = 3_000 * 72 + 30 * 32, 3_000 + 30 * 24
    return build_result(
        kind="run",
        m=m,
        config=config,
        environment=collect(),
        welcome={"accounts": 1_000, "profile": "baseline"},
        failures=[],
        server_pid=123,
        server_cpu_s=0.25,
        stats_start={},
        stats_end={},
        hooks={},
        audit=AuditOutcome(ok=True, total_fen=10, expected_fen=10, negative_accounts=0),
    ), m


def test_result_file_round_trips(tmp_path: Path) -> None:
    result, m = _result()
    path = save(result, tmp_path)
    assert path.parent == tmp_path and path.suffix == ".json"
    back = load(path)
    assert back == result
    assert back.schema_version == SCHEMA_VERSION
    assert back.counts.sent == back.counts.results == 3_000
    assert sum(back.codes.values()) == back.latency.count == 2_000
    h = back.latency_histogram.histogram()
    np.testing.assert_array_equal(h.counts, m.latency.counts)
    assert h.percentiles() == m.latency.percentiles()
    assert back.summary.p99_ms == m.latency.value_at(99.0) / 1e6
    # Interval histograms decode too, and add up to every reply.
    per_second = [Histogram.decode(x) for x in back.series.histograms if x is not None]
    assert sum(x.total for x in per_second) == 3_000 == sum(back.series.completed)
    # A second save never overwrites the first.
    assert save(result, tmp_path) != path
    assert "p99" in format_summary(back)


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1])
def test_other_format_versions_are_refused_with_the_version_named(tmp_path: Path, version: int) -> None:
    result, _ = _result()
    doc = json.loads(save(result, tmp_path).read_bytes())
    doc["schema_version"] = version
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ResultVersionError, match=f"schema_version {version}"):
        load(bad)


def test_a_file_that_is_not_a_result_is_refused() -> None:
    with pytest.raises(ResultVersionError, match="not a cbdc-bench result"):
        loads(b'{"hello": 1}')


def test_json_schema_is_generated_from_the_structs() -> None:
    schema = json_schema()
    run = schema["$defs"]["RunResult"]
    assert {"summary", "latency_histogram", "series", "environment"} <= set(run["required"])
    assert "schema_version" in run["properties"]


def test_hook_cost_is_the_difference_over_the_measured_window() -> None:
    start = {
        "ledger": {"transfers": 1_000},
        "hooks": {"blacklist": {"ns_per_transfer": 900.0, "authorize_ns": 50_000, "observe_ns": 0, "errors": 0}},
    }
    end = {
        "ledger": {"transfers": 11_000},
        "hooks": {"blacklist": {"ns_per_transfer": 100.0, "authorize_ns": 1_050_000, "observe_ns": 0, "errors": 2}},
    }
    cost = hook_cost(start, end)
    assert cost["blacklist"]["authorize_ns"] == 1_000_000
    assert cost["blacklist"]["errors"] == 2
    assert cost["blacklist"]["ns_per_transfer"] == 100.0  # 1 ms over 10,000 transfers
    assert hook_cost({}, {}) == {}


def test_durability_is_differenced_over_the_window_and_defaults_for_older_files() -> None:
    start = {"journal": {"fsync": "batch", "fsyncs": 100, "fsync_ms_total": 50.0, "bytes_written": 1_000_000}}
    end = {"journal": {"fsync": "batch", "fsyncs": 300, "fsync_ms_total": 150.0, "bytes_written": 21_000_000}}
    d = Durability.of(start, end, seconds=2.0)
    assert (d.fsync, d.fsyncs_per_s, d.fsync_ms_per_s, d.journal_mb_per_s) == ("batch", 100.0, 50.0, 10.0)
    assert Durability.of({}, {}, seconds=2.0).fsync == "none"
    # Files written before the field existed still load, as "none".
    fixture = sorted((Path(__file__).parent / "fixtures" / "results").glob("*-run-baseline-*.json"))[0]
    assert load(fixture).server.durability.fsync == "none"


REFERENCE = Path(__file__).resolve().parents[2] / "results" / "compare-quick"


def test_the_resolved_settings_rebuild_every_hook_of_the_profile() -> None:
    """A run's file alone says which hooks ran with which parameters (defaults filled in)."""
    scenario = load_scenario(None)
    settings = resolved_settings("full", None, CompareSettings(slo_p99_ms=7.0), server_args=("--profile", "full"))
    assert settings.hooks == list(profile_hooks("full", scenario)) and settings.hooks
    for spec in settings.hooks:
        params = scenario.hooks.params(spec)
        assert msgspec.convert(settings.hook_params[spec], type(params)) == params, spec
    assert settings.targets.slo_p99_ms == 7.0 and settings.server_args == ["--profile", "full"]
    assert settings.scenario_sha256 == hashlib.sha256(default_scenario_text()).hexdigest()
    unknown = resolved_settings("no-such-profile", None, CompareSettings(), started=False)
    assert (
        unknown.hooks == [] and "not resolved" in unknown.source and "server was started separately" in unknown.source
    )


def test_traffic_is_bytes_per_payment_both_ways_and_journal_bytes_per_applied_transfer() -> None:
    result, m = _result()
    assert result.traffic is not None
    assert result.traffic.wire_sent_per_payment == m.bytes_sent / m.sent_total
    stats_start = {"ledger": {"transfers": 1_000}, "journal": {"bytes_written": 50_000}}
    stats_end = {"ledger": {"transfers": 3_000}, "journal": {"bytes_written": 250_000}}
    assert journal_bytes_per_payment(stats_start, stats_end) == 100.0
    assert journal_bytes_per_payment({}, {"ledger": {"transfers": 5}}) is None


def test_version_1_files_load_through_the_upgrade_the_committed_reference_run_included() -> None:
    summary = loads_summary((REFERENCE / "compare.json").read_bytes())
    refs = summary.runs[:: max(1, len(summary.runs) // 6)]
    for ref in refs:
        path = REFERENCE / ref.file
        assert json.loads(path.read_bytes())["schema_version"] == 1
        r = load(path)
        assert r.schema_version == SCHEMA_VERSION and r.settings is None and r.traffic is None
        assert r.summary.settled is not None and r.summary.verdict.startswith("verdict: ")
        assert 0.0 <= r.summary.achieved_ratio <= 1.0


def test_a_newer_version_is_refused_and_an_older_one_upgraded(tmp_path: Path) -> None:
    result, _ = _result()
    doc = json.loads(save(result, tmp_path).read_bytes())
    doc["schema_version"] = 1
    for key in ("settings", "traffic"):
        del doc[key]
    doc["summary"]["achieved_ratio"] = 1.0002  # what a version 1 file could say
    back = loads(json.dumps(doc))
    assert back.summary.achieved_ratio == 1.0 and back.settings is None


def test_the_committed_json_schema_is_the_generated_one() -> None:
    """docs/result-schema.json is generated: python -m loadgen.results.schema > docs/result-schema.json."""
    committed = json.loads((Path(__file__).resolve().parents[2] / "docs" / "result-schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema())), "regenerate docs/result-schema.json"
