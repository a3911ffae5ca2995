"""The capacity plan's model against fresh measurements (outside the default test run: ~5 min of load).

Runs the ``surveillance`` profile (journal, trove; ``PROFILE``) at two rates, fits each tier's
per-batch + per-payment cost and the batch model from them (``loadgen.plan.model``), then
measures what the model predicts beyond them:

* the server's CPU above the fitted rates (three times the highest, or 80% of the predicted
  maximum if that is lower, so the server still keeps up there), with the batches the model gives
  on this machine (``on_machine``: the generator, the trove and the kernel leave the sequencer part
  of a core, so its batches grow; a core of its own gave 497 batches/s where 142 were measured);
* this machine's maximum sustainable rate, by a short search (``loadgen.harness.search``), against
  the prediction, which names its limit (the sequencer's core, all cores, the generator, or a
  one-core tier: the trove child at its CPU + waits for a core).

A trove profile's runs and trials last whole flush periods of its writer (``plan_first_cut.run_seconds``,
7-10 s: 4-second runs and 2-second trials held no flush, issue 21), so both sides measure the trove
with its flushes; the runs wait after their drain for two finished flushes (``--trove-flushes``), whose
CPU per row prices the window's trove rows (``loadgen.plan.inputs.trove_window_ns``: the flush CPU
inside a window depended on whether the write ended inside it, 544-2,042 ns a payment). Both within
the issue's 25%; it fails beyond. A run or search trial whose window the host's steal
spoiled (the verdict's rule, 5% of the cores) is measured again, up to ``STEAL_RETRIES`` times,
the least-stolen attempt kept (``benchmarks.plan_first_cut.keep_least_stolen``), and the steal of
each is printed with the result. A search that stopped where the generator fell
behind measured a lower bound of the server's maximum (``predict_max``'s rule, as in the README):
then only a prediction more than 25% below that bound can be shown wrong, and the test says the
check was one-sided. The figures are printed with the result; on a shared machine the search's
maximum is latency-bound (the server waits to be scheduled), not CPU-bound, and this test says
nothing about the model there.

Run: python -m pytest benchmarks/test_bench_plan.py -m benchmark -s
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.plan_first_cut import STEAL_RETRIES, TROVE_FLUSHES, Kept, keep_least_stolen, run_seconds
from engine.profiles import CompareSettings
from loadgen.cli.main import main
from loadgen.generator.gateway import LoadConfig
from loadgen.harness.measured import run_benchmark
from loadgen.harness.search import RunOutcome, find_max_sustainable
from loadgen.plan.inputs import GENERATOR, KERNEL, SPOILED, MeasuredMax, read_inputs, search_stop
from loadgen.plan.model import PREDICTION_AIM, batch_model, fits, meets_aim, on_machine, predict_max
from loadgen.results.run import RunResult, save
from loadgen.results.steal import least_stolen, result_steal

pytestmark = pytest.mark.benchmark

#: ``surveillance``: the first cut's one search that stopped at the server (its trove writer, one
#: thread: issue 21). ``full``'s searches stop where the generator, starved of the 2 cores by the
#: server, the trove child and the kernel, falls behind (p99 from the schedule over 20 ms at
#: 262-275k/s while its 600k/s run applied 598k/s), which bounds the server from below only: a
#: one-sided check (``meets_aim``). ``CBDC_PLAN_CHECK_PROFILE=full`` runs it anyway.
PROFILE = os.environ.get("CBDC_PLAN_CHECK_PROFILE", "surveillance")
FIT_RATES = (100_000.0, 300_000.0)
#: Exit statuses of a run whose CPU figures are measured: sustained (0), not sustained (3), generator
#: fell behind (4). The CPU per payment is measured in all three; 5 (incomplete) and 2 (error) are not.
MEASURED = (0, 3, 4)


def _run(rate: float, out: Path, tmp_path: Path) -> Path:
    """One ``run`` at ``rate`` into ``out``; its result file."""
    before = set(out.glob("*.json"))
    code = main([
        "run", "--profile", PROFILE, "--rate", f"{rate:.0f}", "--seconds", run_seconds(PROFILE, rate, "4"), "--warmup",
        "2", "--accounts", "1M",
        "--journal", str(tmp_path / "journal"), "--fsync", "interval:10",
        "--trove", str(tmp_path / f"trove-{rate:.0f}"), "--trove-flushes", str(TROVE_FLUSHES), "--out", str(out),
    ])  # fmt: skip
    assert code in MEASURED, f"the run at {rate:,.0f}/s measured nothing (exit {code})"
    (written,) = set(out.glob("*.json")) - before
    return written


def _kept_run(rate: float, out: Path, tmp_path: Path) -> Kept:
    """``_run`` measured again while the host's steal spoiled it; the set-aside attempts go under ``SPOILED``."""
    return keep_least_stolen(lambda: _run(rate, out, tmp_path), tmp_path / SPOILED, STEAL_RETRIES)


