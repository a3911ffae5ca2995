"""The first cut against the host's steal, and where the plan's model breaks (issue 21).

* A run or search trial whose window the host's steal spoiled (``verdict.steal_spoiled``) is
  measured again, the least-stolen attempt kept, the others set aside under ``spoiled/`` where the
  plan never reads them; a kept run still spoiled is marked in the README's table.
* A tier that cannot be partitioned (the sequencer, a one-core tier) planned above one core is
  flagged "does not fit one core", and a planned rate outside the fitted rates says by how much.

Result files are generated from a known cost model (``tests.support.plan_fixtures``); the steal
figures are set on them, and every expected figure is computed from those settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from benchmarks.plan_first_cut import Kept, Stolen, keep_least_stolen, steal_report, stolen_of
from loadgen.cli.plan import format_plan
from loadgen.harness import compare as harness
from loadgen.harness.compare import QUICK, Session
from loadgen.plan.inputs import SPOILED, measured_maxima, read_inputs
from loadgen.plan.model import GIB, CapacityPlan, Machine, PlanRequest, build_plan
from loadgen.plan.table import headline_markdown
from loadgen.results.compare import loads_summary
from loadgen.results.run import RunResult, save
from loadgen.results.state import StateFootprint
from loadgen.results.verdict import STEAL_NOTE_SHARE, steal_spoiled
from tests.support.plan_fixtures import CostModel, default_model, machine_cpu, synthetic_run

CORES = 2
QUIET = 0.2 * STEAL_NOTE_SHARE * CORES
SPOILING = 3 * STEAL_NOTE_SHARE * CORES
RATES_AND_BATCHES = ((100_000.0, 400.0), (200_000.0, 700.0), (300_000.0, 1_000.0))
COMMITTED_SEARCH = Path(__file__).resolve().parents[2] / "results/plan-first-cut/maxima/unsigned.json"


def stolen_run(rate_tps: float, batch_size: float, stolen_cores: float, model: CostModel | None = None) -> RunResult:
    """A ``full`` run whose machine lost ``stolen_cores`` to the host's steal over its window."""
    run = synthetic_run(model or default_model(), rate_tps=rate_tps, batch_size=batch_size, kernel_s=0.0)
    assert run.machine_cpu is not None
    cpu = machine_cpu(run.machine_cpu.seconds, 0.0)
    steal_s = stolen_cores * cpu.seconds
    cpu = msgspec.structs.replace(cpu, steal_s=steal_s, idle_s=cpu.idle_s - steal_s)
    return msgspec.structs.replace(run, machine_cpu=cpu)


def attempts(folder: Path, steals: list[float]) -> Iterator[Path]:
    """Result files of successive attempts at one rate, with these steals."""
    for i, stolen in enumerate(steals):
        run = stolen_run(100_000.0, 400.0, stolen)
        yield save(run, folder / f"attempt{i}")


@pytest.mark.parametrize(
    ("steals", "retries", "kept_index", "tried"),
    [
        ([QUIET, SPOILING], 2, 0, 1),  # quiet first time: measured once
        ([SPOILING, QUIET, QUIET], 2, 1, 2),  # spoiled, then quiet: the second kept
        ([SPOILING, 2 * SPOILING, 1.5 * SPOILING], 2, 0, 3),  # retries out: the least stolen kept, still spoiled
        ([SPOILING, QUIET], 0, 0, 1),  # no retries: kept as it is, spoiled
    ],
)
def test_a_spoiled_run_is_measured_again_and_the_least_stolen_kept(
    tmp_path: Path, steals: list[float], retries: int, kept_index: int, tried: int
) -> None:
    files = attempts(tmp_path / "runs", steals)
    calls: list[Path] = []

    def measure() -> Path:
        calls.append(next(files))
        return calls[-1]

    kept = keep_least_stolen(measure, tmp_path / SPOILED, retries)
    assert len(calls) == tried
    assert kept.path == calls[kept_index] and kept.path.exists()
    assert kept.stolen.cores == pytest.approx(steals[kept_index])
    assert kept.spoiled is steal_spoiled(steals[kept_index], CORES)
    assert sorted(p.name for p in kept.set_aside) == sorted(p.name for p in calls if p != kept.path)
    assert all(p.parent == tmp_path / SPOILED and p.exists() for p in kept.set_aside)
    assert not any(p.exists() for p in calls if p != kept.path)  # moved, not copied


def test_the_steal_threshold_is_the_verdicts_share_of_the_cores(tmp_path: Path) -> None:
    edge = STEAL_NOTE_SHARE * CORES
    below, at = (save(stolen_run(100_000.0, 400.0, s), tmp_path / str(s)) for s in (0.99 * edge, edge))
    assert stolen_of(below).of_cores == CORES and not stolen_of(below).spoiled
    assert stolen_of(at).spoiled
    report = steal_report([
        Kept(below, stolen_of(below), []), Kept(at, stolen_of(at), [tmp_path / SPOILED / "x.json"]),
    ])  # fmt: skip
    assert report.startswith("host steal: 1 of 2 runs spoiled and measured again (1 attempts set aside")
    assert "1 kept spoiled" in report and f"{at.name}: steal {edge:.2f} cores SPOILED" in report


