"""``trove bench``: bulk-load a seeded trove straight through the writer, then time each query kind.

No server and no ledger: seeded batches (every row code OK unless drawn otherwise) go through
``append`` exactly as the hook hands them over (to the child process, as the server's hook does,
unless the configuration says ``process = false``), so ingest rows/s is the writer's (the
caller only copies batches into the ring), compaction is timed apart, and each query kind runs
against the compacted trove for ``queries`` random subjects.

``probe_live`` times the same query kinds against a trove a server is writing (``cbdc-bench
trove probe DIR``): each round opens the committed manifest afresh, so it sees new segments. The rows model what the
queries need: each account pays mostly from its own device and home cell, and a few payments use
another account's device, so device linkage and co-location have answers.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine.records import MAX_BATCH, empty_batch
from engine.simtime import NS_PER_DAY, NS_PER_HOUR
from engine.trove import rollup
from engine.trove.config import TroveConfig
from engine.trove.manifest import load_manifest
from engine.trove.process import TroveProcess, process_cpu_ns
from engine.trove.query import TroveReader
from engine.trove.store import Trove

#: 2026-11-22 08:00 China Standard Time, the workload's simulated start.
BENCH_START_NS = 1_795_305_600 * 10**9
QUERY_KINDS = ("payments_day", "counterparties_2hop", "co_location_hour", "same_device", "aggregate_hour")
#: The kinds through DuckDB as they were before the lookups (``TroveReader.*_sql``): not run by
#: default; ``--kinds counterparties_2hop,counterparties_2hop_sql`` compares old and new in one run.
SQL_KINDS = ("counterparties_2hop_sql", "co_location_hour_sql", "same_device_sql", "aggregate_hour_sql")
#: Kinds that read the runs' sidecars (built ahead by ``TroveReader.build_sidecars`` when timed).
SIDECAR_KINDS = ("co_location_hour", "same_device")


class BenchResult(msgspec.Struct, frozen=True):
    rows: int
    accounts: int
    seed: int
    ingest_s: float
    ingest_rows_per_s: float
    compaction_s: float
    writer_cpu_s: float
    compaction_cpu_s: float
    bytes_on_disk: int
    bytes_per_row: float
    #: Projected disk per simulated day at 300,000 payments/s (both orderings, zstd).
    gb_per_day_at_300k_tps: float
    runs: int
    #: Query kind -> {"p50_ms", "p99_ms", "mean_rows"}.
    queries: dict[str, dict[str, float]]
    #: CPU of the trove's child process (writer, compactor, feeder): the whole cost of the load.
    process_cpu_s: float = 0.0
    #: Time the child's threads were runnable but waiting for a CPU (nice 10 on a busy machine):
    #: wall time that is not the trove's cost.
    process_runqueue_wait_s: float = 0.0
    #: The trove's CPU per row once ingest is durable and the merges its policy calls for are done
    #: (``compact_due``): what a trove whose compaction keeps up costs per payment. The final
    #: ``compact_all`` (every partition merged into as few runs as the tiers allow) is on top.
    steady_cpu_ns_per_row: float = 0.0


def seeded_times_ns(rows: np.ndarray, accounts: int, start_ns: int = BENCH_START_NS) -> np.ndarray:
    """The time of seeded rows by their number: one simulated day per ``accounts`` payments (the
    one formula, so ``bulk.build`` derives the same times as ``seeded_batches`` draws)."""
    return start_ns + (rows * (NS_PER_DAY / accounts)).astype(np.int64)


def seeded_batches(rows: int, accounts: int, seed: int, batch_rows: int = 8_192, start_ns: int = BENCH_START_NS) -> Any:
    """Seeded batches totalling ``rows`` from ``start_ns``: simulated time advances one day per
    ``accounts`` payments."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < rows:
        n = min(batch_rows, rows - done)
        b = empty_batch(n)
        payer = rng.integers(0, accounts, n, dtype=np.uint32)
        payee = rng.integers(0, accounts - 1, n, dtype=np.uint32)
        payee += payee >= payer  # never the payer
        b["payer"], b["payee"] = payer, payee
        b["transfer_id"] = np.arange(done, done + n)
        b["timestamp_ns"] = seeded_times_ns(np.arange(done, done + n), accounts, start_ns)
        b["amount_fen"] = rng.lognormal(np.log(5_000), 1.1, n).astype(np.int64) + 1
        b["category"] = rng.integers(0, 16, n, dtype=np.uint16)
        b["operator"] = payer % 64
        borrowed = rng.random(n) < 0.01  # a few payments from another account's device
        owner = np.where(borrowed, rng.integers(0, accounts, n, dtype=np.uint32), payer)
        b["device_id"] = owner.astype(np.uint64) * 2 + rng.integers(0, 2, n, dtype=np.uint64)
        away = rng.random(n) < 0.2
        b["location_cell"] = np.where(away, rng.integers(0, 1 << 20, n), payer.astype(np.int64) % (1 << 20))
        yield b
        done += n


