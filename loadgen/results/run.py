"""Result files: one versioned JSON document per run under ``results/``, and its loader.

Reports and plots are made from these files alone, so a file carries everything: what was run
(scenario, and the profile's hooks with every resolved parameter, so the run can be reproduced
from the file alone; load parameters), where (environment: CPU model and a CPU calibration
score, so figures from two machines compare as ratios), and what was measured: full latency
histograms in HdrHistogram's standard base64 V2 encoding (``Histogram.decode`` or any
HdrHistogram library reads them; values in ns), per-second series, result codes, generator lag,
CPU of generator and server, the server's per-hook cost, bytes on the wire and in the journal per
payment, and the audit outcome. The JSON Schema is generated from these Structs (``json_schema``,
committed as ``docs/result-schema.json``; fields described in ``docs/results.md``), never written by
hand. Older files load through ``loadgen.results.upgrade``, one version step at a time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any

import msgspec

from engine.profiles import CompareSettings, default_scenario_text, load_scenario, profile_hooks
from loadgen.generator.gateway import LoadConfig
from loadgen.generator.histogram import REPORT_PERCENTILES, Histogram
from loadgen.generator.measure import Measurement
from loadgen.generator.workload import ScenarioWorkload
from loadgen.results.drift import MinuteLatency, stored_drift
from loadgen.results.environment import Environment
from loadgen.results.machine_cpu import MachineCpu
from loadgen.results.state import StateFootprint
from loadgen.results.tiers import measured_tiers
from loadgen.results.upgrade import upgrade
from loadgen.results.verdict import Figures, Verdict, judge

#: Version of the result-file format. History (a reader upgrades older versions one step at a time,
#: ``loadgen.results.upgrade``, and refuses newer ones; later issues add optional fields only):
#:   1 - first format: summary, load, environment, latency/send-lag histograms (HdrHistogram V2
#:       base64, ns), per-second series with interval histograms, codes, counts, generator,
#:       server (CPU, stats, per-hook cost), audit, failures. Later additions with defaults, so
#:       files without them still read: server.durability (journal policy and its cost);
#:       summary.settled/shed/verdict/exit_status (``loadgen.results.verdict``; achieved_tps and
#:       achieved_ratio are settled-based from then on, and replies received in the window before).
#:   2 - issue 12: summary.settled/shed/verdict/exit_status always present, achieved settled-based
#:       (the upgrade recomputes them from a v1 file's codes); settings (the resolved profile, hook
#:       parameters, workload and targets); traffic (wire bytes per payment both ways, journal
#:       bytes per payment); environment.calibration (CPU calibration score). Later optional
#:       fields (absent: not measured): server.durability.snapshots/snapshot_stall_ms_max (issue 15);
#:       risk_model_sha256 (issue 18); the inputs of ``cbdc-bench plan`` (issue 21):
#:       server.tier_cpu_s and tier_workers, traffic.trove_per_payment, state (``loadgen.results.state``);
#:       cpu_ns_per_payment (issue 18: CPU per payment by tier, ``loadgen.harness.cpu_split``);
#:       drift, the p99 per measured minute of runs of two minutes or more (issue 20, ``loadgen.results.drift``);
#:       load.workload (issue 16: the scenario's workload the gateways generated; absent: the defaults,
#:       which is what gateways generated before it), and settings.workload holds the same.
#:       From issue 19's fourth session every run/load whose server ran local validator processes
#:       fills server.tier_cpu_s/tier_workers["validators"] (``loadgen.results.tiers``; the same
#:       optional fields, so no new version: absent in older files, where the plan reads the stats);
#:       machine_cpu, the whole machine's CPU over the measured window by state (issue 21,
#:       ``loadgen.results.machine_cpu``: what the processes' own counters miss).
SCHEMA_VERSION = 2


class ResultVersionError(ValueError):
    """A result file in a format this version of cbdc-bench does not read."""


class EncodedHistogram(msgspec.Struct, frozen=True):
    """A latency histogram: HdrHistogram V2 (compressed, base64), values in ``unit``."""

    hdr: str
    total: int
    max_ns: int  # exact largest value (the encoding only keeps its bucket)
    saturated: int  # values above the trackable range, clamped to it
    unit: str = "ns"
    significant_figures: int = 3

    @classmethod
    def of(cls, h: Histogram) -> EncodedHistogram:
        return cls(
            hdr=h.encode(),
            total=h.total,
            max_ns=h.max_ns,
            saturated=h.saturated,
            significant_figures=h.layout.significant_figures,
        )

    def histogram(self) -> Histogram:
        return Histogram.decode(self.hdr, max_ns=self.max_ns, saturated=self.saturated)


class Percentiles(msgspec.Struct, frozen=True):
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    p9999_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, h: Histogram) -> Percentiles:
        p = {k: v / 1e6 for k, v in h.percentiles(REPORT_PERCENTILES).items()}
        return cls(
            count=h.total,
            p50_ms=p[50.0],
            p90_ms=p[90.0],
            p99_ms=p[99.0],
            p999_ms=p[99.9],
            p9999_ms=p[99.99],
            max_ms=p[100.0],
            mean_ms=h.mean_ns() / 1e6,
        )


class Series(msgspec.Struct, frozen=True):
    """Per-second columns; second ``i`` covers [i, i+1) s after the start, warm-up included."""

    sent: list[int]  # by second of sending
    completed: list[int]  # replies received, by second of receipt (achieved throughput)
    ok: list[int]  # of which OK (goodput)
    p50_ms: list[float]  # latency of the replies received in that second
    p99_ms: list[float]
    max_ms: list[float]
    max_send_lag_ms: list[float]  # worst lateness of a send in that second
    histograms: list[str | None]  # HdrHistogram V2 of each second (interval log), ns


class Counts(msgspec.Struct, frozen=True):
    """Transfer accounting over the whole run (warm-up included unless said otherwise)."""

    scheduled: int
    scheduled_measured: int
    sent: int
    results: int  # answered by a Results frame, exactly once each
    unanswered: int  # sent, no reply by the end of the drain
    unsent: int  # never sent (generator or connection fell behind)
    late: int  # measured transfers sent more than a tick + 2 ms after schedule
    error_transfers: int  # answered by an Error frame
    protocol_errors: int
    frames_sent: int
    frame_errors: dict[str, int]


class Generator(msgspec.Struct, frozen=True):
    processes: int
    operators: int
    tick_us: int
    cpu_s: float  # all generator processes, over the measured window
    send_lag: Percentiles  # actual send - scheduled, measured transfers
    send_lag_histogram: EncodedHistogram
    kept_schedule: bool  # no unsent transfers and p99 send lag within the late threshold


class Durability(msgspec.Struct, frozen=True):
    """How acknowledged payments were made durable, and what it cost, over the measured window."""

    fsync: str  # the server's --fsync policy, or "none" (no journal: acknowledged in memory only)
    fsyncs_per_s: float = 0.0
    fsync_ms_per_s: float = 0.0  # time spent in fsync per second of run (on the server's event loop)
    journal_mb_per_s: float = 0.0
    #: Snapshots finished in the window and the longest sequencer stall one caused (issue 15).
    snapshots: int = 0
    snapshot_stall_ms_max: float = 0.0

    @classmethod
    def of(cls, stats_start: dict[str, Any], stats_end: dict[str, Any], seconds: float) -> Durability:
        j0, j1 = stats_start.get("journal") or {}, stats_end.get("journal") or {}
        if not j1:
            return cls("none")

        def rate(key: str) -> float:
            return (float(j1.get(key, 0)) - float(j0.get(key, 0))) / seconds

        s0, s1 = stats_start.get("snapshots") or {}, stats_end.get("snapshots") or {}
        return cls(
            str(j1.get("fsync", "unknown")),
            rate("fsyncs"),
            rate("fsync_ms_total"),
            rate("bytes_written") / 1e6,
            int(s1.get("taken", 0)) - int(s0.get("taken", 0)),
            # the longest the sequencer waited: fork()/capture, or a copy-on-update step between batches
            max(float(s1.get("stall_ms_max", 0.0)), float(s1.get("step_ms_max", 0.0))),
        )


class Server(msgspec.Struct, frozen=True):
    pid: int | None
    welcome: dict[str, Any]
    cpu_s: float | None  # server process CPU over the measured window, if its pid is known
    stats_start: dict[str, Any]  # StatsReply at the start of the measured window
    stats_end: dict[str, Any]  # and at its end
    hooks: dict[str, Any]  # per-hook cost as reported by the server, over the measured window
    durability: Durability = Durability("none")
    trove: TroveOutcome | None = None
    #: CPU seconds over the window of processes apart from the sequencer's, by tier (``validators``:
    #: the signature workers, issue 19; ``trove``: the trove writer/compactor child, issue 17), and
    #: how many workers each tier had. Empty: not measured (the capacity plan says which command does).
    tier_cpu_s: dict[str, float] = {}
    tier_workers: dict[str, int] = {}
    #: Started elsewhere (``load``, ``run --target``): its configuration, CPU and audit were not under
    #: this run's control; ``cpu_s`` then comes from its own stats (``process_cpu_s``), if it reports them.
    external: bool = False
    #: From the server's stats ``build`` (absent from older servers' files): seconds to build the
    #: ledger, the server's peak RSS after the run, and the population rule that built it.
    build_seconds: float | None = None
    peak_rss_bytes: int | None = None
    population_version: int | None = None


#: The trove's flush counters a result file keeps (``engine.trove.store``, ``TroveOutcome``).
FLUSH_FIGURES = ("flushes", "rows_flushed", "flush_cpu_ns", "first_flush_rows", "first_flush_cpu_ns")


class TroveOutcome(msgspec.Struct, frozen=True):
    """The surveillance trove after the run's drain (profiles whose surveillance_log keeps one).

    ``transfers`` reached the ledger (every one is owed a trove row); ``rows_seen`` were handed
    to the trove, ``rows`` were durable in segments then (the writer may still hold
    ``backlog_rows``; ``trove stats DIR`` after the server stops counts them all). ``failure``
    says why ingest stopped (disk full), with the rows it could not persist: a stopped trove is
    a result, not a footnote.
    """

    dir: str
    transfers: int
    rows: int
    rows_seen: int
    backlog_rows: int
    failure: str | None = None
    rows_not_persisted: int = 0
    #: Of ``backlog_rows``, those in the writer's memtable (up to ``segment_rows`` by design, not
    #: late); the rest waited in its queue: the writer behind.
    buffered_rows: int = 0
    #: Compaction's backlog then: rows the merges its policy calls for would rewrite (with the
    #: merges those make due), and how many merges; a compactor that keeps up stays near one merge.
    merge_debt_rows: int = 0
    merge_debt_merges: int = 0
    #: The trove child's CPU (writer, compactor) over the whole server run, seconds.
    process_cpu_s: float = 0.0
    #: Memtables written whole by then (``flushes``, ``rows_flushed``), the flusher's CPU for them,
    #: the first apart (it pays one-time set-up too): what a window's trove is charged per row
    #: (``loadgen.plan.inputs.trove_window_ns``, issue 21). The final probe waits for a flush running
    #: at the drain's end (``loadgen.harness.measured``).
    flushes: int = 0
    rows_flushed: int = 0
    flush_cpu_ns: int = 0
    first_flush_rows: int = 0
    first_flush_cpu_ns: int = 0

    @classmethod
    def of(cls, stats: dict[str, Any]) -> TroveOutcome | None:
        t = stats.get("trove")
        if not t:
            return None
        return cls(
            dir=str(t.get("dir", "")),
            transfers=int(stats.get("ledger", {}).get("transfers", 0)),
            rows=int(t.get("rows", 0)),
            rows_seen=int(t.get("rows_seen", 0)),
            backlog_rows=int(t.get("backlog_rows", 0)),
            failure=t.get("failure") or None,
            rows_not_persisted=int(t.get("rows_not_persisted", 0)),
            buffered_rows=int(t.get("buffered_rows", 0)),
            merge_debt_rows=int(t.get("merge_debt_rows", 0)),
            merge_debt_merges=int(t.get("merge_debt_merges", 0)),
            process_cpu_s=int(t.get("process_cpu_ns", 0)) / 1e9,
            **{k: int(t.get(k, 0)) for k in FLUSH_FIGURES},
        )


class AuditOutcome(msgspec.Struct, frozen=True):
    ok: bool
    total_fen: int
    expected_fen: int
    negative_accounts: int


class Summary(msgspec.Struct, frozen=True):
    """The headline numbers (what ``--json`` prints)."""

    profile: str
    offered_tps: float  # the configured rate
    scheduled_tps: float  # payments actually scheduled in the measured window / its length (Poisson varies)
    achieved_tps: float  # settled / window length (``loadgen.results.verdict``)
    goodput_tps: float  # of which OK
    achieved_ratio: float  # settled / scheduled, never above 1
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    p9999_ms: float
    max_ms: float
    audit_ok: bool | None
    generator_kept_schedule: bool
    unanswered: int
    unsent: int
    seconds: float
    accounts: int
    echo: bool
    settled: int  # measured transfers answered with a ledger result (``loadgen.results.verdict``)
    shed: int  # measured transfers answered overloaded or hook_error
    verdict: str  # the verdict line, "verdict: sustained" etc., against ``RunResult.settings.targets``
    exit_status: int  # the exit status of run/load for that verdict


class RunSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the run was configured with, resolved: enough to run it again from the file alone.

    ``hooks`` are the profile's hooks in order and ``hook_params`` each one's parameters as the
    scenario resolved them (defaults filled in); ``workload`` what the gateways generated from
    (``LoadConfig.workload``: the scenario's ``[workload]`` and the blacklist and caps the planted
    behaviours follow);
    ``targets`` what the verdict judged against; ``server_args`` the ``serve`` arguments when
    cbdc-bench started the server (empty for ``load``: the server was started by someone else,
    and ``source`` says where the settings come from).
    """

    profile: str
    hooks: list[str]
    hook_params: dict[str, Any]
    workload: dict[str, Any]
    targets: CompareSettings
    scenario_sha256: str  # of the scenario file's bytes (the shipped one when no file was given)
    server_args: list[str] = []
    source: str = ""


