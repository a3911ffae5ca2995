"""The trove's flushes inside the capacity plan's measured windows (issue 21).

A trove profile's runs measure whole flush periods of its writer, its search trials at least one
flush (``benchmarks/plan_first_cut.py``); the prediction says apart where the child's one core fills
once its merges run too, from the trove cost file's whole-life CPU. The costs come from a known model
(``tests.support.plan_fixtures``), never from figures typed into the test."""

from __future__ import annotations

import math

import msgspec
import pytest

from benchmarks.plan_first_cut import (
    FLUSH_WRITE_S,
    KEEPS_TROVE,
    RATES,
    RUN_S,
    RUN_SECONDS,
    SEARCH_TRIALS,
    TROVE_COST_S,
    TROVE_FLUSHES,
    TROVE_TRIAL_S,
    estimate_seconds,
    flush_period_s,
    run_seconds,
    search_groups,
    trial_seconds,
    trove_run_extra_s,
    trove_run_seconds,
)
from engine.trove.config import TroveConfig
from loadgen.plan.inputs import Inputs, RunCost, run_cost
from loadgen.plan.model import (
    GIB,
    Machine,
    PlanRequest,
    batch_model,
    build_plan,
    first_rate_reaching,
    fits,
    on_machine,
    predict_max,
    trove_life,
)
from loadgen.results.run import RunResult, TroveOutcome
from tests.support.plan_fixtures import CostModel, default_model, synthetic_run, trove_cost

RATES_AND_BATCHES = ((100_000.0, 400.0), (200_000.0, 700.0), (300_000.0, 1_000.0))
TROVE_WAIT = (30_000.0, 700.0)  # the trove child's run-queue wait: ns per batch and per payment
ROWS_PER_PAYMENT = 1.5


@pytest.mark.parametrize("rate_tps", [1_000.0, 50_000.0, 300_000.0, 450_000.0, 600_000.0, 3_000_000.0])
@pytest.mark.parametrize("seconds", [1.0, 3.0, 12.0])
def test_a_trove_run_measures_whole_flush_periods_of_at_least_the_seconds(rate_tps: float, seconds: float) -> None:
    config = TroveConfig(segment_rows=1 << 20, flush_interval_s=4.0)
    period = flush_period_s(rate_tps, config)
    assert period == pytest.approx(min((1 << 20) / rate_tps, 4.0))
    window = trove_run_seconds(rate_tps, seconds, config)
    periods = window / period
    assert window >= seconds - 1e-9 and window >= period - 1e-9  # at least one flush, at least what was asked
    assert periods - math.floor(periods + 1e-9) < 0.1 / period + 1e-9  # whole periods (0.1 s rounding up)
    assert window - 0.1 < max(seconds, period) + period  # the fewest such periods


def test_only_trove_profiles_runs_and_trials_are_stretched() -> None:
    for label, (profile, _, rates) in RATES.items():
        for rate in rates:
            stretched = run_seconds(profile, rate, "3")
            assert float(stretched) == (trove_run_seconds(rate, 3.0) if profile in KEEPS_TROVE else 3.0), label
            assert run_seconds(profile, rate, "3", flush_windows=False) == "3"
    groups = search_groups(list(RATES))
    trove = {name for name, (profiles, _) in groups.items() if any(p in KEEPS_TROVE for p in profiles)}
    assert trove and all(all(p in KEEPS_TROVE for p in groups[name][0]) for name in trove)
    assert sorted(p for profiles, _ in groups.values() for p in profiles) == sorted(p for p, _, _ in RATES.values())
    for name in groups:
        expected = TROVE_TRIAL_S if name in trove else 1.0
        assert float(trial_seconds(name)) == expected
        assert trial_seconds(name, flush_windows=False) == "1"
    # every trial of a trove profile holds a flush, whatever the rate searched
    assert all(flush_period_s(r) <= TROVE_TRIAL_S for r in (1.0, 1e3, 1e5, 1e6, 1e7))


def test_the_estimate_counts_the_trove_profiles_flush_windows() -> None:
    """``surveillance`` and ``enforcement`` share engine, snapshot and search costs (4 rates each, the
    unsigned search): the estimate differs by the trove's windows and its cost file alone."""
    assert len(RATES["surveillance"][2]) == len(RATES["enforcement"][2])
    runs = sum(trove_run_extra_s(r) for r in RATES["surveillance"][2])
    trials = SEARCH_TRIALS * (TROVE_TRIAL_S - 1.0)
    extra = estimate_seconds(["surveillance"]) - estimate_seconds(["enforcement"])
    assert extra == pytest.approx(runs + trials + TROVE_COST_S)
    assert estimate_seconds(list(RATES)) < 30 * 60


