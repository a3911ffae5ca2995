"""The comparison summary file of ``cbdc-bench compare``, and the rules that judge runs.

``compare`` writes one result file per measured load phase (``loadgen.results.run``) and one summary
(``CompareSummary``, ``compare.json``) that lists them with their role: which profile, repeat and
stage (search trial or equal-load run) each file is, what every search found, and the settings
used. Reports read the summary and the result files; nothing is re-run.

Two rules live here because compare and report must apply them identically:

* ``outcome_of``/``is_sustained``: what a run says about sustainability, by the one rule of
  ``loadgen.results.verdict`` (``run`` and ``load`` print the same verdict). Transfers the server
  shed (``overloaded``, ``hook_error``) are answered fast but not settled, so they do not count as
  achieved: a server that sheds half its load at low latency did not sustain the rate.
* ``Band``/``differs``: when a difference between two profiles is called a difference.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
from pathlib import Path

import msgspec

from engine.profiles import CompareSettings
from loadgen.harness.search import RunOutcome, SearchResult
from loadgen.results.environment import Environment
from loadgen.results.run import ResultVersionError, RunResult, figures_of, require_version, verdict_of

#: Version of the comparison summary format. History (a reader refuses every version but its own):
#:   1 - first format: settings, plan, order per repeat, searches, runs with their roles.
COMPARE_SCHEMA_VERSION = 1

#: ``kind`` of a summary file (a run's result file says ``compare`` there: one phase of a comparison).
SUMMARY_KIND = "compare-summary"


class Plan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How long and how often ``compare`` measures (``--quick`` is one plan, the default another)."""

    mode: str  # "quick", "full" or "custom"
    accounts: int
    repeats: int
    precision: float  # relative bisection width
    confirm_repeats: int  # confirmation runs at 95% and at 105%, per repeat
    search_warmup_s: float
    search_seconds: float
    equal_warmup_s: float
    equal_seconds: float
    drain_s: float
    operators: int = 2
    processes: int = 1
    #: Times a phase whose window the host's steal spoiled (``verdict.steal_spoiled``) is measured
    #: again; the least-stolen attempt is kept (``compare --steal-retries``; 0: never).
    steal_retries: int = 0

    def __post_init__(self) -> None:
        if self.accounts < 2 or self.repeats < 1 or self.confirm_repeats < 0 or self.steal_retries < 0:
            raise ValueError("need accounts >= 2, repeats >= 1, confirm_repeats >= 0, steal_retries >= 0")
        if min(self.search_seconds, self.equal_seconds) <= 0 or min(self.search_warmup_s, self.equal_warmup_s) < 0:
            raise ValueError("phase lengths must be > 0 (warm-ups >= 0)")


class RunRef(msgspec.Struct, frozen=True):
    """One result file and its role in the comparison."""

    file: str  # relative to the summary file's directory
    profile: str
    repeat: int  # 1-based
    stage: str  # "search" or "equal-load"
    phase: str  # search: bracket / bisect / confirm-low / confirm-high; equal-load: "equal"
    offered_tps: float
    settled_tps: float  # achieved, shed transfers excluded (see ``outcome_of``)
    p99_ms: float
    sustained: bool
    generator_kept_schedule: bool
    #: Cores the host's steal took over the window (``machine_cpu``; None: not recorded).
    stolen_cores: float | None = None
    #: Attempts at this phase measured before it and set aside, their windows spoiled by steal
    #: (``Plan.steal_retries``; their files are under ``spoiled/``).
    spoiled_attempts: int = 0


class ProfileSearch(msgspec.Struct, frozen=True):
    """One repeat's search for one profile."""

    profile: str
    repeat: int
    start_tps: float
    result: SearchResult
    interval_low_tps: float  # capacity lies in [low, high] by every trial of this search
    interval_high_tps: float
    generator_limited: bool


class CompareSummary(msgspec.Struct, frozen=True, kw_only=True):
    schema_version: int = COMPARE_SCHEMA_VERSION
    kind: str = SUMMARY_KIND
    created_utc: str
    command: str  # how it was invoked, to reproduce it
    scenario: str | None
    profiles: list[str]
    seed: int
    plan: Plan
    settings: CompareSettings
    order: list[list[str]]  # profile order of each repeat (searches; equal-load runs reshuffled)
    equal_order: list[list[str]]
    common_rates_tps: list[float]  # scenario's common rates + the lowest maximum found
    searches: list[ProfileSearch]
    runs: list[RunRef]
    environment: Environment
    duration_s: float
    notes: list[str]


