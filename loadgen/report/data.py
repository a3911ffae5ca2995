"""The data behind a report, from result files alone.

``build`` reads result files and (if present) a comparison summary (``compare.json``) and
returns ``ReportData``: every number the Markdown table shows, computed from the files, so tests
check the table against the files through this structure. ``loadgen.report.markdown`` renders it,
``loadgen.report.plots`` draws it, and ``loadgen.report.writer`` writes both next to
``report.json`` (that structure).

Without a comparison summary (plain ``run`` files), each run counts at its offered rate. A
"max sustainable" rate and a cost exist only where a search found them (a comparison summary);
plain runs show the highest offered rate among the runs that sustained the SLO, named as such,
and no cost. Percentiles over several runs come from their merged histograms, never from
averaging percentiles; the spread over repeats is the range of the per-run values. Every run's
own verdict (``loadgen.results.verdict``) decides whether it is drawn and counted as sustained.

Inputs that cannot be compared are refused (``MixedInputs``): runs from different CPUs, account
counts or scenarios, unless the caller splits them by that dimension (``split_runs``), one report
per group.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine.profiles import CompareSettings, default_scenario_text, load_scenario
from loadgen.generator.histogram import Histogram
from loadgen.results.compare import (
    SUMMARY_KIND,
    Band,
    CompareSummary,
    RunRef,
    is_sustained,
    loads_summary,
    peek_kind,
    verdict,
)
from loadgen.results.export import long_run_minutes
from loadgen.results.run import RunResult, figures_of, loads, verdict_of

#: The rate the question is about; the reference rate for spectra, time series and hook costs
#: when every profile ran there.
HEADLINE_TPS = 300_000.0
ECHO = "echo"


class Loaded(msgspec.Struct):
    """A result file with its role in a comparison (None: a plain run file)."""

    path: str
    result: RunResult
    ref: RunRef | None = None

    @property
    def profile(self) -> str:
        return self.result.summary.profile

    @property
    def offered_tps(self) -> float:
        return self.result.summary.offered_tps


class ProfileRow(msgspec.Struct, frozen=True):
    """One row of the main table."""

    profile: str
    max_sustainable_tps: Band | None  # from searches only, over repeats, each repeat's capacity interval included
    searched: bool  # False: no search for this profile (max_sustainable_tps and the cost are None)
    confirmed: str  # "2/2": searches whose 95%/105% confirmation agreed
    at_ceiling: bool  # sustained up to the search ceiling: the true maximum is higher
    generator_limited: bool  # the generator fell behind near this profile's limit
    cost_pct: float | None  # throughput lost vs baseline: 100 * (1 - max / baseline max), positive = slower
    cost_low_pct: float | None  # the smallest cost both bands allow
    cost_high_pct: float | None  # the largest
    cost_verdict: str
    apply_ns_per_transfer: Band | None  # time inside the engine's apply per transfer, at the reference rate
    hook_ns_per_transfer: dict[str, Band]  # each hook's own time per transfer, at the reference rate
    hooks_total_ns_per_transfer: Band | None  # all hooks together, per run
    highest_sustained_tps: float | None = None  # highest offered rate of a sustained run (not a search)


class RunPoint(msgspec.Struct, frozen=True):
    """One run as the elbow plot draws it: sustained or not by its own verdict."""

    profile: str
    offered_tps: float
    p99_ms: float
    sustained: bool
    verdict: str


class LatencyRow(msgspec.Struct, frozen=True):
    """One profile at one offered rate (all runs there merged)."""

    profile: str
    offered_tps: float
    runs: int
    settled_ratio: float  # median over runs of settled / offered
    sustained_runs: int
    p50_ms: float  # from the merged histogram of the runs
    p99_ms: float
    p999_ms: float
    p99_band: Band  # per-run p99s: median and range over repeats
    p99_vs_baseline_ms: float | None  # median p99 minus baseline's at the same rate
    p99_verdict: str


class DriftRow(msgspec.Struct, frozen=True):
    """A long run's p99 minute by minute (``loadgen.results.drift``): does its latency climb?"""

    file: str  # relative to the report, as in ``ReportData.files``
    profile: str
    offered_tps: float
    p99_ms_by_minute: list[float]  # minutes with replies, from the start of the measured window
    worst_minute: int
    worst_p99_ms: float
    last_vs_first: float | None  # last minute's p99 / first minute's - 1 (None: the first had none)