@pytest.mark.parametrize("rate_tps", [50_000.0, 100_000.0, 300_000.0, 600_000.0, 2_000_000.0])
def test_a_trove_run_lasts_its_window_and_until_its_flushes_are_written(rate_tps: float) -> None:
    extra = trove_run_extra_s(rate_tps)
    assert extra >= trove_run_seconds(rate_tps, RUN_SECONDS) - RUN_SECONDS
    assert RUN_S + extra >= TROVE_FLUSHES * flush_period_s(rate_tps) + FLUSH_WRITE_S - 1e-9


def _model() -> CostModel:
    m = default_model()
    return msgspec.structs.replace(m, per_payment_ns=m.per_payment_ns | {"trove": 400.0})


def _costs(model: CostModel) -> list[RunCost]:
    runs = [
        synthetic_run(model, rate_tps=r, batch_size=b, trove_wait=TROVE_WAIT, trove_rows_per_payment=ROWS_PER_PAYMENT)
        for r, b in RATES_AND_BATCHES
    ]
    costs = [run_cost(r, "x") for r in runs]
    assert all(c is not None for c in costs)
    return [c for c in costs if c is not None]


def test_with_merges_the_trove_childs_core_fills_at_its_whole_life_cpu_plus_its_waits() -> None:
    """The cost file's writer + merges per row (not its sidecars) x rows per payment, plus the runs'
    waits for a core: where that fills one core is said apart; the checked prediction is unchanged."""
    costs = _costs(_model())
    life = trove_life([("cost.json", trove_cost(3_000.0, 60.0))])
    assert life is not None
    assert life.child_ns_per_row == pytest.approx(3_000.0 * 5 / 6)  # steady (writer + merges), no sidecars
    plain = predict_max("full", costs, [])
    merged = predict_max("full", costs, [], life)
    assert plain.with_merges_tps is None
    assert (merged.predicted_tps, merged.limited_by, merged.limits) == (
        plain.predicted_tps,
        plain.limited_by,
        plain.limits,
    )
    every = fits(costs)
    hooks = costs[0].hooks
    batching = batch_model(costs, every, hooks)

    def child(rate: float) -> float:
        b = on_machine(every, hooks, batching, rate, costs[0].cores).batches_per_s
        return life.child_ns_per_row * ROWS_PER_PAYMENT * rate + TROVE_WAIT[0] * b + TROVE_WAIT[1] * rate

    assert merged.with_merges_tps == pytest.approx(first_rate_reaching(1e9, child), rel=1e-3)
    assert merged.with_merges_tps is not None and merged.with_merges_tps < (plain.predicted_tps or math.inf)
    assert f"{merged.with_merges_tps:,.0f}/s" in merged.note and "with its merges" in merged.note


def test_the_plan_passes_its_trove_cost_to_the_predictions() -> None:
    costs = _costs(_model())
    request = PlanRequest(rate_tps=300_000.0, accounts=10**8, profile="full", machine=Machine(64, 512 * GIB))
    without = build_plan(Inputs(costs, [], [], []), request)
    with_cost = build_plan(Inputs(costs, [], [], [], trove_costs=[("cost.json", trove_cost(3_000.0, 60.0))]), request)
    (p0,), (p1,) = without.predictions, with_cost.predictions
    assert p0.with_merges_tps is None and p1.with_merges_tps is not None
    assert p1.predicted_tps == p0.predicted_tps
    assert any("hold its flushes but no merge" in a for a in with_cost.assumptions)


def _with_flushes(
    run: RunResult, *, inside_ns: float, running_ns: float, merges_ns: float, per_row: float, first_extra_ns: float
) -> RunResult:
    """``run`` whose trove child's window also holds ``inside_ns`` of flush CPU (``running_ns`` of
    it a flush still running at the window's end) and ``merges_ns`` of merges (its
    ``background_ns``), its stats counting the flushes finished by the window's end: three
    memtables of ``FLUSH_ROWS`` at ``per_row`` ns a row, the first dearer by ``first_extra_ns``."""
    a, b = run.server.stats_start, run.server.stats_end
    flushed = 3 * FLUSH_ROWS
    done = flushed * per_row + first_extra_ns  # the finished flushes' CPU
    before = done - (inside_ns - running_ns)
    a = a | {
        "trove": (a.get("trove") or {})
        | {
            "rows_seen": 0,
            "flush_cpu_ns": before,
            "compaction_cpu_ns": 0,
            "flusher_thread_cpu_ns": before + 5e6,
            "compactor_thread_cpu_ns": 1e6,
        }
    }
    b = b | {
        "trove": b["trove"]
        | {
            "flushes": 3,
            "rows_flushed": flushed,
            "flush_cpu_ns": done,
            "first_flush_rows": FLUSH_ROWS,
            "first_flush_cpu_ns": FLUSH_ROWS * per_row + first_extra_ns,
            "compaction_cpu_ns": 0,
            "flusher_thread_cpu_ns": before + 5e6 + inside_ns,
            "compactor_thread_cpu_ns": 1e6 + merges_ns,
        }
    }
    hooks = dict(run.server.hooks)
    log = dict(hooks["surveillance_log"])
    log["background_ns"] = log["background_ns"] + inside_ns + merges_ns
    hooks["surveillance_log"] = log
    server = msgspec.structs.replace(run.server, stats_start=a, stats_end=b, hooks=hooks)
    return msgspec.structs.replace(run, server=server)


