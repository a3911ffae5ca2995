"""Snapshots (issue 15): restart time and peak RSS stay flat as the journal grows past 10x the
snapshot interval, while a whole-journal replay grows with it. Outside the default run (~40 s):

    python -m pytest benchmarks/test_bench_snapshots.py -m benchmark -s

The figures (one JSON line per restart) are printed; ``benchmarks/snapshot_bench.py`` has the
commands for the README's table and for snapshot stall, time and size by ledger size.
"""

from __future__ import annotations

import pytest

from benchmarks.snapshot_bench import BATCH, restart_table, snapshot_figures

pytestmark = pytest.mark.benchmark

ACCOUNTS = 1_000_000
INTERVAL = 100_000


def test_restart_is_flat_with_snapshots_and_grows_without() -> None:
    rows = restart_table(ACCOUNTS, INTERVAL, 12)
    snap = [r for r in rows if r["snapshot_every"] != "off"]
    full = [r for r in rows if r["snapshot_every"] == "off"]
    # Replay after the newest snapshot is bounded by the interval (plus the batches written while
    # the previous child was still writing), not by the journal: at 12x as at 1x.
    bound = 4 * INTERVAL // BATCH + 2
    assert all(r["batches_replayed"] <= bound for r in snap), snap
    assert full[-1]["batches_replayed"] >= 10 * INTERVAL // BATCH  # the comparison replays everything
    # Memory is bounded by what a restart reads at once (a segment, twice), not by the journal.
    segment_mib = 32
    assert max(r["peak_rss_mib"] for r in snap) <= snap[0]["peak_rss_mib"] + 2 * segment_mib + 16, snap
    # Disk: two snapshots (~17 MiB each here), the journal since the older one (a few intervals)
    # and the open segments, whatever the journal's length; without snapshots it grows with it.
    per_interval_mib = full[0]["disk_mib"]
    assert max(r["disk_mib"] for r in snap) <= 2 * 17 + 4 * per_interval_mib + 2 * segment_mib, snap
    assert full[-1]["disk_mib"] >= 10 * per_interval_mib


def test_snapshot_stall_time_and_size_at_a_million_accounts() -> None:
    figures = snapshot_figures(ACCOUNTS)
    print(figures)
    assert figures["snapshot_mib"] >= figures["state_mib"]  # every state byte, plus the footer