def test_the_plan_never_reads_spoiled_attempts_and_marks_a_kept_spoiled_run(tmp_path: Path) -> None:
    """Set-aside attempts (far costlier, as a contended run measures) change no fit; a kept run still
    over the threshold is marked SPOILED in the measured table, and the summary counts both."""
    results = tmp_path / "results"
    steals = [QUIET, SPOILING, QUIET]
    for (rate, batch), stolen in zip(RATES_AND_BATCHES, steals, strict=True):
        save(stolen_run(rate, batch, stolen), results / "runs")
    clean = build_plan(read_inputs(results), _request())
    heavy = msgspec.structs.replace(
        default_model(), per_payment_ns={k: 10 * v for k, v in default_model().per_payment_ns.items()}
    )
    for rate, batch in RATES_AND_BATCHES[:2]:
        save(stolen_run(rate, batch, 2 * SPOILING, heavy), results / SPOILED)
    inputs = read_inputs(results)
    assert len(inputs.runs) == len(RATES_AND_BATCHES) and len(inputs.spoiled) == 2
    plan = build_plan(inputs, _request())
    assert plan.plan.cores == pytest.approx(clean.plan.cores)
    section = headline_markdown(plan, inputs.runs, plan_command="p", commands_file="c", spoiled=inputs.spoiled)
    assert "2 run attempts set aside as spoiled" in section
    assert f"1 of {len(RATES_AND_BATCHES)} still spoiled." in section
    assert section.count("SPOILED: steal") == 1
    assert f"stolen {SPOILING:.2f} (SPOILED" in section