class Traffic(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes per payment: on the wire both ways (framing included, whole run) and into the journal.

    ``wire_sent_per_payment`` = bytes the generator sent / transfers sent; ``wire_received_per_payment``
    = bytes the server sent back / transfers answered; ``journal_per_payment`` = journal bytes
    written over the measured window / transfers the ledger applied in it (None: no journal).
    """

    wire_sent_bytes: int
    wire_received_bytes: int
    wire_sent_per_payment: float
    wire_received_per_payment: float
    journal_per_payment: float | None = None
    #: Trove bytes on disk per payment (one row each) after the drain, compacted or not yet (issue 17);
    #: None: no trove, or nothing durable in it yet.
    trove_per_payment: float | None = None


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    schema_version: int = SCHEMA_VERSION
    kind: str  # "run" (server started by cbdc-bench) or "load" (against a running server)
    created_utc: str
    scenario: str | None  # as given (a relative path stays relative); settings hold what it resolved to
    summary: Summary
    load: LoadConfig
    environment: Environment
    latency: Percentiles
    latency_histogram: EncodedHistogram
    series: Series
    codes: dict[str, int]  # measured transfers by result code
    counts: Counts
    generator: Generator
    server: Server
    audit: AuditOutcome | None
    failures: list[str]
    # Version 2 (None only in files upgraded from version 1, which did not record them).
    settings: RunSettings | None = None
    traffic: Traffic | None = None
    #: Per-account state figures (``loadgen.results.state``); None: not measured in this run.
    state: StateFootprint | None = None
    #: sha256 of the risk model the server ran (profiles with risk_model; "" otherwise). Optional.
    risk_model_sha256: str = ""
    #: CPU ns per applied payment by tier (``loadgen.harness.cpu_split``: the plan's tiers, e.g.
    #: framing_io, ledger, each hook, features, inference, trove, generator). Empty: not measured.
    cpu_ns_per_payment: dict[str, float] = {}
    #: Latency of each measured minute (``loadgen.results.drift``), stored for runs measured at least
    #: ``DRIFT_FROM_S``; None: a shorter run, or a file from before issue 20 (recomputed from ``series``).
    drift: list[MinuteLatency] | None = None
    #: The whole machine's CPU over the measured window (``loadgen.results.machine_cpu``); None: not
    #: measured (a file from before issue 21, or a platform without the counters).
    machine_cpu: MachineCpu | None = None


class _Version(msgspec.Struct):
    schema_version: int


def _build_figures(stats: dict[str, Any]) -> dict[str, Any]:
    """``Server``'s build fields from a StatsReply's ``build`` entry (empty for older servers)."""
    build = stats.get("build") or {}
    return {k: build.get(k) for k in ("build_seconds", "peak_rss_bytes", "population_version")}


def build_result(
    *,
    kind: str,
    m: Measurement,
    config: LoadConfig,
    environment: Environment,
    welcome: dict[str, Any],
    failures: list[str],
    scenario: str | None = None,
    server_pid: int | None = None,
    server_cpu_s: float | None = None,
    stats_start: dict[str, Any] | None = None,
    stats_end: dict[str, Any] | None = None,
    stats_final: dict[str, Any] | None = None,
    hooks: dict[str, Any] | None = None,
    audit: AuditOutcome | None = None,
    echo: bool = False,
    targets: CompareSettings | None = None,
    external: bool = False,
    server_args: tuple[str, ...] = (),
    machine: MachineCpu | None = None,
) -> RunResult:
    """Assemble a result from a merged measurement and what is known about the server.

    ``targets`` (the scenario's ``[compare]`` settings, defaults if None) are what the verdict
    judges against; ``server_args`` the ``serve`` arguments, when cbdc-bench started the server.
    """
    targets = targets or CompareSettings()
    latency = Percentiles.of(m.latency)
    lag = Percentiles.of(m.send_lag)
    kept = m.unsent == 0 and lag.p99_ms * 1e6 <= m.late_ns
    codes = m.code_counts()
    figures = Figures.of_codes(
        codes,
        scheduled=m.scheduled_measured,
        unanswered=m.unanswered,
        unsent=m.unsent,
        p99_ms=latency.p99_ms,
        generator_kept_schedule=kept,
        send_lag_p99_ms=lag.p99_ms,
        failures=tuple(failures),
        audit_ok=None if audit is None else audit.ok,
        protocol_errors=m.protocol_errors,
        **_steal(machine),
    )
    verdict = judge(figures, targets)
    per_second = [h.percentiles((50.0, 99.0, 100.0)) if h is not None else None for h in m.per_second]
    series = Series(
        sent=m.sent.tolist(),
        completed=m.completed.tolist(),
        ok=m.ok.tolist(),
        p50_ms=[p[50.0] / 1e6 if p else 0.0 for p in per_second],
        p99_ms=[p[99.0] / 1e6 if p else 0.0 for p in per_second],
        max_ms=[p[100.0] / 1e6 if p else 0.0 for p in per_second],
        max_send_lag_ms=(m.max_lag_ns / 1e6).tolist(),
        histograms=[h.encode() if h is not None else None for h in m.per_second],
    )
    trove = TroveOutcome.of(stats_final or stats_end or {})
    if trove is not None and trove.failure:
        failures = [
            *failures,
            f"the trove stopped ingesting ({trove.failure}); {trove.rows_not_persisted} rows not persisted",
        ]
    profile = str(welcome.get("profile", "unknown"))
    durability = Durability.of(stats_start or {}, stats_end or {}, config.seconds)
    tier_cpu_s, tier_workers = measured_tiers(stats_start or {}, stats_end or {})
    summary = Summary(
        profile=profile,
        offered_tps=config.rate_tps,
        scheduled_tps=m.scheduled_measured / config.seconds,
        achieved_tps=figures.settled / config.seconds,
        goodput_tps=m.window_ok / config.seconds,
        achieved_ratio=figures.achieved_ratio,
        p50_ms=latency.p50_ms,
        p90_ms=latency.p90_ms,
        p99_ms=latency.p99_ms,
        p999_ms=latency.p999_ms,
        p9999_ms=latency.p9999_ms,
        max_ms=latency.max_ms,
        audit_ok=None if audit is None else audit.ok,
        generator_kept_schedule=kept,
        unanswered=m.unanswered,
        unsent=m.unsent,
        seconds=config.seconds,
        accounts=int(welcome.get("accounts", 0)),
        echo=echo,
        settled=figures.settled,
        shed=figures.shed,
        verdict=verdict.line,
        exit_status=verdict.exit_status,
    )
    return RunResult(
        kind=kind,
        created_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        scenario=scenario,
        summary=summary,
        load=config,
        environment=environment,
        latency=latency,
        latency_histogram=EncodedHistogram.of(m.latency),
        series=series,
        codes=codes,
        counts=Counts(
            scheduled=m.scheduled,
            scheduled_measured=m.scheduled_measured,
            sent=m.sent_total,
            results=m.results_total,
            unanswered=m.unanswered,
            unsent=m.unsent,
            late=m.late,
            error_transfers=m.error_transfers,
            protocol_errors=m.protocol_errors,
            frames_sent=m.frames_sent,
            frame_errors=dict(m.errors),
        ),
        generator=Generator(
            processes=config.processes,
            operators=config.operators,
            tick_us=config.tick_ns // 1000,
            cpu_s=m.generator_cpu_s,
            send_lag=lag,
            send_lag_histogram=EncodedHistogram.of(m.send_lag),
            kept_schedule=kept,
        ),
        server=Server(
            pid=server_pid,
            welcome=welcome,
            cpu_s=server_cpu_s,
            stats_start=stats_start or {},
            stats_end=stats_end or {},
            hooks=hooks or {},
            durability=durability,
            trove=trove,
            tier_cpu_s=tier_cpu_s,
            tier_workers=tier_workers,
            external=external,
            **_build_figures(stats_final or stats_end or {}),
        ),
        audit=audit,
        failures=failures,
        settings=resolved_settings(
            profile,
            scenario,
            targets,
            workload=config.workload,
            server_args=server_args,
            started=kind != "load" and not echo,
        ),
        traffic=Traffic(
            wire_sent_bytes=m.bytes_sent,
            wire_received_bytes=m.bytes_received,
            wire_sent_per_payment=m.bytes_sent / m.sent_total if m.sent_total else 0.0,
            wire_received_per_payment=m.bytes_received / m.results_total if m.results_total else 0.0,
            journal_per_payment=journal_bytes_per_payment(stats_start or {}, stats_end or {}),
            trove_per_payment=trove_bytes_per_row(stats_final or stats_end or {}),
        ),
        state=snapshot_state(stats_final or stats_end or {}, int(welcome.get("accounts", 0))),
        risk_model_sha256=str(((stats_end or {}).get("risk_model") or {}).get("model_sha256", "")),
        drift=stored_drift(m.per_second, config.warmup, config.seconds),
        machine_cpu=machine,
    )


def journal_bytes_per_payment(stats_start: dict[str, Any], stats_end: dict[str, Any]) -> float | None:
    """Journal bytes written over the window / transfers the ledger applied in it (None: no journal)."""
    j0, j1 = stats_start.get("journal") or {}, stats_end.get("journal") or {}
    if not j1:
        return None
    written = float(j1.get("bytes_written", 0)) - float(j0.get("bytes_written", 0))
    transfers = _ledger_transfers(stats_end) - _ledger_transfers(stats_start)
    return written / transfers if transfers > 0 else None


def snapshot_state(stats: dict[str, Any], accounts: int) -> StateFootprint | None:
    """The newest snapshot's size per account and write time (issue 15's stats); None: no snapshot taken."""
    snaps = stats.get("snapshots") or {}
    size = snaps.get("last_bytes")
    if not isinstance(size, int | float) or size <= 0 or accounts <= 0:
        return None
    seconds = snaps.get("last_write_s")
    return StateFootprint(
        snapshot_bytes_per_account=float(size) / accounts,
        snapshot_seconds=float(seconds) if isinstance(seconds, int | float) else None,
        snapshot_accounts=accounts,
    )


def trove_bytes_per_row(stats: dict[str, Any]) -> float | None:
    """The trove's bytes on disk per durable row after the drain (compacted runs and ingest segments
    together, as they are then); None without a trove or before its first durable row."""
    trove = stats.get("trove") or {}
    rows, size = trove.get("rows"), trove.get("bytes_on_disk")
    if not isinstance(rows, int | float) or not isinstance(size, int | float) or rows <= 0:
        return None
    return float(size) / float(rows)


def _ledger_transfers(stats: dict[str, Any]) -> float:
    ledger = stats.get("ledger")
    value = ledger.get("transfers") if isinstance(ledger, dict) else stats.get("transfers")
    return float(value) if isinstance(value, int | float) else 0.0


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (lists, not tuples), so a result equals its file."""
    return msgspec.json.decode(msgspec.json.encode(value))


