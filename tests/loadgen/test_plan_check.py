"""The predicted-vs-searched check (issue 21): a search whose trials ended with the generator behind is
a check of the prediction unless the generator's own processes ran flat out with cores idle elsewhere,
told from the trials' result files (``search_stop``), found beside a copied summary too."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest

from loadgen.plan.inputs import (
    GENERATOR_FLAT_OUT,
    IDLE_TO_SPARE_CORES,
    TRIALS,
    MeasuredMax,
    read_inputs,
    run_cost,
    search_stop,
)
from loadgen.plan.model import meets_aim, predict_max
from loadgen.results.compare import loads_summary
from loadgen.results.machine_cpu import MachineCpu
from loadgen.results.run import RunResult, load, save
from tests.support.plan_fixtures import default_model, synthetic_run

COMPARE_QUICK = Path(__file__).resolve().parents[2] / "results/compare-quick"


def _trial(tmp_path: Path, *, generator_of_core: float, idle_cores: float, server_cores: float = 1.0) -> Path:
    """A search trial's result file whose generator used ``generator_of_core`` of its one process's core
    and whose machine left ``idle_cores`` of its 2 cores idle."""
    run = synthetic_run(default_model(), rate_tps=2_000_000.0, batch_size=4_000.0)
    seconds = run.load.seconds
    busy = 2 * seconds - idle_cores * seconds
    trial: RunResult = msgspec.structs.replace(
        run,
        load=msgspec.structs.replace(run.load, processes=1),
        generator=msgspec.structs.replace(run.generator, cpu_s=generator_of_core * seconds),
        server=msgspec.structs.replace(run.server, cpu_s=server_cores * seconds),
        machine_cpu=MachineCpu(
            seconds=seconds, cores=2, user_s=busy, nice_s=0.0, system_s=0.0, irq_s=0.0, softirq_s=0.0,
            steal_s=0.0, iowait_s=0.0, idle_s=idle_cores * seconds, processes_s=busy,
        ),
    )  # fmt: skip
    return save(trial, tmp_path)


@pytest.mark.parametrize(
    ("generator_of_core", "idle_cores", "bound"),
    [
        (0.97, 0.6, True),  # the generator flat out, a core idle: it bounded the search
        (0.97, 0.05, False),  # flat out but the machine out of CPU: the prediction models that
        (0.6, 0.6, False),  # the generator had CPU to spare: the server stopped the search
        (GENERATOR_FLAT_OUT, IDLE_TO_SPARE_CORES, True),  # the thresholds themselves count
    ],
)
def test_only_a_generator_flat_out_with_cores_to_spare_bounds_a_search(
    tmp_path: Path, generator_of_core: float, idle_cores: float, bound: bool
) -> None:
    path = _trial(tmp_path, generator_of_core=generator_of_core, idle_cores=idle_cores, server_cores=0.95)
    found, stop = search_stop([path])
    assert found is bound
    assert f"generator {generator_of_core:.2f} of its core" in stop and f"{idle_cores:.2f} cores idle" in stop
    assert "server process 0.95 cores" in stop


def test_the_lowest_failed_trial_decides_and_no_trials_leave_the_verdict_standing(tmp_path: Path) -> None:
    lowest = _trial(tmp_path / "a", generator_of_core=0.5, idle_cores=0.1)
    higher = _trial(tmp_path / "b", generator_of_core=0.99, idle_cores=0.9)
    bound, stop = search_stop([lowest, higher])
    assert bound is False and "2 failed trials" in stop and "generator 0.50-0.99" in stop
    assert search_stop([]) == (None, "")
    by_verdict = MeasuredMax("full", 1e6, 1e6, 1e6, 1, True, "c.json", "cpu", None)
    assert by_verdict.bounded_by_generator  # without trial files, the searches' verdict stands
    assert not msgspec.structs.replace(by_verdict, generator_bound=False).bounded_by_generator


def test_a_search_that_ran_the_machine_out_of_cpu_is_a_two_sided_check() -> None:
    """The generator fell behind, but not flat out: the error is the plan's, both ways (``meets_aim``)."""
    model = default_model()
    runs = [
        c
        for c in (run_cost(synthetic_run(model, rate_tps=r, batch_size=b)) for r, b in ((1e5, 400.0), (4e5, 1e3)))
        if c is not None
    ]
    predicted = predict_max("full", runs, []).predicted_tps
    assert predicted is not None
    behind = MeasuredMax(
        "full", predicted / 2, predicted / 2, predicted / 2, 1, True, "c.json", runs[0].cpu_model, None
    )
    bounded = predict_max("full", runs, [msgspec.structs.replace(behind, generator_bound=True, stop="trials")])
    assert bounded.error is None and "no check" in bounded.note and "generator-bound: trials" in bounded.note
    checked = predict_max("full", runs, [msgspec.structs.replace(behind, generator_bound=False, stop="trials")])
    assert checked.error == pytest.approx(1.0) and "a check although" in checked.note
    assert not meets_aim(predicted, msgspec.structs.replace(behind, generator_bound=False))
    assert meets_aim(predicted, msgspec.structs.replace(behind, generator_bound=True))  # one-sided there


