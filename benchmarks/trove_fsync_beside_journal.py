"""A journal's fsync beside a trove file being written: one fsync at the end, or synced as it goes.

The server fsyncs its journal on the sequencer's thread (``--fsync interval:10``: every 10 ms
under load), and the trove writes its Parquet files on the same disk. This measures what the one
costs the other without the server: a thread appends ``--journal-kb`` and fsyncs every 10 ms (the
journal's pattern at 300,000/s: ~150 KB a fsync) in a temporary directory under ``--dir``, while
``files.write_parquet`` writes a ``--mb`` file there, alternately with ``sync_bytes=0`` (one
fsync at the end, as before) and ``files.SYNC_BYTES`` (incremental writeback), ``--rounds``
times. Prints one JSON object: per variant and round, the file's write time and the journal
fsyncs' p50/p99/max while it was written, and before it (alone).

Shared-machine command (2026-12-04; the figures are ratios within one run):

    python -m benchmarks.trove_fsync_beside_journal --mb 200 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engine.trove import files


def _quantiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``values`` (seconds) in ms; empty: zeros."""
    if not values:
        return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    v = np.sort(np.asarray(values)) * 1e3
    return {
        "n": len(v),
        "p50_ms": float(v[len(v) // 2]),
        "p99_ms": float(v[min(len(v) - 1, int(0.99 * len(v)))]),
        "max_ms": float(v[-1]),
    }


class _Journal:
    """A thread that appends ``chunk`` bytes and fsyncs every ``period_s``, recording each fsync."""

    def __init__(self, path: Path, chunk: int, period_s: float) -> None:
        self.path, self.period_s = path, period_s
        self.data = os.urandom(chunk)
        self.fsyncs: list[tuple[float, float]] = []  # (start, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Journal:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            due = time.perf_counter()
            while not self._stop.is_set():
                os.write(fd, self.data)
                t = time.perf_counter()
                os.fsync(fd)
                self.fsyncs.append((t, time.perf_counter() - t))
                due += self.period_s
                time.sleep(max(0.0, due - time.perf_counter()))
        finally:
            os.close(fd)

    def between(self, a: float, b: float) -> list[float]:
        return [d for t, d in self.fsyncs if a <= t <= b]


def measure(root: Path, table: pa.Table, sync_bytes: int, journal_kb: int) -> dict[str, Any]:
    """Write ``table`` once under ``root`` with ``sync_bytes`` beside a journal; the figures."""
    with _Journal(root / "journal.bin", journal_kb << 10, 0.010) as journal:
        time.sleep(1.0)
        t0 = time.perf_counter()
        entry, _ = files.write_parquet(
            root,
            "file.parquet",
            "payer",
            table.to_batches(max_chunksize=1 << 20),
            table.schema,
            trove_id="bench",
            segment_id=1,
            row_group_rows=1 << 20,
            compression="none",
            sync_bytes=sync_bytes,
        )
        t1 = time.perf_counter()
        time.sleep(0.5)
    (root / "file.parquet").unlink()
    (root / "journal.bin").unlink()
    return {
        "sync_bytes": sync_bytes,
        "file_mb": entry.bytes / 1e6,
        "write_s": t1 - t0,
        "journal_fsync_alone": _quantiles(journal.between(t0 - 1.0, t0)),
        "journal_fsync_while_written": _quantiles(journal.between(t0, t1)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=200, help="size of the trove file written (plain Parquet)")
    p.add_argument("--rounds", type=int, default=3, help="alternated pairs (one fsync at the end / incremental)")
    p.add_argument("--journal-kb", type=int, default=150, help="bytes the journal appends per fsync")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="filesystem to measure on (a temporary dir inside)")
    args = p.parse_args(argv)
    rows = (args.mb << 20) // 16
    rng = np.random.default_rng(1)
    table = pa.table({"a": rng.integers(0, 1 << 62, rows), "b": rng.integers(0, 1 << 62, rows)})
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        runs = [
            {"round": r, **measure(Path(d), table, sync_bytes, args.journal_kb)}
            for r in range(args.rounds)
            for sync_bytes in (0, files.SYNC_BYTES)
        ]
    print(json.dumps({"dir": args.dir, "mb": args.mb, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
