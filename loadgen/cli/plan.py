"""``cbdc-bench plan``: what a rate and a population take, tier by tier, from measured result files.

Reads run, compare and engine result files under ``--results`` (never built-in constants: a figure
no file holds is listed with the command that measures it) and prints, for ``--profile`` at
``--rate`` for ``--accounts``: cores per tier with the band from run-to-run spread, the
sequencer's memory and how busy its one core is, disk per day and for the retention, network
per second, and machines of the ``--machine`` size with ``--replicas``; then what the profile's
policy and surveillance hooks add over ``baseline`` and ``signed``, and the predicted maximum rate
of every measured profile on the machine it was measured on, against the measured maximum.

Exit status: 0 a complete plan, 3 a plan with missing inputs (listed), 2 nothing to plan from.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import msgspec

from loadgen.cli.common_args import add_accounts, add_json, add_out, add_plan_options, parse_rate
from loadgen.plan.inputs import read_inputs
from loadgen.plan.model import (
    GIB,
    ONE_CORE_TIERS,
    CapacityPlan,
    Machine,
    OneCoreTier,
    PlanRequest,
    build_plan,
    pooled_text,
    size_text,
)

#: Exit status of a plan printed with inputs missing.
EXIT_INCOMPLETE = 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="capacity plan from measured result files", description=__doc__)
    p.add_argument("--rate", type=parse_rate, default=300_000.0, metavar="R", help="payments/s to plan for, e.g. 300k")
    add_accounts(p, default=1_400_000_000)
    p.add_argument("--profile", default="realistic", help="hook profile to plan (default realistic)")
    add_plan_options(p)
    p.add_argument(
        "--state-from",
        action="append",
        default=[],
        metavar="DIR",
        help="also read state sizes (bytes per account, snapshot bytes per account) from DIR's result files, never "
        "their CPU; --results' own win (repeatable; default none)",
    )
    add_json(p)
    add_out(p, default=None, when_unset="none: print only", what="write plan.json and plan.png to DIR")
    p.set_defaults(func=_main)


def request_of(args: argparse.Namespace) -> PlanRequest:
    m = args.machine
    return PlanRequest(
        rate_tps=args.rate,
        accounts=args.accounts,
        profile=args.profile,
        machine=Machine(cores=int(m["cores"]), memory_bytes=m["memory"], disk_bytes=m.get("disk")),
        retention_days=args.retention / 86_400.0,
        replicas=args.replicas,
        snapshots_kept=args.snapshots_kept,
        scale_by_calibration=args.scale_by_calibration,
    )


def plan_command(
    results: str | Path,
    request: PlanRequest,
    *,
    out: str | Path | None = None,
    state_from: Sequence[str | Path] = (),
) -> CapacityPlan:
    """The plan from the files under ``results`` (state sizes also from ``state_from``); with ``out``,
    also ``plan.json`` and ``plan.png`` there."""
    plan = build_plan(read_inputs(results, state_from=state_from), request)
    if out is not None:
        from loadgen.plan.plot import plot_plan  # matplotlib only when a figure is asked for

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plan.json").write_bytes(msgspec.json.format(msgspec.json.encode(plan), indent=1))
        plot_plan(plan, folder / "plan.png")
    return plan


def _main(args: argparse.Namespace) -> int:
    plan = plan_command(args.results, request_of(args), out=args.out, state_from=args.state_from)
    if args.json:
        print(json.dumps(msgspec.to_builtins(plan)))
    else:
        print(format_plan(plan))
    return EXIT_INCOMPLETE if plan.missing else 0


def one_core_text(o: OneCoreTier) -> str:
    """``trove: the trove child's one process, 41% busy, saturates near 954,215/s``."""
    saturates = f", saturates near {o.saturation_tps:,.0f}/s" if o.saturation_tps else ""
    return f"{o.tier}: {o.what}, {o.busy:.0%} busy{saturates}" + (
        " (OVER ONE CORE: it cannot keep up)" if o.busy > 1 else ""
    )


