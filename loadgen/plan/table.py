"""The README's headline table: the capacity plan, profile by profile, next to the 2-core runs it came from.

``benchmarks/plan_first_cut.py`` measures, plans, and writes this section into the README between
``BEGIN`` and ``END``; every figure comes from a ``CapacityPlan`` (``loadgen.plan.model``) and the
runs it was fitted from, and the section lists the result file behind each row (``COMMANDS.md``
next to them gives the command that wrote each file).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loadgen.plan.inputs import GENERATOR, GENERATOR_FLAT_OUT, IDLE_TO_SPARE_CORES, KERNEL, MeasuredMax, RunCost
from loadgen.plan.model import (
    DOES_NOT_FIT,
    GIB,
    CapacityPlan,
    Prediction,
    ProfilePlan,
    pooled_text,
    rate_outside,
    size_text,
)
from loadgen.results.verdict import STEAL_NOTE_SHARE, steal_spoiled

BEGIN = "<!-- plan-first-cut:begin (written by benchmarks/plan_first_cut.py: edit the script, not this) -->"
END = "<!-- plan-first-cut:end -->"


def rate_text(tps: float) -> str:
    """``300k/s``, ``2.45M/s``."""
    if tps >= 1e6:
        return f"{tps / 1e6:.2f}M/s"
    return f"{tps / 1e3:,.0f}k/s" if tps >= 1e4 else f"{tps:,.0f}/s"


def outside_measured_rates(p: ProfilePlan, rate_tps: float) -> bool:
    """The planned rate lies outside the rates the profile's fit was measured at."""
    return bool(p.rates_tps) and not min(p.rates_tps) <= rate_tps <= max(p.rates_tps)


def _plan_row(p: ProfilePlan, rate_tps: float) -> str:
    if p.cpu_problem is not None:  # the state, disk and network scale with the rate; the CPU is not fitted
        return (
            f"| {p.profile} (‡) | not planned | | | {_state_text(p)} | {_disk_text(p)} | "
            f"{size_text(p.network_bytes_per_s, '/s')} | not counted |"
        )
    share = p.surveillance_cores / p.cores if p.cores else 0.0
    saturation = f", saturates near {rate_text(p.sequencer_saturation_tps)}" if p.sequencer_saturation_tps else ""
    saturation += "".join(
        f"; {o.tier} {o.busy:.0%} of its one core"
        + (f", saturates near {rate_text(o.saturation_tps)}" if o.saturation_tps else "")
        for o in p.one_core
    )
    state, disk = _state_text(p), _disk_text(p)
    machines = str(p.machines) if p.machines is not None else "none of this size"
    marks = (" (†)" if outside_measured_rates(p, rate_tps) else "") + (" (!)" if _does_not_fit(p) else "")
    validators = sum(t.cores for t in p.tiers if t.tier == "validators")
    return (
        f"| {p.profile}{marks} | {p.cores:.2f} ({p.cores_low:.2f}-{p.cores_high:.2f})"
        + (f"; validators {validators:.2f}" if validators else "")
        + f" | {p.surveillance_cores:.2f} "
        f"({share:.0%}) | {p.sequencer_core_busy:.0%} busy ({p.batch_regime} batching){saturation} | {state} | "
        f"{disk} | {size_text(p.network_bytes_per_s, '/s')} | {machines} |"
    )


def _does_not_fit(p: ProfilePlan) -> list[str]:
    """The plan's breaks where a tier that cannot be partitioned is planned above one core."""
    return [b for b in p.breaks if b.startswith(DOES_NOT_FIT)]


def _state_text(p: ProfilePlan) -> str:
    if p.memory_bytes is None:
        return "not measured"
    return f"{p.memory_bytes / GIB:,.1f} GiB ({sum(p.memory_pieces.values()):.0f} B/account)"


def _disk_text(p: ProfilePlan) -> str:
    disk = " + ".join(f"{k} {size_text(v)}" for k, v in p.disk_per_day_bytes.items()) or "not measured"
    if not p.disk_per_day_complete and p.disk_per_day_bytes:
        disk += " + a store not measured"
    return disk + f"; snapshots kept {size_text(p.snapshot_bytes)}"