class ReportData(msgspec.Struct, frozen=True):
    title: str
    machine: str
    mode: str
    accounts: int
    slo_p99_ms: float
    min_achieved_ratio: float
    reference_tps: float | None
    common_rates_tps: list[float]
    profiles: list[ProfileRow]
    latency: list[LatencyRow]
    files: list[str]
    notes: list[str]
    points: list[RunPoint] = []
    group: str = ""  # what this report's runs share when the inputs were split (--split-by)
    drift: list[DriftRow] = []  # runs measured for two minutes or more


class MixedInputs(ValueError):
    """Result files that cannot be reported together (different CPUs, account counts or scenarios)."""


#: What runs must share to be compared, and how each is described: ``--split-by`` names.
def _cpu(r: RunResult) -> str:
    return f"{r.environment.cpu_model}, {r.environment.cores} cores"


def _accounts(r: RunResult) -> str:
    return f"{r.summary.accounts:,} accounts"


def _scenario(r: RunResult) -> str:
    """The scenario by its content where the file says it (version 2), else by its path."""
    digest = r.settings.scenario_sha256 if r.settings is not None else ""
    if digest:
        if digest == hashlib.sha256(default_scenario_text()).hexdigest():
            return "shipped scenario"
        return f"scenario sha256 {digest[:12]}"
    return "shipped scenario" if r.scenario is None else f"scenario {r.scenario}"


DIMENSIONS: dict[str, Callable[[RunResult], str]] = {"cpu": _cpu, "accounts": _accounts, "scenario": _scenario}


def split_runs(runs: list[Loaded], split_by: Sequence[str] = ()) -> dict[str, list[Loaded]]:
    """The runs grouped by the ``split_by`` dimensions; ``MixedInputs`` if they differ in another.

    A dimension not split by must have one value across all runs: a report over two machines,
    two ledger sizes or two scenarios would compare what cannot be compared.
    """
    unknown = [d for d in split_by if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"--split-by {', '.join(unknown)}: choose from {', '.join(DIMENSIONS)}")
    for name, key in DIMENSIONS.items():
        if name in split_by:
            continue
        values: dict[str, list[str]] = {}
        for r in runs:
            values.setdefault(key(r.result), []).append(r.path)
        if len(values) > 1:
            listing = "; ".join(
                f"{value} ({len(paths)} file(s), e.g. {os.path.basename(paths[0])})" for value, paths in values.items()
            )
            raise MixedInputs(
                f"the result files come from different {name if name != 'cpu' else 'CPUs'}: {listing}. "
                f"Report them separately, or pass --split-by {name} for one report per group"
            )
    groups: dict[str, list[Loaded]] = {}
    for r in runs:
        label = ", ".join(DIMENSIONS[d](r.result) for d in split_by)
        groups.setdefault(label, []).append(r)
    return groups


# ---- loading ---------------------------------------------------------------------------------


def _json_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(x for x in p.rglob("*.json") if x.name != "report.json")
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such result file or directory")
    return out