def resolved_settings(
    profile: str,
    scenario: str | None,
    targets: CompareSettings,
    *,
    workload: ScenarioWorkload | None = None,
    server_args: tuple[str, ...] = (),
    started: bool = True,
) -> RunSettings:
    """The profile's hooks with their resolved parameters, the workload and targets, from ``scenario``.

    For ``load`` (``started`` False) the scenario is the one ``load`` was given; the server may
    have been started with another, which ``source`` says. A profile the scenario does not
    define (a server started with a user's scenario) is recorded with no hooks, and said so.
    ``workload``: what the gateways generated from (None: the scenario's, as ``engine`` takes it).
    """
    path = Path(scenario) if scenario else None
    data = path.read_bytes() if path is not None and path.is_file() else b""
    source = (
        "the scenario cbdc-bench started the server with"
        if started
        else ("the scenario given to load; the server was started separately and may use another")
    )
    try:
        parsed = load_scenario(scenario)
        ran = _plain(workload or ScenarioWorkload.of(parsed))
        hooks = list(profile_hooks(profile, parsed))
    except ValueError as exc:
        return RunSettings(
            profile=profile, hooks=[], hook_params={}, workload=_plain(workload) if workload else {}, targets=targets,
            scenario_sha256=hashlib.sha256(data).hexdigest() if data else "",
            server_args=list(server_args), source=f"{source}; not resolved: {exc}",
        )  # fmt: skip
    data = data or default_scenario_text()
    return RunSettings(
        profile=profile,
        hooks=hooks,
        hook_params={spec: _plain(parsed.hooks.params(spec)) for spec in hooks},
        workload=ran,
        targets=targets,
        scenario_sha256=hashlib.sha256(data).hexdigest(),
        server_args=list(server_args),
        source=source,
    )


