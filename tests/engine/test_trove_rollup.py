"""Per-run rollups (``engine.trove.rollup``): ``aggregate`` from them equals the DuckDB scan and
the reference model for every dimension set, both buckets and windows that cut hours; rollups are
summed when runs merge and deleted with them; derived files count toward ``max_bytes`` and
``trove stats``.

Small troves (a few thousand rows over five CST hours across a midnight, hourly partitions,
segments of a few hundred rows) so that tier-0 runs, merged runs and several partitions all occur.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.codes import ResultCode
from engine.records import make_batch
from engine.simtime import CST_OFFSET_NS, NS_PER_DAY, NS_PER_HOUR
from engine.trove import rollup
from engine.trove.bulk import build
from engine.trove.config import TroveConfig
from engine.trove.manifest import load_manifest
from engine.trove.query import DIMENSIONS, TroveReader
from engine.trove.store import Trove
from loadgen.cli.main import main

#: 2026-11-22 22:30 CST: five hours of payments cross a CST midnight (day buckets split).
START_NS = 1_795_305_600 * 10**9 + 14 * NS_PER_HOUR + NS_PER_HOUR // 2
HOURS = 5
Entry = tuple[int, np.ndarray, np.ndarray]


def config(root: Path, **kw: object) -> TroveConfig:
    base = {
        "dir": str(root),
        "partition_s": 3600,
        "partition_min_rows": 0,
        "segment_rows": 600,
        "row_group_rows": 64,
        "fanin": 2,
        "reserve_free_bytes": 0,
        "process": False,
        "max_run_rows": 1 << 20,
    }
    return TroveConfig(**{**base, **kw})  # type: ignore[arg-type]


def random_entries(rng: np.random.Generator, batches: int) -> Iterator[Entry]:
    """(batch_seq, batch, codes): every dimension varies (cells past the last region are clamped to it)."""
    step = HOURS * NS_PER_HOUR // (batches * 100)
    t = START_NS
    for seq in range(1, batches + 1):
        n = int(rng.integers(1, 200))
        batch = make_batch(
            rng.integers(0, 50, n),
            rng.integers(0, 50, n),
            rng.integers(1, 10_000, n),
            transfer_id=np.arange(n) + seq * 1_000,
            timestamp_ns=t + np.arange(n) * step,
            location_cell=rng.integers(0, 1 << 21, n),  # 64 regions of 2^14 cells, and beyond
            category=rng.integers(0, 4, n),
            operator=rng.integers(0, 3, n),
        )
        t += n * step
        codes = rng.choice([0, 0, int(ResultCode.INSUFFICIENT_FUNDS), int(ResultCode.OVERLOADED)], n)
        yield seq, batch, codes.astype(np.uint8)


def reference_aggregate(entries: list[Entry], cfg: TroveConfig, by: tuple[str, ...], bucket: int, lo: int, hi: int):
    """The oracle: one row at a time, in Python."""
    sums: dict[tuple[int, ...], list[int]] = {}
    for _, batch, codes in entries:
        for rec, code in zip(batch, codes.tolist(), strict=True):
            ts = int(rec["timestamp_ns"])
            if code == ResultCode.OVERLOADED or not lo <= ts < hi:
                continue
            dims = {
                "region": min(int(rec["location_cell"]) // cfg.cells_per_region, cfg.regions - 1),
                "category": int(rec["category"]),
                "operator": int(rec["operator"]),
                "code": code,
            }
            key = ((ts + CST_OFFSET_NS) // bucket * bucket - CST_OFFSET_NS, *(dims[d] for d in by))
            acc = sums.setdefault(key, [0, 0, 0])
            acc[0] += 1
            acc[1] += code == 0
            acc[2] += int(rec["amount_fen"]) if code == 0 else 0
    return [(*k, *v) for k, v in sorted(sums.items())]


def rows_of(table) -> list[tuple[int, ...]]:
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True))


def loaded(root: Path, entries: list[Entry], **kw: object) -> Trove:
    trove = Trove.open(config(root, **kw))
    for seq, batch, codes in entries:
        trove.append(batch, codes, seq)
    trove.flush()
    return trove


#: Windows: all time, whole hours, both edges cutting an hour, inside one hour, one edge cut.
WINDOWS = [
    (None, None),
    (START_NS + NS_PER_HOUR // 2, START_NS + 3 * NS_PER_HOUR + NS_PER_HOUR // 2),
    (START_NS + 17, START_NS + 2 * NS_PER_HOUR + 1_234_567),
    (START_NS + NS_PER_HOUR - 5, START_NS + NS_PER_HOUR + 7 * 60 * 10**9),
    (START_NS + NS_PER_HOUR // 2, START_NS + 4 * NS_PER_HOUR - 1),
]
BY_ALL = [c for n in range(1, len(DIMENSIONS) + 1) for c in itertools.combinations(DIMENSIONS, n)]


def test_aggregates_from_rollups_equal_the_scan_and_the_reference(tmp_path, rng) -> None:
    """Every ``by`` combination, both buckets, windows that cut hours: rollups (tier-0 runs, merged
    runs) plus edge rows equal ``aggregate_sql`` and the reference model; whole-hour windows
    read no rows at all."""
    entries = list(random_entries(rng, 60))
    trove = loaded(tmp_path / "t", entries)
    trove.compact_due()
    reader = TroveReader(trove=trove)
    try:
        assert trove.counters["merges"] > 0  # merged runs (rollups summed) beside the writer's
        for since, until in WINDOWS:
            lo, hi = since or -(2**63), until or 2**63 - 1
            for by, (name, size) in itertools.product(BY_ALL, (("hour", NS_PER_HOUR), ("day", NS_PER_DAY))):
                got = rows_of(reader.aggregate(by, name, since, until))
                assert got == rows_of(reader.aggregate_sql(by, name, since, until)), (by, name, since, until)
                assert got == reference_aggregate(entries, trove.config, by, size, lo, hi), (by, name, since, until)
        reader.lookup_counts |= {"rollup_files": 0, "scanned_files": 0}
        reader.aggregate(("region",), "day", START_NS + NS_PER_HOUR // 2, START_NS + 3 * NS_PER_HOUR // 2)
        assert reader.lookup_counts["rollup_files"] > 0
        assert reader.lookup_counts["scanned_files"] == 0  # whole hours: rollups alone
    finally:
        reader.close()
        trove.close()


def test_rollups_are_summed_on_merge_deleted_with_their_runs_and_written_by_the_writer(tmp_path, rng) -> None:
    """Each run's rollup equals the rollup of its rows; after merges and retention only the listed
    runs have one (the merged-away and expired runs' rollups and sidecars are gone)."""
    trove = loaded(tmp_path / "t", list(random_entries(rng, 60)))
    try:
        reader = TroveReader(trove=trove)
        reader.co_location(3)  # sidecars too, to see them go with their runs
        trove.compact_all()
        with trove.snapshot() as segs:
            runs = list(segs)
        for s in runs:
            path = rollup.usable(trove.root, s, trove.config)
            assert path is not None
            rows = pq.read_table(trove.root / s.file("payer").path, columns=list(rollup.SOURCE_COLUMNS))
            own = rollup.rollup_of({c: rows[c].to_numpy() for c in rollup.SOURCE_COLUMNS}, trove.config)
            assert rows_of(pq.read_table(path)) == rows_of(own)
        on_disk = set((trove.root / rollup.DERIVED_DIR / rollup.ROLLUP_KIND).glob("*"))
        assert on_disk == {rollup.rollup_path(trove.root, s.file("payer")) for s in runs}
        listed = {s.file("payer").path for s in runs}
        assert {rollup.derived_source(p) for p in (trove.root / rollup.DERIVED_DIR).glob("*/*")} <= listed
        reader.close()
    finally:
        trove.close()


def test_a_run_without_a_usable_rollup_is_read_from_its_rows(tmp_path, rng) -> None:
    """A rollup missing (an older trove) or cut with other region settings is not used: the run's
    rows are read instead, and the answer is still the scan's."""
    entries = list(random_entries(rng, 40))
    trove = loaded(tmp_path / "t", entries, regions=3, cells_per_region=1 << 19)
    trove.close()
    # A directory reader's regions are the defaults: every rollup was cut with other ones.
    reader = TroveReader.open(tmp_path / "t")
    assert rows_of(reader.aggregate(("region", "code"), "hour")) == rows_of(reader.aggregate_sql(("region", "code")))
    assert reader.lookup_counts["rollup_files"] == 0 < reader.lookup_counts["scanned_files"]
    reader.close()

    trove = loaded(tmp_path / "u", entries, compact=False)  # no merge makes the rollup again meanwhile
    with trove.snapshot() as segs:
        rollup.rollup_path(trove.root, segs[0].file("payer")).unlink()
    reader = TroveReader(trove=trove)
    try:
        want = reference_aggregate(entries, trove.config, ("category",), NS_PER_HOUR, -(2**63), 2**63 - 1)
        assert rows_of(reader.aggregate(("category",))) == want
        assert reader.lookup_counts["scanned_files"] == 1
        # ``build_sidecars`` (``trove sidecars``) makes the missing rollup: no row read again.
        assert reader.build_sidecars()["rollups_built"] == 1
        assert rows_of(reader.aggregate(("category",))) == want
        assert reader.lookup_counts["scanned_files"] == 1
    finally:
        reader.close()
        trove.close()


def test_the_bulk_build_writes_the_rollups_the_writer_would(tmp_path) -> None:
    root = tmp_path / "b"
    build(root, rows=30_000, accounts=2_000, seed=5, config=config(root, segment_rows=4_096, partition_s=86_400))
    manifest = load_manifest(root)
    assert manifest is not None
    reader = TroveReader.open(root)
    try:
        assert all(rollup.usable(root, s, reader.config) is not None for s in manifest.segments)
        assert rows_of(reader.aggregate(("region", "operator"), "hour")) == rows_of(
            reader.aggregate_sql(("region", "operator"), "hour")
        )
        assert reader.lookup_counts["scanned_files"] == 0
    finally:
        reader.close()


def _files_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_stats_count_every_file_the_trove_keeps(tmp_path, rng, capsys) -> None:
    """``bytes_on_disk`` = runs + sidecars + rollups + manifest = the files under the directory (du)."""
    trove = loaded(tmp_path / "t", list(random_entries(rng, 40)), compact=False)  # no merge between the two counts
    reader = TroveReader(trove=trove)
    reader.same_device(3)
    reader.close()
    stats = trove.stats()
    trove.close()
    assert stats["sidecar_bytes"] > 0 and stats["rollup_bytes"] > 0
    parts = ("segment_bytes", "sidecar_bytes", "rollup_bytes", "manifest_bytes")
    assert stats["bytes_on_disk"] == sum(stats[k] for k in parts) == _files_on_disk(tmp_path / "t")
    assert main(["trove", "stats", str(tmp_path / "t"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bytes_on_disk"] == _files_on_disk(tmp_path / "t")
    assert out["sidecar_bytes"] == stats["sidecar_bytes"] and out["rollup_bytes"] == stats["rollup_bytes"]


@pytest.mark.parametrize("with_sidecars", [False, True])
def test_sidecars_count_toward_max_bytes(tmp_path, rng, with_sidecars) -> None:
    """A trove under ``max_bytes`` by its runs' files alone expires its oldest partition once its
    sidecars push it over (and not without them: the same trove, the same limit)."""
    first = loaded(tmp_path / "t", list(random_entries(rng, 40)), compact=False)
    size = first.stats()
    first.close()
    limit = size["segment_bytes"] + size["rollup_bytes"] + size["manifest_bytes"] + 1_000
    # The same trove reopened with the limit (no threads: retention runs when the test says).
    trove = Trove.open(config(tmp_path / "t", compact=False, max_bytes=limit), start=False)
    try:
        parts = len({s.partition for s in trove.manifest.segments})
        assert parts > 1 and trove.manifest.rows_expired == 0
        if with_sidecars:
            TroveReader(trove=trove).build_sidecars()
            assert trove.stats()["bytes_on_disk"] > limit
        trove._compact_step(everything=False)  # the compactor's step: a merge (none here), then retention
        expired = trove.manifest.rows_expired
        assert (expired > 0) == with_sidecars
        assert trove.stats()["bytes_on_disk"] <= limit or len({s.partition for s in trove.manifest.segments}) == 1
    finally:
        trove.close()


def test_the_dense_rollup_equals_the_hashed_one(rng) -> None:
    """``rollup_of`` counts into a dense table when the keys span few values and hashes otherwise:
    the same rollup either way (amounts up to 2^40, summed exactly)."""
    n = 20_000
    cfg = TroveConfig(regions=5, cells_per_region=100)
    for category_span in (7, 1 << 16):  # 2^16 categories x 2^16 operators: too many keys for a dense table
        cols = {
            "timestamp_ns": START_NS + np.sort(rng.integers(0, 3 * NS_PER_HOUR, n)),
            "location_cell": rng.integers(0, 800, n).astype(np.uint32),
            "category": rng.integers(0, category_span, n).astype(np.uint16),
            "operator": rng.integers(0, category_span, n).astype(np.uint16),
            "code": rng.choice([0, 0, 3, 9], n).astype(np.uint8),
            "amount_fen": rng.integers(1, 1 << 40, n),
        }
        dims = [
            (cols["timestamp_ns"] + CST_OFFSET_NS) // NS_PER_HOUR,
            np.minimum(cols["location_cell"] // 100, 4),
            cols["category"],
            cols["operator"],
            cols["code"],
        ]
        hashed = rollup._hashed(dims, cols["code"] == 0, cols["amount_fen"])
        got = rollup.rollup_of(cols, cfg)
        assert got.schema == hashed.schema and rows_of(got) == rows_of(hashed)
        assert sum(got["accepted_fen"].to_pylist()) == int(cols["amount_fen"][cols["code"] == 0].sum())
