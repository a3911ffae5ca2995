"""The person-centred query kinds as lookups (issue 17): two-hop counterparties from the reader's
multi-account lookup, device linkage and co-location through the runs' sidecars.

Each kind is compared with a pure-Python reference over the rows that reached the ledger (random
workloads, random windows) and with its DuckDB form (``*_sql``, the path before), row for row and
in order.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import msgspec
import numpy as np
import pytest

from engine.simtime import NS_PER_HOUR
from engine.trove.query import SIDECAR_DIR, TroveReader, sidecar_source
from engine.trove.schema import COLUMNS
from engine.trove.store import Trove
from loadgen.cli.trove import stats as trove_stats
from tests.engine.test_trove import ACCOUNTS, START_NS, load, load_sync, random_entries, reference_rows, small_config

ALL_TIME = (-(2**63), 2**63 - 1)


def as_dicts(ref: list[tuple[int, ...]]) -> list[dict[str, int]]:
    return [dict(zip(COLUMNS, r, strict=True)) for r in ref]


def in_window(r: dict[str, int], lo: int, hi: int) -> bool:
    return lo <= r["timestamp_ns"] < hi


def ref_counterparties(rows: list[dict[str, int]], a: int, hops: int, top: int, lo: int, hi: int) -> list[dict]:
    def ranked(srcs: list[int], exclude: set[int], hop: int) -> list[dict]:
        pays: dict[int, int] = defaultdict(int)
        fen: dict[int, int] = defaultdict(int)
        via: dict[int, set[int]] = defaultdict(set)
        for r in rows:
            if r["payer"] == r["payee"] or not in_window(r, lo, hi):
                continue
            for src, cp in ((r["payer"], r["payee"]), (r["payee"], r["payer"])):
                if src in srcs and cp not in exclude:
                    pays[cp] += 1
                    fen[cp] += r["amount_fen"]
                    via[cp].add(src)
        order = sorted(pays, key=lambda c: (-len(via[c]), -pays[c], -fen[c], c))[:top]
        return [
            {"hop": hop, "account": c, "payments": pays[c], "amount_fen": fen[c], "via": len(via[c])} for c in order
        ]

    first = ranked([a], {a}, 1)
    if hops == 1 or not first:
        return first
    near = [c["account"] for c in first]
    return first + ranked(near, {a, *near}, 2)


def ref_same_device(rows: list[dict[str, int]], a: int, lo: int, hi: int) -> list[dict]:
    mine = {r["device_id"] for r in rows if r["payer"] == a and in_window(r, lo, hi)}
    pays: dict[int, int] = defaultdict(int)
    devices: dict[int, set[int]] = defaultdict(set)
    for r in rows:
        if r["device_id"] in mine and r["payer"] != a and in_window(r, lo, hi):
            pays[r["payer"]] += 1
            devices[r["payer"]].add(r["device_id"])
    order = sorted(pays, key=lambda p: (-len(devices[p]), -pays[p], p))
    return [{"account": p, "payments": pays[p], "shared_devices": len(devices[p])} for p in order]


def ref_co_location(rows: list[dict[str, int]], cell: int, lo: int, hi: int) -> list[dict]:
    times: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        if r["location_cell"] == cell and in_window(r, lo, hi):
            times[r["payer"]].append(r["timestamp_ns"])
    order = sorted(times, key=lambda p: (-len(times[p]), p))
    return [
        {"account": p, "payments": len(t), "first_ns": min(t), "last_ns": max(t)}
        for p, t in ((p, times[p]) for p in order)
    ]


def windows(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """All time, and ``n`` random windows within the workload's three hours."""
    out = [ALL_TIME]
    for _ in range(n):
        lo = START_NS + int(rng.integers(0, 3 * NS_PER_HOUR))
        out.append((lo, lo + int(rng.integers(1, 2 * NS_PER_HOUR))))
    return out


