"""Result files with known costs, for the capacity plan's arithmetic tests.

A committed, real result file (``results/compare-quick``, a sustained ``full`` run) is the
template; its server figures are replaced by ones generated from a known cost model: each tier
costs ``per_batch_ns`` per batch plus ``per_payment_ns`` per payment. The plan must recover those
costs and compute its figures from them, so the tests assert against the model, never against
numbers typed into them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from engine.profiles import CompareSettings
from loadgen.plan.trove_cost import TroveCost
from loadgen.results.environment import Calibration
from loadgen.results.machine_cpu import MachineCpu
from loadgen.results.run import RunResult, Traffic, load, resolved_settings, save
from loadgen.results.state import StateFootprint

TEMPLATE = (
    Path(__file__).resolve().parents[2] / "results/compare-quick/runs/20261122T092451Z-compare-full-2062500tps.json"
)
PROFILE = "full"


class CostModel(msgspec.Struct, frozen=True):
    """Per-batch (per generator tick for the generator) and per-payment ns of each tier (a hook's name is its tier)."""

    per_batch_ns: dict[str, float]
    per_payment_ns: dict[str, float]
    per_tick_ns: dict[str, float] = {}

    def ns(self, tier: str, batches: float, payments: float, ticks: float = 0.0) -> float:
        return (
            self.per_batch_ns.get(tier, 0.0) * batches
            + self.per_payment_ns.get(tier, 0.0) * payments
            + self.per_tick_ns.get(tier, 0.0) * ticks
        )

    @property
    def tiers(self) -> set[str]:
        return set(self.per_batch_ns) | set(self.per_payment_ns) | set(self.per_tick_ns)


def full_hooks() -> list[str]:
    return list(resolved_settings(PROFILE, None, CompareSettings()).hooks)


def default_model() -> CostModel:
    """Costs of every tier of ``full`` (ledger, framing, each hook, the trove, the generator: per tick)."""
    tiers = ["ledger", "framing_io", "trove", "generator", *full_hooks()]
    return CostModel(
        per_batch_ns={t: 20_000.0 * (i + 1) for i, t in enumerate(tiers) if t != "generator"},
        per_payment_ns={t: 15.0 * (i + 1) for i, t in enumerate(tiers)},
        per_tick_ns={"generator": 80_000.0},
    )


def ticks_per_s(rate_tps: float) -> float:
    """Generator ticks per second at ``rate_tps`` with the template's load settings (the generator's rule)."""
    return 1e9 / msgspec.structs.replace(load(TEMPLATE).load, rate_tps=rate_tps).tick_ns


def synthetic_run(
    model: CostModel,
    *,
    rate_tps: float,
    batch_size: float,
    seconds: float = 2.0,
    cpu_model: str = "Test CPU",
    calibration_tps: float | None = 1e7,
    traffic: dict[str, Any] | None = None,
    tier_cpu_s: dict[str, float] | None = None,
    tier_workers: dict[str, int] | None = None,
    server_args: list[str] | None = None,
    state: StateFootprint | None = None,
    validators: int = 0,
    kernel_s: float | None = None,
    trove_wait: tuple[float, float] | None = None,
    trove_append_wait_s: float = 0.0,
    trove_rows_per_payment: float | None = 1.0,
) -> RunResult:
    """The template run with its CPU, hooks, stats and environment generated from ``model``.

    Deferred hooks' observe time is outside ``engine_s`` and inside the process CPU, as on the
    server; the trove's CPU is the surveillance_log hook's ``background_ns``, in its child process.
    ``validators`` > 0: that many local validator processes (issue 19's server stats), whose CPU is
    the model's ``validators`` tier. ``kernel_s``: the machine's CPU no process was charged with
    over the window (``machine_cpu``; None: not recorded, as before issue 21). ``trove_wait``: the
    trove child's run-queue wait, ns per batch and per payment (None: not recorded, as before issue
    17's child counted it); ``trove_append_wait_s``: the sequencer's wait for the child's ring over
    the window (the child ran flat out then, making every payment's row durable).
    """
    template = load(TEMPLATE)
    settings = resolved_settings(PROFILE, None, CompareSettings(), server_args=tuple(server_args or ()))
    payments = rate_tps * seconds
    batches = payments / batch_size
    engine = model.ns("ledger", batches, payments)
    process = engine + model.ns("framing_io", batches, payments)
    hooks: dict[str, Any] = {}
    for spec in settings.hooks:
        cost = model.ns(spec, batches, payments)
        deferred = bool(settings.hook_params[spec].get("deferred", False))
        hooks[spec] = {
            "authorize_ns": 0.0 if deferred else cost,
            "observe_ns": cost if deferred else 0.0,
            "begin_ns": 0.0,
            "background_ns": model.ns("trove", batches, payments) if spec == "surveillance_log" else 0.0,
        }
        process += cost
        engine += 0.0 if deferred else cost
    start: dict[str, Any] = {"engine_s": 10.0, "ledger": {"transfers": 1_000, "batches": 10}}
    end: dict[str, Any] = {
        "engine_s": 10.0 + engine / 1e9,
        "ledger": {"transfers": 1_000 + round(payments), "batches": 10 + batches},
        "trove": {"process_pid": 4242},  # the trove writes in its child: its CPU is not the server's
    }
    if trove_rows_per_payment is not None:
        end["trove"]["rows_seen"] = round(payments * trove_rows_per_payment)
    if trove_wait is not None:
        start["trove"] = {"process_pid": 4242, "process_runqueue_wait_ns": 7.0, "append_wait_ns": 3.0, "rows": 50}
        end["trove"] |= {
            "process_runqueue_wait_ns": 7.0 + trove_wait[0] * batches + trove_wait[1] * payments,
            "append_wait_ns": 3.0 + trove_append_wait_s * 1e9,
            "rows": 50 + round(payments),
        }
    if validators:
        start["validators"] = {"kind": "local", "workers": validators, "cpu_s": 5.0}
        end["validators"] = {
            "kind": "local", "workers": validators, "cpu_s": 5.0 + model.ns("validators", batches, payments) / 1e9,
        }  # fmt: skip
    server = msgspec.structs.replace(
        template.server,
        cpu_s=process / 1e9,
        stats_start=start,
        stats_end=end,
        hooks=hooks,
        tier_cpu_s=tier_cpu_s or {},
        tier_workers=tier_workers or {},
    )
    calibration = (
        None
        if calibration_tps is None
        else Calibration(engine_tps=calibration_tps, accounts=100_000, batch=8192, seconds=0.3)
    )
    environment = msgspec.structs.replace(template.environment, cpu_model=cpu_model, calibration=calibration)
    return msgspec.structs.replace(
        template,
        summary=msgspec.structs.replace(template.summary, offered_tps=rate_tps, profile=PROFILE),
        load=msgspec.structs.replace(template.load, rate_tps=rate_tps, seconds=seconds),
        generator=msgspec.structs.replace(
            template.generator, cpu_s=model.ns("generator", batches, payments, ticks_per_s(rate_tps) * seconds) / 1e9
        ),
        server=server,
        environment=environment,
        settings=settings,
        traffic=None if traffic is None else Traffic(wire_sent_bytes=0, wire_received_bytes=0, **traffic),
        state=state,
        machine_cpu=None if kernel_s is None else machine_cpu(seconds, kernel_s),
    )


def machine_cpu(seconds: float, kernel_s: float) -> MachineCpu:
    """A machine's CPU over ``seconds`` with ``kernel_s`` in softirq that no process holds (1 s busy in processes)."""
    return MachineCpu(
        seconds=seconds, cores=2, user_s=1.0, nice_s=0.0, system_s=0.0, irq_s=0.0, softirq_s=kernel_s, steal_s=0.0,
        iowait_s=0.1, idle_s=2 * seconds - 1.1 - kernel_s, processes_s=1.0,
    )  # fmt: skip


def trove_cost(
    ns_per_row: float, bytes_per_row: float, *, cpu_model: str = "Test CPU", calibration_tps: float | None = 1e7
) -> TroveCost:
    """A trove cost result (``benchmarks/trove_merge_cost.py --out``) of ``ns_per_row`` CPU (the writer a
    third, merges and sidecars the rest) and ``bytes_per_row`` (a final run 90%, sidecars 10%), on the
    CPU ``synthetic_run`` uses unless ``cpu_model``."""
    template = load(TEMPLATE)
    calibration = (
        None
        if calibration_tps is None
        else Calibration(engine_tps=calibration_tps, accounts=100_000, batch=8192, seconds=0.3)
    )
    env = msgspec.structs.replace(template.environment, cpu_model=cpu_model, calibration=calibration)
    return TroveCost(
        command="python -m benchmarks.trove_merge_cost --out DIR",
        environment=env,
        writer_ns_per_row=ns_per_row / 3,
        merges_per_row=2.0,
        last_tier_merges_per_row=1.0,
        merge_intermediate_ns_per_row_merged=ns_per_row / 6,
        merge_last_ns_per_row_merged=ns_per_row / 6,
        steady_ns_per_row=ns_per_row * 5 / 6,
        final_bytes_per_row=bytes_per_row * 0.9,
        sidecar_ns_per_row=ns_per_row / 6,
        sidecar_bytes_per_row=bytes_per_row * 0.1,
    )


def write_runs(folder: Path, runs: list[RunResult]) -> Path:
    """Save ``runs`` as result files in ``folder``; the folder."""
    for r in runs:
        save(r, folder)
    return folder