def figures_of(result: RunResult) -> Figures:
    """The judged figures of a result (also of a file written before they were stored)."""
    s, c = result.summary, result.counts
    return Figures.of_codes(
        result.codes,
        scheduled=c.scheduled_measured,
        unanswered=c.unanswered,
        unsent=c.unsent,
        p99_ms=result.latency.p99_ms,
        generator_kept_schedule=result.generator.kept_schedule,
        send_lag_p99_ms=result.generator.send_lag.p99_ms,
        failures=tuple(result.failures),
        audit_ok=s.audit_ok,
        protocol_errors=c.protocol_errors,
        **_steal(result.machine_cpu),
    )


def _steal(machine: MachineCpu | None) -> dict[str, Any]:
    """``Figures``' steal fields from a run's machine CPU (none recorded: no steal known)."""
    return {} if machine is None else {"stolen_cores": machine.stolen_cores, "cores": machine.cores}


def verdict_of(result: RunResult, targets: CompareSettings | None = None) -> Verdict:
    """``judge`` on a result's figures: what ``run``/``load`` printed, and what compare and report use."""
    return judge(figures_of(result), targets)


# ---- files -----------------------------------------------------------------------------------


def dump(result: RunResult) -> bytes:
    return msgspec.json.format(msgspec.json.encode(result), indent=1)