def _steal_text(stolen_cores: float | None, cores: int) -> str:
    """``, stolen 0.31 (spoiled: ...)`` for a kept run or search the host's steal still spoiled."""
    if not stolen_cores:
        return ""
    spoiled = (
        f" (SPOILED: steal >= {STEAL_NOTE_SHARE:.0%} of {cores} cores, the least-stolen attempt kept)"
        if steal_spoiled(stolen_cores, cores)
        else ""
    )
    return f", stolen {stolen_cores:.2f}{spoiled}"


def _server_cores(run: RunCost) -> float:
    return sum(v for t, v in run.tier_ns_per_s.items() if t not in (GENERATOR, KERNEL)) / 1e9


def _machine_text(run: RunCost) -> str:
    """The machine's own figures of a run that recorded them: the kernel's CPU and the idle cores."""
    if run.idle_cores is None:
        return ""
    stolen = _steal_text(run.stolen_cores, run.cores)
    return f" (+ kernel {run.tier_ns_per_s.get(KERNEL, 0.0) / 1e9:.2f}, idle {run.idle_cores:.2f}{stolen})"


def measured_row(label: str, runs: Sequence[RunCost], prediction: Prediction | None) -> str:
    shown = "; ".join(
        f"{rate_text(r.offered_tps)}: {_server_cores(r):.2f} cores{_machine_text(r)}, p99 {r.p99_ms:.1f} ms, "
        f"{r.verdict}" + ("" if r.server_kept_up else " (server saturated: not fitted)")
        for r in sorted(runs, key=lambda r: r.offered_tps)
    )
    if prediction is None:
        return f"| {label} | {shown} | none | | |"
    m = prediction.measured
    measured = (
        "no search" if m is None else f"{rate_text(m.median_tps)} [{rate_text(m.low_tps)}-{rate_text(m.high_tps)}]"
    )
    if m is not None and m.bounded_by_generator:
        measured += ", generator-bound"
    elif m is not None and m.generator_limited:
        measured += ", generator behind, not flat out: a check"
    if m is not None and m.stolen_cores is not None:
        measured += f"; trials' steal up to {m.stolen_cores:.2f}" + (
            f", {m.retried_trials} re-measured" if m.retried_trials else ""
        )
        if m.spoiled_trials:
            measured += (
                f", {m.spoiled_trials} SPOILED (steal >= {STEAL_NOTE_SHARE:.0%} of {m.cores} cores after retries)"
            )
    error = f"{prediction.error:+.0%}" if prediction.error is not None else ""
    error += ("; " if error and prediction.note else "") + prediction.note
    predicted = (
        "not predicted (‡)"
        if prediction.predicted_tps is None
        else f"{rate_text(prediction.predicted_tps)} ({prediction.limited_by})"
    )
    if prediction.predicted_tps is None:
        error = "no check"
    return f"| {label} | {shown} | {predicted} | {measured} | {error} |"


