"""CPU time per transfer of ``Ledger.apply`` on one thread: a before/after measure on a busy machine.

Wall-clock throughput on a shared machine measures the other processes as much as the code; the
sequencer thread's own CPU time (``time.thread_time_ns``) around ``apply`` + ``run_deferred`` does
not count time spent waiting for a core. Run it from each tree to compare, interleaved:

    PYTHONPATH=TREE python benchmarks/apply_cpu.py 1000000 full 150

It prints one JSON line: besides the CPU, the share of transfers the exact one-at-a-time loop
decided and a digest of every code and a sample of the final balances (equal digests: the two
trees gave the same results). ``--scenario FILE`` (e.g. ``full`` with ``surveillance_log`` in
buffer mode, ``benchmarks.trove_ingest_ratio.buffer_scenario``), ``--batch`` and ``--pool``
(batches generated up front and replayed) as in the 2026-12-04 A/B at 5x10^7 accounts:

    PYTHONPATH=TREE python benchmarks/apply_cpu.py 50e6 full 1200 --scenario F --batch 4096 --pool 64

It also runs against trees from before issue 14 (no ``build_state``), without ``--scenario``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from engine.clock import SequencerClock
from engine.ledger import Ledger
from engine.profiles import build_hooks
from loadgen.generator.workload import BatchPool, Workload, WorkloadConfig


def main(
    accounts: int, profile: str, batches: int, scenario: str | None = None, batch: int = 8192, pool_batches: int = 32
) -> dict[str, float | str]:
    workload = Workload(WorkloadConfig(accounts=accounts))
    clock = SequencerClock.for_accounts(accounts, workload.config.payments_per_account_per_day)
    population = workload.population
    hooks = build_hooks(profile) if scenario is None else build_hooks(profile, scenario)
    if hasattr(population, "build_state"):
        balance, bits = population.build_state()
        ledger = Ledger(accounts, balance_fen=balance, account_bits=bits, hooks=hooks, clock=clock)
    else:  # a tree from before issue 14
        balance, wallet_class = population.initial_state()
        ledger = Ledger(accounts, balance_fen=balance, wallet_class=wallet_class, hooks=hooks, clock=clock)
    pool = BatchPool(workload, pool_batches, batch)
    for _ in range(20):  # warm-up, not measured
        ledger.apply(pool.next())
        ledger.run_deferred()
    exact_before = ledger.stats.exact_path_transfers
    digest = hashlib.sha256()
    cpu_ns = wall_ns = transfers = 0
    for _ in range(batches):
        transfers_batch = pool.next()
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        codes = ledger.apply(transfers_batch)
        ledger.run_deferred()
        cpu_ns += time.thread_time_ns() - c0
        wall_ns += time.perf_counter_ns() - t0
        transfers += len(transfers_batch)
        digest.update(codes.tobytes())
    if not ledger.audit().ok:
        raise SystemExit("audit failed")
    digest.update(ledger.balance_of(range(0, accounts, max(1, accounts // 1_000_003))).tobytes())
    for hook in ledger.hooks:
        hook.close()
    return {
        "cpu_ns_per_transfer": cpu_ns / transfers,
        "wall_tps": transfers / wall_ns * 1e9,
        "bytes_per_account": ledger.bytes_per_account(),
        "exact_path_share": (ledger.stats.exact_path_transfers - exact_before) / transfers,
        "digest": digest.hexdigest()[:16],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("accounts", type=float)
    parser.add_argument("profile")
    parser.add_argument("batches", type=int)
    parser.add_argument("--scenario", default=None, help="scenario TOML (default: the shipped one)")
    parser.add_argument("--batch", type=int, default=8192, help="transfers per batch (default 8192)")
    parser.add_argument("--pool", type=int, default=32, help="batches generated up front, replayed (default 32)")
    args = parser.parse_args()
    print(json.dumps(main(int(args.accounts), args.profile, args.batches, args.scenario, args.batch, args.pool)))