FLUSH_ROWS = 1 << 20


@pytest.mark.parametrize(
    ("flushes_inside", "running", "merges_ns"), [(0.0, 0.0, 0.0), (0.4, 0.4, 0.0), (1.0, 0.0, 0.0), (1.7, 0.7, 3e8)]
)
def test_a_window_charges_the_trove_per_row_flushed_wherever_its_flushes_fell(
    flushes_inside: float, running: float, merges_ns: float
) -> None:
    # Issue 21: the flush CPU inside a 7-10-s window depended on where the window fell (544-2,042 ns a
    # payment measured); charged per row taken at the finished flushes' cost, it does not, whether a
    # flush or merge is still running at the window's end or not.
    model = default_model()
    rate, seconds, per_row = 300_000.0, 8.0, 900.0
    run = synthetic_run(
        model, rate_tps=rate, batch_size=1_000.0, seconds=seconds, trove_rows_per_payment=ROWS_PER_PAYMENT
    )
    payments, batches = rate * seconds, rate * seconds / 1_000.0
    flushed = _with_flushes(
        run,
        inside_ns=flushes_inside * FLUSH_ROWS * per_row,
        running_ns=running * FLUSH_ROWS * per_row,
        merges_ns=merges_ns,
        per_row=per_row,
        first_extra_ns=3e8,
    )
    cost = run_cost(flushed)
    assert cost is not None
    expected = model.ns("trove", batches, payments) + round(payments * ROWS_PER_PAYMENT) * per_row
    assert cost.tier_ns_per_s["trove"] * seconds == pytest.approx(expected, rel=1e-9)


def test_without_a_finished_flush_the_window_stands_as_measured() -> None:
    model = default_model()
    run = synthetic_run(model, rate_tps=100_000.0, batch_size=400.0, seconds=4.0)
    cost = run_cost(run)
    assert cost is not None
    assert cost.tier_ns_per_s["trove"] * 4.0 == pytest.approx(model.ns("trove", 1_000.0, 400_000.0), rel=1e-9)


def test_the_flushes_finished_by_the_runs_end_price_a_window_that_ended_inside_the_first() -> None:
    # A window that ends while the first flush is written: the result's trove after the drain (the
    # final probe waits for that flush) prices the window's rows; the flush's CPU inside the window
    # (the flusher thread's clock) is taken out.
    model = default_model()
    rate, seconds, per_row = 300_000.0, 8.0, 1_100.0
    run = synthetic_run(model, rate_tps=rate, batch_size=1_000.0, seconds=seconds, trove_rows_per_payment=1.0)
    payments, batches = rate * seconds, rate * seconds / 1_000.0
    inside = 0.6 * FLUSH_ROWS * per_row
    a, b = run.server.stats_start, run.server.stats_end
    a = a | {"trove": (a.get("trove") or {}) | {"rows_seen": 0, "flusher_thread_cpu_ns": 0, "flushes": 0}}
    b = b | {"trove": b["trove"] | {"flusher_thread_cpu_ns": inside, "flushes": 0, "flushing_rows": FLUSH_ROWS}}
    hooks = dict(run.server.hooks)
    hooks["surveillance_log"] = dict(hooks["surveillance_log"])
    hooks["surveillance_log"]["background_ns"] += inside
    final = TroveOutcome(
        dir="t", transfers=round(payments), rows=FLUSH_ROWS, rows_seen=round(payments), backlog_rows=0,
        flushes=1, rows_flushed=FLUSH_ROWS, flush_cpu_ns=round(FLUSH_ROWS * per_row), first_flush_rows=FLUSH_ROWS,
        first_flush_cpu_ns=round(FLUSH_ROWS * per_row),
    )  # fmt: skip
    server = msgspec.structs.replace(run.server, stats_start=a, stats_end=b, hooks=hooks, trove=final)
    cost = run_cost(msgspec.structs.replace(run, server=server))
    assert cost is not None
    expected = model.ns("trove", batches, payments) + round(payments) * per_row
    assert cost.tier_ns_per_s["trove"] * seconds == pytest.approx(expected, rel=1e-6)