def format_plan(c: CapacityPlan) -> str:
    """The plan as text: numbers with their assumptions beside them."""
    r, p = c.request, c.plan
    lines = [
        f"capacity plan: profile {p.profile}, {r.rate_tps:,.0f} payments/s, {r.accounts:,} accounts, "
        f"{r.replicas} replicas, machines of {r.machine.cores} cores / {r.machine.memory_bytes / GIB:,.0f} GiB",
        "",
        *(
            [
                f"CPU NOT PLANNED: {p.cpu_problem.what}; measure with `{p.cpu_problem.command}`. The cores below "
                "charge every cost per payment: not a plan",
                "",
            ]
            if p.cpu_problem
            else []
        ),
        *([*(f"WHERE THE MODEL BREAKS: {b}" for b in p.breaks), ""] if p.breaks else []),
        f"{'tier':<22}{'cores':>8}  {'band':>15}  {'ns/payment':>10}  where",
    ]
    for t in p.tiers:
        where = (
            "sequencer's core"
            if t.on_sequencer
            else "its own one core"
            if t.tier in ONE_CORE_TIERS
            else "scale-out" + (" (extrapolated)" if t.extrapolated else "")
        )
        kind = " *" if t.surveillance else ""
        lines.append(
            f"{t.tier + kind:<22}{t.cores:>8.2f}  {t.cores_low:>6.2f} - {t.cores_high:<6.2f}"
            f"  {t.ns_per_payment:>10,.0f}  {where}"
        )
    share = p.surveillance_cores / p.cores if p.cores else 0.0
    lines += [
        f"{'total':<22}{p.cores:>8.2f}  {p.cores_low:>6.2f} - {p.cores_high:<6.2f}"
        f"  (* policy/surveillance: {p.surveillance_cores:.2f} cores, {share:.0%})",
        f"sequencer's one core: {p.sequencer_core_busy:.0%} busy ({p.batch_regime} batching)"
        + (f", saturates near {p.sequencer_saturation_tps:,.0f}/s" if p.sequencer_saturation_tps else ""),
        *(one_core_text(o) for o in p.one_core),
        *pooled_text(p),
        "",
        "memory (the sequencer's state, per replica): "
        + (
            f"{p.memory_bytes / GIB:,.1f} GiB = {r.accounts:,} accounts x "
            + " + ".join(f"{k} {v:.1f}" for k, v in p.memory_pieces.items())
            + f" bytes; {'fits' if p.fits_one_machine else 'does NOT fit'} one machine"
            if p.memory_bytes is not None
            else "not measured"
        ),
        "disk per day (one replica): "
        + (", ".join(f"{k} {size_text(v)}" for k, v in p.disk_per_day_bytes.items()) or "not measured")
        + f"; snapshots {size_text(p.snapshot_bytes)}",
        f"disk for {r.retention_days:g} days, {r.replicas} replicas: {size_text(p.disk_retention_bytes)}",
        f"network: {size_text(p.network_bytes_per_s, '/s')} payments in and replies out; "
        f"journal replication {size_text(p.replication_bytes_per_s, '/s')}",
        f"machines: {p.machines if p.machines is not None else 'none of this size will do'} ({p.machines_note})",
        "",
        *c.deltas,
        "",
        "predicted maximum on the machine measured (fit) vs measured (compare search):",
    ]
    for pr in c.predictions:
        predicted = f"{pr.predicted_tps:,.0f}/s ({pr.limited_by})" if pr.predicted_tps else "none"
        if pr.measured is not None:
            m = pr.measured
            measured = f"measured {m.median_tps:,.0f}/s [{m.low_tps:,.0f}-{m.high_tps:,.0f}]" + (
                ", generator-bound"
                if m.bounded_by_generator
                else ", generator behind (a check)"
                if m.generator_limited
                else ""
            )
            error = f"error {pr.error:+.0%}" if pr.error is not None else ""
            error += f" (the sequencer used at most {pr.peak_sequencer_cores:.2f} of its core in the fitted runs)"
        else:
            measured, error = "no measured maximum (cbdc-bench compare)", ""
        error += f"; {pr.note}" if pr.note else ""
        lines.append(f"  {pr.profile:<14} predicted {predicted}; {measured} {error}".rstrip())
    lines += ["", "assumptions:", *(f"  - {a}" for a in c.assumptions)]
    if c.missing:
        lines += ["", "missing inputs (the plan above leaves them out):"]
        lines += [f"  - {m.what}: measure with `{m.command}`" for m in c.missing]
    if c.skipped:
        lines += ["", f"{len(c.skipped)} files not used, e.g. {c.skipped[0]}"]
    return "\n".join(lines)