@pytest.fixture
def trove_and_ref(tmp_path, rng):
    entries = list(random_entries(rng, 40))
    # Final runs in smaller row groups than the merges' (the lookups' layout): every kind reads them right.
    trove = Trove.open(small_config(tmp_path / "t", partition_s=3600, final_row_group_rows=16))
    load(trove, entries)
    trove.compact_all()
    yield trove, as_dicts(reference_rows(entries))
    trove.close()


def test_each_kind_equals_the_reference_and_the_sql_form(trove_and_ref, rng) -> None:
    trove, rows = trove_and_ref
    reader = TroveReader(trove=trove)
    try:
        for lo, hi in windows(rng, 3):
            for a in rng.choice(ACCOUNTS, 6, replace=False).tolist():
                for hops, top in ((1, 50), (2, 50), (2, 3), (2, 1)):
                    want = ref_counterparties(rows, a, hops, top, lo, hi)
                    got = reader.counterparties(a, hops=hops, top=top, since=lo, until=hi).to_pylist()
                    assert got == want, (a, hops, top)
                    assert reader.counterparties_sql(a, hops=hops, top=top, since=lo, until=hi).to_pylist() == want
                want = ref_same_device(rows, a, lo, hi)
                assert reader.same_device(a, lo, hi).to_pylist() == want
                assert reader.same_device_sql(a, lo, hi).to_pylist() == want
            for cell in rng.choice(20, 4, replace=False).tolist():
                want = ref_co_location(rows, cell, lo, hi)
                assert reader.co_location(cell, lo, hi).to_pylist() == want
                assert reader.co_location_sql(cell, lo, hi).to_pylist() == want
        assert any(ref_same_device(rows, a, *ALL_TIME) for a in range(ACCOUNTS))  # the test has links to find
        assert reader.same_device(ACCOUNTS + 5).num_rows == 0  # nobody: no devices, no links
        assert reader.counterparties(ACCOUNTS + 5, hops=2).num_rows == 0
    finally:
        reader.close()


def test_two_hops_read_each_row_group_once_for_all_the_accounts(trove_and_ref) -> None:
    """The hop-2 lookup takes the hop-1 accounts at once: one pass over each file's candidate row
    groups, the same rows as one lookup per account, and fewer account-column reads."""
    trove, _ = trove_and_ref
    reader = TroveReader(trove=trove, lookup_threads=1)
    accounts = [10, 11, 12, 13]
    try:
        with trove.snapshot() as segs:
            segs = list(segs)
            before = reader.lookup_counts["account_column_groups"]
            together = reader._both_ways(segs, accounts, *ALL_TIME)
            at_once = reader.lookup_counts["account_column_groups"] - before
            apart = [reader._both_ways(segs, [a], *ALL_TIME) for a in accounts]
            one_by_one = reader.lookup_counts["account_column_groups"] - before - at_once
        for way in (0, 1):
            key = "payer" if way == 0 else "payee"
            got = sorted(r["transfer_id"] for t in together[way] for r in t.to_pylist())
            want = sorted(r["transfer_id"] for parts in apart for t in parts[way] for r in t.to_pylist())
            assert got == want and got, key
        assert at_once < one_by_one  # neighbouring accounts share row groups (64-row groups, 60 accounts)
    finally:
        reader.close()


