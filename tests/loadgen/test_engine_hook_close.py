"""``engine``'s per-hook figure includes the background work a hook does at ``close()`` (issue 17)."""

from __future__ import annotations

import numpy as np

from engine.clock import SequencerClock
from engine.hooks.base import Hook
from engine.hooks.surveillance_log import SurveillanceLog, SurveillanceLogConfig
from engine.ledger import Ledger
from engine.profiles import load_scenario
from engine.trove.config import TroveConfig
from loadgen.generator.workload import BatchPool, Workload, scenario_workload
from loadgen.harness.engine_run import measure_engine

ACCOUNTS = 5_000
#: CPU the fake hook "spends" in its background: before the measured window / queued, done at close.
WARMUP_NS = 7 * 10**9
AT_CLOSE_NS = 3 * 10**9


class _QueuingHook(Hook):
    """Observes every batch; its background CPU grows only when its queue is drained (or it closes)."""

    name = "queuing"
    deferred = True

    def __init__(self) -> None:
        self.drains = 0
        self._ns = 0

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        pass

    def drain_background(self) -> None:
        self.drains += 1
        self._ns += WARMUP_NS  # the warm-up's queued work, done before the window opens

    def background_ns(self) -> int:
        return self._ns

    def close(self) -> None:
        self._ns += AT_CLOSE_NS  # the measured window's queued work, done while closing


def _ledger(hooks: list[Hook]) -> tuple[Ledger, BatchPool]:
    workload = Workload(scenario_workload(load_scenario(None), accounts=ACCOUNTS, seed=5))
    balance, bits = workload.population.build_state()
    clock = SequencerClock.for_accounts(ACCOUNTS, workload.config.payments_per_account_per_day)
    ledger = Ledger(ACCOUNTS, balance_fen=balance, account_bits=bits, hooks=hooks, clock=clock)
    return ledger, BatchPool(workload, 4, 512)


def test_hook_figure_counts_work_done_at_close_and_not_the_warmups() -> None:
    hook = _QueuingHook()
    ledger, pool = _ledger([hook])
    r = measure_engine(ledger, pool, profile="test", batch=512, seconds=0.05, warmup=0.01, seed=5)
    assert hook.drains == 1
    per_transfer_ns = r.hooks["queuing"]
    # The close-time work is in the figure; the warm-up's (drained before the window) is not.
    assert per_transfer_ns * r.transfers >= AT_CLOSE_NS
    assert per_transfer_ns * r.transfers < WARMUP_NS


class _RecordingLog(SurveillanceLog):
    """The trove hook, noting its child's CPU when the measured window opens (after the drain)."""

    cpu_at_window_start_ns = -1

    def drain_background(self) -> None:
        super().drain_background()
        self.cpu_at_window_start_ns = self.background_ns()


def test_trove_child_cpu_after_the_window_is_in_the_hook_figure() -> None:
    # A long flush interval: every row of the window is still queued when the window ends, and
    # the child writes them while closing.
    hook = _RecordingLog(SurveillanceLogConfig(trove=TroveConfig(flush_interval_s=60.0, segment_rows=1 << 22)))
    ledger, pool = _ledger([hook])
    r = measure_engine(ledger, pool, profile="test", batch=512, seconds=0.1, warmup=0.02, seed=5)
    stats = r.hook_stats["surveillance_log"]
    assert stats["rows"] == stats["rows_seen"] > r.transfers  # warm-up and window rows, all written
    assert hook.cpu_at_window_start_ns >= 0
    # All the child's CPU from the window's start to its exit (exact, reported at close) is charged.
    charged_ns = r.hooks["surveillance_log"] * r.transfers
    assert charged_ns >= stats["process_cpu_ns"] - hook.cpu_at_window_start_ns
