"""A/B comparison of two sets of runs (``cbdc-bench diff``): the change in throughput and latency,
and whether it is significant.

The test is on *per-repeat summaries* (one achieved rate, one p99 per run), as pyperf compares
benchmark values, never on the raw latency samples: the ~10^7 latencies of one run are strongly
autocorrelated (a GC pause or a queue build-up delays thousands in a row), so a test that treats
them as independent calls every difference significant. What varies between repeats (placement,
the machine's other load, the server's start-up) is what a claim of "faster" must beat.

The test is Welch's two-sample t-test (``scipy.stats.ttest_ind(equal_var=False)``): the variances
of two configurations need not be equal. It needs at least two repeats on each side; a side with
one run is compared (the change is shown) but never judged significant. With few repeats the test
has little power: "no significant change" means "not shown", not "equal".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import msgspec
from scipy import stats

from loadgen.results.run import RunResult, load

#: Significance level of the two-sided test.
DEFAULT_ALPHA = 0.05

#: (name, unit, Summary field, True where higher is better).
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("achieved", "/s", "achieved_tps", True),
    ("goodput", "/s", "goodput_tps", True),
    ("p50", "ms", "p50_ms", False),
    ("p90", "ms", "p90_ms", False),
    ("p99", "ms", "p99_ms", False),
    ("p99.9", "ms", "p999_ms", False),
    ("max", "ms", "max_ms", False),
)

#: Settings that should match for an A/B comparison to isolate one change; a difference is a note.
_SETTINGS = (("profile", "profile"), ("offered_tps", "offered rate"), ("accounts", "accounts"), ("seconds", "seconds"))


class Side(msgspec.Struct, frozen=True):
    """One side's values of a metric, one per run."""

    values: list[float]
    mean: float
    stdev: float  # sample standard deviation; 0 for a single run


class MetricDiff(msgspec.Struct, frozen=True):
    metric: str
    unit: str
    a: Side
    b: Side
    change: float | None  # (mean B - mean A) / mean A; None when mean A is 0
    p_value: float | None  # Welch's t-test; None when a side has a single run
    #: "better", "worse", "no significant change", or "not judged (single run)".
    judgement: str


class DiffResult(msgspec.Struct, frozen=True):
    a_label: str
    b_label: str
    a_runs: int
    b_runs: int
    alpha: float
    metrics: list[MetricDiff]
    notes: list[str]


def result_files(path: str | os.PathLike[str]) -> list[Path]:
    """The result files a ``diff`` argument names: the file itself, or every ``*.json`` in a directory."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.glob("*.json") if f.name != "compare.json")
        if not files:
            raise FileNotFoundError(f"{p}: no result files (*.json) in this directory")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such result file or directory")
    return [p]


def _side(values: list[float]) -> Side:
    mean = math.fsum(values) / len(values)
    stdev = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return Side(values, mean, stdev)


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None with fewer than two values on a side.

    Two sides without any spread give 1.0 when equal and 0.0 when not (scipy gives NaN for
    both: the statistic is 0/0 or x/0).
    """
    if len(a) < 2 or len(b) < 2:
        return None
    if max(a) == min(a) and max(b) == min(b):
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _judge(p_value: float | None, change: float, higher_is_better: bool, alpha: float) -> str:
    if p_value is None:
        return "not judged (single run)"
    if p_value >= alpha or change == 0:
        return "no significant change"
    return "better" if (change > 0) == higher_is_better else "worse"


def diff_runs(
    a: Sequence[RunResult], b: Sequence[RunResult], *, a_label: str, b_label: str, alpha: float = DEFAULT_ALPHA
) -> DiffResult:
    """Compare runs ``b`` against runs ``a`` (each a list of repeats of one configuration)."""
    if not a or not b:
        raise ValueError("diff needs at least one result on each side")
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must be between 0 and 1, got {alpha}")
    rows = []
    for name, unit, field, higher_is_better in METRICS:
        sa = _side([float(getattr(r.summary, field)) for r in a])
        sb = _side([float(getattr(r.summary, field)) for r in b])
        change = (sb.mean - sa.mean) / sa.mean if sa.mean else None
        p = welch_p_value(sa.values, sb.values)
        rows.append(MetricDiff(name, unit, sa, sb, change, p, _judge(p, sb.mean - sa.mean, higher_is_better, alpha)))
    return DiffResult(a_label, b_label, len(a), len(b), alpha, rows, _notes(a, b))


def _notes(a: Sequence[RunResult], b: Sequence[RunResult]) -> list[str]:
    """What the reader must know: settings that differ, single runs, unhealthy runs."""
    notes = []
    for field, what in _SETTINGS:
        va = sorted({str(getattr(r.summary, field)) for r in a})
        vb = sorted({str(getattr(r.summary, field)) for r in b})
        if va != vb:
            notes.append(f"{what} differs: A {', '.join(va)}; B {', '.join(vb)}")
    if min(len(a), len(b)) < 2:
        notes.append(
            "a side has a single run: changes are shown but not judged; repeat each side (run --repeats N, "
            "N >= 3) for a significance test"
        )
    for label, runs in (("A", a), ("B", b)):
        behind = sum(not r.summary.generator_kept_schedule for r in runs)
        if behind:
            notes.append(f"{label}: the generator fell behind in {behind} of {len(runs)} runs (they measured it)")
    return notes


def diff_paths(a: str | os.PathLike[str], b: str | os.PathLike[str], *, alpha: float = DEFAULT_ALPHA) -> DiffResult:
    """``diff_runs`` of the result files that ``a`` and ``b`` name (files or directories of repeats)."""
    return diff_runs(
        [load(f) for f in result_files(a)],
        [load(f) for f in result_files(b)],
        a_label=str(a),
        b_label=str(b),
        alpha=alpha,
    )


def format_diff(d: DiffResult) -> str:
    """The diff as a plain-text table, then its notes."""

    def show(side: Side, unit: str) -> str:
        digits = 0 if unit == "/s" else 2
        spread = f" ± {side.stdev:,.{digits}f}" if len(side.values) > 1 else ""
        return f"{side.mean:,.{digits}f}{spread}"

    lines = [
        f"A: {d.a_label} ({d.a_runs} run{'s' if d.a_runs != 1 else ''})",
        f"B: {d.b_label} ({d.b_runs} run{'s' if d.b_runs != 1 else ''})",
        f"{'metric':<9} {'A (mean ± sd)':>22} {'B (mean ± sd)':>22} {'change':>9} {'p':>7}  judgement",
    ]
    for m in d.metrics:
        change = "-" if m.change is None else f"{m.change:+.1%}"
        p = "-" if m.p_value is None else "<0.001" if m.p_value < 0.001 else f"{m.p_value:.3f}"
        label = f"{m.metric} {m.unit}"
        lines.append(f"{label:<9} {show(m.a, m.unit):>22} {show(m.b, m.unit):>22} {change:>9} {p:>7}  {m.judgement}")
    lines.append(f"Welch's t-test on per-run summaries, two-sided, alpha {d.alpha:g}")
    lines += [f"note: {n}" for n in d.notes]
    return "\n".join(lines)