def test_the_fit_predicts_cpu_above_its_rates_and_the_maximum(tmp_path: Path) -> None:
    kept = [_kept_run(rate, tmp_path / "fit", tmp_path) for rate in FIT_RATES]
    fitted = read_inputs(tmp_path / "fit").runs
    prediction = predict_max(PROFILE, fitted, [])
    assert prediction.predicted_tps is not None, prediction.note
    check_rate = min(3 * FIT_RATES[-1], 0.8 * prediction.predicted_tps)
    kept.append(_kept_run(check_rate, tmp_path / "check", tmp_path))
    (fresh,) = read_inputs(tmp_path / "check").runs
    # The check run shares this machine with the generator and the kernel: its batches follow the
    # share of a core they leave the sequencer (``on_machine``), fitted with every tier.
    every = fits(fitted)
    hooks = fitted[0].hooks
    batches = batch_model(fitted, every, hooks)
    rate = fresh.transfers_per_s
    machine = on_machine(every, hooks, batches, rate, fresh.cores)
    b = machine.batches_per_s
    ticks = batches.arrivals.ticks_per_s(rate)
    server = [t for t in every if t not in (GENERATOR, KERNEL)]
    predicted_cpu = sum(every[t].ns_per_s(b, rate, ticks) for t in server)
    measured_cpu = sum(v for t, v in fresh.tier_ns_per_s.items() if t not in (GENERATOR, KERNEL))
    cpu_error = (predicted_cpu - measured_cpu) / measured_cpu
    kernel = (
        f", kernel {fresh.tier_ns_per_s.get(KERNEL, 0.0) / 1e9:.3f} cores, idle {fresh.idle_cores:.3f}"
        + (f", stolen {fresh.stolen_cores:.3f}" if fresh.stolen_cores else "")
        if fresh.idle_cores is not None
        else ""
    )

    targets = CompareSettings()

    trial_steal: list[float] = []
    trials: dict[float, RunResult] = {}

    def measure(offered: float) -> RunOutcome:
        # A fresh server per trial: its first flush comes one period after it starts, inside a window
        # of whole periods after a 1-second warm-up (``trove_run_seconds``); a 2-second trial held none.
        seconds = float(run_seconds(PROFILE, offered, "2"))
        config = LoadConfig(rate_tps=offered, seconds=seconds, warmup=1.0, drain=5.0)
        best, _ = least_stolen(
            lambda: run_benchmark(
                config, profile=PROFILE, accounts=1_000_000, journal_dir=str(tmp_path / "journal"),
                fsync="interval:10", trove_dir=str(tmp_path / f"search-{offered:.0f}"),
            ),
            result_steal,
            STEAL_RETRIES,
        )  # fmt: skip
        trial_steal.append(result_steal(best)[0])
        trials[offered] = best
        s = best.summary
        return RunOutcome(
            offered_tps=offered, achieved_tps=s.achieved_tps, p99_ms=s.p99_ms,
            generator_kept_schedule=s.generator_kept_schedule, scheduled_tps=s.scheduled_tps,
            sustained=s.exit_status == 0,
        )  # fmt: skip

    found = find_max_sustainable(
        measure, slo_p99_ms=targets.slo_p99_ms, start_tps=prediction.predicted_tps, max_tps=16e6,
        min_tps=10_000, precision=0.1, confirm_repeats=0, growth=1.5,
    )  # fmt: skip
    low, high = found.interval()
    # What stopped the search (``search_stop``): only a generator flat out with cores to spare bounds it.
    failed = [r for t, r in sorted(trials.items()) if t > found.max_sustainable_tps and r.summary.exit_status != 0]
    bound, stop = search_stop([save(r, tmp_path / "trials") for r in failed])
    searched = MeasuredMax(
        PROFILE, found.max_sustainable_tps, low, high, 1, found.generator_limited, "search", fresh.cpu_model, None,
        generator_bound=bound, stop=stop,
    )  # fmt: skip
    checked = predict_max(PROFILE, fitted, [searched])
    max_error = (prediction.predicted_tps - found.max_sustainable_tps) / found.max_sustainable_tps
    print(
        f"\n{PROFILE}, fitted at {', '.join(f'{r:,.0f}' for r in FIT_RATES)}/s: server CPU at {rate:,.0f}/s "
        f"predicted {predicted_cpu / 1e9:.3f} cores ({machine.regime} batching with {machine.share:.2f} of a core, "
        f"{b:,.0f} batches/s, measured {fresh.batches_per_s:,.0f}), measured {measured_cpu / 1e9:.3f} "
        f"({cpu_error:+.0%}{kernel}); maximum predicted {prediction.predicted_tps:,.0f}/s "
        f"({prediction.limited_by}; the others: "
        + ", ".join(f"{w} {v:,.0f}/s" for w, v in prediction.limits.items() if w != prediction.limited_by)
        + f"), searched {found.max_sustainable_tps:,.0f}/s ({max_error:+.0%}, {len(found.trials)} trials"
        + (", generator-bound: a one-sided check" if searched.bounded_by_generator else "")
        + f"){'; ' + checked.note if checked.note else ''}; steal (cores): runs "
        + ", ".join(f"{k.stolen.cores:.2f}" + (" SPOILED" if k.spoiled else "") for k in kept)
        + f", search trials {min(trial_steal):.2f}-{max(trial_steal):.2f}"
    )
    assert abs(cpu_error) < PREDICTION_AIM
    assert meets_aim(prediction.predicted_tps, searched)  # one-sided where the search was generator-bound
