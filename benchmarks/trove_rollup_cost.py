"""CPU per row of a run's rollup (``engine.trove.rollup``), beside the writer's whole run write.

The writer's flusher writes a tier-0 run (two sorted Parquet files) and now its rollup; this
times both on one thread (``time.thread_time_ns``: the CPU the hook is charged), alternately, on
a memtable of seeded rows (``segment_rows``, 2^22 by default), and prints one JSON line: rollup
ns/row, run write ns/row (with its rollup), their ratio, and the rollup's bytes per row.

    python -m benchmarks.trove_rollup_cost --rows 4194304 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.trove import rollup
from engine.trove.bench import seeded_batches
from engine.trove.config import TroveConfig
from engine.trove.schema import arrow_schema, concat_rows, rows_of
from engine.trove.store import Trove


def measure(rows: int, rounds: int, accounts: int) -> dict[str, float]:
    """Alternate a rollup alone and a whole run write (its rollup included), ``rounds`` times each."""
    cols = concat_rows(
        [
            rows_of(b, np.zeros(len(b), np.uint8), i + 1)
            for i, b in enumerate(seeded_batches(rows, accounts, seed=1, batch_rows=1 << 16))
        ]
    )
    rollup_ns: list[float] = []
    run_ns: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cbdc-rollup-cost-") as tmp:
        config = TroveConfig(dir=tmp, process=False, reserve_free_bytes=0)
        trove = Trove.open(config, start=False)
        try:
            schema = arrow_schema()
            for i in range(rounds):
                t0 = time.thread_time_ns()
                run = trove._write_run(cols, i, [(1, 1)], schema, final=False)
                run_ns.append((time.thread_time_ns() - t0) / rows)
                t0 = time.thread_time_ns()
                rollup.write_run_rollup(Path(tmp), run, cols, config)
                rollup_ns.append((time.thread_time_ns() - t0) / rows)
            size = rollup.rollup_path(Path(tmp), run.file("payer")).stat().st_size
            run_bytes = run.bytes
        finally:
            trove.close()
    return {
        "rows": rows,
        "rollup_ns_per_row": statistics.median(rollup_ns),
        "run_write_ns_per_row": statistics.median(run_ns),
        "rollup_share_of_run_write": statistics.median(rollup_ns) / statistics.median(run_ns),
        "rollup_bytes_per_row": size / rows,
        "run_bytes_per_row": run_bytes / rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1 << 22, help="rows of the memtable (the writer's segment_rows)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=10**8, help="seeded accounts (a day per this many rows)")
    args = parser.parse_args()
    print(json.dumps(measure(args.rows, args.rounds, args.accounts)))


if __name__ == "__main__":
    main()
