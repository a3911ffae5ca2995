"""``cbdc-bench plan``: the arithmetic on result files generated from a known cost model, refusals,
missing inputs named with their commands, and the fit against the committed measured comparison."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import msgspec
import numpy as np
import pytest

from loadgen.cli.common_args import parse_bytes, parse_machine, parse_seconds
from loadgen.cli.main import main
from loadgen.cli.plan import EXIT_INCOMPLETE, format_plan, plan_command
from loadgen.generator.gateway import LoadConfig
from loadgen.harness.engine_run import ENGINE_KIND, EngineResult, run_engine, save_engine_result
from loadgen.plan.inputs import (
    GENERATOR,
    KERNEL,
    Arrivals,
    Inputs,
    MeasuredMax,
    RunCost,
    auto_tick_max_ns,
    read_inputs,
    run_cost,
    server_kept_up,
)
from loadgen.plan.model import (
    GIB,
    SECONDS_PER_DAY,
    TROVE_COST_COMMAND,
    BatchModel,
    Machine,
    MixedCpuError,
    PlanRequest,
    TierFit,
    batch_model,
    build_plan,
    fit_problem,
    fit_tier,
    fits,
    fitted_runs,
    on_machine,
    predict_max,
    scaled,
)
from loadgen.plan.table import BEGIN, END, headline_markdown, measured_row, rate_text, replace_section
from loadgen.plan.trove_cost import loads_trove_cost, save_trove_cost
from loadgen.results import machine_cpu
from loadgen.results.state import StateFootprint
from loadgen.results.verdict import Kind
from tests.support.plan_fixtures import (
    TEMPLATE,
    CostModel,
    default_model,
    full_hooks,
    synthetic_run,
    trove_cost,
    write_runs,
)

RATES_AND_BATCHES = ((100_000.0, 400.0), (400_000.0, 1_000.0), (1_600_000.0, 3_000.0))
TRAFFIC = {"wire_sent_per_payment": 60.0, "wire_received_per_payment": 20.0, "journal_per_payment": 50.0,
           "trove_per_payment": 30.0}  # fmt: skip
STATE = StateFootprint(bytes_per_account={"ledger": 10.0, "wallet_limits": 4.0}, snapshot_bytes_per_account=12.0)


def _request(**changes: object) -> PlanRequest:
    base = PlanRequest(
        rate_tps=300_000.0, accounts=1_000_000_000, profile="full",
        machine=Machine(cores=64, memory_bytes=512 * GIB), retention_days=365.0, replicas=3, snapshots_kept=2,
    )  # fmt: skip
    return msgspec.structs.replace(base, **changes)


def _runs(model: CostModel, **kw: object) -> list:
    return [synthetic_run(model, rate_tps=r, batch_size=b, **kw) for r, b in RATES_AND_BATCHES]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model() -> CostModel:
    return default_model()


def test_fit_recovers_per_batch_and_per_payment_cost_of_every_tier(model: CostModel) -> None:
    runs = [run_cost(r, "x") for r in _runs(model)]
    assert all(c is not None for c in runs)
    costs = [c for c in runs if c is not None]
    for tier in model.tiers:
        fit = fit_tier(tier, costs)
        assert fit.per_batch_ns == pytest.approx(model.per_batch_ns.get(tier, 0.0), rel=1e-6), tier
        assert fit.per_tick_ns == pytest.approx(model.per_tick_ns.get(tier, 0.0), rel=1e-6), tier
        assert fit.per_s_ns == pytest.approx(0.0, abs=1e3), tier  # the model has no cost per second
        assert fit.per_payment_ns == pytest.approx(model.per_payment_ns[tier], rel=1e-6), tier
        assert fit.spread_low == pytest.approx(1.0) and fit.spread_high == pytest.approx(1.0)


def test_cpu_per_payment_falls_as_the_rate_rises(model: CostModel) -> None:
    costs = [run_cost(r) for r in _runs(model)]
    per_payment = [c.tier_ns_per_s["ledger"] / c.transfers_per_s for c in costs if c is not None]
    assert per_payment == sorted(per_payment, reverse=True) and per_payment[0] > per_payment[-1]


def test_one_rate_charges_everything_per_payment(model: CostModel) -> None:
    cost = run_cost(synthetic_run(model, rate_tps=300_000.0, batch_size=800.0))
    assert cost is not None
    fit = fit_tier("ledger", [cost])
    assert fit.per_batch_ns == 0.0
    assert fit.per_payment_ns == pytest.approx(cost.tier_ns_per_s["ledger"] / cost.transfers_per_s)


def test_plan_arithmetic_from_result_files(tmp_path: Path, model: CostModel) -> None:
    write_runs(tmp_path, _runs(model, traffic=TRAFFIC, state=STATE))
    request = _request()
    plan = build_plan(read_inputs(tmp_path), request).plan
    rate = request.rate_tps
    # Batches at 300k: the idle regime (one tick's Submits a batch), with the batches per tick of the
    # runs whose sequencer used at most 3/4 of the core the other tiers left it, interpolated in rate
    # between them; the tick at 300k/s by the generator's rule.
    idle = []
    seq_tiers = ["ledger", "framing_io", *full_hooks()]
    for r, size in RATES_AND_BATCHES:
        b, ticks = r / size, _ticks_per_s(r)
        seq = sum(model.ns(t, b, r, ticks) for t in seq_tiers) / 1e9
        others = sum(model.ns(t, b, r, ticks) for t in ("trove", "generator")) / 1e9
        if seq <= 0.75 * min(2 - others, 1.0):
            idle.append((r, b / ticks))
    assert len(idle) >= 2, "the fixture has runs to interpolate between"
    per_tick = float(np.interp(rate, [r for r, _ in idle], [k for _, k in idle]))
    assert plan.batch_regime == "idle"
    assert plan.batches_per_s == pytest.approx(per_tick * _ticks_per_s(rate))
    for tier in plan.tiers:
        ns = model.ns(tier.tier, plan.batches_per_s, rate, _ticks_per_s(rate))
        assert tier.cores == pytest.approx(ns / 1e9, rel=1e-6), tier.tier
    assert {t.tier for t in plan.tiers} == model.tiers - {"generator"}
    hooks = set(full_hooks())
    assert {t.tier for t in plan.tiers if t.on_sequencer} == {"ledger", "framing_io"} | hooks
    assert plan.surveillance_cores == pytest.approx(sum(t.cores for t in plan.tiers if t.tier in hooks | {"trove"}))
    assert plan.sequencer_core_busy == pytest.approx(sum(t.cores for t in plan.tiers if t.on_sequencer))
    assert plan.memory_bytes == pytest.approx(request.accounts * 14.0)
    # No trove cost file: the runs' own trove bytes (first segments) are not the final layout, so the
    # trove's disk is not measured and the plan names the command that measures its whole life.
    assert plan.disk_per_day_bytes == pytest.approx({"journal": rate * SECONDS_PER_DAY * 50})
    assert plan.disk_retention_bytes is None and not plan.disk_per_day_complete
    assert [m.command for m in plan.missing] == [TROVE_COST_COMMAND]
    snapshots = 2 * request.accounts * 12.0
    assert plan.snapshot_bytes == pytest.approx(snapshots)
    assert plan.network_bytes_per_s == pytest.approx(rate * 80)
    assert plan.replication_bytes_per_s == pytest.approx(rate * 50 * 2)
    scale_out = sum(t.cores_high for t in plan.tiers if not t.on_sequencer)
    assert plan.machines == 3 + max(math.ceil((scale_out - 63) / 64), 0)


@pytest.mark.parametrize("rows_per_payment", [1.0, 1.25])
def test_the_trove_is_charged_its_whole_life_from_its_cost_file(
    tmp_path: Path, model: CostModel, rows_per_payment: float
) -> None:
    """With a trove cost file the trove tier is its CPU per row x rows per payment x the rate (not the
    child's CPU inside the runs), its band the files' spread, its disk the final runs' bytes per row;
    the one-core check uses it; the predicted maximum on the measured machine keeps the runs' own CPU."""
    write_runs(tmp_path, _runs(model, traffic=TRAFFIC, state=STATE, trove_rows_per_payment=rows_per_payment))
    costs = [(2_000.0, 60.0), (2_600.0, 64.0), (2_300.0, 62.0)]
    for i, (ns, size) in enumerate(costs):
        path = save_trove_cost(trove_cost(ns, size), tmp_path / f"cost{i}")
        assert loads_trove_cost(path.read_bytes()).ns_per_row == pytest.approx(ns)
    request = _request()
    inputs = read_inputs(tmp_path)
    capacity = build_plan(inputs, request)
    plan, rate = capacity.plan, request.rate_tps
    trove = next(t for t in plan.tiers if t.tier == "trove")
    assert trove.cores == pytest.approx(2_300.0 * rows_per_payment * rate / 1e9)
    assert trove.ns_per_payment == pytest.approx(2_300.0 * rows_per_payment)
    assert (trove.cores_low, trove.cores_high) == pytest.approx(
        (trove.cores * 2_000 / 2_300, trove.cores * 2_600 / 2_300)
    )
    assert plan.disk_per_day_bytes == pytest.approx(
        {"journal": rate * SECONDS_PER_DAY * 50, "trove": rate * SECONDS_PER_DAY * 62.0 * rows_per_payment}
    )
    snapshots = 2 * request.accounts * 12.0
    per_day = rate * SECONDS_PER_DAY * (50 + 62.0 * rows_per_payment)
    assert plan.disk_retention_bytes == pytest.approx(3 * (per_day * 365 + snapshots))
    assert plan.missing == []
    (one_core,) = [o for o in plan.one_core if o.tier == "trove"]
    assert one_core.busy == pytest.approx(trove.cores)
    assert one_core.saturation_tps == pytest.approx(1e9 / (2_300.0 * rows_per_payment), rel=0.01)
    assert any("whole per-row life" in a and "2,300 ns" in a for a in capacity.assumptions)
    # The measured machine's maximum is checked against searches that never flush: the runs' CPU.
    runs = [r for r in inputs.runs if r.label == "full"]
    assert (
        predict_max("full", runs, []).predicted_tps
        == build_plan(read_inputs(write_runs(tmp_path / "alone", _runs(model, traffic=TRAFFIC, state=STATE))), request)
        .predictions[0]
        .predicted_tps
    )


def test_a_trove_cost_from_another_cpu_is_refused_unless_scaled(tmp_path: Path, model: CostModel) -> None:
    write_runs(tmp_path, _runs(model, traffic=TRAFFIC, state=STATE, calibration_tps=1e7))
    save_trove_cost(trove_cost(2_000.0, 60.0, cpu_model="Other CPU", calibration_tps=2e7), tmp_path / "cost")
    with pytest.raises(MixedCpuError, match="Other CPU"):
        build_plan(read_inputs(tmp_path), _request())
    plan = build_plan(read_inputs(tmp_path), _request(scale_by_calibration=True)).plan
    trove = next(t for t in plan.tiers if t.tier == "trove")
    assert trove.ns_per_payment == pytest.approx(2_000.0 * 2e7 / 1e7)  # ns x own score / the runs' median


def test_sequencer_state_that_does_not_fit_one_machine_is_said(tmp_path: Path, model: CostModel) -> None:
    write_runs(tmp_path, _runs(model, traffic=TRAFFIC, state=STATE))
    plan = build_plan(read_inputs(tmp_path), _request(machine=Machine(cores=64, memory_bytes=8 * GIB))).plan
    assert plan.fits_one_machine is False and plan.machines is None
    assert "cannot be partitioned" in plan.machines_note


def test_scale_out_tier_beyond_its_measured_workers_is_extrapolated(tmp_path: Path, model: CostModel) -> None:
    runs = _runs(model, tier_cpu_s={"validators": 0.5})
    plan = build_plan(read_inputs(write_runs(tmp_path, runs)), _request(rate_tps=50e6)).plan
    validators = next(t for t in plan.tiers if t.tier == "validators")
    assert not validators.on_sequencer and validators.extrapolated


def test_a_planned_rate_outside_the_measured_rates_is_said_to_be_extrapolated(tmp_path: Path, model: CostModel) -> None:
    inputs = read_inputs(write_runs(tmp_path, _runs(model)))
    inside = build_plan(inputs, _request(rate_tps=300_000.0))
    above = build_plan(inputs, _request(rate_tps=3_000_000.0))
    assert not any("EXTRAPOLATED IN RATE" in a for a in inside.assumptions)
    assert any("EXTRAPOLATED IN RATE" in a and "100,000-1,600,000/s" in a for a in above.assumptions)


def test_results_from_two_cpus_are_refused_unless_scaled(tmp_path: Path, model: CostModel) -> None:
    runs = _runs(model)
    runs[0] = synthetic_run(model, rate_tps=100_000.0, batch_size=400.0, cpu_model="Other CPU", calibration_tps=2e7)
    write_runs(tmp_path, runs)
    with pytest.raises(MixedCpuError, match=r"2 CPUs.*Other CPU.*--scale-by-calibration"):
        build_plan(read_inputs(tmp_path), _request())
    plan = build_plan(read_inputs(tmp_path), _request(scale_by_calibration=True))
    assert any("scaled to a CPU calibration score of 10,000,000" in a for a in plan.assumptions)
    # The other CPU's run (score 2e7 against the median 1e7) counts twice its measured ns.
    costs = read_inputs(tmp_path).runs
    other = next(c for c in costs if c.cpu_model == "Other CPU")
    doubled = next(c for c in scaled(costs, 1e7) if c.cpu_model == "Other CPU")
    assert doubled.tier_ns_per_s["ledger"] == pytest.approx(2 * other.tier_ns_per_s["ledger"])


def test_scaling_refuses_files_without_a_calibration(tmp_path: Path, model: CostModel) -> None:
    runs = _runs(model)
    runs[0] = synthetic_run(model, rate_tps=100_000.0, batch_size=400.0, cpu_model="Other CPU", calibration_tps=None)
    write_runs(tmp_path, runs)
    with pytest.raises(MixedCpuError, match="no CPU calibration score"):
        build_plan(read_inputs(tmp_path), _request(scale_by_calibration=True))


def test_missing_inputs_name_the_command_that_measures_them(tmp_path: Path, model: CostModel, capsys) -> None:
    write_runs(tmp_path, _runs(model))  # no traffic, no state, no snapshots
    code = main(["plan", "--results", str(tmp_path), "--profile", "full"])
    out = capsys.readouterr().out
    assert code == EXIT_INCOMPLETE
    assert "missing inputs" in out
    assert "`cbdc-bench engine --profile full --accounts 1M --seconds 1 --out DIR`" in out
    assert "cbdc-bench run --profile full --journal DIR" in out
    assert "snapshot bytes per account" in out
    assert "memory (the sequencer's state, per replica): not measured" in out


def test_a_profile_without_runs_is_an_error_naming_compare(tmp_path: Path, model: CostModel, capsys) -> None:
    write_runs(tmp_path, _runs(model))
    assert main(["plan", "--results", str(tmp_path), "--profile", "realistic"]) == 2
    err = capsys.readouterr().err
    assert "no measured run of profile 'realistic'" in err and "cbdc-bench compare --quick --profiles realistic" in err


def test_engine_out_writes_a_kind_engine_result_with_each_piece_of_state(tmp_path: Path) -> None:
    result = run_engine(accounts=20_000, profile="full", batch=2048, seconds=0.05, warmup=0.02, pool=2)
    path = save_engine_result(result, tmp_path)
    back = msgspec.json.decode(path.read_bytes(), type=EngineResult)
    assert back.kind == ENGINE_KIND and back.schema_version == 2
    assert back.state is not None
    assert set(back.state.bytes_per_account) == {"ledger", *full_hooks()}
    assert sum(back.state.bytes_per_account.values()) == pytest.approx(result.bytes_per_account)
    state = read_inputs(tmp_path).states[0]
    assert state.profile == "full" and state.bytes_per_account == back.state.bytes_per_account


def test_plan_writes_json_and_png(tmp_path: Path, model: CostModel) -> None:
    results = write_runs(tmp_path / "results", _runs(model, traffic=TRAFFIC, state=STATE))
    plan = plan_command(results, _request(), out=tmp_path / "out")
    assert (tmp_path / "out/plan.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "out/plan.json").read_text())
    assert saved["plan"]["cores"] == pytest.approx(plan.plan.cores)
    text = format_plan(plan)
    assert "over baseline: not measured" in text and "policy/surveillance" in text


def _ticks_per_s(rate_tps: float) -> float:
    """Generator ticks per second at a rate, by the generator's own rule (the template's 2 gateways)."""
    return 1e9 / LoadConfig(rate_tps=rate_tps, operators=2).tick_ns


def _arrivals() -> Arrivals:
    return Arrivals(LoadConfig(rate_tps=1.0, operators=2), max_batch=8192)


def test_a_signed_run_made_under_the_old_5_ms_cap_is_fitted_and_predicted_at_its_own_ticks() -> None:
    """Signed loads' auto tick is capped at 3 ms since issue 19 (5 ms before): a run whose file says
    its generator ticked every 5 ms keeps 200 ticks/s at its rate and 5 ms ticks at other rates;
    a run made under today's rule, an unsigned run and a run with a set tick are read by the rule."""
    signed = LoadConfig(rate_tps=20_000.0, operators=2, signed=True)
    assert auto_tick_max_ns(signed, 5_000) == 5_000_000
    old = Arrivals(signed, max_batch=8192, auto_tick_max_ns=5_000_000)
    assert old.ticks_per_s(20_000.0) == pytest.approx(200.0)
    assert old.ticks_per_s(300_000.0) == pytest.approx(200.0)  # 150,000/s a gateway: still the cap
    assert old.ticks_per_s(1_000_000.0) == pytest.approx(500.0)  # ~1,000 a frame: below either cap
    assert auto_tick_max_ns(signed, signed.tick_ns // 1000) == 0
    assert Arrivals(signed, max_batch=8192).ticks_per_s(20_000.0) == pytest.approx(1e9 / signed.tick_ns)
    assert auto_tick_max_ns(LoadConfig(rate_tps=20_000.0, operators=2), 4_000) == 0  # unsigned: today's rule
    fast = msgspec.structs.replace(signed, rate_tps=1_200_000.0)  # 1,666,666 ns: recorded as 1,666 us
    assert auto_tick_max_ns(fast, fast.tick_ns // 1000) == 0
    assert auto_tick_max_ns(msgspec.structs.replace(signed, tick_us=5_000), 5_000) == 0


def test_batch_model_idle_busy_and_full_regimes() -> None:
    """Idle: one batch per tick; busy: what arrived while the last batch ran, so the sequencer's
    per-batch + per-payment cost fills exactly one core and batches grow with the rate; full:
    whole Submits up to max_batch (half a Submit of room left on average)."""
    m = BatchModel(batches_per_tick=1.0, per_batch_ns=500_000.0, per_payment_ns=300.0, arrivals=_arrivals())
    assert m.regime(100_000.0) == "idle" and m.batches_per_s(100_000.0) == pytest.approx(_ticks_per_s(100_000.0))
    busy = [r for r in np.geomspace(1e5, 3.3e6, 200) if m.regime(r) == "busy"]
    assert busy, "some rates between idle and full are busy"
    for rate in busy:
        assert m.per_batch_ns * m.batches_per_s(rate) + m.per_payment_ns * rate == pytest.approx(1e9)
    sizes = [r / m.batches_per_s(r) for r in busy]
    assert sizes == sorted(sizes) and sizes[-1] > 2 * sizes[0]
    saturation = m.saturation_tps()
    assert saturation is not None and m.regime(saturation * 1.01) == "full"
    submit = saturation / (_ticks_per_s(saturation) * 2)
    full = 8192 - submit / 2
    assert m.full_batches_per_s(saturation) == pytest.approx(saturation / full)
    assert m.per_batch_ns * saturation / full + m.per_payment_ns * saturation == pytest.approx(1e9, rel=1e-6)


def test_batches_per_tick_come_from_the_runs_where_the_sequencer_was_idle(model: CostModel) -> None:
    """Runs whose sequencer used at most half a core stand for the idle regime; a busy run's fewer,
    larger batches do not; the sequencer's per-batch and per-payment costs are its tiers' sums."""
    per_tick = (1.5, 1.7)
    idle = [
        synthetic_run(model, rate_tps=r, batch_size=r / (k * _ticks_per_s(r)))
        for r, k in zip((50_000.0, 100_000.0), per_tick, strict=True)
    ]
    busy = synthetic_run(model, rate_tps=1_600_000.0, batch_size=8000.0)
    costs = [c for c in (run_cost(r) for r in [*idle, busy]) if c is not None]
    m = batch_model(costs, fits(costs), full_hooks())
    assert m.batches_per_tick == pytest.approx(float(np.median(per_tick)))
    seq = ["ledger", "framing_io", *full_hooks()]
    assert m.per_batch_ns == pytest.approx(sum(model.per_batch_ns[t] for t in seq), rel=1e-6)
    assert m.per_payment_ns == pytest.approx(sum(model.per_payment_ns[t] for t in seq), rel=1e-6)
    assert m.arrivals.max_batch == 8192 and m.arrivals.load.operators == 2
    assert m.idle_runs == 2
    only_busy = batch_model(costs[-1:], fits(costs[-1:]), full_hooks())
    assert only_busy.idle_runs == 0
    assert only_busy.batches_per_tick == pytest.approx(costs[-1].batches_per_s / _ticks_per_s(1_600_000.0))


def test_prediction_is_where_the_fitted_sequencer_core_saturates(model: CostModel) -> None:
    costs = [c for c in (run_cost(r) for r in _runs(model)) if c is not None]
    prediction = predict_max("full", costs, [])
    assert prediction.predicted_tps is not None and prediction.measured is None
    rate = prediction.predicted_tps
    seq = ["ledger", "framing_io", *full_hooks()]
    every = [*seq, "trove", "generator"]
    m = batch_model(costs, fits(costs), full_hooks())
    if "sequencer" in prediction.limited_by:  # even full batches cost its one core
        b, tiers, cores = m.full_batches_per_s(rate), seq, 1.0
    else:
        b, tiers, cores = m.batches_per_s(rate), every, float(costs[0].cores)
    used = sum(model.ns(t, b, rate) for t in tiers) / 1e9
    assert used == pytest.approx(cores, rel=1e-6)
    # How close the fitted runs came to the sequencer's saturation: its busiest run.
    peak = max(sum(model.ns(t, c.batches_per_s, c.transfers_per_s) for t in seq) / 1e9 for c in costs)
    assert prediction.peak_sequencer_cores == pytest.approx(peak, rel=1e-6)


def _assert_predictions_within_a_quarter(by_profile: dict[str, list], maxima: list[MeasuredMax]) -> None:
    """Each prediction within 25% of a search that stopped at the server; a generator-limited
    search has no error, and the prediction must be at least its maximum."""
    checked = 0
    for profile, runs in by_profile.items():
        prediction = predict_max(profile, runs, maxima)
        measured = prediction.measured
        assert measured is not None and prediction.predicted_tps is not None, profile
        if measured.generator_limited and prediction.error is None:
            assert "no check" in prediction.note and prediction.predicted_tps >= measured.median_tps, profile
        elif measured.generator_limited:  # below a lower bound of the server's maximum: at least this far off
            assert -0.25 < prediction.error < 0 and "at least this low" in prediction.note, (profile, prediction)
        else:
            assert prediction.error is not None and abs(prediction.error) < 0.25, (profile, prediction)
            checked += 1
    assert checked >= 5


def test_the_fit_predicts_the_committed_measured_maxima_within_a_quarter() -> None:
    """The committed quick comparison (2 cores): every profile's predicted maximum from its own runs'
    fit against its searched maximum, the issue's 25% target."""
    inputs = read_inputs(TEMPLATE.parents[1])
    by_profile: dict[str, list] = {}
    for r in inputs.runs:
        by_profile.setdefault(r.profile, []).append(r)
    assert len(by_profile) >= 6
    _assert_predictions_within_a_quarter(by_profile, inputs.maxima)


def test_low_rate_runs_alone_predict_the_committed_maxima_within_a_quarter() -> None:
    """Only the committed comparison's runs at 100k and 300k/s (3-12% of the maxima): the batch
    model, not the batch size held from 300k/s, carries the fit to the maxima (held, every profile
    came out 44-54% low)."""
    inputs = read_inputs(TEMPLATE.parents[1])
    by_profile: dict[str, list] = {}
    for r in inputs.runs:
        if r.offered_tps <= 300_000:
            by_profile.setdefault(r.profile, []).append(r)
    assert len(by_profile) >= 6
    _assert_predictions_within_a_quarter(by_profile, inputs.maxima)


def test_option_parsers() -> None:
    assert parse_bytes("512GiB") == 512 * 2**30 and parse_bytes("2TB") == 2e12
    assert parse_machine("cores=64,memory=512GiB,disk=30TB") == {"cores": 64, "memory": 512 * 2**30, "disk": 30e12}
    with pytest.raises(argparse.ArgumentTypeError, match="cores=N"):
        parse_machine("cpus=4")
    assert parse_seconds("365d") == 365 * 86_400


def test_sequencer_total_is_the_process_cpu_on_a_busy_machine(model: CostModel) -> None:
    """Wall-clock parts (engine, hooks) above the process's CPU are scaled down to it; fsync waits
    are not CPU: taken out of the engine's time."""
    run = synthetic_run(model, rate_tps=300_000.0, batch_size=800.0)
    honest = run_cost(run)
    assert honest is not None
    cpu_s = run.server.cpu_s
    assert cpu_s is not None
    busy = msgspec.structs.replace(run, server=msgspec.structs.replace(run.server, cpu_s=cpu_s / 2))
    cost = run_cost(busy)
    assert cost is not None
    sequencer = ["ledger", "framing_io", *full_hooks()]
    assert sum(cost.tier_ns_per_s[t] for t in sequencer) == pytest.approx(cpu_s / 2 * 1e9 / run.load.seconds)
    assert cost.tier_ns_per_s["framing_io"] == 0.0
    assert cost.tier_ns_per_s["trove"] == honest.tier_ns_per_s["trove"]  # outside the process: as measured
    fsync_ms_per_s = 100.0
    waits = msgspec.structs.replace(run.server.durability, fsync="batch", fsync_ms_per_s=fsync_ms_per_s)
    stats_end = dict(run.server.stats_end)
    stats_end["engine_s"] += fsync_ms_per_s * run.load.seconds / 1e3
    fsynced = msgspec.structs.replace(
        run,
        server=msgspec.structs.replace(run.server, durability=waits, stats_end=stats_end),
    )
    with_waits = run_cost(fsynced)
    assert with_waits is not None
    assert with_waits.tier_ns_per_s["ledger"] == pytest.approx(honest.tier_ns_per_s["ledger"])


def test_runs_with_one_and_two_validators_are_planned_and_predicted_apart(tmp_path: Path, model: CostModel) -> None:
    """``signed`` with 1 and with 2 validators are two systems: grouped apart, each predicted; a bare
    profile name plans the variant with the most validators, and says so."""
    for workers in (1, 2):
        write_runs(
            tmp_path,
            _runs(model, tier_cpu_s={"validators": 0.4 / workers}, server_args=["--validators", str(workers)]),
        )
    plan = build_plan(read_inputs(tmp_path), _request())
    assert plan.plan.profile == "full@2 validators"
    assert [p.profile for p in plan.others] == ["full@1 validators"]
    assert {p.profile for p in plan.predictions} == {"full@1 validators", "full@2 validators"}
    assert any("planned as measured with full@2 validators" in a for a in plan.assumptions)
    one, two = (next(t for t in p.tiers if t.tier == "validators") for p in (plan.others[0], plan.plan))
    assert two.cores == pytest.approx(one.cores / 2)


def test_local_validators_cpu_comes_from_the_servers_validator_stats(model: CostModel) -> None:
    """issue 19's server stats: ``validators.cpu_s`` (cumulative) and ``workers``; the window's
    increase is the validators tier, the workers its measured scale and the run's label."""
    run = synthetic_run(model, rate_tps=300_000.0, batch_size=800.0)
    start = run.server.stats_start | {"validators": {"kind": "local", "workers": 2, "cpu_s": 3.0}}
    end = run.server.stats_end | {"validators": {"kind": "local", "workers": 2, "cpu_s": 4.5}}
    signed = msgspec.structs.replace(run, server=msgspec.structs.replace(run.server, stats_start=start, stats_end=end))
    cost = run_cost(signed)
    assert cost is not None
    assert cost.tier_ns_per_s["validators"] == pytest.approx(1.5e9 / run.load.seconds)
    assert cost.workers == {"validators": 2} and cost.label == "full@2 validators" and cost.signed
    inline = end | {"validators": {"kind": "local", "workers": 0, "cpu_s": 0.0}}
    unsplit = run_cost(msgspec.structs.replace(run, server=msgspec.structs.replace(run.server, stats_end=inline)))
    assert unsplit is not None and "validators" not in unsplit.tier_ns_per_s


def test_trove_threads_in_the_server_process_are_not_counted_twice(model: CostModel) -> None:
    """A trove without a child (no ``process_pid`` in its stats) writes on threads of the server
    process: their CPU is in ``server.cpu_s`` and in the trove tier, and is taken out of the former."""
    run = synthetic_run(model, rate_tps=300_000.0, batch_size=800.0)
    child = run_cost(run)
    assert child is not None and child.tier_ns_per_s["trove"] > 0
    trove_cpu_s = child.tier_ns_per_s["trove"] * run.load.seconds / 1e9
    cpu_s = run.server.cpu_s
    assert cpu_s is not None
    threads = msgspec.structs.replace(
        run,
        server=msgspec.structs.replace(
            run.server, cpu_s=cpu_s + trove_cpu_s, stats_end=run.server.stats_end | {"trove": {"rows": 10}}
        ),
    )
    cost = run_cost(threads)
    assert cost is not None
    assert cost.tier_ns_per_s["framing_io"] == pytest.approx(child.tier_ns_per_s["framing_io"])
    assert cost.tier_ns_per_s["trove"] == pytest.approx(child.tier_ns_per_s["trove"])


def test_headline_section_has_a_row_per_profile_from_the_plan_and_its_runs(tmp_path: Path, model: CostModel) -> None:
    """The README section (``loadgen.plan.table``): one plan row and one measured row per profile,
    each figure the plan's or its runs', every run's file listed; it replaces only what lies
    between the markers, and a README without them is refused by name."""
    write_runs(tmp_path, _runs(model, traffic=TRAFFIC, state=STATE))
    inputs = read_inputs(tmp_path)
    plan = build_plan(inputs, _request())
    section = headline_markdown(plan, inputs.runs, plan_command="cbdc-bench plan ...", commands_file="C.md")
    p = plan.plan
    (row,) = [line for line in section.splitlines() if line.startswith(f"| {p.profile} | {p.cores:.2f} ")]
    assert f"({p.cores_low:.2f}-{p.cores_high:.2f})" in row and f"{p.memory_bytes / GIB:,.1f} GiB" in row
    assert f"| {p.machines} |" in row
    (measured,) = [line for line in section.splitlines() if line.startswith(f"| {p.profile} | 100k/s: ")]
    for run in inputs.runs:
        cores = sum(v for t, v in run.tier_ns_per_s.items() if t != "generator") / 1e9
        assert f"{rate_text(run.offered_tps)}: {cores:.2f} cores" in measured
        assert Path(run.file).name in section
    assert "(†)" not in section  # 300k/s lies inside the measured 100k-1.6M/s
    assert plan.deltas and all(d[1:] in section for d in plan.deltas)  # what the hooks add over baseline, signed
    above = build_plan(inputs, _request(rate_tps=5e6))
    marked = headline_markdown(above, inputs.runs, plan_command="cbdc-bench plan ...", commands_file="C.md")
    assert f"| {p.profile} (†)" in marked and "extrapolated in rate" in marked
    readme = f"intro\n{BEGIN}\nold table\n{END}\nafter\n"
    assert replace_section(readme, section) == f"intro\n{section}\nafter\n"
    with pytest.raises(ValueError, match="no section between"):
        replace_section("no markers here", section)


def test_a_search_that_sustained_nothing_gives_no_error(model: CostModel) -> None:
    costs = [c for c in (run_cost(r) for r in _runs(model)) if c is not None]
    nothing = MeasuredMax("full", 0.0, 0.0, 1_000.0, 1, True, "compare.json", costs[0].cpu_model, None)
    prediction = predict_max("full", costs, [nothing])
    assert prediction.measured == nothing and prediction.error is None and prediction.predicted_tps


def test_signed_with_one_and_two_validators_plans_their_cpu_per_signed_payment(tmp_path: Path) -> None:
    """The validators tier at the planned rate is its measured CPU per signed payment (from the
    validators' own CPU in the server's stats) times the rate: a scale-out tier, extrapolated beyond
    the processes it was measured with, that adds machines once it outgrows the replicas' spare cores."""
    per_payment = {1: 70_000.0, 2: 75_000.0}  # a second process verifies as much, a little less efficiently
    for workers, ns in per_payment.items():
        model = CostModel(per_batch_ns={"ledger": 50_000.0}, per_payment_ns={"ledger": 200.0, "validators": ns})
        runs = [synthetic_run(model, rate_tps=r, batch_size=r / 200, validators=workers) for r in (5e3, 1e4, 2e4)]
        write_runs(tmp_path, runs)
    request = _request(rate_tps=1_000_000.0)
    plan = build_plan(read_inputs(tmp_path), request)
    by_label = {p.profile: p for p in [plan.plan, *plan.others]}
    for workers, ns in per_payment.items():
        p = by_label[f"full@{workers} validators"]
        validators = next(t for t in p.tiers if t.tier == "validators")
        assert validators.cores == pytest.approx(ns * request.rate_tps / 1e9, rel=1e-6)
        assert validators.extrapolated and not validators.on_sequencer and not validators.surveillance
        scale_out = sum(t.cores_high for t in p.tiers if not t.on_sequencer)
        assert p.machines == 3 + math.ceil((scale_out - 63) / 64) and p.machines > 3
    section = headline_markdown(plan, read_inputs(tmp_path).runs, plan_command="plan", commands_file="C.md")
    assert "| full@1 validators (†) |" in section and "| full@2 validators (†) |" in section


def _cost(run: RunCost, **changes: object) -> RunCost:
    return msgspec.structs.replace(run, **changes)


def _costs(model: CostModel, **kw: object) -> list[RunCost]:
    return [c for c in (run_cost(r) for r in _runs(model, **kw)) if c is not None]


def test_the_server_kept_up_only_when_sustained_or_only_the_generator_fell_behind() -> None:
    """A saturated server's run is not fitted: not sustained never; generator fell behind only when
    the server shed nothing, settled the scheduled payments and applied the scheduled rate."""
    fine = {"settled": 1_000, "shed": 0, "scheduled": 1_000, "applied_tps": 1_000.0, "scheduled_tps": 1_000.0}
    assert server_kept_up(Kind.SUSTAINED, **fine, min_ratio=0.99)  # type: ignore[arg-type]
    assert not server_kept_up(Kind.NOT_SUSTAINED, **fine, min_ratio=0.99)  # type: ignore[arg-type]
    assert not server_kept_up(Kind.INCOMPLETE, **fine, min_ratio=0.99)  # type: ignore[arg-type]
    assert server_kept_up(Kind.GENERATOR_BEHIND, **fine, min_ratio=0.99)  # type: ignore[arg-type]
    for worse in ({"shed": 10}, {"settled": 900}, {"applied_tps": 950.0}):
        assert not server_kept_up(Kind.GENERATOR_BEHIND, **(fine | worse), min_ratio=0.99)  # type: ignore[arg-type]


def test_saturated_runs_are_not_fitted_and_one_kept_up_rate_is_not_planned(model: CostModel) -> None:
    """signed@1 on the quiet box: kept up at 5,000/s only. Its saturated runs would make the fit
    (and the sequencer's core) nonsense, so they are left out; with one rate left the plan says
    its CPU is not planned, names the run that measures a second rate, counts no machines and
    predicts no maximum; the README row and the measured row say so."""
    costs = _costs(model)
    saturated = [_cost(c, server_kept_up=False, sustained=False, verdict="not sustained") for c in costs[1:]]
    # Their CPU is wildly off the model: fitted, it would change every tier's cost.
    saturated = [_cost(c, tier_ns_per_s={t: v * 3 for t, v in c.tier_ns_per_s.items()}) for c in saturated]
    runs = [costs[0], *saturated]
    plan = build_plan(Inputs(runs=runs, maxima=[], states=[], skipped=[]), _request())
    p = plan.plan
    assert p.cpu_problem is not None and p.cpu_problem in p.missing
    low = round(costs[0].offered_tps)
    assert f"kept up at 1 measured rate ({low:,}/s" in p.cpu_problem.what and "a fit needs two" in p.cpu_problem.what
    assert f"--rate {low // 2} " in p.cpu_problem.command and p.machines is None
    prediction = predict_max("full", runs, [])
    assert prediction.predicted_tps is None and p.cpu_problem.command in prediction.note
    assert prediction.saturated_cores == pytest.approx(max(sum(c.tier_ns_per_s.values()) for c in saturated) / 1e9)
    section = headline_markdown(plan, runs, plan_command="plan", commands_file="C.md")
    assert f"| {p.profile} (‡) | not planned |" in section and p.cpu_problem.command in section
    assert "(server saturated: not fitted)" in section and "| not predicted (‡) |" in section
    # Two kept-up rates: the saturated run changes nothing in the fit.
    two = [*costs[:2], saturated[-1]]
    assert fits(costs[:2]) == fits(fitted_runs(two)) and fit_problem("full", two) is None
    planned = build_plan(Inputs(runs=two, maxima=[], states=[], skipped=[]), _request()).plan
    clean = build_plan(Inputs(runs=costs[:2], maxima=[], states=[], skipped=[]), _request()).plan
    assert planned.cores == pytest.approx(clean.cores) and planned.cpu_problem is None


def _labelled(costs: list[RunCost], profile: str, validators: int, scale: float) -> list[RunCost]:
    label = f"{profile}@{validators} validators" if validators else profile
    return [
        _cost(c, profile=profile, label=label, tier_ns_per_s={t: v * scale for t, v in c.tier_ns_per_s.items()},
              workers={"validators": validators} if validators else {})
        for c in costs
    ]  # fmt: skip


def test_what_the_hooks_add_over_signed_is_signed_full_minus_signed(model: CostModel) -> None:
    """Over signed, the hooks' cost is signed-full minus signed with the same validators (full minus
    signed would subtract the validators' CPU); without signed-full it is not given, and the line
    names the runs that give it."""
    costs = _costs(model)
    runs = [*_labelled(costs, "full", 0, 1.0), *_labelled(costs, "baseline", 0, 0.5),
            *_labelled(costs, "signed", 2, 2.0)]  # fmt: skip
    plan = build_plan(Inputs(runs=runs, maxima=[], states=[], skipped=[]), _request())
    over_signed = plan.deltas[-1]
    assert "over signed: not given" in over_signed and "--profiles signed signed-full --validators 2" in over_signed
    assert "cores" not in over_signed.split("not given")[1].split("(")[0]
    with_full = [*runs, *_labelled(costs, "signed-full", 2, 3.0)]
    plan = build_plan(Inputs(runs=with_full, maxima=[], states=[], skipped=[]), _request())
    plans = {p.profile: p for p in [plan.plan, *plan.others]}
    difference = plans["signed-full@2 validators"].cores - plans["signed@2 validators"].cores
    over_signed = plan.deltas[-1]
    assert "(signed-full@2 validators minus signed@2 validators)" in over_signed
    assert f"{difference:+,.1f} cores" in over_signed and difference > 0
    assert plan.deltas[0].startswith("what full's policy and surveillance add over baseline: ")


def test_a_generator_limited_search_is_not_the_plans_error(model: CostModel) -> None:
    """The searched maximum of a search the generator stopped bounds the generator, not the server:
    no error, and the note says whether the prediction is at least it; a search that stopped at the
    server gets the error, and a large one the CPU its saturated runs were seen to use."""
    costs = _costs(model)
    saturated = _cost(costs[-1], server_kept_up=False, offered_tps=costs[-1].offered_tps * 2)
    runs = [*costs, saturated]
    free = predict_max("full", runs, [])
    predicted = free.predicted_tps
    assert predicted is not None
    cpu = costs[0].cpu_model
    by_generator = MeasuredMax("full", predicted / 2, predicted / 2, predicted / 2, 1, True, "c.json", cpu, None)
    p = predict_max("full", runs, [by_generator])
    assert p.error is None and "no check" in p.note and "consistent" in p.note
    above = msgspec.structs.replace(by_generator, median_tps=predicted * 2, low_tps=predicted * 2)
    low = predict_max("full", runs, [above])
    assert low.error == pytest.approx(-0.5) and "at least this low" in low.note and "underestimates" in low.note
    by_server = msgspec.structs.replace(by_generator, generator_limited=False)
    p = predict_max("full", runs, [by_server])
    assert p.error == pytest.approx(1.0)
    assert p.saturated_cores == pytest.approx(sum(saturated.tier_ns_per_s.values()) / 1e9)
    assert f"{p.saturated_cores:.2f} of {costs[0].cores} cores" in p.note


def test_the_generators_own_processes_limit_the_predicted_maximum(model: CostModel) -> None:
    """The generator shares the machine and is itself one core per process: with a costly generator
    the prediction is where its fitted CPU fills its processes, below where all cores fill."""
    costs = _costs(model)
    heavy = [_cost(c, tier_ns_per_s=c.tier_ns_per_s | {"generator": c.transfers_per_s * 2_000.0}) for c in costs]
    prediction = predict_max("full", heavy, [])
    assert prediction.predicted_tps is not None and prediction.limited_by == "the generator's 1 process"
    assert prediction.predicted_tps == pytest.approx(1e9 / 2_000.0, rel=1e-3)
    assert "generator" not in predict_max("full", costs, []).limited_by.split(":")[0]


def test_machine_cpu_counts_what_no_process_holds_as_the_kernels() -> None:
    """busy = every state but idle, iowait and steal (CPU the VM did not get: no one's cost);
    processes = each process's increase (a process started in the window: all of its CPU; a
    reused pid with a new start time is a new process)."""
    start = machine_cpu.CpuSample(
        0, {"user": 10.0, "system": 5.0, "softirq": 1.0, "steal": 0.5, "iowait": 2.0, "idle": 100.0},
        {(1, 1.0): 8.0, (2, 1.0): 3.0},
    )  # fmt: skip
    end = machine_cpu.CpuSample(
        3_000_000_000, {"user": 12.0, "system": 6.0, "softirq": 1.5, "steal": 0.6, "iowait": 2.5, "idle": 102.0},
        {(1, 1.0): 9.5, (2, 50.0): 0.7, (3, 60.0): 0.4},
    )  # fmt: skip
    w = machine_cpu.window(start, end)
    assert w is not None and w.seconds == pytest.approx(3.0)
    assert w.busy_s == pytest.approx(2.0 + 1.0 + 0.5)
    assert w.stolen_cores == pytest.approx(0.1 / 3.0)
    assert w.processes_s == pytest.approx(1.5 + 0.7 + 0.4)
    assert w.kernel_s == pytest.approx(w.busy_s - w.processes_s)
    assert machine_cpu.window(end, start) is None and machine_cpu.window(None, end) is None


def test_the_kernels_cpu_is_a_per_payment_tier_of_its_own(tmp_path: Path, model: CostModel) -> None:
    """A run that recorded the machine's CPU gets a kernel tier (what no process holds), fitted per
    payment only, planned as a scale-out core tier (not surveillance); older files have none."""
    kernel_ns = 900.0  # per payment
    runs = [
        synthetic_run(model, rate_tps=r, batch_size=b, kernel_s=kernel_ns * r * 2.0 / 1e9, traffic=TRAFFIC,
                      state=STATE)
        for r, b in RATES_AND_BATCHES
    ]  # fmt: skip
    costs = [c for c in (run_cost(r) for r in runs) if c is not None]
    assert all(c.tier_ns_per_s[KERNEL] == pytest.approx(kernel_ns * c.transfers_per_s) for c in costs)
    fit = fit_tier(KERNEL, costs)
    assert fit.per_batch_ns == 0.0 and fit.per_tick_ns == 0.0 and fit.per_payment_ns == pytest.approx(kernel_ns)
    whole = build_plan(read_inputs(write_runs(tmp_path, runs)), _request())
    plan = whole.plan
    assert any("upper bound for a server" in a for a in whole.assumptions)
    (kernel,) = [t for t in plan.tiers if t.tier == KERNEL]
    assert kernel.cores == pytest.approx(kernel_ns * 300_000.0 / 1e9) and not kernel.on_sequencer
    assert not kernel.surveillance
    assert KERNEL not in _costs(model)[0].tier_ns_per_s


def test_idle_batches_per_tick_are_interpolated_in_rate_between_idle_runs() -> None:
    m = BatchModel(
        batches_per_tick=1.5, per_batch_ns=500_000.0, per_payment_ns=300.0, arrivals=_arrivals(), idle_runs=2,
        idle_rates_tps=[100_000.0, 300_000.0], idle_per_tick=[1.2, 1.8],
    )  # fmt: skip
    assert m.per_tick_at(200_000.0) == pytest.approx(1.5)
    assert m.per_tick_at(50_000.0) == pytest.approx(1.2) and m.per_tick_at(900_000.0) == pytest.approx(1.8)
    assert m.idle_batches_per_s(200_000.0) == pytest.approx(1.5 * _ticks_per_s(200_000.0))


def test_on_a_shared_machine_the_other_tiers_squeeze_the_sequencers_core(model: CostModel) -> None:
    """On the measured machine, what the other tiers (generator, trove, kernel) need beyond the other
    cores comes out of the sequencer's: its busy batches fill only that share, so they are fewer and
    larger than with a core of its own; with the others light it has a whole core."""
    m = BatchModel(
        batches_per_tick=1.5, per_batch_ns=1_000_000.0, per_payment_ns=600.0, arrivals=_arrivals(), per_s_ns=5e7
    )
    costs = _costs(model)
    light = {t: f for t, f in fits(costs).items() if t in ("ledger", GENERATOR)}
    rate = 600_000.0
    free = on_machine(light, full_hooks(), m, rate, cores=2)
    assert free.share == 1.0 and free.batches_per_s == pytest.approx(m.batches_per_s(rate))
    heavy = light | {KERNEL: TierFit(KERNEL, 0.0, 2_000.0, [rate], 1.0, 1.0, 2)}  # 1.2 cores at 600k/s
    squeezed = on_machine(heavy, full_hooks(), m, rate, cores=2)
    ticks = _ticks_per_s(rate)
    others = sum(f.ns_per_s(squeezed.batches_per_s, rate, ticks) for t, f in heavy.items() if t != "ledger")
    assert squeezed.share == pytest.approx(2 - others / 1e9, rel=1e-4) and squeezed.share < 1
    assert squeezed.regime == "busy" and squeezed.batches_per_s < free.batches_per_s
    assert m.sequencer_ns_per_s(rate, squeezed.batches_per_s) == pytest.approx(squeezed.share * 1e9, rel=1e-4)
    assert squeezed.total_ns_per_s == pytest.approx(2e9, rel=1e-4)


def test_a_cost_per_second_is_fitted_from_three_rates_for_the_loops_only(model: CostModel) -> None:
    """The server's loop (framing_io, ledger) and the generator's have a cost per second whatever the
    rate; from three or more rates it is separated from the per-batch cost; a hook gets none (its
    constant lands in per-batch/per-payment), and from two rates there is none either."""
    constant = 2e8
    costs = [_cost(c, tier_ns_per_s=c.tier_ns_per_s | {
        "framing_io": c.tier_ns_per_s["framing_io"] + constant,
        "wallet_limits": c.tier_ns_per_s["wallet_limits"] + constant,
    }) for c in _costs(model)]  # fmt: skip
    framing = fit_tier("framing_io", costs)
    assert framing.per_s_ns == pytest.approx(constant, rel=1e-6)
    assert framing.per_batch_ns == pytest.approx(model.per_batch_ns["framing_io"], rel=1e-6)
    assert framing.per_payment_ns == pytest.approx(model.per_payment_ns["framing_io"], rel=1e-6)
    assert fit_tier("wallet_limits", costs).per_s_ns == 0.0
    assert fit_tier("framing_io", costs[:2]).per_s_ns == 0.0
    m = batch_model(costs, fits(costs), full_hooks())
    assert m.per_s_ns == pytest.approx(constant, rel=1e-6)


def test_a_large_error_with_idle_cores_in_the_saturated_runs_says_the_server_waited(model: CostModel) -> None:
    """Where the saturated runs recorded the machine's CPU and left cores idle, the error's note says
    the server waited rather than ran out of CPU; the measured table shows the kernel and the idle cores."""
    costs = _costs(model)
    saturated = _cost(costs[-1], server_kept_up=False, offered_tps=costs[-1].offered_tps * 2, idle_cores=0.6)
    runs = [*costs, saturated]
    predicted = predict_max("full", runs, []).predicted_tps
    assert predicted is not None
    half = MeasuredMax(
        "full", predicted / 2, predicted / 2, predicted / 2, 1, False, "c.json", costs[0].cpu_model, None
    )
    p = predict_max("full", runs, [half])
    assert p.error == pytest.approx(1.0) and "left 0.60-0.60 of 2 cores idle" in p.note
    row = measured_row("full", [saturated], p)
    assert "idle 0.60" in row and "kernel 0.00" in row
    assert "idle" not in measured_row("full", costs[:1], p).split("|")[2]
