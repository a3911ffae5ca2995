"""The capacity plan's inputs, read from result files only (never built-in constants).

``cbdc-bench plan`` reads every JSON file under ``--results DIR``: run/load/compare results
(``loadgen.results.run``, format version 2; older ones upgrade on reading), comparison summaries
(``compare.json``: the measured maxima) and engine results (``engine --out DIR``: the state each
piece keeps per account). Each run is reduced to a ``RunCost``: CPU per second of its measured
window by *tier*, with the batches and payments per second that produced it, so ``model`` can fit
a per-batch plus per-payment cost. The tiers, from the figures a result file holds:

* ``framing_io``: the server process's CPU (``server.cpu_s``) not accounted to the ledger or a
  hook: decoding frames, the event loop, writing replies;
* ``ledger``: time inside the engine (``engine_s``, the journal append included, fsync waits
  not) minus the hooks' inline time;
* one tier per hook, by name: its ``authorize`` + ``observe`` + ``begin`` time on the
  sequencer's thread (``server.hooks``);
* ``features`` and ``inference``: the ``risk_model`` hook's own split (``stats.risk_model``,
  issue 18), taken out of that hook's time;
* ``trove``: the surveillance_log hook's ``background_ns`` (the trove writer and compactor, in
  a child process since issue 17), its flushes charged per row taken rather than as they fell in
  the window and its merges left to the trove cost file (``trove_window_ns``), or
  ``server.tier_cpu_s["trove"]`` when a run records it;
  other hooks' background CPU is ``<hook>_background``;
* ``validators``: the local validator processes' CPU: ``server.tier_cpu_s["validators"]``, which
  every run with local validators records (``loadgen.results.tiers``, issue 19), or the same rule
  on ``stats.validators.cpu_s`` in older files; an inline tier (0 workers) verifies on the
  server's thread, inside ``framing_io``;
* ``kernel`` ("kernel and other"): the machine's CPU that no process's counters hold
  (``machine_cpu.kernel_s``: softirq and interrupt work for the loopback network and the disk,
  processes that exited in the window), when the run recorded the
  machine's CPU (issue 21; absent in older files). It scales out (the kernel runs on every core).

``framing_io``, ``ledger``, the hooks and ``features`` run on the sequencer's one core; the rest
scale out. A hook's background CPU on threads of the server process (the risk model's inference,
a trove without its child) is taken out of the process's CPU before ``framing_io`` is what is
left; the trove's child (its stats name its ``process_pid``, issue 17) is outside the process.
"""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine.profiles import CompareSettings
from loadgen.generator.gateway import LoadConfig
from loadgen.harness.engine_run import ENGINE_KIND, EngineResult
from loadgen.plan.trove_cost import TROVE_COST_KIND, TroveCost, loads_trove_cost
from loadgen.results.compare import SUMMARY_KIND, CompareSummary, loads_summary, peek_kind
from loadgen.results.run import ResultVersionError, RunResult, figures_of, loads, resolved_settings, verdict_of
from loadgen.results.tiers import measured_tiers
from loadgen.results.verdict import Kind, steal_spoiled

#: Tiers that run on the sequencer's one core (besides one tier per hook, which also does); every
#: other tier (validators, trove, inference, a hook's background) scales out.
SEQUENCER_TIERS = ("framing_io", "ledger", "features")
#: Tiers that are the ledger's own work (everything else is policy or surveillance).
CORE_TIERS = ("validators", "framing_io", "ledger", "kernel")
#: The generator's CPU: measured, used to predict this machine's maximum, never planned.
GENERATOR = "generator"
#: The machine's CPU no process was charged with (``loadgen.results.machine_cpu.MachineCpu.kernel_s``).
KERNEL = "kernel"
#: The folder (anywhere under ``--results``) of attempts set aside because the host's steal spoiled
#: their window (``benchmarks/plan_first_cut.py``, ``compare --steal-retries``): never read as inputs.
SPOILED = "spoiled"
#: The folder beside a copied comparison summary (``maxima/NAME.json``) holding its search trials'
#: result files (``maxima/search-trials/NAME/runs/...``, ``benchmarks/plan_first_cut.py``): read
#: only to say what stopped each search (``search_stop``), never fitted.
TRIALS = "search-trials"
#: A generator process at or above this share of its core ran flat out (``search_stop``).
GENERATOR_FLAT_OUT = 0.9
#: Cores idle over a trial's window above which the machine had CPU to spare (``search_stop``).
IDLE_TO_SPARE_CORES = 0.25
#: A hook whose background CPU is a tier of its own, by name.
BACKGROUND_TIER = {"surveillance_log": "trove"}
#: A hook that reports parts of its time as tiers (``stats[hook][part + "_ns"]``, cumulative): the
#: last part also holds the hook's background CPU (the risk model's inference thread, issue 18).
HOOK_PARTS = {"risk_model": ("features", "inference")}