def load_inputs(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Loaded], CompareSummary | None]:
    """Result files (and at most one comparison summary) from files and directories."""
    files = _json_files(paths)
    summaries: list[tuple[Path, CompareSummary]] = []
    results: dict[Path, RunResult] = {}
    for f in files:
        data = f.read_bytes()
        if peek_kind(data, source=str(f)) == SUMMARY_KIND:
            summaries.append((f, loads_summary(data, source=str(f))))
        else:
            results[f.resolve()] = loads(data, source=str(f))
    if len(summaries) > 1:
        raise ValueError(
            "more than one comparison summary given ("
            + ", ".join(str(p) for p, _ in summaries)
            + "); report one at a time"
        )
    summary = summaries[0][1] if summaries else None
    loaded: list[Loaded] = []
    if summary is not None:
        base = summaries[0][0].parent
        for ref in summary.runs:
            path = (base / ref.file).resolve()
            result = results.pop(path, None)
            if result is None:
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: listed in {summaries[0][0]} but missing")
                result = loads(path.read_bytes(), source=str(path))
            loaded.append(Loaded(str(path), result, ref))
    loaded += [Loaded(str(p), r) for p, r in results.items()]
    if not loaded:
        raise ValueError("no result files found in " + ", ".join(map(str, paths)))
    return loaded, summary


# ---- numbers ---------------------------------------------------------------------------------


def merged_histogram(runs: Iterable[Loaded]) -> Histogram:
    return Histogram.merged(r.result.latency_histogram.histogram() for r in runs)