def test_sidecars_are_built_once_named_by_digest_and_pruned_with_their_runs(tmp_path, rng) -> None:
    """A directory reader builds a run's sidecar on first use, reuses it, never lets it describe
    another file, and removes it once a merge deleted its run; answers stay the reference's."""
    entries = list(random_entries(rng, 40))
    root = tmp_path / "t"
    trove = Trove.open(small_config(root, partition_s=86_400), start=False)
    rows = as_dicts(reference_rows(entries))
    try:
        load_sync(trove, entries)
        reader = TroveReader.open(root)
        a = int(entries[0][1]["payer"][0])
        assert reader.same_device(a).to_pylist() == ref_same_device(rows, a, *ALL_TIME)
        built = reader.lookup_counts["sidecars_built"]
        runs = [s for s in reader._segments if s.kind == "run"]
        assert built == len(runs) > 1
        sides = sorted((root / SIDECAR_DIR / "device_id").glob("*.parquet"))
        assert {sidecar_source(p) for p in sides} == {s.file("payer").path for s in runs}
        digests = {(s.file("payer").sha256 or s.file("payer").footer_sha256)[:24] for s in runs}
        assert {p.name.split(".", 1)[0] for p in sides} == digests
        assert reader.same_device(a).num_rows == len(ref_same_device(rows, a, *ALL_TIME))
        assert reader.lookup_counts["sidecars_built"] == built  # reused, not rebuilt
        counts = reader.lookup_counts  # the sidecars' reads are counted apart from the account lookups'
        assert counts["sidecar_key_groups"] >= counts["sidecar_groups"] > 0 and counts["position_groups"] > 0

        trove.compact_all()  # merges delete the runs the sidecars were built from
        gone = [p for p in sides if not (root / sidecar_source(p)).exists()]
        assert gone, "the merge deleted no run: the test would prove nothing"
        for cell in range(5):
            assert reader.co_location(cell).to_pylist() == ref_co_location(rows, cell, *ALL_TIME)
        assert reader.same_device(a).to_pylist() == ref_same_device(rows, a, *ALL_TIME)
        assert not any(p.exists() for p in gone)
        left = {sidecar_source(p) for p in (root / SIDECAR_DIR).glob("*/*.parquet")}
        assert left == {s.file("payer").path for s in reader._segments if s.kind == "run"}
        stats = reader.build_sidecars()  # everything is there already
        assert stats["built"] == 0 and stats["bytes"] > 0
        assert trove_stats(str(root))["sidecar_bytes"] == stats["bytes"]
        reader.close()
    finally:
        trove.close()


def test_arrival_ordered_segments_are_read_whole(trove_and_ref, rng) -> None:
    """Segments that are not runs (the arrival-ordered files of older troves) have no sidecar:
    ``_keyed`` reads them whole, with the same answers."""
    trove, rows = trove_and_ref
    root = Path(trove.root)
    with trove.snapshot() as segs:
        as_ingest = [msgspec.structs.replace(s, kind="ingest") for s in segs]
    reader = TroveReader(root=root, segments=as_ingest, config=trove.config)
    try:
        for a in rng.choice(ACCOUNTS, 5, replace=False).tolist():
            assert reader.same_device(a).to_pylist() == ref_same_device(rows, a, *ALL_TIME)
        assert reader.co_location(7).to_pylist() == ref_co_location(rows, 7, *ALL_TIME)
        assert reader.lookup_counts["sidecars_built"] == 0
    finally:
        reader.close()


def test_the_probe_stops_each_kind_at_its_bound(trove_and_ref) -> None:
    """``probe_live`` with ``max_queries``: a bounded kind gets exactly its queries and drops out of
    the rounds, and the probe ends once every kind is done (long before its ``seconds``)."""
    from benchmarks.trove_under_load import max_queries
    from engine.trove.bench import probe_live

    trove, _ = trove_and_ref
    kinds = ("payments_day", "same_device", "same_device_sql")
    bounds = max_queries("4,same_device_sql=2", kinds)
    assert bounds == {"payments_day": 4, "same_device": 4, "same_device_sql": 2}
    with pytest.raises(ValueError, match="not among --kinds"):
        max_queries("4,aggregate_hour=2", kinds)
    with pytest.raises(ValueError, match="not N or KIND=N"):
        max_queries("four", kinds)
    out = probe_live(str(trove.root), seconds=600, accounts=ACCOUNTS, seed=1, kinds=kinds, max_queries=bounds)
    assert {k: v["queries"] for k, v in out.items()} == {"payments_day": 4, "same_device": 4, "same_device_sql": 2}
    assert all(v["failed"] == 0 for v in out.values())
    with pytest.raises(ValueError, match="query kinds are"):
        probe_live(str(trove.root), seconds=1, accounts=ACCOUNTS, seed=1, kinds=("same_device_sq",))