class _Kind(msgspec.Struct):
    schema_version: int
    kind: str = ""


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def peek_kind(data: bytes, *, source: str) -> str:
    """``SUMMARY_KIND`` for a summary, else the result's kind (``run``, ``load``, ``compare``)."""
    try:
        return msgspec.json.decode(data, type=_Kind).kind
    except msgspec.ValidationError as exc:
        raise ResultVersionError(f"{source} is not a cbdc-bench result file (no schema_version: {exc})") from exc
    except msgspec.DecodeError as exc:
        raise ResultVersionError(f"{source} is not JSON: {exc}") from exc


def loads_summary(data: bytes, *, source: str = "comparison summary") -> CompareSummary:
    """Parse a summary, refusing any format version but ``COMPARE_SCHEMA_VERSION``."""
    version = msgspec.json.decode(data, type=_Kind).schema_version
    require_version(version, COMPARE_SCHEMA_VERSION, f"{source} is a comparison summary with")
    return msgspec.json.decode(data, type=CompareSummary)


def save_summary(summary: CompareSummary, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(summary), indent=1))
    tmp.replace(out)
    return out


# ---- judging runs ----------------------------------------------------------------------------


def settled_tps(result: RunResult) -> float:
    """Settled transfers (``loadgen.results.verdict``) per second of the measured window."""
    return figures_of(result).settled / result.summary.seconds


def outcome_of(result: RunResult, settings: CompareSettings) -> RunOutcome:
    """A run as the search sees it, its verdict judged by ``verdict_of`` against ``settings``."""
    s = result.summary
    f = figures_of(result)
    return RunOutcome(
        s.offered_tps,
        f.settled / s.seconds,
        s.p99_ms,
        s.generator_kept_schedule,
        scheduled_tps=f.scheduled / s.seconds,
        sustained=verdict_of(result, settings).sustained,
    )


def is_sustained(result: RunResult, settings: CompareSettings) -> bool:
    return verdict_of(result, settings).sustained


# ---- significance ----------------------------------------------------------------------------


class Band(msgspec.Struct, frozen=True):
    """A measured quantity over repeats: the median and the range every repeat falls in.

    For a searched maximum, each repeat contributes its whole capacity interval (search
    resolution and noisy trials included), so even one repeat has a width; a plain measurement
    (a p99) contributes its value, and one repeat has no measured spread at all.
    """

    median: float
    low: float
    high: float
    repeats: int

    @property
    def spread(self) -> float:
        return self.high - self.low

    @classmethod
    def of(cls, values: list[float], intervals: list[tuple[float, float]] | None = None) -> Band:
        if not values:
            raise ValueError("a band needs at least one value")
        spans = intervals if intervals is not None else [(v, v) for v in values]
        # Every repeat's own value lies in the band too: a confirmation run that sustained 105%
        # puts a repeat's capacity interval above the maximum its search reported.
        return cls(
            median=float(statistics.median(values)),
            low=float(min(min(lo for lo, _ in spans), min(values))),
            high=float(max(max(hi for _, hi in spans), max(values))),
            repeats=len(values),
        )


def differs(a: Band, b: Band) -> bool | None:
    """True when the medians differ by more than the larger spread; None when it cannot be judged.

    "Larger than the run-to-run spread": the gap between the medians must exceed the full range
    (max - min over repeats, search resolution included) of both profiles. A side measured once
    with no resolution interval (a single run's p99, or a single run's rate) has no spread of its
    own, so nothing can be said about it: None, whatever the other side's spread.
    """
    if any(x.repeats < 2 and x.spread == 0 for x in (a, b)):
        return None
    return abs(a.median - b.median) > max(a.spread, b.spread)


def verdict(a: Band, b: Band) -> str:
    """ "different", "within spread" or "not judged (single run)"."""
    d = differs(a, b)
    if d is None:
        return "not judged (single run)"
    return "different" if d else "within spread"