def bulk_load(
    trove: Trove | TroveProcess, rows: int, accounts: int, seed: int, *, start_ns: int = BENCH_START_NS
) -> None:
    """Append ``rows`` seeded rows (code OK, times from ``start_ns``) to an open trove, numbered on
    from what it holds; flush."""
    codes = np.zeros(MAX_BATCH, dtype=np.uint8)
    batches = seeded_batches(rows, accounts, seed, start_ns=start_ns)
    for seq, batch in enumerate(batches, start=trove.durable_through_seq + 1):
        trove.append(batch, codes[: len(batch)], seq)
    trove.flush()


@contextmanager
def bench_dir(directory: str, prefix: str) -> Iterator[Path]:
    """``directory``, or (when "") a fresh temporary one, removed with everything in it afterwards."""
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        if not directory:
            shutil.rmtree(root, ignore_errors=True)


def run_bench(
    *,
    rows: int,
    accounts: int,
    seed: int,
    queries: int,
    directory: str = "",
    config: TroveConfig | None = None,
    kinds: tuple[str, ...] = QUERY_KINDS,
) -> BenchResult:
    """Load ``rows`` rows into a trove at ``directory`` (temporary if ""), compact, time the queries."""
    if not rows > 0 or accounts < 2 or queries < 1:
        raise ValueError("trove bench needs rows >= 1, accounts >= 2, queries >= 1")
    with bench_dir(directory, "cbdc-trove-bench-") as root:
        cfg = msgspec.structs.replace(config or TroveConfig(), dir=str(root))
        trove = TroveProcess.open(cfg) if cfg.process else Trove.open(cfg)
        try:
            t0 = time.perf_counter()
            bulk_load(trove, rows, accounts, seed)
            ingest_s = time.perf_counter() - t0
            trove.compact_due()
            steady_cpu_ns = _trove_cpu_ns(trove)
            t1 = time.perf_counter()
            trove.compact_all()
            compaction_s = time.perf_counter() - t1
            timings = time_queries(TroveReader(trove=trove), accounts, seed, queries, kinds=kinds)
        finally:
            trove.close()
    stats = trove.stats()  # after close (and the directory's removal): the final figures (the child's exact CPU)
    per_row = stats["bytes_per_row"]
    return BenchResult(
        rows=stats["rows"],
        accounts=accounts,
        seed=seed,
        ingest_s=ingest_s,
        ingest_rows_per_s=rows / ingest_s,
        compaction_s=compaction_s,
        writer_cpu_s=stats["writer_cpu_ns"] / 1e9,
        compaction_cpu_s=stats["compaction_cpu_ns"] / 1e9,
        bytes_on_disk=stats["bytes_on_disk"],
        bytes_per_row=per_row,
        gb_per_day_at_300k_tps=per_row * 300_000 * 86_400 / 1e9,
        runs=stats["runs"],
        queries=timings,
        process_cpu_s=trove.background_cpu_ns() / 1e9 if isinstance(trove, TroveProcess) else 0.0,
        process_runqueue_wait_s=stats.get("process_runqueue_wait_ns", 0) / 1e9,
        steady_cpu_ns_per_row=steady_cpu_ns / rows,
    )


def _trove_cpu_ns(trove: Trove | TroveProcess) -> int:
    """The trove's CPU so far: its child's (read now, all threads) or its writer and compactor threads'."""
    return process_cpu_ns(trove.pid) if isinstance(trove, TroveProcess) else trove.background_cpu_ns()


def _query_kinds(reader: TroveReader, day_start_ns: int) -> dict[str, Any]:
    """Each query kind as a function of a subject account, over a day / its first hour from ``day_start_ns``."""
    day = (day_start_ns, day_start_ns + NS_PER_DAY)
    hour = (day_start_ns, day_start_ns + NS_PER_DAY // 24)
    # The aggregates: the day's last whole CST hour (a dashboard's hour; a window cutting an hour
    # reads that hour's rows, and a trove of less than a day has no rows in the day's first hour).
    last_hour = (rollup.hour_floor(day[1]) - NS_PER_HOUR, rollup.hour_floor(day[1]))
    return {
        "payments_day": lambda a: reader.payments(a, *day),
        "counterparties_2hop": lambda a: reader.counterparties(a, hops=2, top=50),
        "co_location_hour": lambda a: reader.co_location(a % (1 << 20), *hour),
        "same_device": lambda a: reader.same_device(a),
        "aggregate_hour": lambda a: reader.aggregate(("region", "category"), "hour", *last_hour),
        "counterparties_2hop_sql": lambda a: reader.counterparties_sql(a, hops=2, top=50),
        "co_location_hour_sql": lambda a: reader.co_location_sql(a % (1 << 20), *hour),
        "same_device_sql": lambda a: reader.same_device_sql(a),
        "aggregate_hour_sql": lambda a: reader.aggregate_sql(("region", "category"), "hour", *last_hour),
    }


def _percentiles(ms: list[float], n_rows: list[int]) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(ms, 50)) if ms else 0.0,
        "p99_ms": float(np.percentile(ms, 99)) if ms else 0.0,
        "mean_rows": float(np.mean(n_rows)) if n_rows else 0.0,
        "queries": float(len(ms)),
    }


