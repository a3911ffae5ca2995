"""The report's PNG plots, drawn with matplotlib's object API on the Agg canvas (no pyplot state).

1. ``elbow.png``: p99 latency against offered rate, one curve per profile through its load
   levels in order of rate (``loadgen.report.elbow``: the median p99 of the runs at each level,
   a shaded band for their range), every run also drawn on its own (a dot when its verdict is
   sustained, a large X when not), the SLO and the 300,000 TPS line marked; a second panel
   shows the region up to 1M/s on a linear scale, which the full range (to the echo server's
   ~16M/s) squeezes against the axis. Where a curve turns up is the profile's limit.
2. ``cost.png``: maximum sustainable rate of every searched profile with its band over repeats,
   labelled with its cost (throughput lost vs baseline, positive = slower, as in report.md), and
   each hook's time per transfer inside the engine, stacked per profile, with the range over
   repeats. Profiles without a search get no bar (a plain run is not a maximum).
3. ``spectrum.png``: latency by percentile (p50 ... p99.999, log axis of 1/(1-p), HdrHistogram
   style) per profile at the reference rate, from the merged histograms.
4. ``timeseries.png``: replies per second (as a share of the offered rate, fitted to the lines)
   and p99 second by second over one run per profile at the reference rate, warm-up shaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from loadgen.report.data import ECHO, HEADLINE_TPS, Loaded, ReportData, merged_histogram
from loadgen.report.elbow import elbow_levels
from loadgen.report.markdown import cost_text

#: Percentiles of the spectrum: 1/(1-p) from 1 to 10^5 in fine log steps (p50 ... p99.999).
_SPECTRUM_X = np.logspace(0, 5, 200)
_DPI = 110


def _colors(profiles: Sequence[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {p: ("0.45" if p == ECHO else palette[i % 10]) for i, p in enumerate(profiles)}


def _figure(
    width: float,
    height: float,
    rows: int = 1,
    cols: int = 1,
    *,
    sharex: bool = False,
    width_ratios: Sequence[float] | None = None,
) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False, sharex=sharex, width_ratios=width_ratios)


def _title(fig: Figure, what: str, data: ReportData) -> None:
    fig.suptitle(f"{what}\n{data.title}, {data.accounts:,} accounts; {data.machine}", fontsize=10)


_KTPS = FuncFormatter(lambda x, _pos: "0" if x == 0 else (f"{x / 1e6:g}M" if abs(x) >= 1e6 else f"{x / 1000:,.0f}k"))
_PLAIN = FuncFormatter(lambda y, _pos: f"{y:g}")
# Minor ticks of a log axis labelled at 2 and 5 only, so labels do not collide.
_PLAIN_MINOR = FuncFormatter(lambda y, _pos: f"{y:g}" if f"{y:.0e}"[0] in "25" else "")


def _slo_line(ax: Axes, slo_p99_ms: float) -> None:
    """The SLO as a dashed line across ``ax``, labelled at its right end."""
    ax.axhline(slo_p99_ms, color="k", ls="--", lw=0.9)
    label = f"SLO: p99 {slo_p99_ms:g} ms "
    ax.text(0.99, slo_p99_ms, label, va="bottom", ha="right", fontsize=8, transform=ax.get_yaxis_transform())


def _at_rate(runs: list[Loaded], profile: str, rate: float | None) -> list[Loaded]:
    """The runs of ``profile`` at offered ``rate`` that were made for comparison at equal load."""
    return [
        r
        for r in runs
        if r.profile == profile and r.offered_tps == rate and (r.ref is None or r.ref.stage == "equal-load")
    ]


#: The zoom panel of the elbow plot: offered rates around the headline rate, on a linear p99 scale.
ELBOW_ZOOM_TPS = (0.0, 1_000_000.0)
#: Marker of a run that was not sustained, in the plot and its legend.
FAILED_MARKER = "X"


def elbow_figure(data: ReportData) -> Figure:
    """The elbow plot: all load levels (left, log p99) and the region around 300,000/s (right, linear).

    Each profile's curve joins its load levels (``loadgen.report.elbow``) in order of offered
    rate, through the median p99 of the runs at each level; the shaded band is the range of those
    runs' p99s (visible where repeats ran at that load). Every run is also drawn on its own: a dot
    when its verdict was sustained, a large ``X`` when not. Artists carry gids (``curve:P``,
    ``band:P``, ``failed:P``) so tests can find them.
    """
    fig, axes = _figure(15, 6.2, 1, 2, width_ratios=(1.7, 1))
    full, zoom = axes[0, 0], axes[0, 1]
    colors = _colors([r.profile for r in data.profiles])
    zoom_high = 0.0
    lo_tps, hi_tps = ELBOW_ZOOM_TPS
    for row in data.profiles:
        mine = [pt for pt in data.points if pt.profile == row.profile]
        if not mine:
            continue
        c = colors[row.profile]
        levels = elbow_levels(mine)
        x = [lv.offered_tps for lv in levels]
        for ax in (full, zoom):
            ax.plot(
                x, [lv.p99_ms for lv in levels], "-", color=c, lw=1.6, label=row.profile, gid=f"curve:{row.profile}"
            )
            if any(lv.runs > 1 for lv in levels):
                ax.fill_between(
                    x,
                    [lv.p99_low_ms for lv in levels],
                    [lv.p99_high_ms for lv in levels],
                    color=c,
                    alpha=0.18,
                    lw=0,
                    gid=f"band:{row.profile}",
                )
            ok = [pt for pt in mine if pt.sustained]
            failed = [pt for pt in mine if not pt.sustained]
            ax.scatter([pt.offered_tps for pt in ok], [pt.p99_ms for pt in ok], color=c, s=10, alpha=0.6, zorder=3)
            ax.scatter(
                [pt.offered_tps for pt in failed],
                [pt.p99_ms for pt in failed],
                color=c,
                marker=FAILED_MARKER,
                s=55,
                edgecolors="k",
                linewidths=0.6,
                zorder=4,
                gid=f"failed:{row.profile}",
            )
        zoom_high = max([zoom_high, *(pt.p99_ms for pt in mine if lo_tps <= pt.offered_tps <= hi_tps)])
    for ax in (full, zoom):
        _slo_line(ax, data.slo_p99_ms)
        ax.axvline(HEADLINE_TPS, color="crimson", ls=":", lw=1.2)
        ax.xaxis.set_major_formatter(_KTPS)
        ax.set_xlabel("offered load (payments/s)")
        ax.grid(True, which="both", alpha=0.3)
    full.text(HEADLINE_TPS, 0.02, " 300k", color="crimson", transform=full.get_xaxis_transform(), fontsize=8)
    zoom.text(HEADLINE_TPS, 0.02, " 300,000 TPS", color="crimson", transform=zoom.get_xaxis_transform(), fontsize=8)
    full.set_yscale("log")
    full.yaxis.set_major_formatter(_PLAIN)
    full.yaxis.set_minor_formatter(_PLAIN_MINOR)
    full.set_xlim(left=0)
    full.set_ylabel("p99 latency from scheduled time (ms, log)")
    full.set_title("All load levels (log latency)", fontsize=9)
    zoom.set_xlim(lo_tps, hi_tps)
    # The panel's latency scale follows the runs inside it, with the SLO line always in view.
    zoom.set_ylim(0, max(zoom_high, data.slo_p99_ms) * 1.15)
    zoom.set_ylabel("p99 latency from scheduled time (ms)")
    zoom.set_title(f"Around 300,000/s: offered up to {hi_tps / 1e6:g}M/s (linear latency)", fontsize=9)
    if zoom_high == 0.0:
        zoom.text(0.5, 0.5, "no run in this range", ha="center", va="center", transform=zoom.transAxes)
    handles, labels = full.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="0.3", marker="o", ls="", ms=4, alpha=0.6),
        Line2D([], [], color="0.3", marker=FAILED_MARKER, ls="", ms=8, markeredgecolor="k"),
        Patch(color="0.3", alpha=0.25),
    ]
    labels += ["one run, sustained", "one run, NOT sustained", "band: range of p99\nover runs at that load"]
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, title="profile: median p99", title_fontsize=8)
    _title(fig, "Throughput-latency: p99 vs offered load (curve: median per load level)", data)
    return fig


def plot_elbow(data: ReportData, path: Path) -> Path:
    elbow_figure(data).savefig(path)
    return path


def plot_cost(data: ReportData, path: Path) -> Path:
    fig, axes = _figure(12, 5.2, 1, 2)
    left, right = axes[0, 0], axes[0, 1]
    rows = [r for r in data.profiles if r.searched and r.max_sustainable_tps is not None]
    colors = _colors([r.profile for r in data.profiles])
    x = np.arange(len(rows))
    med = np.array([r.max_sustainable_tps.median for r in rows if r.max_sustainable_tps])
    lo = np.array([r.max_sustainable_tps.low for r in rows if r.max_sustainable_tps])
    hi = np.array([r.max_sustainable_tps.high for r in rows if r.max_sustainable_tps])
    left.bar(x, med, color=[colors[r.profile] for r in rows], yerr=[med - lo, hi - med], capsize=4)
    for i, r in enumerate(rows):
        if r.cost_pct is not None:
            label = f"cost {cost_text(r.cost_pct, 0)}" + (
                "" if r.cost_verdict == "different" else f"\n({r.cost_verdict})"
            )
            left.text(i, hi[i], label, ha="center", va="bottom", fontsize=7)
    left.axhline(HEADLINE_TPS, color="crimson", ls=":", lw=1.2, label="300,000 TPS")
    left.set_xticks(x, [r.profile for r in rows], rotation=30, ha="right")
    left.yaxis.set_major_formatter(_KTPS)
    left.set_ylabel("max sustainable payments/s (median; bars: band over repeats)")
    if not rows:
        left.text(
            0.5,
            0.5,
            "no search in these files:\nno maximum to draw",
            ha="center",
            va="center",
            transform=left.transAxes,
        )
    left.set_title("Max sustainable per profile (label: cost = throughput lost vs baseline)", fontsize=9)
    left.legend(fontsize=8)
    left.grid(True, axis="y", alpha=0.3)

    hook_rows = [r for r in data.profiles if r.profile != ECHO]
    hook_names: list[str] = []
    for r in hook_rows:
        hook_names += [h for h in r.hook_ns_per_transfer if h not in hook_names]
    hook_colors = {h: f"C{i % 10}" for i, h in enumerate(hook_names)}
    xs = np.arange(len(hook_rows))
    bottom = np.zeros(len(hook_rows))
    for h in hook_names:
        vals = np.array([r.hook_ns_per_transfer[h].median if h in r.hook_ns_per_transfer else 0.0 for r in hook_rows])
        right.bar(xs, vals, bottom=bottom, color=hook_colors[h], label=h, edgecolor="white", lw=0.5)
        bottom += vals
    totals = [r.hooks_total_ns_per_transfer for r in hook_rows]
    low = np.array([bottom[i] - t.low if t else 0.0 for i, t in enumerate(totals)])
    high = np.array([t.high - bottom[i] if t else 0.0 for i, t in enumerate(totals)])
    right.errorbar(xs, bottom, yerr=[np.maximum(low, 0), np.maximum(high, 0)], fmt="none", ecolor="k", capsize=4, lw=1)
    base = next((r for r in data.profiles if r.profile == "baseline"), None)
    if base is not None and base.apply_ns_per_transfer is not None:
        right.axhline(base.apply_ns_per_transfer.median, color="k", ls="--", lw=0.9)
        right.text(
            0.01,
            base.apply_ns_per_transfer.median,
            "baseline: whole apply (ledger alone)",
            va="bottom",
            fontsize=7,
            transform=right.get_yaxis_transform(),
        )
    ref = f"{data.reference_tps:,.0f}/s" if data.reference_tps else "n/a"
    right.set_xticks(xs, [r.profile for r in hook_rows], rotation=30, ha="right")
    right.set_ylabel("ns per transfer inside the engine (median over runs)")
    right.set_title(f"Hook time per transfer at {ref} (error bar: range of the runs' totals)", fontsize=9)
    if hook_names:
        right.legend(fontsize=7, ncols=2)
    right.grid(True, axis="y", alpha=0.3)
    _title(fig, "Cost of each profile and each hook", data)
    fig.savefig(path)
    return path


def plot_spectrum(data: ReportData, runs: list[Loaded], path: Path) -> Path:
    fig, axes = _figure(9, 5.5)
    ax = axes[0, 0]
    colors = _colors([r.profile for r in data.profiles])
    rate = data.reference_tps
    for row in data.profiles:
        here = _at_rate(runs, row.profile, rate)
        if not here:
            continue
        h = merged_histogram(here)
        # Only percentiles the sample supports: 1/(1-p) up to the count of values.
        xs = _SPECTRUM_X[max(h.total, 2) >= _SPECTRUM_X]
        pcts = [float(100 * (1 - 1 / x)) for x in xs]
        values = h.percentiles(pcts)
        ax.plot(
            xs,
            [values[p] / 1e6 for p in pcts],
            color=colors[row.profile],
            lw=1.4,
            label=f"{row.profile} ({h.total:,} payments)",
        )
    ticks = [2, 10, 100, 1_000, 10_000, 100_000]
    ax.set_xscale("log")
    ax.set_xlim(1, 1.3e5)
    ax.set_xticks(ticks, ["50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    # Keep the SLO line in view even when every curve stays below it.
    ax.set_ylim(0, max(ax.get_ylim()[1], data.slo_p99_ms * 1.15))
    ax.axhline(data.slo_p99_ms, color="k", ls="--", lw=0.9, label=f"SLO p99 {data.slo_p99_ms:g} ms")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from scheduled time (ms)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    where = f"at {rate:,.0f} payments/s offered" if rate else ""
    _title(fig, f"Latency by percentile {where} (all runs there merged)", data)
    fig.savefig(path)
    return path


def timeseries_figure(data: ReportData, runs: list[Loaded]) -> Figure:
    """Replies per second as a share of the offered rate (top) and p99 per second (bottom), one run per profile.

    The top panel is in percent of the offered rate with its limits fitted to the lines (the
    offered rate and the sustained threshold always in view), so second-by-second dips stay
    visible; an absolute scale of 0 to the offered rate put every line on the top border. The
    right-hand axis gives the same scale in replies per second.
    """
    fig, axes = _figure(10, 6.5, 2, 1, sharex=True)
    top, bottom = axes[0, 0], axes[1, 0]
    colors = _colors([r.profile for r in data.profiles])
    rate = data.reference_tps
    threshold_pct = 100 * data.min_achieved_ratio
    warmup = 0.0
    shares: list[float] = [100.0, threshold_pct]
    for row in data.profiles:
        here = _at_rate(runs, row.profile, rate)
        if not here:
            continue
        run = min(here, key=lambda r: (r.ref.repeat if r.ref else 0, r.path))
        s = run.result.series
        load = run.result.load
        warmup = load.warmup
        n = int(np.ceil(load.warmup + load.seconds))  # the drain's tail is not part of the run
        t = np.arange(min(n, len(s.completed))) + 0.5
        share = 100 * np.array(s.completed[: len(t)], dtype=float) / max(run.offered_tps, 1.0)
        shares += share.tolist()
        top.plot(t, share, "-o", ms=3, color=colors[row.profile], label=row.profile, gid=f"share:{row.profile}")
        bottom.plot(t, s.p99_ms[: len(t)], "-o", ms=3, color=colors[row.profile])
    for ax in (top, bottom):
        ax.axvspan(0, warmup, color="0.85", zorder=0)
        ax.grid(True, alpha=0.3)
    top.axhline(100.0, color="k", ls="--", lw=0.9, label="offered")
    top.axhline(
        threshold_pct, color="crimson", ls=":", lw=1.1, label=f"{threshold_pct:g}% (sustained needs this settled)"
    )
    low, high = min(shares), max(shares)
    pad = max(0.15 * (high - low), 0.5)
    top.set_ylim(low - pad, high + pad)
    top.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}%"))
    top.set_ylabel("replies per second\n(% of the offered rate)")
    if rate:
        right = top.secondary_yaxis("right", functions=(lambda p: p * rate / 100, lambda v: v * 100 / rate))
        right.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))  # 1% of 300k is 3,000
        right.set_ylabel("replies per second")
    top.legend(fontsize=8, ncols=3, loc="lower right")
    bottom.set_ylim(0, max(bottom.get_ylim()[1], data.slo_p99_ms * 1.1))
    _slo_line(bottom, data.slo_p99_ms)
    bottom.set_ylabel("p99 of that second (ms)")
    bottom.set_xlabel("seconds since the run's start (grey: warm-up, not measured)")
    where = f"{rate:,.0f} payments/s offered" if rate else "the reference rate"
    _title(fig, f"Per-second throughput and p99 over one run at {where}", data)
    return fig


def plot_timeseries(data: ReportData, runs: list[Loaded], path: Path) -> Path:
    timeseries_figure(data, runs).savefig(path)
    return path


def plot_all(data: ReportData, runs: list[Loaded], folder: Path) -> list[Path]:
    return [
        plot_elbow(data, folder / "elbow.png"),
        plot_cost(data, folder / "cost.png"),
        plot_spectrum(data, runs, folder / "spectrum.png"),
        plot_timeseries(data, runs, folder / "timeseries.png"),
    ]