def _transfers(stats: dict[str, Any]) -> float:
    ledger = stats.get("ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("transfers"), int | float):
        return float(ledger["transfers"])
    value = stats.get("transfers")
    return float(value) if isinstance(value, int | float) else 0.0


def apply_ns_per_transfer(result: RunResult) -> float | None:
    """Time inside the engine's ``apply`` (ledger + inline hooks) per transfer, measured window."""
    s0, s1 = result.server.stats_start, result.server.stats_end
    e0, e1 = s0.get("engine_s"), s1.get("engine_s")
    n = _transfers(s1) - _transfers(s0)
    if not isinstance(e0, int | float) or not isinstance(e1, int | float) or n <= 0:
        return None
    return (e1 - e0) * 1e9 / n


def hook_ns_per_transfer(result: RunResult) -> dict[str, float]:
    return {
        name: float(v["ns_per_transfer"])
        for name, v in result.server.hooks.items()
        if isinstance(v, dict) and isinstance(v.get("ns_per_transfer"), int | float)
    }


def _is_equal_load(r: Loaded) -> bool:
    return r.ref is None or r.ref.stage == "equal-load"


def _reference_rate(runs: list[Loaded], rates: list[float]) -> float | None:
    """300,000/s if every (non-echo) profile ran there, else the rate most profiles ran at."""
    profiles = {r.profile for r in runs if r.profile != ECHO}
    at: dict[float, set[str]] = {}
    for r in runs:
        if _is_equal_load(r) and r.profile != ECHO:
            at.setdefault(r.offered_tps, set()).add(r.profile)
    if not at:
        return None
    if at.get(HEADLINE_TPS) == profiles:
        return HEADLINE_TPS
    return max(at, key=lambda rate: (len(at[rate]), rate))


def _settings(summary: CompareSummary | None, runs: list[Loaded]) -> CompareSettings:
    if summary is not None:
        return summary.settings
    scenario = next((r.result.scenario for r in runs if r.result.scenario), None)
    try:
        return load_scenario(scenario).compare
    except ValueError:
        return load_scenario(None).compare


def machine_of(runs: list[Loaded]) -> tuple[str, list[str]]:
    """The machine the runs share (``split_runs`` refused any other mix), with its calibration score."""
    e = runs[0].result.environment
    text = f"{e.cpu_model}, {e.cores} cores, Python {e.python}"
    scores = sorted(r.result.environment.calibration.engine_tps for r in runs if r.result.environment.calibration)
    if scores:
        text += f"; CPU calibration {scores[len(scores) // 2]:,.0f} engine transfers/s (median of {len(scores)})"
    return text, []


def _profile_order(runs: list[Loaded], summary: CompareSummary | None) -> list[str]:
    seen = list(summary.profiles) if summary is not None else []
    for r in runs:
        if r.profile not in seen:
            seen.append(r.profile)
    # Baseline first (everything is relative to it), the echo calibration last.
    return sorted(seen, key=lambda p: (p != "baseline", p == ECHO, seen.index(p)))


def build(
    paths: Sequence[str | os.PathLike[str]], *, relative_to: str | os.PathLike[str] | None = None
) -> tuple[ReportData, list[Loaded], CompareSummary | None]:
    """Everything the report shows, from the files at ``paths`` (refused if they cannot be compared).

    ``relative_to``: the report's directory; the files it lists are given relative to it, so a
    committed report holds no machine's absolute paths.
    """
    runs, summary = load_inputs(paths)
    split_runs(runs)
    return build_from(runs, summary, relative_to=relative_to), runs, summary


def build_from(
    runs: list[Loaded],
    summary: CompareSummary | None,
    *,
    relative_to: str | os.PathLike[str] | None = None,
    group: str = "",
) -> ReportData:
    """The report of ``runs`` (already checked to be comparable) and their comparison summary, if any."""
    settings = _settings(summary, runs)
    machine, notes = machine_of(runs)
    profiles = _profile_order(runs, summary)
    rates = (
        list(summary.common_rates_tps)
        if summary is not None
        else sorted({r.offered_tps for r in runs if r.profile != ECHO} or {r.offered_tps for r in runs})
    )
    reference = _reference_rate(runs, rates)

    # Max sustainable: only where a search found it. Without one, the highest sustained run is
    # shown under its own name, and no cost is computed from it.
    maxima: dict[str, tuple[Band | None, str, bool, bool]] = {}
    highest: dict[str, float] = {}
    for p in profiles:
        if summary is not None and any(s.profile == p for s in summary.searches):
            searches = [s for s in summary.searches if s.profile == p]
            searched_band = Band.of(
                [s.result.max_sustainable_tps for s in searches],
                [(s.interval_low_tps, s.interval_high_tps) for s in searches],
            )
            ceiling = any("ceiling" in s.result.note for s in searches)
            confirmed = f"{sum(s.result.confirmed for s in searches)}/{len(searches)}"
            if ceiling:
                confirmed += " (ceiling)"
            maxima[p] = (searched_band, confirmed, ceiling, any(s.generator_limited for s in searches))
        else:
            ok = [r.offered_tps for r in runs if r.profile == p and is_sustained(r.result, settings)]
            maxima[p] = (None, "no search", False, False)
            if ok:
                highest[p] = max(ok)

    base = maxima.get("baseline", (None, "", False, False))[0]
    rows: list[ProfileRow] = []
    for p in profiles:
        band, confirmed, ceiling, limited = maxima[p]
        cost = cost_low = cost_high = None
        cost_verdict = "reference" if p == "baseline" else ("n/a" if p == ECHO else "n/a (no search)")
        if p not in ("baseline", ECHO) and band is not None and base is not None and base.median > 0:
            cost = 100 * (1 - band.median / base.median)
            cost_low = 100 * (1 - band.high / base.low) if base.low > 0 else None
            cost_high = 100 * (1 - band.low / base.high)
            ceilings = ceiling or maxima["baseline"][2]
            cost_verdict = "not judged (search ceiling reached)" if ceilings else verdict(band, base)
        at_ref = [r for r in runs if r.profile == p and r.offered_tps == reference and _is_equal_load(r)]
        apply = [v for r in at_ref if (v := apply_ns_per_transfer(r.result)) is not None]
        hooks: dict[str, list[float]] = {}
        totals: list[float] = []
        for r in at_ref:
            per_hook = hook_ns_per_transfer(r.result)
            for name, ns in per_hook.items():
                hooks.setdefault(name, []).append(ns)
            if per_hook:
                totals.append(sum(per_hook.values()))
        rows.append(
            ProfileRow(
                profile=p,
                max_sustainable_tps=band,
                searched=confirmed != "no search",
                confirmed=confirmed,
                at_ceiling=ceiling,
                generator_limited=limited,
                cost_pct=cost,
                cost_low_pct=cost_low,
                cost_high_pct=cost_high,
                cost_verdict=cost_verdict,
                apply_ns_per_transfer=Band.of(apply) if apply else None,
                hook_ns_per_transfer={k: Band.of(v) for k, v in hooks.items()},
                hooks_total_ns_per_transfer=Band.of(totals) if totals else None,
                highest_sustained_tps=highest.get(p),
            )
        )

    latency: list[LatencyRow] = []
    base_p99: dict[float, Band] = {}
    for p in profiles:
        for rate in sorted({r.offered_tps for r in runs if r.profile == p and _is_equal_load(r)}):
            if summary is not None and rate not in rates:
                continue
            here = [r for r in runs if r.profile == p and r.offered_tps == rate and _is_equal_load(r)]
            h = merged_histogram(here)
            pct = h.percentiles((50.0, 99.0, 99.9))
            p99s = Band.of([r.result.summary.p99_ms for r in here])
            if p == "baseline":
                base_p99[rate] = p99s
            b = base_p99.get(rate)
            # From the result itself (``loadgen.results.verdict``), never above 100%: a comparison
            # summary written before settled was defined stored replies received in the window.
            ratios = sorted(figures_of(r.result).achieved_ratio for r in here)
            latency.append(
                LatencyRow(
                    profile=p,
                    offered_tps=rate,
                    runs=len(here),
                    settled_ratio=ratios[len(ratios) // 2],
                    sustained_runs=sum(is_sustained(r.result, settings) for r in here),
                    p50_ms=pct[50.0] / 1e6,
                    p99_ms=pct[99.0] / 1e6,
                    p999_ms=pct[99.9] / 1e6,
                    p99_band=p99s,
                    p99_vs_baseline_ms=None if b is None or p == "baseline" else p99s.median - b.median,
                    p99_verdict="reference"
                    if p == "baseline"
                    else ("n/a" if b is None or p == ECHO else verdict(p99s, b)),
                )
            )

    mode = summary.plan.mode if summary is not None else "run files"
    accounts = summary.plan.accounts if summary is not None else runs[0].result.summary.accounts
    what = f"cbdc-bench compare ({mode})" if summary is not None else f"cbdc-bench: {len(runs)} run file(s)"
    if summary is not None:
        notes = [*summary.notes, *notes]
    else:
        notes.append(
            "no comparison summary: no maximum was searched, so no maximum and no cost are given; "
            "'highest sustained run' is the highest offered rate among these runs that sustained"
        )
    points = [
        RunPoint(r.profile, r.offered_tps, r.result.summary.p99_ms, verdict.sustained, verdict.line)
        for r in runs
        for verdict in (verdict_of(r.result, settings),)
    ]
    files = [r.path if relative_to is None else os.path.relpath(r.path, relative_to) for r in runs]
    return ReportData(
        title=what,
        machine=machine,
        mode=mode,
        accounts=accounts,
        slo_p99_ms=settings.slo_p99_ms,
        min_achieved_ratio=settings.min_achieved_ratio,
        reference_tps=reference,
        common_rates_tps=rates,
        profiles=rows,
        latency=latency,
        files=files,
        notes=notes,
        points=points,
        group=group,
        drift=[row for r, f in zip(runs, files, strict=True) if (row := drift_row(r, f)) is not None],
    )


def drift_row(run: Loaded, file: str) -> DriftRow | None:
    """The drift of ``run`` if it was measured long enough to have one (two minutes with replies)."""
    measured = [m for m in long_run_minutes(run.result) or () if m.replies]
    if len(measured) < 2:
        return None
    worst = max(measured, key=lambda m: m.p99_ms)
    first, last = measured[0].p99_ms, measured[-1].p99_ms
    return DriftRow(
        file=file,
        profile=run.profile,
        offered_tps=run.offered_tps,
        p99_ms_by_minute=[m.p99_ms for m in measured],
        worst_minute=worst.minute,
        worst_p99_ms=worst.p99_ms,
        last_vs_first=last / first - 1 if first > 0 else None,
    )