def time_queries(
    reader: TroveReader,
    accounts: int,
    seed: int,
    queries: int,
    *,
    kinds: tuple[str, ...] = QUERY_KINDS,
    day_start_ns: int = BENCH_START_NS,
) -> dict[str, dict[str, float]]:
    """p50/p99 of ``queries`` random subjects per query kind, over the day from ``day_start_ns``
    (the hour kinds: its first hour) (closes ``reader``)."""
    _check_kinds(kinds)
    # The same subjects for every kind: a kind and its ``_sql`` form answer for the same people.
    subjects = np.random.default_rng([seed, 1]).integers(0, accounts, queries).tolist()
    out: dict[str, dict[str, float]] = {}
    try:
        for kind, fn in _query_kinds(reader, day_start_ns).items():
            if kind not in kinds:
                continue
            fn(0)  # warm-up: footers cached, sidecars built, kept apart from the measured values
            ms, n_rows = [], []
            for a in subjects:
                t0 = time.perf_counter()
                n_rows.append(fn(a).num_rows)
                ms.append((time.perf_counter() - t0) * 1e3)
            out[kind] = _percentiles(ms, n_rows)
    finally:
        reader.close()
    return out


def _check_kinds(kinds: tuple[str, ...]) -> None:
    unknown = set(kinds) - {*QUERY_KINDS, *SQL_KINDS}
    if unknown or not kinds:
        raise ValueError(f"query kinds are {', '.join((*QUERY_KINDS, *SQL_KINDS))}; got {', '.join(kinds) or 'none'}")


def probe_live(
    directory: str,
    *,
    seconds: float,
    accounts: int,
    seed: int,
    day_start_ns: int | None = None,
    kinds: tuple[str, ...] = QUERY_KINDS,
    max_queries: dict[str, int] | None = None,
) -> dict[str, dict[str, float]]:
    """Query latency p50/p99 per kind against a trove being written, for ``seconds``, or until every
    kind has its ``max_queries`` timed queries (kind -> bound; a kind not there is not bounded): a
    bounded run however slow a kind is; a kind that is done drops out of the rounds.

    Rounds of one query per kind over one simulated day (and its first hour): the day from
    ``day_start_ns``, or else the newest day the trove holds at each round. One reader is kept
    (as a service would keep its connection: DuckDB's cache of Parquet footers stays warm) and
    takes the newly committed manifest before each round (``TroveReader.refresh``); the first
    round is a warm-up, not timed (at least one round after it is). A query whose files the
    writer's compactor deleted under it is re-run by the reader on the fresh manifest; if that
    fails too it is counted in ``failed``. ``kinds``: the query kinds of a round (at 10^9 rows the
    scans, aggregates and two hops take seconds each: ``("payments_day",)`` times many more of
    the lookups in the same time). Each round asks every kind about the same subject.
    """
    _check_kinds(kinds)
    max_queries = max_queries or {}
    rng = np.random.default_rng([seed, 2])
    ms: dict[str, list[float]] = {}
    n_rows: dict[str, list[int]] = {}
    failed: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    reader: TroveReader | None = None
    warm = timed = False

    def pending() -> list[str]:
        return [k for k in kinds if not max_queries.get(k) or len(ms.get(k, ())) < max_queries[k]]

    try:
        # At least one timed round after the warm-up, however short ``seconds``.
        while (time.monotonic() < deadline or (warm and not timed)) and pending():
            manifest = load_manifest(Path(directory))
            if manifest is None or not manifest.segments:
                time.sleep(0.1)
                continue
            if reader is None:
                reader = TroveReader.open(directory)
            else:
                reader.refresh()
            start = (
                day_start_ns
                if day_start_ns is not None
                else max(s.max_timestamp_ns for s in manifest.segments) - NS_PER_DAY
            )
            subject = int(rng.integers(0, accounts))
            todo = pending()
            for kind, fn in _query_kinds(reader, start).items():
                if kind not in todo:
                    continue
                t0 = time.perf_counter()
                try:
                    rows = fn(subject).num_rows
                except Exception:  # a file compacted away under the query, twice over (DuckDB raises IOException)
                    failed[kind] = failed.get(kind, 0) + 1
                    continue
                if warm:
                    ms.setdefault(kind, []).append((time.perf_counter() - t0) * 1e3)
                    n_rows.setdefault(kind, []).append(rows)
            timed, warm = warm, True
    finally:
        if reader is not None:
            reader.close()
    return {k: _percentiles(v, n_rows[k]) | {"failed": float(failed.get(k, 0))} for k, v in ms.items()}