def test_trials_are_found_beside_a_copied_summary_and_never_fitted(tmp_path: Path) -> None:
    """``maxima/NAME.json`` with its trials under ``maxima/search-trials/NAME/`` (what
    ``benchmarks/plan_first_cut.py`` copies) reads as the comparison read in place; without the
    trials the searches' verdict stands; the trials are never runs of the plan. The committed
    comparison's trials predate ``machine_cpu``: given one here (a core idle), its generator-limited
    searches stay generator-bound only where the generator was flat out."""
    summary = loads_summary((COMPARE_QUICK / "compare.json").read_bytes())
    in_place = tmp_path / "compare"
    (in_place / "runs").mkdir(parents=True)
    shutil.copy(COMPARE_QUICK / "compare.json", in_place / "compare.json")
    for ref in summary.runs:
        run = load(COMPARE_QUICK / ref.file)
        seconds = run.load.seconds
        cpu = MachineCpu(
            seconds=seconds, cores=2, user_s=seconds, nice_s=0.0, system_s=0.0, irq_s=0.0, softirq_s=0.0,
            steal_s=0.0, iowait_s=0.0, idle_s=seconds, processes_s=seconds,
        )  # fmt: skip
        (in_place / ref.file).write_bytes(msgspec.json.encode(msgspec.structs.replace(run, machine_cpu=cpu)))
    read = {m.profile: m for m in read_inputs(in_place / "compare.json").maxima}
    assert all(m.stop for m in read.values() if m.profile != "echo")
    flat_out = {
        m.profile
        for m in read.values()
        if m.stop and float(m.stop.split("generator ")[1].split()[0].split("-")[0]) >= 0.9
    }
    assert {p for p, m in read.items() if m.generator_bound} == flat_out
    # Both kinds are there: a search stopped by a generator flat out (echo's), and one whose verdict said
    # the generator fell behind while it had CPU to spare (a check now).
    assert flat_out and any(m.generator_limited and m.generator_bound is False for m in read.values())
    copy = tmp_path / "results" / "maxima"
    copy.mkdir(parents=True)
    shutil.copy(in_place / "compare.json", copy / "quick.json")
    alone = {m.profile: m for m in read_inputs(tmp_path / "results").maxima}
    assert all(m.generator_bound is None and m.stop == "" for m in alone.values())
    assert {p for p, m in alone.items() if m.bounded_by_generator} == {
        s.profile for s in summary.searches if s.generator_limited
    }
    shutil.copytree(in_place / "runs", copy / TRIALS / "quick" / "runs")
    inputs = read_inputs(tmp_path / "results")
    assert inputs.runs == []  # the trials are not fitted
    copied = {m.profile: m for m in inputs.maxima}
    for profile, m in read.items():
        assert (copied[profile].generator_bound, copied[profile].stop) == (m.generator_bound, m.stop), profile