class Arrivals(msgspec.Struct, frozen=True):
    """How payments reached the server in a run, so the batch model can say how they arrive at any rate.

    The generator's gateways each send, every tick, one Submit of what fell due (at most
    ``load.batch_max`` transfers); the tick follows the rate by the generator's own rule
    (``LoadConfig.tick_ns``: about 1,000 transfers a frame, 1-5 ms). The server cuts a batch of whole
    Submits, at most ``max_batch`` transfers (its ``Welcome.max_batch``).
    """

    load: LoadConfig
    max_batch: int
    #: The auto tick's longest tick (ns) the run was made under, where it is not today's rule's
    #: (``auto_tick_max_ns``); 0: today's. Signed runs made before issue 19's 3 ms cap ticked at up
    #: to 5 ms: their per-tick costs are fitted, and predicted, at the ticks they had.
    auto_tick_max_ns: int = 0

    def ticks_per_s(self, rate_tps: float) -> float:
        load = msgspec.structs.replace(self.load, rate_tps=rate_tps)
        if self.auto_tick_max_ns and not load.tick_us:
            return 1e9 / load.auto_tick_ns(self.auto_tick_max_ns / 1e9)
        return 1e9 / load.tick_ns

    def submit_transfers(self, rate_tps: float) -> float:
        """Mean transfers in one gateway's Submit at ``rate_tps`` (one per gateway per tick)."""
        frame_max = min(self.load.batch_max, self.max_batch)
        return max(min(rate_tps / (self.ticks_per_s(rate_tps) * self.load.operators), frame_max), 1.0)

    def full_batch(self, rate_tps: float) -> float:
        """The mean batch when the queue always holds more than ``max_batch``: whole Submits up to it.

        Submits vary in size (a gateway sends what fell due, more after a late tick), so on average
        half a Submit of room is left: ``max_batch - submit / 2`` (at least one Submit).
        """
        submit = self.submit_transfers(rate_tps)
        return max(self.max_batch - submit / 2, submit)


class RunCost(msgspec.Struct, frozen=True, kw_only=True):
    """One measured run reduced to what the plan needs: CPU by tier over its measured window."""

    file: str
    profile: str
    #: What the plan groups runs by: the profile, with ``@N validators`` when the server verified
    #: signatures with ``--validators N`` (``signed`` at 1 and at 2 validators are two machines).
    label: str
    offered_tps: float
    transfers_per_s: float  # payments the ledger applied in the window / its length
    batches_per_s: float
    arrivals: Arrivals
    tier_ns_per_s: dict[str, float]  # CPU ns per second of window, by tier
    hooks: list[str]  # the profile's hooks (each one a tier on the sequencer's core)
    workers: dict[str, int]  # scale-out tiers' worker counts (``server.tier_workers``); absent: 1
    wire_bytes_per_payment: float | None
    journal_bytes_per_payment: float | None
    trove_bytes_per_payment: float | None
    keeps_trove: bool
    signed: bool  # the server checked signatures (a validators tier is owed)
    cpu_model: str
    cores: int
    calibration_tps: float | None
    sustained: bool
    verdict: str  # the run's verdict label ("sustained", "not sustained", ...)
    p99_ms: float
    #: The server kept up with what it was sent (``server_kept_up``): only such runs are fitted.
    server_kept_up: bool = True
    #: Cores the machine left idle (idle + iowait) over the window (``machine_cpu``; None: not recorded).
    idle_cores: float | None = None
    #: Cores the hypervisor took from the machine over the window (steal; ``machine_cpu``; None: not
    #: recorded): no tier's cost, but a run with much of it ran on fewer cores than it reports.
    stolen_cores: float | None = None
    #: ns per second a one-core tier's process was runnable but waiting for a core (the trove child's
    #: ``process_runqueue_wait_ns``: at nice 10 it gets a core last): not CPU, but time of its one core.
    waits_ns_per_s: dict[str, float] = {}
    #: ns per second the sequencer waited for a one-core tier to take its work (the trove's ring
    #: full: ``append_wait_ns``): that tier ran flat out in this window.
    backpressure_ns_per_s: dict[str, float] = {}
    #: Payments per second a one-core tier completed in a window it ran flat out (back-pressure
    #: above): its measured capacity on this machine (the trove: rows made durable, which move a
    #: segment at a time, so a short window is coarse).
    flat_out_tps: dict[str, float] = {}
    #: Rows the trove received per payment the ledger applied in the window (``trove.rows_seen``;
    #: None: no trove stats): what turns the trove's cost per row into a cost per payment.
    trove_rows_per_payment: float | None = None


