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
    KEEPS_TROVE,
    RATES,
    RUN_SECONDS,
    SEARCH_TRIALS,
    TROVE_COST_S,
    TROVE_TRIAL_S,
    estimate_seconds,
    flush_period_s,
    run_seconds,
    search_groups,
    trial_seconds,
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
    windows = sum(trove_run_seconds(r, RUN_SECONDS) - RUN_SECONDS for r in RATES["surveillance"][2])
    trials = SEARCH_TRIALS * (TROVE_TRIAL_S - 1.0)
    extra = estimate_seconds(["surveillance"]) - estimate_seconds(["enforcement"])
    assert extra == pytest.approx(windows + trials + TROVE_COST_S)
    assert estimate_seconds(list(RATES)) < 30 * 60


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
