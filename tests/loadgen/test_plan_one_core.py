"""``cbdc-bench plan``'s one-core tiers (issue 21): the trove child's one process limits the maximum at
its CPU plus its waits for a core; a run where the sequencer waited for it gives its measured
capacity; the validators are fitted over ``signed`` and ``signed-<profile>`` together. The costs
come from a known model (``tests.support.plan_fixtures``), never from figures typed into the test."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from loadgen.cli.main import main
from loadgen.cli.plan import format_plan
from loadgen.plan.inputs import Inputs, MeasuredMax, RunCost, read_inputs, run_cost
from loadgen.plan.model import (
    GIB,
    ONE_CORE_TIERS,
    Machine,
    PlanRequest,
    batch_model,
    build_plan,
    first_rate_reaching,
    fits,
    meets_aim,
    on_machine,
    pooled_fits,
    predict_max,
    wall_fit,
)
from tests.support.plan_fixtures import CostModel, default_model, synthetic_run

RATES_AND_BATCHES = ((100_000.0, 400.0), (200_000.0, 700.0), (300_000.0, 1_000.0))
#: The trove child's run-queue wait: ns per batch and per payment (its CPU is the model's ``trove``).
TROVE_WAIT = (30_000.0, 700.0)


def _model() -> CostModel:
    """``default_model`` with a trove heavy enough to be the first limit (~1.5 us of CPU per payment)."""
    m = default_model()
    return msgspec.structs.replace(m, per_payment_ns=m.per_payment_ns | {"trove": 1_500.0})


def _costs(model: CostModel, **kw: object) -> list[RunCost]:
    runs = [synthetic_run(model, rate_tps=r, batch_size=b, **kw) for r, b in RATES_AND_BATCHES]  # type: ignore[arg-type]
    costs = [run_cost(r, "x") for r in runs]
    assert all(c is not None for c in costs)
    return [c for c in costs if c is not None]


def test_the_trove_childs_cpu_and_waits_for_a_core_limit_the_maximum() -> None:
    """The trove child fills its one core (CPU + run-queue wait) before the machine's cores fill: the
    predicted maximum is that rate, named so; without recorded waits it is its CPU alone, higher."""
    model = _model()
    costs = _costs(model, trove_wait=TROVE_WAIT)
    assert costs[0].waits_ns_per_s["trove"] > 0 and not costs[0].flat_out_tps
    wall = wall_fit("trove", costs)
    assert wall.per_payment_ns == pytest.approx(model.per_payment_ns["trove"] + TROVE_WAIT[1], rel=1e-6)
    assert wall.per_batch_ns == pytest.approx(model.per_batch_ns["trove"] + TROVE_WAIT[0], rel=1e-6)
    prediction = predict_max("full", costs, [])
    assert prediction.limited_by.startswith(ONE_CORE_TIERS["trove"]) and "waits for a core" in prediction.limited_by
    assert prediction.predicted_tps == min(prediction.limits.values())
    # Where the model's own trove (CPU + wait) fills one core with the batches the machine gives.
    every = fits(costs)
    hooks = costs[0].hooks
    batching = batch_model(costs, every, hooks)

    def trove_wall(rate: float) -> float:
        b = on_machine(every, hooks, batching, rate, costs[0].cores).batches_per_s
        return (model.per_batch_ns["trove"] + TROVE_WAIT[0]) * b + (
            model.per_payment_ns["trove"] + TROVE_WAIT[1]
        ) * rate

    assert prediction.predicted_tps == pytest.approx(first_rate_reaching(1e9, trove_wall), rel=1e-3)
    cpu_only = predict_max("full", _costs(model), [])
    assert not any("waits" in w for w in cpu_only.limits)
    trove_cpu = next(v for w, v in cpu_only.limits.items() if w.startswith(ONE_CORE_TIERS["trove"]))
    assert trove_cpu > prediction.predicted_tps


def test_a_run_where_the_sequencer_waited_for_the_trove_measures_its_capacity() -> None:
    """The sequencer's wait for the trove's ring (``append_wait_ns``) marks the child flat out: the
    rows it made durable per second are its measured capacity, printed beside the prediction."""
    model = _model()
    costs = _costs(model, trove_wait=TROVE_WAIT)
    saturated = run_cost(synthetic_run(model, rate_tps=400_000.0, batch_size=1_300.0, trove_wait=TROVE_WAIT,
                                       trove_append_wait_s=0.5), "sat")  # fmt: skip
    assert saturated is not None
    assert saturated.backpressure_ns_per_s["trove"] == pytest.approx(0.5e9 / 2.0)  # the fixture's 2 s window
    assert saturated.flat_out_tps["trove"] == pytest.approx(400_000.0)
    assert predict_max("full", [*costs, saturated], []).flat_out == {}  # kept up: a lower bound, not its capacity
    saturated = msgspec.structs.replace(saturated, server_kept_up=False, sustained=False)
    prediction = predict_max("full", [*costs, saturated], [])
    assert prediction.flat_out == {"trove": (pytest.approx(400_000.0), pytest.approx(0.25))}
    assert "the trove ran flat out at 400,000/s" in prediction.note and "25% of the time" in prediction.note


def test_the_plan_names_the_trove_as_a_one_core_tier_and_where_it_saturates() -> None:
    model = _model()
    request = PlanRequest(rate_tps=300_000.0, accounts=10**9, profile="full", machine=Machine(64, 512 * GIB))
    plan = build_plan(Inputs(_costs(model, trove_wait=TROVE_WAIT), [], [], []), request)
    (trove,) = [o for o in plan.plan.one_core if o.tier == "trove"]
    b = plan.plan.batches_per_s
    assert trove.busy == pytest.approx(model.ns("trove", b, 300_000.0) / 1e9, rel=1e-6)  # its CPU: no waits planned
    assert trove.saturation_tps is not None
    at = trove.saturation_tps
    assert model.ns("trove", plan.plan.batch_model.batches_per_s(at), at) == pytest.approx(1e9, rel=1e-3)
    text = format_plan(plan)
    assert f"trove: {ONE_CORE_TIERS['trove']}, {trove.busy:.0%} busy" in text and "its own one core" in text


def test_validators_are_fitted_over_signed_and_signed_full_together() -> None:
    """``signed`` and ``signed-full`` verify the same signatures: their validators tier is one fit over
    both labels' runs, so the difference between the two plans is the hooks', not the validators'
    run-to-run spread (which made signed-full plan below signed)."""
    base = default_model()
    costs: dict[str, list[RunCost]] = {}
    for label, per_payment in (("signed", 70_000.0), ("signed-full", 64_000.0)):
        m = msgspec.structs.replace(base, per_payment_ns=base.per_payment_ns | {"validators": per_payment})
        costs[f"{label}@2 validators"] = [
            msgspec.structs.replace(c, label=f"{label}@2 validators", profile=label) for c in _costs(m, validators=2)
        ]
    pooled = pooled_fits(costs)
    (fit_a, labels_a), (fit_b, _) = (pooled[label]["validators"] for label in costs)
    assert fit_a == fit_b and labels_a == sorted(costs)
    assert 64_000.0 < fit_a.per_payment_ns < 70_000.0
    request = PlanRequest(rate_tps=300_000.0, accounts=10**9, profile="signed-full", machine=Machine(64, 512 * GIB))
    plan = build_plan(Inputs([c for cs in costs.values() for c in cs], [], [], []), request)
    plans = {p.profile: p for p in [plan.plan, *plan.others]}
    validators = {label: next(t.cores for t in p.tiers if t.tier == "validators") for label, p in plans.items()}
    assert validators["signed@2 validators"] == pytest.approx(validators["signed-full@2 validators"])
    assert all(p.pooled == {"validators": sorted(costs)} for p in plans.values())
    assert "validators: fitted over the runs of signed-full@2 validators and signed@2 validators" in format_plan(plan)


def test_a_generator_limited_check_says_by_how_much_the_prediction_exceeds_its_bound() -> None:
    costs = _costs(_model())
    predicted = predict_max("full", costs, []).predicted_tps
    assert predicted is not None
    bound = MeasuredMax(
        "full", predicted / 2, predicted / 2, predicted / 2, 1, True, "c.json", costs[0].cpu_model, None
    )
    p = predict_max("full", costs, [bound])
    assert p.error is None and "+100% over that bound" in p.note and "bounded by the generator" in p.note


@pytest.mark.parametrize(
    ("ratio", "generator_limited", "meets"),
    [
        (1.2, False, True), (0.8, False, True), (1.3, False, False), (0.7, False, False),  # both ways
        (3.0, True, True), (0.8, True, True), (0.7, True, False),  # a lower bound: only too low is wrong
    ],
)  # fmt: skip
def test_the_benchmark_check_fails_beyond_the_aim(ratio: float, generator_limited: bool, meets: bool) -> None:
    """``meets_aim`` (what ``benchmarks/test_bench_plan.py`` asserts): within 25% of a search that
    stopped at the server; not more than 25% below one that stopped at the generator (a lower bound)."""
    searched = MeasuredMax("full", 500_000.0, 480_000.0, 520_000.0, 1, generator_limited, "s", "cpu", None)
    assert meets_aim(ratio * 500_000.0, searched) is meets


def test_a_run_with_snapshot_every_gives_the_plan_its_snapshot_bytes_per_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run --snapshot-every`` (the first cut's lowest-rate runs): the result file's state holds the
    newest snapshot's size per account, which the plan reads for its retention's snapshots."""
    code = main([
        "run", "--profile", "baseline", "--rate", "5000", "--seconds", "1", "--warmup", "0.5", "--accounts", "20000",
        "--journal", str(tmp_path / "j"), "--fsync", "off", "--snapshot-every", "2k", "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    assert code in (0, 3, 4)
    inputs = read_inputs(tmp_path / "out")
    (state,) = [s for s in inputs.states if s.snapshot_bytes_per_account is not None]
    assert state.profile == "baseline" and state.snapshot_bytes_per_account > 0
    request = PlanRequest(rate_tps=300_000.0, accounts=10**9, profile="baseline", machine=Machine(64, 512 * GIB))
    plan = build_plan(inputs, request).plan
    assert plan.snapshot_bytes == pytest.approx(request.snapshots_kept * 10**9 * state.snapshot_bytes_per_account)
    capsys.readouterr()
    assert main(["run", "--target", "127.0.0.1:1", "--snapshot-every", "2k", "--seconds", "1"]) != 0
    assert "--snapshot-every configure the server that run starts" in capsys.readouterr().err


def test_the_hooks_and_trove_of_signed_full_are_fitted_with_fulls_runs() -> None:
    """``signed-full`` runs only at the rates 2 cores verify; its hooks and trove do the same work as
    ``full``'s, so it takes their fit over both labels' runs (``full``'s near the planned rate); the
    sequencer's own tiers (framing, ledger) stay its own, and ``full`` keeps its own fits."""
    model = _model()
    full = _costs(model)
    signed = [
        msgspec.structs.replace(c, label="signed-full@2 validators", profile="signed-full")
        for c in (
            run_cost(synthetic_run(model, rate_tps=r, batch_size=b, validators=2), "s")
            for r, b in ((2_500.0, 10.0), (5_000.0, 20.0), (10_000.0, 35.0))
        )
        if c is not None
    ]
    by_label = {"full": full, "signed-full@2 validators": signed}
    pooled = pooled_fits(by_label)
    assert set(pooled) == {"signed-full@2 validators"}  # full keeps its own fits: its runs are at the planned rate
    borrowed = pooled["signed-full@2 validators"]
    assert "trove" in borrowed and "wallet_limits" in borrowed
    assert not {"framing_io", "ledger", "validators", "generator"} & set(borrowed)
    fit, labels = borrowed["trove"]
    assert labels == sorted(by_label)
    assert fit.per_payment_ns == pytest.approx(model.per_payment_ns["trove"], rel=1e-6)