def headline_markdown(
    plan: CapacityPlan,
    runs: Sequence[RunCost],
    *,
    plan_command: str,
    commands_file: str,
    root: str | Path = ".",
    spoiled: Sequence[str] = (),
) -> str:
    """The section: the plan's table, the measured table with the predicted maxima, and the files behind them.

    ``spoiled``: the result files set aside because the host's steal spoiled them (``Inputs.spoiled``).
    """
    r = plan.request
    profiles = sorted([plan.plan, *plan.others], key=lambda p: (p.cpu_problem is not None, p.cores))
    by_label: dict[str, list[RunCost]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    predictions = {p.profile: p for p in plan.predictions}
    m = r.machine
    lines = [
        BEGIN,
        *(f"{line}\n" for line in in_one_look(plan)),
        f"At {r.rate_tps:,.0f} payments/s for {r.accounts:,} accounts, per replica ({r.replicas} replicas; machines "
        f"of {m.cores} cores, {m.memory_bytes / GIB:,.0f} GiB), CPU measured on {plan.cpu_model}:",
        "",
        "| profile | cores (band) | of which policy/surveillance | sequencer's one core (and the other one-core "
        "tiers) | sequencer's state | disk per day; snapshots kept | network in+out | machines |",
        "|---|---|---|---|---|---|---|---|",
        *(_plan_row(p, r.rate_tps) for p in profiles),
        "",
        *(f"{line[0].upper()}{line[1:]}." for line in plan.deltas),
        "",
        *(
            [f"Fitted together: {'; '.join(pooled)}.", ""]
            if (pooled := sorted({t for p in profiles for t in pooled_text(p)}))
            else []
        ),
        *(
            [
                "(!) Where the model breaks at this rate: "
                + "; ".join(b for p in profiles for b in _does_not_fit(p))
                + ".",
                "",
            ]
            if any(_does_not_fit(p) for p in profiles)
            else []
        ),
        *(
            [
                f"(†) measured only below or above {r.rate_tps:,.0f}/s (the rates are in the next table): the fitted "
                "costs are extrapolated in rate, and the batches come from the batch model alone: "
                + "; ".join(
                    f"{p.profile}: {rate_outside(p.rates_tps, r.rate_tps)}"
                    for p in profiles
                    if outside_measured_rates(p, r.rate_tps)
                )
                + ".",
                "",
            ]
            if any(outside_measured_rates(p, r.rate_tps) for p in profiles)
            else []
        ),
        *(
            f"(‡) Not planned: {p.cpu_problem.what}; measure the missing rate with `{p.cpu_problem.command}`."
            for p in profiles
            if p.cpu_problem is not None
        ),
        *([""] if any(p.cpu_problem is not None for p in profiles) else []),
        "The measured 2-core figures each row was derived from (server CPU = the server process, its "
        "validators and trove child; the generator excluded; in brackets, where the run recorded the "
        "machine's CPU, the kernel's cores (CPU no process held), the cores left idle and the cores the hypervisor "
        "took (stolen: CPU this VM did not get, no tier's cost). Only runs "
        "where the server kept up are "
        "fitted: sustained, or the generator fell behind while the server shed nothing and applied "
        "at least 99% of the scheduled rate. Predicted max: the rate at which the fitted CPU of the "
        "server's tiers, the generator and the kernel (CPU no process holds, from the files' machine_cpu; "
        "they share this machine) fills all its cores, with the sequencer's batches growing as the others "
        "squeeze its core, the sequencer's tiers fill its one core, the generator's fill its processes "
        "(one core each), or a one-core tier (the trove child, the risk model's thread) fills its core with its "
        "CPU and its waits for a core, whichever comes first (docs/plan.md). Error: predicted against the "
        "searched maximum. A search whose trials ended with the generator behind is a check too when the "
        "machine was out of CPU (the prediction puts the generator on the same cores); only where the "
        f"generator's processes ran flat out (>= {GENERATOR_FLAT_OUT:.0%} of their cores) with >= "
        f"{IDLE_TO_SPARE_CORES} cores idle elsewhere does the "
        "searched maximum bound the generator, and there the check is one-sided (the failed trials' server, "
        "generator and idle CPU are in the error column):",
        "",
        steal_summary(runs, [p.measured for p in plan.predictions if p.measured is not None], spoiled),
        "",
        "| profile | runs: offered rate, server CPU, p99, verdict | predicted max | measured max (search) | error |",
        "|---|---|---|---|---|",
        *(measured_row(p.profile, by_label.get(p.profile, []), predictions.get(p.profile)) for p in profiles),
        "",
        f"Plan: `{plan_command}`. Result files (the command that wrote each one: `{commands_file}`):",
        "",
    ]
    for p in profiles:
        files = [_relative(run.file, root) for run in sorted(by_label.get(p.profile, []), key=lambda x: x.offered_tps)]
        pr = predictions.get(p.profile)
        if pr is not None and pr.measured is not None:
            files.append(_relative(pr.measured.file, root))
        snapshot = (
            f", `{_relative(p.snapshot_file, root)}` (its snapshot size)"
            if p.snapshot_file and p.snapshot_file not in {run.file for run in by_label.get(p.profile, [])}
            else ""
        )
        lines.append(f"- {p.profile}: " + ", ".join(f"`{f}`" for f in files) + snapshot)
    if plan.missing:
        lines += ["", f"Not measured for {plan.plan.profile} (the plan lists the command for each):"]
        lines += [f"- {x.what}: `{x.command}`" for x in plan.missing]
    return "\n".join([*lines, END])


def in_one_look(plan: CapacityPlan) -> list[str]:
    """The plan's answer in a few sentences, every figure from ``plan`` (the README's bullets refer to
    these lines instead of typing the figures): the planned profile against ``baseline``, and the
    validators of the most-validators ``signed`` label against the profile's hooks."""
    r = plan.request
    by_label = {p.profile: p for p in [plan.plan, *plan.others] if p.cpu_problem is None}
    p, base = plan.plan, by_label.get("baseline")
    if p.cpu_problem is not None:
        return []
    disk = " + ".join(f"{k} {size_text(v)}" for k, v in p.disk_per_day_bytes.items())
    lines = [
        f"**In one look** (the plan below, at {r.rate_tps:,.0f} payments/s for {r.accounts:,} accounts, per replica): "
        f"`{p.profile}` needs {p.cores:.2f} cores ({p.cores_low:.2f}-{p.cores_high:.2f}), "
        f"{p.surveillance_cores:.2f} of them its policy and surveillance hooks, "
        + (f"against {base.cores:.2f} for `baseline`; " if base is not None else "")
        + (f"{p.memory_bytes / GIB:,.1f} GiB of sequencer state; " if p.memory_bytes is not None else "")
        + f"disk {disk or 'not measured'} a day"
        + (f" and {size_text(p.disk_retention_bytes)} for {r.retention_days:g} days x {r.replicas} replicas" if
           p.disk_retention_bytes is not None else "")
        + f"; {p.machines if p.machines is not None else 'no'} machines of {r.machine.cores} cores"
        + (f" ({base.machines} for `baseline`)" if base is not None else "")
        + "."
    ]  # fmt: skip
    signed = [q for label, q in by_label.items() if label.startswith("signed@")]
    if signed:
        q = max(signed, key=lambda x: x.profile)
        validators = next((t for t in q.tiers if t.tier == "validators"), None)
        if validators is not None:
            ratio = f", {validators.cores / p.surveillance_cores:,.0f}x" if p.surveillance_cores > 0 else ""
            lines.append(
                f"Verifying the signatures (`{q.profile}`) takes {validators.cores:.1f} cores "
                f"({validators.ns_per_payment / 1e3:,.0f} us of CPU per payment){ratio} what `{p.profile}`'s policy "
                f"and surveillance hooks take ({p.surveillance_cores:.2f})."
            )
    return lines


def steal_summary(runs: Sequence[RunCost], maxima: Sequence[MeasuredMax], spoiled: Sequence[str]) -> str:
    """How many runs and search trials the host's steal spoiled: measured again, or kept spoiled."""
    recorded = [r for r in runs if r.stolen_cores is not None]
    if not recorded:
        return "Host steal: not recorded in these result files (before machine_cpu)."
    steal = [r.stolen_cores or 0.0 for r in recorded]
    kept_spoiled = sum(steal_spoiled(r.stolen_cores or 0.0, r.cores) for r in recorded)
    trials = [m for m in maxima if m.stolen_cores is not None]
    if trials:
        retried, still = sum(m.retried_trials for m in trials), sum(m.spoiled_trials for m in trials)
        searches = f"; {retried} search trials measured again, {still} kept still spoiled"
    elif maxima:
        searches = "; the searches' trials did not record their steal (comparisons from before --steal-retries)"
    else:
        searches = ""
    return (
        f"Host steal (a window is spoiled when it took >= {STEAL_NOTE_SHARE:.0%} of the cores; it is measured again, "
        "up to `--steal-retries` times, then the least-stolen attempt is kept and marked SPOILED): "
        f"{len(spoiled)} run attempts set aside as spoiled (under `spoiled/`, never fitted); the kept runs' steal "
        f"{min(steal):.2f}-{max(steal):.2f} cores, {kept_spoiled} of {len(recorded)} still spoiled{searches}."
    )


def _relative(file: str, root: str | Path) -> str:
    path = Path(file)
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def replace_section(text: str, section: str) -> str:
    """``text`` with the part from ``BEGIN`` to ``END`` replaced by ``section`` (which carries both markers)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no section between {BEGIN!r} and {END!r}: add both lines where it goes")
    return text[:start] + section + text[end + len(END) :]
