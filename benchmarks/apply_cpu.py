"""CPU time per transfer of ``Ledger.apply`` on one thread: a before/after measure on a busy machine.

Wall-clock throughput on a shared machine measures the other processes as much as the code; the
sequencer thread's own CPU time (``time.thread_time_ns``) around ``apply`` + ``run_deferred`` does
not count time spent waiting for a core. Run it from each tree to compare, interleaved:

    PYTHONPATH=TREE python benchmarks/apply_cpu.py 1000000 full 150

It prints one JSON line. It also runs against trees from before issue 14 (no ``build_state``).
"""

from __future__ import annotations

import json
import sys
import time

from engine.clock import SequencerClock
from engine.ledger import Ledger
from engine.profiles import build_hooks
from loadgen.generator.workload import BatchPool, Workload, WorkloadConfig


def main(accounts: int, profile: str, batches: int) -> dict[str, float]:
    workload = Workload(WorkloadConfig(accounts=accounts))
    clock = SequencerClock.for_accounts(accounts, workload.config.payments_per_account_per_day)
    population = workload.population
    if hasattr(population, "build_state"):
        balance, bits = population.build_state()
        ledger = Ledger(accounts, balance_fen=balance, account_bits=bits, hooks=build_hooks(profile), clock=clock)
    else:  # a tree from before issue 14
        balance, wallet_class = population.initial_state()
        ledger = Ledger(
            accounts, balance_fen=balance, wallet_class=wallet_class, hooks=build_hooks(profile), clock=clock
        )
    pool = BatchPool(workload, 32, 8192)
    for _ in range(20):  # warm-up, not measured
        ledger.apply(pool.next())
        ledger.run_deferred()
    cpu_ns = wall_ns = transfers = 0
    for _ in range(batches):
        batch = pool.next()
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        ledger.apply(batch)
        ledger.run_deferred()
        cpu_ns += time.thread_time_ns() - c0
        wall_ns += time.perf_counter_ns() - t0
        transfers += len(batch)
    if not ledger.audit().ok:
        raise SystemExit("audit failed")
    for hook in ledger.hooks:
        hook.close()
    return {
        "cpu_ns_per_transfer": cpu_ns / transfers,
        "wall_tps": transfers / wall_ns * 1e9,
        "bytes_per_account": ledger.bytes_per_account(),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(float(sys.argv[1])), sys.argv[2], int(sys.argv[3]))))
