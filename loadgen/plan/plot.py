"""``plan.png``: cores by tier per profile at the planned rate (stacked), and disk per year.

The policy and surveillance tiers are hatched so their share of each bar shows at a glance; the
band from run-to-run spread is an error bar on each bar's total. Drawn as ``loadgen.report.plots``
draws: matplotlib's object API on the Agg canvas, no pyplot state.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from loadgen.plan.model import CapacityPlan, ProfilePlan


def plot_plan(plan: CapacityPlan, path: str | Path) -> Path:
    """Write the two-panel figure of ``plan`` (every profile measured) to ``path``."""
    # A profile whose CPU could not be fitted has no cores to draw (``ProfilePlan.cpu_problem``).
    profiles: list[ProfilePlan] = sorted(
        [p for p in [plan.plan, *plan.others] if p.cpu_problem is None], key=lambda p: p.cores
    )
    names = [p.profile for p in profiles]
    fig = Figure(figsize=(12, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    cores_ax, disk_ax = fig.subplots(1, 2, width_ratios=(3, 1.6))
    tiers: list[str] = []
    for p in profiles:
        tiers += [t.tier for t in p.tiers if t.tier not in tiers]
    bottoms = [0.0] * len(profiles)
    for i, tier in enumerate(tiers):
        heights = [next((t.cores for t in p.tiers if t.tier == tier), 0.0) for p in profiles]
        surveillance = any(t.surveillance for p in profiles for t in p.tiers if t.tier == tier)
        cores_ax.bar(
            names, heights, bottom=bottoms, label=tier + (" (policy/surveillance)" if surveillance else ""),
            color=f"C{i % 10}", hatch="//" if surveillance else None, edgecolor="white", linewidth=0.5,
        )  # fmt: skip
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    cores_ax.errorbar(
        names, bottoms,
        yerr=[[p.cores - p.cores_low for p in profiles], [p.cores_high - p.cores for p in profiles]],
        fmt="none", ecolor="black", capsize=3,
    )  # fmt: skip
    r = plan.request
    cores_ax.set_title(f"cores by tier at {r.rate_tps:,.0f} payments/s (band: run-to-run spread)", fontsize=9)
    cores_ax.set_ylabel("cores")
    cores_ax.tick_params(axis="x", rotation=30)
    cores_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for j, p in enumerate(profiles):
        share = p.surveillance_cores / p.cores if p.cores else 0.0
        cores_ax.annotate(f"{share:.0%}", (j, p.cores_high), ha="center", va="bottom", fontsize=7,
                          xytext=(0, 3), textcoords="offset points")  # fmt: skip
    parts = sorted({k for p in profiles for k in p.disk_per_day_bytes})
    bottoms = [0.0] * len(profiles)
    for i, part in enumerate(parts):
        heights = [p.disk_per_day_bytes.get(part, 0.0) * 365 / 1e12 for p in profiles]
        disk_ax.bar(names, heights, bottom=bottoms, label=part, color=f"C{(i + 5) % 10}")
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    disk_ax.set_title("disk per year, one replica (journal, trove)", fontsize=9)
    disk_ax.set_ylabel("TB")
    disk_ax.tick_params(axis="x", rotation=30)
    if parts:
        disk_ax.legend(fontsize=7)
    else:
        disk_ax.text(0.5, 0.5, "no disk figures measured", ha="center", transform=disk_ax.transAxes)
        disk_ax.set_xticks([])
        disk_ax.set_yticks([])
    fig.suptitle(
        f"Capacity plan: {r.accounts:,} accounts at {r.rate_tps:,.0f} payments/s "
        f"(% = policy/surveillance share of cores); CPU measured on {plan.cpu_model}",
        fontsize=10,
    )
    out = Path(path)
    fig.savefig(out)
    return out