class MeasuredMax(msgspec.Struct, frozen=True):
    """A profile's maximum sustainable rate from a comparison's searches (median over repeats)."""

    profile: str  # as ``RunCost.label``: with ``@N validators`` when the comparison ran them
    median_tps: float
    low_tps: float
    high_tps: float
    repeats: int
    generator_limited: bool
    file: str
    cpu_model: str
    calibration_tps: float | None
    #: The most cores the host's steal took in any kept trial of the searches (None: not recorded).
    stolen_cores: float | None = None
    #: Kept trials whose steal still spoiled them (``steal_spoiled``: the retries ran out, the
    #: least-stolen attempt kept), and trials measured again because of steal (``RunRef.spoiled_attempts``).
    spoiled_trials: int = 0
    retried_trials: int = 0
    cores: int = 0
    #: Whether the generator's own CPU bounded the search (``search_stop``): its processes ran flat
    #: out with cores idle elsewhere in the trials above the maximum. None: the trials' result files
    #: were not found, and ``generator_limited`` (the searches' verdicts) stands in for it.
    generator_bound: bool | None = None
    #: What the trials above the maximum used (``search_stop``): server and generator CPU, idle cores.
    stop: str = ""

    @property
    def bounded_by_generator(self) -> bool:
        """The search measured the generator, not the server: no two-sided check of a prediction."""
        return self.generator_limited if self.generator_bound is None else self.generator_bound


class StateInput(msgspec.Struct, frozen=True):
    """Bytes per account of each piece of a profile's state, from one engine (or run) result."""

    profile: str
    bytes_per_account: dict[str, float]
    snapshot_bytes_per_account: float | None
    file: str


class Inputs(msgspec.Struct, frozen=True):
    """Everything the plan read, and the files it could not use (with why)."""

    runs: list[RunCost]
    maxima: list[MeasuredMax]
    states: list[StateInput]
    skipped: list[str]
    #: Result files under a ``spoiled`` folder (``SPOILED``): attempts set aside because the host's
    #: steal spoiled their window and the run was measured again. Counted, never fitted.
    spoiled: list[str] = []
    #: The trove's whole per-row life (``benchmarks/trove_merge_cost.py --out DIR``), with their files.
    trove_costs: list[tuple[str, TroveCost]] = []


