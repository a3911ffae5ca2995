"""Generator rates: making payments (``Workload.batch``) and replaying them (``ReplayPool.take``).

Usage: python benchmarks/generator_rate.py [--batch 8192] [--frame 1000] [--pool 65536] [--rounds 5]

``generate``: payments/s of ``Workload.batch`` in batches of ``--batch`` (persons and planted
behaviours included): what ``engine`` and the gateways spend before the measured window.
``replay``: payments/s of ``ReplayPool.take`` in frames of ``--frame`` over a pool of ``--pool``
(what a gateway does per frame in the measured window, each pass planting the behaviours of its
own ids included), against ``slice``: the same frames as a plain copy of the pool with shifted ids
(the replay before issue 16, whose later passes carried the first pass's planted rows under other
ids). Rounds of ~0.4 s of CPU time each, interleaved, best round kept; CPU time (not wall time) so
that a shared machine's contention skews all alike. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best_rate(rounds: int, work: dict[str, Callable[[], int]]) -> dict[str, float]:
    """Best payments/s of each ``work`` (a call returns the payments it made), rounds interleaved."""
    best = dict.fromkeys(work, 0.0)
    for _ in range(rounds):
        for name, step in work.items():
            t0, made = time.process_time(), 0
            while time.process_time() - t0 < 0.4:
                made += step()
            best[name] = max(best[name], made / (time.process_time() - t0))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--frame", type=int, default=1000)
    p.add_argument("--pool", type=int, default=1 << 16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--accounts", type=int, default=1_000_000)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from loadgen.generator.workload import ReplayPool, Workload, WorkloadConfig

    config = WorkloadConfig(accounts=args.accounts, seed=1)
    generator = Workload(config)
    pool = ReplayPool(Workload(config), args.pool)
    plain = pool.take(0, args.pool)
    at = {"generate": 0, "replay": 0, "slice": 0}

    def generate() -> int:
        generator.batch(args.batch, first_id=at["generate"])
        at["generate"] += args.batch
        return args.batch

    def frames(name: str, take: Callable[[int, int], object]) -> Callable[[], int]:
        def step() -> int:
            position = at[name]
            n = min(args.frame, args.pool - position % args.pool)  # a frame stays within one pass
            take(position, n)
            at[name] += n
            return n

        return step

    def sliced(position: int, n: int) -> object:
        passes, row = divmod(position, args.pool)
        records = plain[row : row + n].copy()
        records["transfer_id"] += passes * args.pool
        return records

    best = best_rate(
        args.rounds, {"generate": generate, "replay": frames("replay", pool.take), "slice": frames("slice", sliced)}
    )
    rates = {f"{k}_per_s": round(v) for k, v in best.items()}
    print(
        json.dumps(
            {
                "batch": args.batch,
                "frame": args.frame,
                **rates,
                "replay/slice": round(best["replay"] / best["slice"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
