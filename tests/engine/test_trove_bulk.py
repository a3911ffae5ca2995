"""The direct build (``engine.trove.bulk``) leaves the trove the writer and compactor leave: the
same runs (partition, rows, batch ranges, codec, row groups) and the same query answers for the
same seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.trove.bench import BENCH_START_NS, bulk_load
from engine.trove.bulk import build, plan_runs
from engine.trove.config import TroveConfig
from engine.trove.manifest import load_manifest
from engine.trove.query import TroveReader
from engine.trove.store import Trove
from loadgen.cli.main import main

ROWS = 100_000
ACCOUNTS = 2_000
SEED = 7


def config(root: Path) -> TroveConfig:
    """Small files and fanin 2, so 10^5 rows make several partitions, merges and last-tier runs;
    the writer flushes on rows only (a long interval), as the direct build assumes."""
    return TroveConfig(
        dir=str(root),
        segment_rows=8_192,
        row_group_rows=512,
        final_row_group_rows=128,
        fanin=2,
        max_run_rows=16_384,
        partition_min_rows=20_000,
        flush_interval_s=600.0,
        process=False,
        reserve_free_bytes=0,
    )


def layout(root: Path) -> list[tuple]:
    """Per run: partition, rows, batch ranges, and per file its ordering, codec, row groups and the
    largest row group's rows."""
    manifest = load_manifest(root)
    assert manifest is not None
    out = []
    for s in sorted(manifest.segments, key=lambda s: (s.partition, s.min_timestamp_ns, s.rows)):
        files = []
        for f in s.files:
            meta = pq.read_metadata(root / f.path)
            largest = max(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
            files.append((f.ordering, meta.row_group(0).column(0).compression, meta.num_row_groups, largest))
        out.append((s.partition, s.rows, s.seq_ranges, s.kind, files))
    return out


@pytest.fixture(scope="module")
def troves(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bulk")
    written, direct = base / "written", base / "direct"
    trove = Trove.open(config(written))
    try:
        bulk_load(trove, ROWS, ACCOUNTS, SEED)
        trove.compact_all()
    finally:
        trove.close()
    build(direct, rows=ROWS, accounts=ACCOUNTS, seed=SEED, config=config(direct))
    return written, direct


def test_the_direct_build_leaves_the_runs_the_writer_and_compactor_leave(troves) -> None:
    written, direct = troves
    runs = layout(direct)
    assert runs == layout(written)
    assert len({r[0] for r in runs}) > 2 and max(r[1] for r in runs) == 16_384  # partitions, last-tier runs
    # Final runs, and runs a merge will read (plain: intermediate_compression "none", the default).
    assert {f[1] for r in runs for f in r[4]} == {"ZSTD", "UNCOMPRESSED"}
    # Final runs (zstd) in ``final_row_group_rows`` groups, the ones a merge reads in ``row_group_rows``.
    assert {(f[1], f[3]) for r in runs for f in r[4] if r[1] >= 512} == {("ZSTD", 128), ("UNCOMPRESSED", 512)}
    plan = plan_runs(ROWS, ACCOUNTS, config(direct))
    assert plan.merges > 0 and sum(r.rows for r in plan.runs) == ROWS


def test_the_direct_build_answers_every_query_as_the_written_trove(troves) -> None:
    written, direct = troves
    a, b = TroveReader.open(written), TroveReader.open(direct)
    day = (BENCH_START_NS, BENCH_START_NS + 86_400 * 10**9)
    try:
        for account in np.random.default_rng(1).integers(0, ACCOUNTS, 20).tolist():
            assert a.payments(account).to_pylist() == b.payments(account).to_pylist()
            assert a.payments(account, *day).to_pylist() == b.payments(account, *day).to_pylist()
        for account in (3, 1_999):  # the DuckDB kinds: a few subjects
            assert a.counterparties(account, hops=2).to_pylist() == b.counterparties(account, hops=2).to_pylist()
            assert a.same_device(account).to_pylist() == b.same_device(account).to_pylist()
        assert a.co_location(3, *day).to_pylist() == b.co_location(3, *day).to_pylist()
        assert (
            a.aggregate(("region", "category"), "hour").to_pylist()
            == b.aggregate(("region", "category"), "hour").to_pylist()
        )
        assert a.payments(11).num_rows > 0
        # Whole row groups are read only where the person is: most row groups whose min/max could
        # hold them cost their account column alone.
        assert 0 < b.lookup_counts["whole_groups"] < b.lookup_counts["account_column_groups"]
    finally:
        a.close()
        b.close()


def test_build_refuses_a_non_empty_directory_and_an_oversized_run(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        build(tmp_path / "x", rows=10, accounts=5, seed=1)
    with pytest.raises(ValueError, match="memory_mb"):
        build(tmp_path / "y", rows=40_000, accounts=100, seed=1, config=config(tmp_path / "y"), memory_mb=0)
    assert not (tmp_path / "y").exists()


def test_cli_build_then_stats_and_query(tmp_path, capsys) -> None:
    d = tmp_path / "t"
    assert main(["trove", "build", str(d), "--rows", "30000", "--accounts", "500", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert main(["trove", "stats", str(d), "--verify", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 30000
    # The build counts what `trove stats` counts: runs, rollups and manifest, not the runs alone.
    assert built["bytes_on_disk"] == stats["bytes_on_disk"] > built["segment_bytes"] == stats["segment_bytes"]
    assert main(["trove", "query", str(d), "--account", "5", "--json"]) == 0
    assert '"count": ' in capsys.readouterr().out