def read_inputs(results: str | Path, *, state_from: Sequence[str | Path] = ()) -> Inputs:
    """Read every result file under ``results`` (recursively) into the plan's inputs.

    ``state_from``: folders whose files give only state figures (bytes per account, snapshot bytes
    per account: sizes, which the host's steal does not change), never CPU; a figure of
    ``results`` itself wins over theirs (``model._state_of`` takes a profile's last).
    """
    root = Path(results)
    if not root.exists():
        raise FileNotFoundError(f"--results {root}: no such directory (measure first: see 'cbdc-bench plan --help')")
    states: list[StateInput] = []
    for folder in state_from:
        if not Path(folder).exists():
            raise FileNotFoundError(f"--state-from {folder}: no such directory")
        states.extend(read_inputs(folder).states)
    runs: list[RunCost] = []
    maxima: list[MeasuredMax] = []
    skipped: list[str] = []
    trove_costs: list[tuple[str, TroveCost]] = []
    for path in _json_files(root):
        data = path.read_bytes()
        name = str(path)
        try:
            kind = peek_kind(data, source=name)
            if kind == SUMMARY_KIND:
                maxima.extend(measured_maxima(loads_summary(data, source=name), name))
            elif kind == ENGINE_KIND:
                states.append(engine_state(msgspec.json.decode(data, type=EngineResult), name))
            elif kind == TROVE_COST_KIND:
                trove_costs.append((name, loads_trove_cost(data, source=name)))
            else:
                result = loads(data, source=name)
                cost = run_cost(result, name)
                if cost is None:
                    skipped.append(f"{name}: no ledger figures (echo, or no server stats)")
                else:
                    runs.append(cost)
                if result.state is not None:
                    states.append(StateInput(
                        result.summary.profile, dict(result.state.bytes_per_account),
                        result.state.snapshot_bytes_per_account, name,
                    ))  # fmt: skip
        except (ResultVersionError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            skipped.append(f"{name}: {exc}")
    spoiled = [str(p) for p in sorted(root.rglob("*.json")) if SPOILED in p.relative_to(root).parts[:-1]]
    return Inputs(runs=runs, maxima=maxima, states=states, skipped=skipped, spoiled=spoiled, trove_costs=trove_costs)


def _json_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    yield from sorted(
        p
        for p in root.rglob("*.json")
        if p.name not in ("report.json", "plan.json") and not {SPOILED, TRIALS} & set(p.relative_to(root).parts[:-1])
    )


def auto_tick_max_ns(load: LoadConfig, ticked_us: int) -> int:
    """``Arrivals.auto_tick_max_ns`` of a signed run whose generator ticked every ``ticked_us`` (its
    result file's ``generator.tick_us``) under ``load``: 0 when that is what the auto tick gives
    today (or the tick was set, or the load is unsigned: its rule never changed), else the tick it
    had, which was then the cap: signed rates stay far below the ~1,000 transfers a frame of the
    auto rule, so a signed run ticked at the cap, 5 ms before issue 19's 3 ms."""
    if not load.signed or load.tick_us or ticked_us <= 0 or ticked_us == load.tick_ns // 1000:
        return 0
    return ticked_us * 1000


def run_cost(result: RunResult, file: str = "") -> RunCost | None:
    """``result`` reduced to CPU by tier per second of its window; None without ledger figures."""
    server = result.server
    a, b = server.stats_start, server.stats_end
    transfers = _delta(a, b, "ledger", "transfers")
    batches = _delta(a, b, "ledger", "batches")
    if result.summary.echo or server.cpu_s is None or transfers <= 0 or batches <= 0:
        return None
    window_s = result.load.seconds
    settings = result.settings or resolved_settings(result.summary.profile, result.scenario, CompareSettings())
    tiers = _tier_ns(result, settings.hooks, settings.hook_params)
    traffic = result.traffic
    calibration = result.environment.calibration
    validators = validators_spec(settings.server_args, _workers(server.stats_end) | dict(server.tier_workers))
    verdict = verdict_of(result, settings.targets)
    figures = figures_of(result)
    return RunCost(
        file=file,
        profile=result.summary.profile,
        label=result.summary.profile + (f"@{validators} validators" if validators else ""),
        offered_tps=result.summary.offered_tps,
        transfers_per_s=transfers / window_s,
        batches_per_s=batches / window_s,
        arrivals=Arrivals(
            result.load,
            int(_num(server.welcome.get("max_batch")) or result.load.batch_max),
            auto_tick_max_ns(result.load, result.generator.tick_us),
        ),
        tier_ns_per_s={k: v / window_s for k, v in tiers.items()},
        hooks=[_hook_name(h) for h in settings.hooks],
        workers=_workers(server.stats_end) | dict(server.tier_workers),
        wire_bytes_per_payment=(
            None if traffic is None else traffic.wire_sent_per_payment + traffic.wire_received_per_payment
        ),
        journal_bytes_per_payment=None if traffic is None else traffic.journal_per_payment,
        trove_bytes_per_payment=None if traffic is None else traffic.trove_per_payment,
        keeps_trove=server.trove is not None,
        signed="validators" in server.tier_cpu_s or bool(validators),
        cpu_model=result.environment.cpu_model,
        cores=result.environment.cores,
        calibration_tps=None if calibration is None else calibration.engine_tps,
        sustained=verdict.sustained,
        verdict=verdict.kind.label,
        p99_ms=result.summary.p99_ms,
        server_kept_up=server_kept_up(
            verdict.kind,
            settled=figures.settled,
            shed=figures.shed,
            scheduled=figures.scheduled,
            applied_tps=transfers / window_s,
            scheduled_tps=result.summary.scheduled_tps or result.summary.offered_tps,
            min_ratio=settings.targets.min_achieved_ratio,
        ),
        idle_cores=(
            None
            if result.machine_cpu is None or result.machine_cpu.seconds <= 0
            else (result.machine_cpu.idle_s + result.machine_cpu.iowait_s) / result.machine_cpu.seconds
        ),
        stolen_cores=None if result.machine_cpu is None else result.machine_cpu.stolen_cores,
        trove_rows_per_payment=(
            _delta(a, b, "trove", "rows_seen") / transfers if "rows_seen" in (b.get("trove") or {}) else None
        ),
        **_one_core_waits(a, b, window_s),
    )


def _one_core_waits(a: dict[str, Any], b: dict[str, Any], window_s: float) -> dict[str, dict[str, float]]:
    """The trove child's waits over the window: for a core (run queue), and the sequencer's for it.

    Why: the child is one process at nice 10 whose writer thread does the work; on the measured
    machine its one core holds its CPU and its waits for a core, and when its ring is full the
    sequencer waits for it (issue 21: ``surveillance``'s saturated runs left 0.46 of 2 cores idle
    while the sequencer waited here). Files from before issue 17's child have none of these.
    """
    trove = b.get("trove")
    if not isinstance(trove, dict) or "process_runqueue_wait_ns" not in trove:
        return {}
    per_s = {k: _delta(a, b, "trove", k) / window_s for k in ("process_runqueue_wait_ns", "append_wait_ns", "rows")}
    tier = BACKGROUND_TIER["surveillance_log"]
    blocked = per_s["append_wait_ns"]
    return {
        "waits_ns_per_s": {tier: per_s["process_runqueue_wait_ns"]},
        "backpressure_ns_per_s": {tier: blocked},
        "flat_out_tps": {tier: per_s["rows"]} if blocked > 0 else {},
    }


def server_kept_up(
    kind: Kind, *, settled: int, shed: int, scheduled: int, applied_tps: float, scheduled_tps: float, min_ratio: float
) -> bool:
    """Whether the server kept up with what it was sent, so the run's CPU is the cost of its rate.

    A sustained run did. A run that missed its targets with the generator on schedule (not
    sustained) did not: its CPU is that of a saturated server, whose batches and queue are not
    the ones the rate makes. A run where the generator fell behind may have missed only because
    of the generator (both share the machine): the server kept up if it shed nothing, settled at
    least ``min_ratio`` of what was scheduled, and its ledger applied at least ``min_ratio`` of
    the scheduled rate inside the window (no backlog growing while the window ran).
    """
    if kind is Kind.SUSTAINED:
        return True
    if kind is not Kind.GENERATOR_BEHIND or scheduled <= 0:
        return False
    return shed == 0 and settled >= min_ratio * scheduled and applied_tps >= min_ratio * scheduled_tps


def validators_spec(server_args: list[str], workers: dict[str, int]) -> str:
    """The validators a server ran with: ``tier_workers.validators``, else its ``--validators`` argument ("": none)."""
    if workers.get("validators"):
        return str(workers["validators"])
    for i, arg in enumerate(server_args[:-1]):
        if arg == "--validators":
            return server_args[i + 1]
    return next((a.split("=", 1)[1] for a in server_args if a.startswith("--validators=")), "")


def _workers(stats: dict[str, Any]) -> dict[str, int]:
    """Scale-out tiers' workers as the server's stats report them (the validators', issue 19)."""
    validators = stats.get("validators")
    n = int(_num(validators.get("workers"))) if isinstance(validators, dict) else 0
    return {"validators": n} if n > 0 else {}


def _hook_name(spec: str) -> str:
    """A hook's name as the server reports it (a user's ``module:attribute`` keeps its attribute)."""
    return spec.rsplit(":", 1)[-1]


def _tier_ns(result: RunResult, hooks: Sequence[str], hook_params: dict[str, Any]) -> dict[str, float]:
    """CPU ns over the measured window by tier (see the module docstring for each tier's source).

    The engine's and the hooks' times are wall-clock (``perf_counter``); the process's CPU is CPU.
    fsync waits (``server.durability.fsync_ms_per_s``) are taken out of the engine's time, and
    when the sequencer's wall-clock parts still add up to more than the process's CPU (a busy
    machine preempted the server inside them), they are scaled down to it and ``framing_io`` is
    what is left (zero then): the sequencer's total is always its measured CPU.
    """
    server = result.server
    a, b = server.stats_start, server.stats_end
    window_s = result.load.seconds
    fsync_ns = server.durability.fsync_ms_per_s * window_s * 1e6
    engine_ns = max((_num(b.get("engine_s")) - _num(a.get("engine_s"))) * 1e9 - fsync_ns, 0.0)
    sequencer: dict[str, float] = {}  # wall-clock parts on the sequencer's thread
    scale_out: dict[str, float] = {}
    inline = 0.0
    for spec in hooks:
        name = _hook_name(spec)
        cost = server.hooks.get(name) or {}
        own = sum(_num(cost.get(k)) for k in ("authorize_ns", "observe_ns", "begin_ns"))
        if not (hook_params.get(spec) or {}).get("deferred", False):
            inline += own
        else:
            inline += own - _num(cost.get("observe_ns"))
        background = _num(cost.get("background_ns"))
        parts = HOOK_PARTS.get(name, ())
        if parts and isinstance(b.get(name), dict):
            split = {p: _num(b[name].get(f"{p}_ns")) - _num((a.get(name) or {}).get(f"{p}_ns")) for p in parts}
            # The last part includes the background CPU, which is not sequencer-thread time.
            own -= sum(split.values()) - background
            for part, ns in split.items():
                (sequencer if part in SEQUENCER_TIERS else scale_out)[part] = ns
        elif background > 0:
            tier = BACKGROUND_TIER.get(name, f"{name}_background")
            if tier == "trove":
                final = None if server.trove is None else msgspec.structs.asdict(server.trove)
                background = trove_window_ns(a, b, background, final)
            scale_out[tier] = background
        sequencer[name] = max(own, 0.0)
    sequencer["ledger"] = max(engine_ns - inline, 0.0)
    cpu_ns = (server.cpu_s or 0.0) * 1e9
    # Background CPU of threads in the server process is in the process's CPU: taken out before
    # ``framing_io`` is what is left. Only the trove's child (its stats name its ``process_pid``,
    # issue 17) runs outside; the risk model's inference thread (issue 18) and a trove on threads
    # (``trove.process = false``, or a file from before issue 17) run inside.
    trove = b.get("trove")
    in_child = isinstance(trove, dict) and "process_pid" in trove
    in_process = sum(
        _num((server.hooks.get(_hook_name(spec)) or {}).get("background_ns"))
        for spec in hooks
        if not (in_child and _hook_name(spec) == "surveillance_log")
    )
    cpu_ns = max(cpu_ns - in_process, 0.0)
    walls = sum(sequencer.values())
    if walls > cpu_ns > 0:
        sequencer = {k: v * cpu_ns / walls for k, v in sequencer.items()}
    sequencer["framing_io"] = max(cpu_ns - sum(sequencer.values()), 0.0)
    tiers = sequencer | scale_out
    # Local validator processes' CPU (issue 19) from the stats, for files from before runs recorded
    # it in ``tier_cpu_s`` (one rule: ``loadgen.results.tiers``); an inline tier (0 workers) verifies
    # on the server's own thread, so its cost is in the process's CPU (``framing_io``).
    for tier, cpu_s in measured_tiers(a, b)[0].items():
        tiers[tier] = cpu_s * 1e9
    for tier, cpu_s in server.tier_cpu_s.items():
        tiers[tier] = cpu_s * 1e9  # measured outside the server process: replaces any estimate
    tiers[GENERATOR] = result.generator.cpu_s * 1e9
    machine = result.machine_cpu
    if machine is not None and machine.seconds > 0:
        # Per second of the machine's own window (a few ms off the load's), as ns over ``window_s``.
        tiers[KERNEL] = machine.kernel_s / machine.seconds * window_s * 1e9
    return tiers


def flush_ns_per_row(trove: dict[str, Any]) -> float | None:
    """The trove's flush CPU per row over the memtables it wrote whole by then (its flusher's CPU,
    ``engine.trove.store``): without the first flush (it also pays first-touch memory) once there
    are others. None: no flush finished, or a file from before the store counted them."""
    flushes, rows, cpu = (_num(trove.get(k)) for k in ("flushes", "rows_flushed", "flush_cpu_ns"))
    if flushes < 1 or rows <= 0:
        return None
    first_rows, first_cpu = _num(trove.get("first_flush_rows")), _num(trove.get("first_flush_cpu_ns"))
    if flushes >= 2 and rows > first_rows:
        return (cpu - first_cpu) / (rows - first_rows)
    return cpu / rows


def trove_window_ns(
    a: dict[str, Any], b: dict[str, Any], background_ns: float, final: dict[str, Any] | None = None
) -> float:
    """The trove child's CPU over a measured window, its flushes charged per row the window took.

    Why: the child flushes a memtable every ``segment_rows`` rows or ``flush_interval_s`` (10 s)
    and writes it over a second or more, so the flush CPU that falls inside a 7-10-s window
    depends on where the window starts and whether the write ended inside it: the same profile
    measured 544-2,042 ns a payment at 100k-574k/s (issue 21, quiet, ``test_bench_plan``). So the
    flusher's CPU inside the window (its thread's, a flush still running at the end included) is
    taken out and the rows the child took in it are charged the flush CPU per row of the memtables
    written whole by the run's end (``final``: the result file's trove after the drain, which waits
    for a flush then running) or else by the window's (``flush_ns_per_row``); the merges' CPU inside it is taken
    out too (the plan charges merges from the trove cost file:
    ``loadgen.plan.model.with_trove_life``, ``merged_trove_limit``). The rest (taking batches in,
    building rows) is continuous and stays as measured. Without a finished flush, or in a file from
    before these counters, the window's CPU stands as measured.
    """
    ta, tb = a.get("trove"), b.get("trove")
    if not isinstance(tb, dict) or not isinstance(ta, dict) or "rows_seen" not in tb:
        return background_ns
    # The flushes finished by the run's end (``final``: the result's trove after the drain, a flush
    # then running waited for) or else by the window's end.
    per_row = next((v for t in (final, tb) if t is not None and (v := flush_ns_per_row(t)) is not None), None)
    if per_row is None:
        return background_ns
    # The flusher's and compactor's threads' CPU clocks hold a flush or merge still running at the
    # window's end; the counters, added as each ends, do not (older files have only those).
    live = "flusher_thread_cpu_ns" in tb and "flusher_thread_cpu_ns" in ta
    keys = ("flusher_thread_cpu_ns", "compactor_thread_cpu_ns") if live else ("flush_cpu_ns", "compaction_cpu_ns")
    flush, merges = (_delta(a, b, "trove", k) for k in keys)
    return max(background_ns - flush - merges, 0.0) + _delta(a, b, "trove", "rows_seen") * per_row


def _delta(a: dict[str, Any], b: dict[str, Any], section: str, key: str) -> float:
    sa, sb = a.get(section), b.get(section)
    if not isinstance(sb, dict):
        return 0.0
    return _num(sb.get(key)) - _num(sa.get(key) if isinstance(sa, dict) else 0)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


def measured_maxima(summary: CompareSummary, file: str = "") -> list[MeasuredMax]:
    """Each profile's searched maximum: the median over repeats, with the range of their intervals."""
    calibration = summary.environment.calibration
    validators = validators_spec(shlex.split(summary.command), {})
    out = []
    for profile in summary.profiles:
        searches = [s for s in summary.searches if s.profile == profile]
        if not searches:
            continue
        values = [s.result.max_sustainable_tps for s in searches]
        trials = [r for r in summary.runs if r.profile == profile and r.stage == "search"]
        steal = [r.stolen_cores for r in trials if r.stolen_cores is not None]
        cores = summary.environment.cores
        median = float(statistics.median(values))
        above = [
            r.file for r in sorted(trials, key=lambda r: r.offered_tps) if r.offered_tps > median and not r.sustained
        ]
        bound, stop = search_stop(_trial_files(file, above))
        out.append(
            MeasuredMax(
                profile=profile + (f"@{validators} validators" if validators else ""),
                median_tps=median,
                low_tps=min(min(values), min(s.interval_low_tps for s in searches)),
                high_tps=max(max(values), max(s.interval_high_tps for s in searches)),
                repeats=len(searches),
                generator_limited=any(s.generator_limited for s in searches),
                file=file,
                cpu_model=summary.environment.cpu_model,
                calibration_tps=None if calibration is None else calibration.engine_tps,
                stolen_cores=max(steal, default=None),
                spoiled_trials=sum(steal_spoiled(v, cores) for v in steal),
                retried_trials=sum(1 for r in trials if r.spoiled_attempts),
                cores=cores,
                generator_bound=bound,
                stop=stop,
            )
        )
    return out


def _trial_files(summary_file: str, trials: Sequence[str]) -> list[Path]:
    """The result files of ``trials`` (paths relative to the comparison's folder), beside the summary
    (``compare --out DIR``) or in its copy's ``TRIALS`` folder (``maxima/search-trials/NAME/``)."""
    if not summary_file:
        return []
    summary = Path(summary_file)
    found = []
    for trial in trials:
        for folder in (summary.parent, summary.parent / TRIALS / summary.stem):
            if (folder / trial).is_file():
                found.append(folder / trial)
                break
    return found


def search_stop(trial_files: Sequence[Path]) -> tuple[bool | None, str]:
    """Whether the generator's own CPU stopped a search, from the failed trials above its maximum
    (lowest first): (generator-bound, what the trials used); (None, "") without trial files.

    Why: a search stops "where the generator fell behind" whenever the generator's sends lag, and
    on a 2-core machine they lag once the machine is out of CPU, the server included (a saturated
    server stops reading). The prediction already puts the generator's CPU on the same cores, so
    only a generator whose processes ran flat out (``GENERATOR_FLAT_OUT`` of their cores) while
    cores stood idle elsewhere (``IDLE_TO_SPARE_CORES``) bounds the search below the server's
    maximum; the lowest failed trial (the one that stopped the bisection) decides.
    """
    used = []
    for path in trial_files:
        result = loads(path.read_bytes(), source=str(path))
        window_s = result.load.seconds
        machine = result.machine_cpu
        if window_s <= 0 or machine is None or machine.seconds <= 0:
            continue
        generator = result.generator.cpu_s / window_s / max(result.load.processes, 1)
        idle = (machine.idle_s + machine.iowait_s) / machine.seconds
        used.append((generator, idle, (result.server.cpu_s or 0.0) / window_s, result.summary.offered_tps))
    if not used:
        return None, ""
    generator, idle, _, _ = used[0]
    bound = generator >= GENERATOR_FLAT_OUT and idle >= IDLE_TO_SPARE_CORES

    def span(values: list[float]) -> str:
        return f"{min(values):.2f}" if min(values) == max(values) else f"{min(values):.2f}-{max(values):.2f}"

    stop = (
        f"{len(used)} failed trial{'s' if len(used) > 1 else ''} above it ({used[0][3]:,.0f}/s first): server process "
        f"{span([u[2] for u in used])} cores, generator {span([u[0] for u in used])} of its core per process, "
        f"{span([u[1] for u in used])} cores idle"
    )
    return bound, stop


def engine_state(result: EngineResult, file: str = "") -> StateInput:
    """The state pieces of an engine result (an older one without them: ledger + hooks as a whole)."""
    if result.state is not None and result.state.bytes_per_account:
        pieces = dict(result.state.bytes_per_account)
        snapshot = result.state.snapshot_bytes_per_account
    else:
        hooks = result.bytes_per_account - result.ledger_bytes_per_account
        pieces = {"ledger": result.ledger_bytes_per_account} | ({"hooks": hooks} if hooks > 0 else {})
        snapshot = None
    return StateInput(result.profile, pieces, snapshot, file)