def test_a_search_trial_spoiled_by_steal_is_measured_again_in_compare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``compare --steal-retries``: a phase whose window the steal spoiled is measured again, the
    least-stolen attempt kept and the others saved under ``spoiled/``; no retries: measured once."""
    steals = iter([SPOILING, 2 * SPOILING, QUIET])
    measured: list[float] = []

    def fake_measure(self: Session, rate_tps: float, *, search: bool) -> RunResult:
        measured.append(next(steals))
        return stolen_run(rate_tps, 400.0, measured[-1])

    monkeypatch.setattr(Session, "_measure", fake_measure)
    monkeypatch.setattr(harness, "wait_idle", lambda server: None)

    def session(retries: int) -> Session:
        return Session(
            lambda: None,  # type: ignore[arg-type,return-value]  # the fake measures without a server
            profile="full", repeat=1, plan=msgspec.structs.replace(QUICK, steal_retries=retries),
            settings=harness.CompareSettings(), seed=1, scenario=None, runs_dir=tmp_path / "runs", echo=False,
            on_phase=lambda ref, result: None,
        )  # fmt: skip

    result, spoiled = session(2)._measure_unstolen(100_000.0, search=True)
    assert measured == [SPOILING, 2 * SPOILING, QUIET] and spoiled == 2
    assert result.machine_cpu is not None and result.machine_cpu.stolen_cores == pytest.approx(QUIET)
    assert len(list((tmp_path / SPOILED).glob("*.json"))) == 2
    steals = iter([SPOILING])
    result, spoiled = session(0)._measure_unstolen(100_000.0, search=True)
    assert spoiled == 0 and result.machine_cpu is not None and steal_spoiled(result.machine_cpu.stolen_cores, CORES)


def test_a_searchs_trials_steal_reaches_its_measured_maximum() -> None:
    """The comparison's run references carry each trial's steal and re-measurements; the plan's
    maximum counts the trials still spoiled and those measured again."""
    summary = loads_summary(COMMITTED_SEARCH.read_bytes(), source=str(COMMITTED_SEARCH))
    profile = summary.searches[0].profile
    mine = [r for r in summary.runs if r.profile == profile and r.stage == "search"]
    assert len(mine) >= 2
    steals = {id(r): SPOILING if i == 0 else QUIET for i, r in enumerate(mine)}
    runs = [
        msgspec.structs.replace(r, stolen_cores=steals[id(r)], spoiled_attempts=1 if i < 2 else 0)
        if id(r) in steals
        else r
        for i, r in enumerate(summary.runs)
    ]
    (found,) = [m for m in measured_maxima(msgspec.structs.replace(summary, runs=runs)) if m.profile == profile]
    assert found.stolen_cores == pytest.approx(SPOILING)
    assert found.spoiled_trials == 1
    assert found.retried_trials == sum(1 for i, r in enumerate(summary.runs) if i < 2 and id(r) in steals)


def _request(rate_tps: float = 300_000.0, profile: str = "full") -> PlanRequest:
    return PlanRequest(rate_tps=rate_tps, accounts=10**9, profile=profile, machine=Machine(64, 512 * GIB))


def _plan_from(
    tmp_path: Path, model: CostModel, rates_and_batches: tuple[tuple[float, float], ...], rate: float
) -> CapacityPlan:
    for r, b in rates_and_batches:
        save(synthetic_run(model, rate_tps=r, batch_size=b), tmp_path)
    return build_plan(read_inputs(tmp_path), _request(rate))


def test_a_sequencer_planned_above_one_core_does_not_fit_one_core(tmp_path: Path) -> None:
    """Per-payment ledger work that fills more than a core at the planned rate, from runs far below it
    (as ``signed@2``'s per-frame cost at 5-20k/s, extrapolated to 300k/s): said loudly, with how far."""
    base = default_model()
    ledger_ns = 4e9 / 300_000.0  # 4 cores of ledger at 300k/s by itself
    model = msgspec.structs.replace(base, per_payment_ns=base.per_payment_ns | {"ledger": ledger_ns})
    low = ((10_000.0, 20.0), (20_000.0, 40.0))
    plan = _plan_from(tmp_path, model, low, 300_000.0).plan
    assert plan.sequencer_core_busy > 1
    (seq,) = [b for b in plan.breaks if b.startswith("does not fit one core: the sequencer of full")]
    assert f"needs {plan.sequencer_core_busy:.0%} of a core at 300,000/s" in seq
    (extra,) = [b for b in plan.breaks if b.startswith("extrapolated:")]
    assert f"{300_000.0 / max(r for r, _ in low):,.1f}x its highest measured rate" in extra
    text = format_plan(build_plan(read_inputs(tmp_path), _request()))
    assert text.count("WHERE THE MODEL BREAKS:") == len(plan.breaks)
    assert plan.machines is None  # no machine runs a sequencer over one core


def test_a_one_core_tier_planned_above_one_core_does_not_fit_one_core(tmp_path: Path) -> None:
    base = default_model()
    model = msgspec.structs.replace(base, per_payment_ns=base.per_payment_ns | {"trove": 1.5e9 / 300_000.0})
    plan = _plan_from(tmp_path, model, RATES_AND_BATCHES, 300_000.0).plan
    (trove,) = [o for o in plan.one_core if o.tier == "trove"]
    assert trove.busy > 1
    assert any(b.startswith(f"does not fit one core: the trove of full (the trove child's one process) needs "
                            f"{trove.busy:.0%}") for b in plan.breaks)  # fmt: skip
    section = headline_markdown(build_plan(read_inputs(tmp_path), _request()), [], plan_command="p", commands_file="c")
    assert "| full (!) |" in section and "(!) Where the model breaks at this rate: does not fit one core" in section


def test_a_plan_inside_its_measured_rates_and_under_one_core_breaks_nowhere(tmp_path: Path) -> None:
    plan = _plan_from(tmp_path, default_model(), RATES_AND_BATCHES, 200_000.0).plan
    assert plan.sequencer_core_busy < 1 and all(o.busy < 1 for o in plan.one_core)
    assert plan.breaks == []
    below = build_plan(read_inputs(tmp_path), _request(50_000.0)).plan
    assert below.breaks == [
        f"extrapolated: full was measured at 100,000-300,000/s; 50,000/s is {100_000 / 50_000:.1f}x below its "
        "lowest measured rate (100,000/s), so each tier's per-batch/per-payment split and the batches there come "
        "from the model alone"
    ]


def test_state_from_gives_snapshot_sizes_never_cpu(tmp_path: Path) -> None:
    """``plan --state-from DIR`` (the snapshot sizes measured apart, results/snapshot-sizes): the
    snapshots enter the retention, and DIR's runs are not fitted."""
    for r, b in RATES_AND_BATCHES:
        save(synthetic_run(default_model(), rate_tps=r, batch_size=b), tmp_path / "results")
    without = build_plan(read_inputs(tmp_path / "results"), _request())
    assert without.plan.snapshot_bytes is None
    per_account = 13.0
    heavy = msgspec.structs.replace(
        default_model(), per_payment_ns={k: 10 * v for k, v in default_model().per_payment_ns.items()}
    )
    snap = msgspec.structs.replace(
        stolen_run(100_000.0, 400.0, SPOILING, heavy),  # contended: its CPU must not be fitted
        state=StateFootprint(bytes_per_account={"ledger": 5.0}, snapshot_bytes_per_account=per_account),
    )
    save(snap, tmp_path / "sizes")
    inputs = read_inputs(tmp_path / "results", state_from=[tmp_path / "sizes"])
    plan = build_plan(inputs, _request())
    assert len(inputs.runs) == len(RATES_AND_BATCHES)
    assert plan.plan.cores == pytest.approx(without.plan.cores)
    request = _request()
    assert plan.plan.snapshot_bytes == pytest.approx(request.snapshots_kept * request.accounts * per_account)
    with pytest.raises(FileNotFoundError, match="--state-from"):
        read_inputs(tmp_path / "results", state_from=[tmp_path / "nowhere"])


def test_stolen_of_a_file_without_machine_cpu_is_never_spoiled(tmp_path: Path) -> None:
    path = save(synthetic_run(default_model(), rate_tps=100_000.0, batch_size=400.0), tmp_path)
    assert stolen_of(path) == Stolen(0.0, 0) and not stolen_of(path).spoiled