def save(result: RunResult, directory: str | os.PathLike[str] = "results") -> Path:
    """Write ``result`` as a new file in ``directory`` (created if needed); its path."""
    s = result.summary
    return write_new(directory, f"{result.kind}-{s.profile}-{int(s.offered_tps)}tps", result.created_utc, dump(result))


def write_new(directory: str | os.PathLike[str], name: str, created_utc: str, data: bytes) -> Path:
    """Write ``data`` atomically as ``<stamp>-<name>.json`` (``-2``, ``-3``... if taken) in ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{created_utc.replace(':', '').replace('-', '')}-{name}"
    path = folder / f"{base}.json"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{base}-{n}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def loads(data: bytes | str, *, source: str = "result") -> RunResult:
    """Parse a result document; an older format is upgraded (``loadgen.results.upgrade``), a newer refused."""
    try:
        version = msgspec.json.decode(data, type=_Version).schema_version
    except msgspec.ValidationError as exc:
        raise ResultVersionError(f"{source} is not a cbdc-bench result file (no schema_version: {exc})") from exc
    if version == SCHEMA_VERSION:
        return msgspec.json.decode(data, type=RunResult)
    if not 1 <= version < SCHEMA_VERSION:
        require_version(version, SCHEMA_VERSION, f"{source} has", "or re-run the benchmark")
    try:
        return msgspec.convert(upgrade(msgspec.json.decode(data), SCHEMA_VERSION), RunResult)
    except (msgspec.ValidationError, KeyError, TypeError) as exc:
        raise ResultVersionError(f"{source}: a version {version} result file that cannot be upgraded: {exc}") from exc


def require_version(version: int, expected: int, what: str, otherwise: str = "") -> None:
    """Refuse a file whose format version is not ``expected``, saying which version it is.

    ``what`` starts the message ("results/x.json has"); ``otherwise`` adds a remedy.
    """
    if version != expected:
        newer = "a newer" if version > expected else "an older"
        raise ResultVersionError(
            f"{what} schema_version {version}, {newer} format than this cbdc-bench reads (version {expected}); "
            f"use the cbdc-bench version that wrote it{', ' + otherwise if otherwise else ''}"
        )


def load(path: str | os.PathLike[str]) -> RunResult:
    """Read one result file."""
    return loads(Path(path).read_bytes(), source=str(path))


def json_schema() -> dict[str, Any]:
    """JSON Schema of the current result format, generated from the Structs."""
    return msgspec.json.schema(RunResult)
