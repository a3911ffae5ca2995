"""The report's Markdown: the tables of ``ReportData``, the rules behind them, the plots' links."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loadgen.report.data import ECHO, ProfileRow, ReportData

#: Minutes of a long run listed in its drift row (report.json holds them all).
_DRIFT_SHOWN = 20


def _k(tps: float) -> str:
    return f"{tps:,.0f}"


def _band_tps(row: ProfileRow) -> str:
    b, ceiling = row.max_sustainable_tps, row.at_ceiling
    if not row.searched:
        if row.highest_sustained_tps is None:
            return "no search; no run sustained"
        return f"no search; highest sustained run {_k(row.highest_sustained_tps)}"
    if b is None:
        return "none sustained"
    text = f"{'>= ' if ceiling else ''}{_k(b.median)}"
    if b.high > b.low:
        text += f" [{_k(b.low)}-{_k(b.high)}]"
    return text


def cost_text(pct: float, decimals: int = 1) -> str:
    """A cost as everywhere (report, plots, README): throughput lost vs baseline, in %, no plus sign.

    Positive = slower than baseline; only a profile faster than baseline shows a minus sign.
    """
    return f"{pct:.{decimals}f}%"


def _cost(row: ProfileRow) -> str:
    if row.cost_pct is None:
        return row.cost_verdict
    rng = ""
    if row.cost_low_pct is not None and row.cost_high_pct is not None:
        rng = f" [{cost_text(row.cost_low_pct, 0)} to {cost_text(row.cost_high_pct, 0)}]"
    return f"{cost_text(row.cost_pct)}{rng}: {row.cost_verdict}"


def _hooks(row: ProfileRow) -> str:
    if not row.hook_ns_per_transfer:
        return "-"
    return ", ".join(f"{k} {v.median:,.0f}" for k, v in row.hook_ns_per_transfer.items())


def to_markdown(data: ReportData, images: Sequence[str] = ()) -> str:
    ref = f"{_k(data.reference_tps)}/s" if data.reference_tps else "n/a"
    lines = [
        f"# {data.title}" + (f": {data.group}" if data.group else ""),
        "",
        f"Machine: {data.machine}. Ledger: {data.accounts:,} accounts. "
        f"Sustained = settled >= {data.min_achieved_ratio:.0%} of scheduled (shed transfers not counted) "
        f"and p99 <= {data.slo_p99_ms:g} ms, latency measured from each payment's scheduled time.",
        "",
        "## Maximum sustainable throughput and cost per profile",
        "",
        "| profile | max sustainable TPS [range over repeats] | confirmed 95%/105% | cost: throughput lost vs "
        f"baseline [range] | engine apply ns/transfer at {ref} | per-hook ns/transfer at {ref} |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in data.profiles:
        flags = ""
        if row.generator_limited:
            flags += " (generator-limited)"
        apply = "-" if row.apply_ns_per_transfer is None else f"{row.apply_ns_per_transfer.median:,.0f}"
        lines.append(
            f"| {row.profile}{' (no ledger: harness ceiling)' if row.profile == ECHO else ''} | "
            f"{_band_tps(row)}{flags} | {row.confirmed} | {_cost(row)} | "
            f"{apply} | {_hooks(row)} |"
        )
    lines += [
        "",
        "## Latency at equal offered load",
        "",
        "p50/p99/p99.9 from the merged histograms of the runs at that rate; p99 range = lowest to highest "
        "run; the difference to baseline is the difference of median p99s.",
        "",
        "| profile | offered TPS | runs | settled | p50 ms | p99 ms | p99.9 ms | p99 range ms | p99 vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data.latency:
        vs = "-" if r.p99_vs_baseline_ms is None else f"{r.p99_vs_baseline_ms:+.2f} ms: {r.p99_verdict}"
        if r.profile == "baseline":
            vs = "reference"
        sustained = "" if r.sustained_runs == r.runs else f" ({r.runs - r.sustained_runs} not sustained)"
        lines.append(
            f"| {r.profile} | {_k(r.offered_tps)} | {r.runs} | {r.settled_ratio:.1%}{sustained} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.p999_ms:.2f} | {r.p99_band.low:.2f}-{r.p99_band.high:.2f} | {vs} |"
        )
    lines += [
        "",
        "## How differences are judged",
        "",
        "A profile's maximum is a band: every repeat's search brackets the capacity between its highest "
        "sustained and lowest failed rate (the search resolution; noisy trials widen it), and the band spans "
        "all repeats; the maximum always lies inside its band. A maximum (and so a cost) is given only where a "
        "search found it: plain run files show their highest sustained run instead, and no cost. A cost is "
        "throughput lost against baseline, 100 * (1 - max / baseline max): positive means slower, with the "
        "same sign in this table, the plots and the README. A difference to baseline is called *different* "
        "only when the medians differ by more than the wider of the two bands. A p99 measured once per repeat "
        "has the range over repeats as its band; a single run is never judged (*not judged (single run)*). "
        "Cost ranges combine the ends of both bands.",
    ]
    if data.drift:
        lines += [
            "",
            "## Drift of long runs",
            "",
            "p99 of each measured minute (merged from the per-second histograms): a climb that the whole "
            "run's p99 hides among good minutes (compaction debt, retention, snapshots, a daily rollover).",
            "",
            "| run | profile | offered TPS | minutes | p99 ms by minute | worst minute | last vs first |",
            "|---|---|---:|---:|---|---:|---:|",
        ]
        for d in data.drift:
            shown = ", ".join(f"{v:.2f}" for v in d.p99_ms_by_minute[:_DRIFT_SHOWN])
            shown += " ..." if len(d.p99_ms_by_minute) > _DRIFT_SHOWN else ""
            change = "-" if d.last_vs_first is None else f"{d.last_vs_first:+.0%}"
            lines.append(
                f"| {Path(d.file).name} | {d.profile} | {_k(d.offered_tps)} | {len(d.p99_ms_by_minute)} | {shown} | "
                f"{d.worst_minute}: {d.worst_p99_ms:.2f} ms | {change} |"
            )
    if data.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in data.notes]
    if images:
        lines += ["", "## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images]
    lines += ["", f"Built from {len(data.files)} result file(s) by `cbdc-bench report`."]
    return "\n".join(lines) + "\n"
