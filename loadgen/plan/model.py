"""The capacity plan's arithmetic: pure functions from measured inputs to cores, memory, disk, machines.

Nothing here reads a file or knows a constant about any machine: every figure comes from
``loadgen.plan.inputs`` (result files), and every missing figure becomes a ``Missing`` naming the
command that measures it.

**CPU.** A tier's CPU per second is ``per_batch_ns * batches/s + per_payment_ns * payments/s``
(``fit_tier``, least squares over runs at two or more rates; the generator's fixed cost is per
tick, the kernel's CPU per payment only, and the event loops get a cost per second from three
rates): batching amortises per-batch work, so CPU per payment falls as the rate rises. The
batches per second at a rate come from how the server
batches (``BatchModel``: one batch per generator tick while the sequencer is idle; what arrived
while the previous batch ran once it is busy, so batches grow with the rate; at most
``max_batch``), not from the measured sizes held beyond the measured rates: held, they overstated
the per-batch cost above the range (a plan from 50k and 150k/s runs put ``full``'s maximum on a
2-core machine at 101,620/s, while it sustained 300k/s). On the machine the runs were measured
on, the other tiers (generator, trove, kernel) take part of the sequencer's core and its batches
grow sooner (``on_machine``): that is how the maximum rate there is predicted. A tier's band is the fitted value times
the lowest and highest ratio of measured to fitted CPU over its runs (the run-to-run spread).
Tiers on the sequencer's core cannot use a second core; the others scale linearly in cores up to
the workers they were measured with (``RunCost.workers``), and beyond that the plan says it extrapolates.

**Memory.** accounts x bytes per account of every piece of state the profile keeps (the ledger
and each hook); it all lives with the sequencer, whose state cannot be partitioned, so it must fit
one machine. **Disk.** payments/day x (journal + trove bytes per payment), for the retention, plus
the snapshots kept x accounts x snapshot bytes per account. **Replicas** each hold the sequencer's
state, journal and snapshots.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence

import msgspec
import numpy as np
import scipy.optimize

from loadgen.plan.inputs import (
    CORE_TIERS,
    GENERATOR,
    KERNEL,
    SEQUENCER_TIERS,
    Arrivals,
    Inputs,
    MeasuredMax,
    RunCost,
    StateInput,
)
from loadgen.plan.trove_cost import TroveCost

GIB = float(1 << 30)
SECONDS_PER_DAY = 86_400.0
#: A run whose sequencer tiers used at most this much of the share of a core the other tiers left
#: them (``run_share``) stands for the idle batch regime.
IDLE_SEQUENCER_SHARE = 0.75
#: Tiers whose fixed cost is per generator tick (each gateway builds and sends one Submit a tick),
#: not per server batch: fitted as per tick + per payment (``fit_tier``).
TICK_TIERS = (GENERATOR,)
#: Tiers fitted per payment only: the kernel's CPU for the network and the disk has no batch of its own.
PAYMENT_TIERS = (KERNEL,)
#: Tiers with a CPU cost per second whatever the rate (the server's and the generator's event loops, timers, the
#: journal's interval fsyncs: ~0.2 of a core on the quiet AMD box even at 100k/s), fitted when runs
#: at three or more rates separate it from the per-batch cost, which otherwise absorbs it (1 ms
#: "per batch" for ``baseline`` there, so the busy regime set in far too early).
PER_SECOND_TIERS = ("framing_io", "ledger", GENERATOR)
#: Tiers that run in one process or one thread, so on at most one core whatever the machine (issue
#: 21), like the sequencer: the trove's child (its writer thread does the work, the sequencer waits
#: for it when its ring is full) and the risk model's inference thread. By name, as the plan prints them.
ONE_CORE_TIERS = {"trove": "the trove child's one process", "inference": "the risk model's one thread"}
#: How ``model_breaks`` begins a break where a tier that cannot be partitioned is planned above one core.
DOES_NOT_FIT = "does not fit one core"
#: The model's aim (issue 21): a predicted maximum within 25% of the searched one (``meets_aim``).
PREDICTION_AIM = 0.25
#: Tiers whose work does not depend on the profile's hooks (the validators verify the same
#: signatures under ``signed`` and ``signed-full``): fitted over the runs of every label with the
#: same validators, so a difference between two such labels is the hooks', not this tier's spread.
HOOK_INDEPENDENT_TIERS = ("validators",)


class Machine(msgspec.Struct, frozen=True):
    """The machine the plan counts in: cores, memory and (optionally) disk."""

    cores: int
    memory_bytes: float
    disk_bytes: float | None = None


class PlanRequest(msgspec.Struct, frozen=True, kw_only=True):
    rate_tps: float
    accounts: int
    profile: str
    machine: Machine
    retention_days: float = 365.0
    replicas: int = 3
    snapshots_kept: int = 2
    scale_by_calibration: bool = False


class Missing(msgspec.Struct, frozen=True):
    """An input the plan needs and no result file holds, and the command that measures it."""

    what: str
    command: str


class TroveLife(msgspec.Struct, frozen=True):
    """The trove's whole per-row life the plan charges (``loadgen.plan.trove_cost``): CPU and bytes per
    row, the median over the cost files (ns scaled like the runs' under ``--scale-by-calibration``),
    the lowest and highest file as its band."""

    ns_per_row: float
    ns_per_row_low: float
    ns_per_row_high: float
    bytes_per_row: float
    files: list[str]
    #: What it holds, for the plan's assumptions ("writer + 1.06 merges per row + sidecars").
    parts: str
    #: The trove child's part of it per row: the writer and every merge (``TroveCost.steady_ns_per_row``,
    #: median, scaled as ``ns_per_row``), without the sidecars (built by a query or ``trove sidecars``,
    #: not by the child while it ingests): what its one core carries in steady state.
    child_ns_per_row: float = 0.0


#: The command that measures ``TroveLife`` (the plan names it when no cost file is given).
TROVE_COST_COMMAND = "python -m benchmarks.trove_merge_cost --rows 8e6 --out DIR"


def trove_life(costs: Sequence[tuple[str, TroveCost]], reference_tps: float | None = None) -> TroveLife | None:
    """The trove's per-row life from its cost files (None: none); with ``reference_tps`` each file's
    ns are scaled to that calibration score (ns x own score / reference), as ``scaled`` does the runs'."""
    if not costs:
        return None
    ns, child = [], []
    for _, c in costs:
        own = c.environment.calibration.engine_tps if c.environment.calibration else None
        factor = own / reference_tps if reference_tps and own else 1.0
        ns.append(c.ns_per_row * factor)
        child.append(c.steady_ns_per_row * factor)
    last = costs[-1][1]
    sidecars = all(c.sidecar_ns_per_row is not None for _, c in costs)
    return TroveLife(
        ns_per_row=float(statistics.median(ns)),
        ns_per_row_low=min(ns),
        ns_per_row_high=max(ns),
        bytes_per_row=float(statistics.median(c.bytes_per_row for _, c in costs)),
        files=[f for f, _ in costs],
        parts=f"writer (both orderings) + {last.merges_per_row:.2f} rows merged per row up to the final run"
        + (" + per-run sidecars" if sidecars else " (sidecars not measured)"),
        child_ns_per_row=float(statistics.median(child)),
    )


def with_trove_life(fit: TierFit, life: TroveLife, rows_per_payment: float) -> TierFit:
    """The trove tier charged its whole per-row life: per payment only (its flushes and merges follow
    the rows, not the server's batches), at the runs' rates, its band the cost files' spread."""
    per_payment = life.ns_per_row * rows_per_payment
    return msgspec.structs.replace(
        fit,
        per_batch_ns=0.0,
        per_tick_ns=0.0,
        per_s_ns=0.0,
        per_payment_ns=per_payment,
        spread_low=life.ns_per_row_low / life.ns_per_row if life.ns_per_row else 1.0,
        spread_high=life.ns_per_row_high / life.ns_per_row if life.ns_per_row else 1.0,
    )


class TierFit(msgspec.Struct, frozen=True):
    """A tier's CPU as per-batch (or per-tick) + per-payment cost, and the spread of its runs around the fit."""

    tier: str
    per_batch_ns: float
    per_payment_ns: float
    rates_tps: list[float]  # the distinct measured rates it was fitted from
    spread_low: float  # lowest measured / fitted ratio over its runs
    spread_high: float
    workers: int  # most workers it was measured with
    #: The generator's fixed cost follows its own ticks, not the server's batches (``TICK_TIERS``).
    per_tick_ns: float = 0.0
    #: CPU ns per second whatever the rate (timers, the event loop's idle rounds, interval fsyncs):
    #: fitted only from three or more rates (``fit_tier``), 0 otherwise.
    per_s_ns: float = 0.0

    def ns_per_s(self, batches_per_s: float, payments_per_s: float, ticks_per_s: float = 0.0) -> float:
        return (
            self.per_s_ns
            + self.per_batch_ns * batches_per_s
            + self.per_payment_ns * payments_per_s
            + self.per_tick_ns * ticks_per_s
        )


class TierPlan(msgspec.Struct, frozen=True):
    tier: str
    cores: float
    cores_low: float
    cores_high: float
    ns_per_payment: float  # at the planned rate
    on_sequencer: bool
    surveillance: bool  # a policy/surveillance tier (not validators, framing/I-O or the ledger)
    extrapolated: bool  # needs more cores than the workers it was measured with


class OneCoreTier(msgspec.Struct, frozen=True):
    """A tier that runs on one core at most (``ONE_CORE_TIERS``) at the planned rate."""

    tier: str
    what: str  # "the trove child's one process"
    busy: float  # share of its one core at the planned rate (its CPU: a planned machine has cores to spare)
    saturation_tps: float | None  # where its CPU fills its core (None: not below 1e9/s)


class ProfilePlan(msgspec.Struct, frozen=True, kw_only=True):
    """One profile's plan at the requested rate and population."""

    profile: str
    tiers: list[TierPlan]
    cores: float
    cores_low: float
    cores_high: float
    surveillance_cores: float
    sequencer_core_busy: float  # share of the sequencer's one core at the planned rate
    sequencer_saturation_tps: float | None
    batches_per_s: float
    batch_regime: str  # "idle", "busy" or "full" at the planned rate (``BatchModel``)
    batch_model: BatchModel
    memory_bytes: float | None  # the sequencer's state (one replica)
    memory_pieces: dict[str, float]  # bytes per account by piece
    fits_one_machine: bool | None
    disk_per_day_bytes: dict[str, float]  # journal, trove (one replica)
    disk_per_day_complete: bool  # every growing store the profile keeps was measured
    snapshot_bytes: float | None  # one replica, all kept snapshots
    disk_retention_bytes: float | None  # all replicas, retention + snapshots
    network_bytes_per_s: float | None  # payments in and replies out
    replication_bytes_per_s: float | None  # the journal to the other replicas
    machines: int | None
    machines_note: str
    runs: int
    rates_tps: list[float]
    missing: list[Missing]
    #: Why the CPU could not be planned (``fit_problem``): the cores, the sequencer's figures and
    #: the machines are then not a plan, and every report shows this instead.
    cpu_problem: Missing | None = None
    #: The other one-core tiers besides the sequencer (the trove child, the inference thread).
    one_core: list[OneCoreTier] = []
    #: Tiers fitted over the runs of more than this label (``pooled_fits``: the validators; signed-P's
    #: hooks and trove with P's), with those labels.
    pooled: dict[str, list[str]] = {}
    #: Where the model breaks at the planned rate (``model_breaks``): a one-core tier planned above
    #: one core ("does not fit one core: ..."), a fit used far outside the rates it was measured at.
    #: Every report prints these first.
    breaks: list[str] = []
    #: The result file the snapshot bytes per account came from (None: not measured).
    snapshot_file: str | None = None


class Prediction(msgspec.Struct, frozen=True):
    """The predicted maximum sustainable rate of a profile on the machine it was measured on."""

    profile: str
    predicted_tps: float | None
    limited_by: str  # "the sequencer's core" or "all N cores"
    measured: MeasuredMax | None
    error: float | None  # (predicted - measured) / measured
    #: The most of one core the sequencer's tiers used in any run of the profile: well below 1 at a
    #: measured maximum means that maximum was not the sequencer's CPU (latency on a busy machine).
    peak_sequencer_cores: float = 0.0
    #: What the comparison means (``predict_max``): why there is no error, or where it comes from.
    note: str = ""
    #: The most CPU (server + generator, cores) the result files account for in a run the server
    #: did not keep up with: how much of the machine a saturated run could be seen to use.
    saturated_cores: float | None = None
    #: Each limit the model found, by what it is ("the sequencer's core", "the trove child's one
    #: process: ..."), in payments/s: the lowest is ``predicted_tps``.
    limits: dict[str, float] = {}
    #: Payments/s a one-core tier completed in a saturated run where the sequencer waited for it
    #: (``RunCost.flat_out_tps``, the most over the runs), with the share of the sequencer's time it waited.
    flat_out: dict[str, tuple[float, float]] = {}
    #: Where the trove child's one core fills with its merges too (``merged_trove_limit``): its whole-life
    #: CPU per row (writer + merges, the trove cost file) + its measured waits for a core. No measured
    #: window holds a merge (the first comes after 8 segments, ~32M rows), so this is not checked against
    #: the search: it is the steady state beyond the first merges, said beside the checked prediction.
    with_merges_tps: float | None = None


class CapacityPlan(msgspec.Struct, frozen=True, kw_only=True):
    request: PlanRequest
    plan: ProfilePlan
    others: list[ProfilePlan]  # every other profile with measured runs (for the figure and the deltas)
    deltas: list[str]  # what the profile's policy and surveillance add over baseline and signed
    predictions: list[Prediction]
    cpu_model: str
    calibration_tps: list[float]
    assumptions: list[str]
    skipped: list[str]

    @property
    def missing(self) -> list[Missing]:
        return self.plan.missing


class MixedCpuError(ValueError):
    """Result files from more than one CPU model, without ``--scale-by-calibration``."""


# ---- fitting ---------------------------------------------------------------------------------


def fit_tier(tier: str, runs: Sequence[RunCost]) -> TierFit:
    """Least-squares fixed and per-payment cost of ``tier`` over ``runs`` (both kept >= 0).

    The fixed cost is per server batch, per generator tick for ``TICK_TIERS`` (the generator's
    work follows its ticks: fitted per batch it grew as batches fell at high rates), none for
    ``PAYMENT_TIERS``; ``PER_SECOND_TIERS`` also get a cost per second when three or more rates
    were measured (non-negative least squares, ``scipy.optimize.nnls``). With one measured rate
    there is nothing to separate them: the whole cost is per payment.
    """
    per_tick = tier in TICK_TIERS
    units = np.array([r.arrivals.ticks_per_s(r.offered_tps) if per_tick else r.batches_per_s for r in runs])
    payments = np.array([r.transfers_per_s for r in runs])
    ns = np.array([r.tier_ns_per_s.get(tier, 0.0) for r in runs])
    rates = sorted({round(r.offered_tps) for r in runs})
    fixed, per_payment, per_s = 0.0, float(ns.sum() / payments.sum()), 0.0
    if len(rates) >= 3 and tier in PER_SECOND_TIERS:
        coef, _ = scipy.optimize.nnls(np.column_stack([np.ones_like(units), units, payments]), ns)
        per_s, fixed, per_payment = (float(c) for c in coef)
    elif len(rates) >= 2 and tier not in PAYMENT_TIERS:
        (a, b), *_ = np.linalg.lstsq(np.column_stack([units, payments]), ns, rcond=None)
        if a >= 0 and b >= 0:
            fixed, per_payment = float(a), float(b)
        elif a < 0:  # no measurable fixed part
            fixed, per_payment = 0.0, float(ns @ payments / (payments @ payments))
        else:
            fixed, per_payment = float(ns @ units / (units @ units)), 0.0
    fitted = per_s + fixed * units + per_payment * payments
    ratios = [float(m / f) for m, f in zip(ns, fitted, strict=True) if f > 0]
    return TierFit(
        tier=tier,
        per_batch_ns=0.0 if per_tick else fixed,
        per_payment_ns=per_payment,
        rates_tps=[float(r) for r in rates],
        # The band always holds the fit itself: a constrained fit (non-negative parts) can lie below
        # or above every run, and a band that excludes its own centre is no band (nor plottable).
        spread_low=min([*ratios, 1.0]),
        spread_high=max([*ratios, 1.0]),
        workers=max((r.workers.get(tier, r.cores if tier == KERNEL else 1) for r in runs), default=1),
        per_tick_ns=fixed if per_tick else 0.0,
        per_s_ns=float(per_s),
    )


def fitted_runs(runs: Sequence[RunCost]) -> list[RunCost]:
    """The runs a fit may use: those where the server kept up (``RunCost.server_kept_up``).

    A saturated server's CPU is not the cost of its offered rate (its batches, queue and shedding
    are the saturation's), so a per-batch + per-payment fit through it means nothing.
    """
    return [r for r in runs if r.server_kept_up]


def fit_problem(label: str, runs: Sequence[RunCost]) -> Missing | None:
    """None when the server kept up at two or more rates; else what is missing and the run that measures it."""
    kept = sorted({round(r.offered_tps) for r in fitted_runs(runs)})
    if len(kept) >= 2 or not runs:
        return None
    dropped = sorted({round(r.offered_tps) for r in runs if not r.server_kept_up})
    lowest = kept[0] if kept else min(round(r.offered_tps) for r in runs)
    first = runs[0]
    validators = max((r.workers.get("validators", 0) for r in runs), default=0)
    command = (
        f"cbdc-bench run --profile {first.profile}"
        + (f" --validators {validators}" if validators else "")
        + f" --rate {lowest // 2} --seconds 3 --warmup 2 --out DIR"
    )
    kept_text = ", ".join(f"{r:,}/s" for r in kept) or "none"
    dropped_text = ", ".join(f"{r:,}/s" for r in dropped)
    return Missing(
        f"CPU per batch and per payment of {label}: the server kept up at {len(kept)} measured rate"
        f"{'' if len(kept) == 1 else 's'} ({kept_text}; saturated at {dropped_text}), a fit needs two",
        command,
    )


def total_cores(run: RunCost) -> float:
    """All the CPU a run's result file accounts for, server tiers and generator, in cores."""
    return sum(run.tier_ns_per_s.values()) / 1e9


def fits(runs: Sequence[RunCost]) -> dict[str, TierFit]:
    tiers = sorted({t for r in runs for t in r.tier_ns_per_s})
    return {t: fit_tier(t, runs) for t in tiers}


def wall_fit(tier: str, runs: Sequence[RunCost]) -> TierFit:
    """A one-core tier's time on its core per second on the measured machine: its CPU plus its waits
    for a core (``RunCost.waits_ns_per_s``), fitted per batch + per payment as its CPU is.

    Why: the trove child runs at nice 10, so on a busy 2-core machine it waits for a core it then
    cannot give to more rows; its CPU alone reaches one core only far above the rate at which its
    ring fills and the sequencer waits for it.
    """
    walled = [
        msgspec.structs.replace(r, tier_ns_per_s=r.tier_ns_per_s | {tier: r.tier_ns_per_s.get(tier, 0.0) + wait})
        for r in runs
        if (wait := r.waits_ns_per_s.get(tier)) is not None
    ]
    return fit_tier(tier, walled if len(walled) == len(runs) else runs)


def is_sequencer_tier(tier: str, hooks: Sequence[str]) -> bool:
    return tier in SEQUENCER_TIERS or tier in hooks


class BatchModel(msgspec.Struct, frozen=True):
    """Batches per second the server cuts at a rate, from how it batches (``engine.server``).

    The server applies, as one batch, what arrived while the previous batch ran (``max_wait_us``
    0: each batch is cut at the end of the I/O round that filled it). Three regimes:

    * **idle**: the sequencer finishes a batch before the next tick's Submits arrive, so each
      tick's Submits are one batch or a few (the gateways of one generator tick together):
      ``batches_per_tick x ticks/s``, where the tick follows the rate by the generator's rule and
      batches per tick are measured in the runs where the sequencer was mostly idle, interpolated
      in rate between them (they grow with the rate: 1.3 at 100k/s, 1.7 at 300k/s for ``full`` on
      the quiet AMD machine) and held beyond;
    * **busy**: the next batch accumulates while one runs, so the sequencer is never idle: a
      queueing fixed point, a batch holds what arrives during one batch's service, and the
      service fills the share of a core the sequencer gets: ``per_batch_ns x batches/s +
      per_payment_ns x payments/s = share x 1 s``, so batches/s = (share x 1 s - per_payment_ns x
      rate) / per_batch_ns, falling as the rate rises (batches grow). ``share`` is one core where
      the sequencer has its own (the plan's machines); on the machine the costs were measured on,
      the generator, the scale-out tiers and the kernel take the other cores and, once they need
      more than ``cores - 1``, part of the sequencer's (``on_machine``): its batches grow sooner;
    * **full**: batches cannot grow past ``max_batch`` (whole Submits, ``Arrivals.full_batch``):
      batches/s = rate / full batch. Where even full batches cost more than the share, the
      sequencer saturates (``saturation_tps`` for a whole core).

    ``per_batch_ns`` and ``per_payment_ns`` are the sequencer's tiers' fitted costs together. The
    measured transition from idle to busy is smoother than the model's (arrivals jitter), so near
    it the model's batches are somewhat too many and its per-batch CPU somewhat too high.
    """

    batches_per_tick: float  # the median over the idle runs (what the assumptions print)
    per_batch_ns: float
    per_payment_ns: float
    arrivals: Arrivals
    idle_runs: int = 0  # runs batches_per_tick came from (0: none was idle; the least busy one stood in)
    #: The idle runs' rates and batches per tick, by rate: ``per_tick_at`` interpolates between them.
    idle_rates_tps: list[float] = []
    idle_per_tick: list[float] = []
    #: The sequencer's tiers' CPU per second whatever the rate (``TierFit.per_s_ns``): not there for batches.
    per_s_ns: float = 0.0

    def per_tick_at(self, rate_tps: float) -> float:
        """Batches per tick while idle at ``rate_tps``: interpolated between the idle runs, held beyond."""
        if not self.idle_rates_tps:
            return self.batches_per_tick
        return float(np.interp(rate_tps, self.idle_rates_tps, self.idle_per_tick))

    def idle_batches_per_s(self, rate_tps: float) -> float:
        return self.per_tick_at(rate_tps) * self.arrivals.ticks_per_s(rate_tps)

    def busy_batches_per_s(self, rate_tps: float, share: float = 1.0) -> float:
        spare_ns = share * 1e9 - self.per_s_ns - self.per_payment_ns * rate_tps
        return spare_ns / self.per_batch_ns if self.per_batch_ns > 0 else math.inf

    def full_batches_per_s(self, rate_tps: float) -> float:
        return rate_tps / self.arrivals.full_batch(rate_tps)

    def batches_per_s(self, rate_tps: float, share: float = 1.0) -> float:
        """Batches per second at ``rate_tps`` with ``share`` of a core: idle, busy or full, whichever holds there."""
        idle = self.idle_batches_per_s(rate_tps)
        return max(self.full_batches_per_s(rate_tps), min(idle, self.busy_batches_per_s(rate_tps, share)))

    def regime(self, rate_tps: float, share: float = 1.0) -> str:
        b = self.batches_per_s(rate_tps, share)
        if b == self.idle_batches_per_s(rate_tps):
            return "idle"
        return "full" if b == self.full_batches_per_s(rate_tps) else "busy"

    def sequencer_ns_per_s(self, rate_tps: float, batches_per_s: float) -> float:
        return self.per_s_ns + self.per_batch_ns * batches_per_s + self.per_payment_ns * rate_tps

    def saturation_tps(self) -> float | None:
        """The lowest rate at which even full batches cost the sequencer one core (None: none below 1e9/s)."""
        return first_rate_reaching(1e9, lambda r: self.sequencer_ns_per_s(r, self.full_batches_per_s(r)))


def batch_model(runs: Sequence[RunCost], tier_fits: dict[str, TierFit], hooks: Sequence[str]) -> BatchModel:
    """The batch model of a profile: its sequencer's fitted costs, and batches per tick where it was idle.

    A run counts as idle when its sequencer tiers used at most ``IDLE_SEQUENCER_SHARE`` of the share
    of a core the other tiers left them (``run_share``: on a 2-core machine the trove, the generator
    and the kernel can take part of the sequencer's core); with no such run, the least busy run
    stands for the idle regime (its batches per tick are then too few, so the
    per-batch CPU below the measured rates is underestimated, and the plan says so).
    """
    seq = [f for t, f in tier_fits.items() if is_sequencer_tier(t, hooks)]
    idle = [r for r in runs if sequencer_cores(r, hooks) <= IDLE_SEQUENCER_SHARE * run_share(r, hooks)]
    stand_in = idle or [min(runs, key=lambda r: sequencer_cores(r, hooks))]
    by_rate: dict[float, list[float]] = {}
    for r in stand_in:
        by_rate.setdefault(round(r.offered_tps), []).append(r.batches_per_s / r.arrivals.ticks_per_s(r.offered_tps))
    rates = sorted(by_rate)
    return BatchModel(
        batches_per_tick=float(statistics.median([v for vs in by_rate.values() for v in vs])),
        per_batch_ns=sum(f.per_batch_ns for f in seq),
        per_payment_ns=sum(f.per_payment_ns for f in seq),
        arrivals=max(runs, key=lambda r: r.offered_tps).arrivals,
        idle_runs=len(idle),
        idle_rates_tps=[float(r) for r in rates],
        idle_per_tick=[float(statistics.median(by_rate[r])) for r in rates],
        per_s_ns=sum(f.per_s_ns for f in seq),
    )


class OnMachine(msgspec.Struct, frozen=True):
    """A profile at one rate on the machine its costs were measured on (``on_machine``)."""

    batches_per_s: float
    share: float  # of a core the sequencer gets: 1 - what the other tiers take beyond the other cores
    regime: str
    sequencer_ns_per_s: float
    others_ns_per_s: float  # every other tier: scale-out, generator, kernel

    @property
    def total_ns_per_s(self) -> float:
        return self.sequencer_ns_per_s + self.others_ns_per_s


def on_machine(
    tier_fits: dict[str, TierFit], hooks: Sequence[str], batching: BatchModel, rate_tps: float, cores: int
) -> OnMachine:
    """Batches, and the sequencer's share of a core, at ``rate_tps`` on a machine of ``cores`` shared
    by every tier in ``tier_fits`` (the generator and the kernel included).

    The other tiers run on the other cores first; what they need beyond ``cores - 1`` comes out of
    the sequencer's core (the scheduler shares the cores), so the sequencer's busy regime fills
    only ``share`` of a core, and its batches grow sooner than with a core of its own. The other
    tiers' per-batch costs depend on the batches in turn: the fixed point is found by iteration
    (damped; the share falls as batches rise, so it converges).
    """
    ticks = batching.arrivals.ticks_per_s(rate_tps)
    others = [f for t, f in tier_fits.items() if not is_sequencer_tier(t, hooks)]
    batches = batching.batches_per_s(rate_tps)
    share = 1.0
    for _ in range(60):
        others_ns = sum(f.ns_per_s(batches, rate_tps, ticks) for f in others)
        share = min(max(cores - others_ns / 1e9, 0.0), 1.0)
        batches = 0.5 * batches + 0.5 * batching.batches_per_s(rate_tps, share)
    others_ns = sum(f.ns_per_s(batches, rate_tps, ticks) for f in others)
    return OnMachine(
        batches_per_s=batches,
        share=share,
        regime=batching.regime(rate_tps, share),
        sequencer_ns_per_s=batching.sequencer_ns_per_s(rate_tps, batches),
        others_ns_per_s=others_ns,
    )


def sequencer_cores(run: RunCost, hooks: Sequence[str]) -> float:
    """Cores the sequencer's tiers used in ``run``."""
    return sum(v for t, v in run.tier_ns_per_s.items() if is_sequencer_tier(t, hooks)) / 1e9


def run_share(run: RunCost, hooks: Sequence[str]) -> float:
    """The share of a core the other tiers (generator and kernel included) left the sequencer in ``run``."""
    others = sum(v for t, v in run.tier_ns_per_s.items() if not is_sequencer_tier(t, hooks)) / 1e9
    return min(max(run.cores - others, 0.0), 1.0)


def cpu_ns_per_s(tier_fits: dict[str, TierFit], tiers: Sequence[str], rate_tps: float, batches: BatchModel) -> float:
    b = batches.batches_per_s(rate_tps)
    ticks = batches.arrivals.ticks_per_s(rate_tps)
    return sum(tier_fits[t].ns_per_s(b, rate_tps, ticks) for t in tiers if t in tier_fits)


def first_rate_reaching(budget_ns: float, cost: Callable[[float], float]) -> float | None:
    """The lowest rate (1k-1e9/s) at which ``cost(rate)`` (CPU ns per second) reaches ``budget_ns``; None: never.

    Scanned on a 1% grid, then bisected: the cost is not monotonic in the rate (busy batches grow
    with it; a full batch of whole Submits jumps as Submits grow), so bisection alone could skip
    the first crossing.
    """
    grid = np.geomspace(1e3, 1e9, int(math.log(1e6) / math.log(1.01)))
    low = None
    for rate in grid:
        if cost(float(rate)) >= budget_ns:
            high = float(rate)
            break
        low = float(rate)
    else:
        return None
    if low is None:
        return high
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if cost(mid) < budget_ns else (low, mid)
    return high


# ---- the plan --------------------------------------------------------------------------------


def check_one_cpu(
    runs: Sequence[RunCost], maxima: Sequence[MeasuredMax], scale: bool, others: Sequence[tuple[str, str]] = ()
) -> tuple[str, list[float]]:
    """The CPU every figure was measured on; refuse a mix unless scaling by calibration (and possible).
    ``others``: more (file, CPU model) pairs (the trove cost files)."""
    by_cpu: dict[str, list[str]] = {}
    pairs = [(r.cpu_model, r.file) for r in runs] + [(m.cpu_model, m.file) for m in maxima]
    for cpu_model, file in pairs + [(cpu_model, file) for file, cpu_model in others]:
        by_cpu.setdefault(cpu_model, []).append(file)
    calibrations = [r.calibration_tps for r in runs if r.calibration_tps is not None]
    if len(by_cpu) > 1 and not scale:
        listed = "; ".join(f"{cpu!r} ({len(files)} files, e.g. {files[0]})" for cpu, files in by_cpu.items())
        raise MixedCpuError(
            f"the result files were measured on {len(by_cpu)} CPUs: {listed}. Plan from one CPU's results "
            "(point --results at them), or pass --scale-by-calibration to scale every cost by its file's "
            "CPU calibration score"
        )
    if scale:
        uncalibrated = [r.file for r in runs if r.calibration_tps is None]
        if uncalibrated:
            raise MixedCpuError(
                f"--scale-by-calibration: {len(uncalibrated)} result files have no CPU calibration score "
                f"(format version 1, e.g. {uncalibrated[0]}); re-measure them or leave them out of --results"
            )
    return " + ".join(by_cpu) or "unknown", calibrations


def scaled(runs: Sequence[RunCost], reference_tps: float) -> list[RunCost]:
    """Costs converted to a CPU with calibration ``reference_tps``: ns x (own score / reference)."""
    out = []
    for r in runs:
        factor = (r.calibration_tps or reference_tps) / reference_tps
        out.append(msgspec.structs.replace(r, tier_ns_per_s={k: v * factor for k, v in r.tier_ns_per_s.items()}))
    return out


def plan_profile(
    profile: str,
    runs: Sequence[RunCost],
    states: Sequence[StateInput],
    request: PlanRequest,
    pooled: dict[str, tuple[TierFit, list[str]]] | None = None,
    trove: TroveLife | None = None,
) -> ProfilePlan:
    """The plan of one profile from its measured runs and state figures (``runs`` not empty).

    The CPU is fitted from the runs where the server kept up (``fitted_runs``); with fewer than two
    such rates ``cpu_problem`` says what is missing, and the machines are not counted. ``pooled``:
    tiers fitted over more labels' runs (``pooled_fits``), used instead of this label's own fit.
    ``trove``: the trove's whole per-row life (``trove_life``), charged as the trove tier instead of
    the CPU its child spent inside the runs' windows (only the memtable's ingest: a 3-second run
    never flushes or merges) and as its bytes on disk; None: the plan says which command measures it.
    """
    problem = fit_problem(profile, runs)
    usable = fitted_runs(runs) or list(runs)
    pooled = {t: fl for t, fl in (pooled or {}).items() if any(t in r.tier_ns_per_s for r in usable)}
    tier_fits = {t: f for t, f in fits(usable).items() if t != GENERATOR} | {t: f for t, (f, _) in pooled.items()}
    hooks = usable[-1].hooks
    label, profile = profile, usable[-1].profile
    rate = request.rate_tps
    batching = batch_model(usable, tier_fits, hooks)
    batches = batching.batches_per_s(rate)
    missing: list[Missing] = [problem] if problem else []
    keeps_trove = any(r.keeps_trove for r in usable) or "trove" in tier_fits  # the trove's writer ran
    rows_per_payment = _median(r.trove_rows_per_payment for r in usable)
    if keeps_trove and trove is not None and "trove" in tier_fits and rows_per_payment is not None:
        tier_fits["trove"] = with_trove_life(tier_fits["trove"], trove, rows_per_payment)
    elif keeps_trove:
        trove = None  # the runs' own first segments are not the final layout either
        missing.append(Missing(
            "the trove's whole per-row life: the writer in both orderings, every merge up to the final run, "
            "the per-run sidecars (a trove cost result file; a run's trove child only fills its memtable)",
            TROVE_COST_COMMAND,
        ))  # fmt: skip
    if any(r.signed for r in usable) and "validators" not in tier_fits:
        missing.append(Missing(
            "validators: CPU per signed payment (server.tier_cpu_s.validators, issue 19)",
            f"cbdc-bench compare --quick --profiles {profile} --validators 2 --out DIR",
        ))  # fmt: skip
    tiers = []
    for name, fit in tier_fits.items():
        ns = fit.ns_per_s(batches, rate)
        cores = ns / 1e9
        on_seq = is_sequencer_tier(name, hooks)
        tiers.append(
            TierPlan(
                tier=name,
                cores=cores,
                cores_low=cores * fit.spread_low,
                cores_high=cores * fit.spread_high,
                ns_per_payment=ns / rate,
                on_sequencer=on_seq,
                surveillance=name not in CORE_TIERS,
                extrapolated=not on_seq and cores * fit.spread_high > fit.workers,
            )
        )
    tiers.sort(key=lambda t: (_tier_order(t.tier, hooks), t.tier))
    seq_busy = sum(t.cores for t in tiers if t.on_sequencer)
    one_core = [
        OneCoreTier(
            tier=name,
            what=what,
            busy=tier_fits[name].ns_per_s(batches, rate) / 1e9,
            saturation_tps=first_rate_reaching(1e9, _cost_fn(tier_fits, [name], batching)),
        )
        for name, what in ONE_CORE_TIERS.items()
        if name in tier_fits
    ]

    breaks = model_breaks(label, tiers, one_core, usable, rate)

    # Memory: all of it is the sequencer's (state cannot be partitioned).
    state = _state_of(profile, [s for s in states if s.bytes_per_account])
    pieces = dict(state.bytes_per_account) if state else {}
    memory = request.accounts * sum(pieces.values()) if state else None
    snapshot_from = _state_of(profile, [s for s in states if s.snapshot_bytes_per_account is not None])
    if state is None:
        missing.append(Missing(
            "state bytes per account of every piece (engine result state.bytes_per_account)",
            f"cbdc-bench engine --profile {profile} --accounts 1M --seconds 1 --out DIR",
        ))  # fmt: skip

    # Disk and network: medians over the runs that measured them.
    journal = _median(r.journal_bytes_per_payment for r in usable)
    trove_bytes = None if trove is None or rows_per_payment is None else trove.bytes_per_row * rows_per_payment
    wire = _median(r.wire_bytes_per_payment for r in usable)
    if journal is None:
        missing.append(Missing(
            "journal bytes per payment (traffic.journal_per_payment)",
            f"cbdc-bench run --profile {profile} --journal DIR --out DIR",
        ))  # fmt: skip
    if wire is None:
        missing.append(Missing(
            "wire bytes per payment (traffic, result format 2)", f"cbdc-bench run --profile {profile} --out DIR"
        ))  # fmt: skip
    per_day = rate * SECONDS_PER_DAY
    disk_day = {"journal": per_day * journal} if journal is not None else {}
    if trove_bytes is not None:
        disk_day["trove"] = per_day * trove_bytes
    snapshot_per_account = snapshot_from.snapshot_bytes_per_account if snapshot_from else None
    snapshots = None
    if snapshot_per_account is None:
        low_rate = min(r.offered_tps for r in usable)  # a rate it was measured at, with snapshots every 1.5 s
        missing.append(Missing(
            "snapshot bytes per account (state.snapshot_bytes_per_account, issue 15)",
            f"cbdc-bench run --profile {profile} --rate {low_rate:.0f} --journal DIR --snapshot-every "
            f"{1.5 * low_rate:.0f} --out DIR",
        ))  # fmt: skip
    else:
        snapshots = request.snapshots_kept * request.accounts * snapshot_per_account
    complete_disk = journal is not None and snapshots is not None and not (keeps_trove and trove_bytes is None)
    retention = (
        request.replicas * (sum(disk_day.values()) * request.retention_days + (snapshots or 0.0))
        if complete_disk
        else None
    )

    machines, note = (
        _machines(tiers, memory, retention, request) if problem is None else (None, f"not planned: {problem.what}")
    )
    return ProfilePlan(
        profile=label,
        tiers=tiers,
        cores=sum(t.cores for t in tiers),
        cores_low=sum(t.cores_low for t in tiers),
        cores_high=sum(t.cores_high for t in tiers),
        surveillance_cores=sum(t.cores for t in tiers if t.surveillance),
        sequencer_core_busy=seq_busy,
        sequencer_saturation_tps=batching.saturation_tps(),
        batches_per_s=batches,
        batch_regime=batching.regime(rate),
        batch_model=batching,
        memory_bytes=memory,
        memory_pieces=pieces,
        fits_one_machine=None if memory is None else memory <= request.machine.memory_bytes,
        disk_per_day_bytes=disk_day,
        disk_per_day_complete=journal is not None and not (keeps_trove and trove_bytes is None),
        snapshot_bytes=snapshots,
        disk_retention_bytes=retention,
        network_bytes_per_s=None if wire is None else rate * wire,
        replication_bytes_per_s=None if journal is None else rate * journal * (request.replicas - 1),
        machines=machines,
        machines_note=note,
        runs=len(usable),
        rates_tps=sorted({round(r.offered_tps, 0) for r in usable}),
        missing=missing,
        cpu_problem=problem,
        one_core=one_core,
        pooled={t: labels for t, (_, labels) in pooled.items()},
        breaks=breaks if problem is None else [],
        snapshot_file=snapshot_from.file if snapshot_from else None,
    )


def model_breaks(
    label: str, tiers: Sequence[TierPlan], one_core: Sequence[OneCoreTier], runs: Sequence[RunCost], rate_tps: float
) -> list[str]:
    """Where the plan of ``label`` at ``rate_tps`` is not a plan but the model breaking, said loudly.

    * A tier that cannot be partitioned planned above one core: the sequencer (its state is one
      exact ledger: batch = sequential) or a one-core tier (one process or one thread). More cores
      do not help; the plan's cores for it are work that cannot be done. Why: a contended run once
      planned ``signed@2``'s sequencer at 158% of a core, its per-frame cost measured at 2 frames a
      tick and 5-20k/s charged per payment at 300k/s.
    * A planned rate outside the rates the fit was measured at, by how much (``rate_outside``): the
      split of each tier's cost into per-batch and per-payment parts is then extrapolated.
    """
    out = []
    seq = [t for t in tiers if t.on_sequencer]
    busy, high = sum(t.cores for t in seq), sum(t.cores_high for t in seq)
    rates = sorted({r.offered_tps for r in runs})
    outside = rate_outside(rates, rate_tps)
    if busy > 1 or high > 1:
        top = ", ".join(f"{t.tier} {t.cores:.2f}" for t in sorted(seq, key=lambda t: -t.cores)[:3])
        out.append(
            f"{DOES_NOT_FIT}: the sequencer of {label} needs {busy:.0%} of a core at {rate_tps:,.0f}/s"
            + (f" ({high:.0%} at the band's top)" if high > busy else "")
            + f" ({top} cores): its state cannot be partitioned, so no machine runs this; "
            + (
                "the fit is extrapolated to this rate (below), so the cost it charges per payment may be per-frame "
                "work that larger batches amortise: measure nearer the planned rate"
                if outside
                else "the sequencer saturates below the planned rate"
            )
        )
    out += [
        f"{DOES_NOT_FIT}: the {o.tier} of {label} ({o.what}) needs {o.busy:.0%} of its core at {rate_tps:,.0f}/s"
        + (f" (saturates near {o.saturation_tps:,.0f}/s)" if o.saturation_tps else "")
        + ": one process or thread cannot use a second core"
        for o in one_core
        if o.busy > 1
    ]
    if outside:
        out.append(
            f"extrapolated: {label} was measured at {min(rates):,.0f}-{max(rates):,.0f}/s; {outside}, so each tier's "
            "per-batch/per-payment split and the batches there come from the model alone"
        )
    return out


def rate_outside(rates_tps: Sequence[float], rate_tps: float) -> str:
    """How far ``rate_tps`` lies outside the measured ``rates_tps`` ('' inside them):
    ``300,000/s is 30.0x its highest measured rate (10,000/s)``."""
    if not rates_tps or min(rates_tps) <= rate_tps <= max(rates_tps):
        return ""
    lo, hi = min(rates_tps), max(rates_tps)
    if rate_tps > hi:
        return f"{rate_tps:,.0f}/s is {rate_tps / hi:,.1f}x its highest measured rate ({hi:,.0f}/s)"
    return f"{rate_tps:,.0f}/s is {lo / rate_tps:,.1f}x below its lowest measured rate ({lo:,.0f}/s)"


def pooled_fits(by_label: dict[str, list[RunCost]]) -> dict[str, dict[str, tuple[TierFit, list[str]]]]:
    """For each label, the tiers fitted over more labels' runs than its own, with those labels.

    * ``HOOK_INDEPENDENT_TIERS`` (the validators) over every label with the same validators: the
      same verifications. Why: ``signed-full@2`` planned 1.8 cores below ``signed@2`` at 300k/s
      because each fitted the validators from its own few runs (64 vs 71 us per payment, measured
      in different runs), 5x what the hooks add.
    * the hooks' tiers and their background (the trove, the risk model's parts: every tier that is
      policy or surveillance) over ``P`` and ``signed-P``: the same hooks on the same payments,
      whether or not the payments were signed. Why: ``signed-P`` runs at 2-14k/s (what 2 cores
      verify), and its hooks fitted from those alone put the trove at 0.12 cores at 300k/s where
      ``P``'s runs at 100-600k/s measure 0.4. Only ``signed-P`` takes the pooled fit: ``P``'s own
      runs are at the planned rate.

    A tier is pooled only where its runs span two or more rates; labels alone keep their own fits.
    """
    groups: dict[tuple[str, ...], list[str]] = {}
    unsigned = {runs[0].profile: label for label, runs in by_label.items() if not any(r.signed for r in runs)}
    for label, runs in by_label.items():
        validators = max((r.workers.get("validators", 0) for r in runs), default=0)
        if validators:
            groups.setdefault(("validators", f"@{validators}"), []).append(label)
        base = unsigned.get(runs[0].profile.removeprefix("signed-"))
        if runs[0].profile.startswith("signed-") and base is not None:
            groups.setdefault(("hooks", base), [base]).append(label)
    out: dict[str, dict[str, tuple[TierFit, list[str]]]] = {}
    for key, labels in groups.items():
        runs = [
            r for label in labels if fit_problem(label, by_label[label]) is None for r in fitted_runs(by_label[label])
        ]
        tiers = (
            HOOK_INDEPENDENT_TIERS
            if key[0] != "hooks"
            else sorted({t for r in runs for t in r.tier_ns_per_s if t not in (*CORE_TIERS, GENERATOR)})
        )
        for tier in tiers:
            having = [r for r in runs if tier in r.tier_ns_per_s]
            if len({r.label for r in having}) >= 2 and len({round(r.offered_tps) for r in having}) >= 2:
                fit = fit_tier(tier, having)
                # ``P`` keeps its own fit (its runs are at the planned rate; the signed runs' spread at
                # 2-14k/s would only widen its band); ``signed-P`` borrows the pooled one.
                for label in labels if key[0] != "hooks" else labels[1:]:
                    out.setdefault(label, {})[tier] = (fit, sorted(labels))
    return out


def pooled_text(plan: ProfilePlan) -> list[str]:
    """``trove, wallet_limits: fitted over the runs of full and signed-full@2 validators together``."""
    by_labels: dict[tuple[str, ...], list[str]] = {}
    for tier, labels in plan.pooled.items():
        by_labels.setdefault(tuple(labels), []).append(tier)
    return [
        f"{', '.join(tiers)}: fitted over the runs of {' and '.join(labels)} together (the same work in each)"
        for labels, tiers in by_labels.items()
    ]


def _cost_fn(tier_fits: dict[str, TierFit], tiers: Sequence[str], batches: BatchModel) -> Callable[[float], float]:
    return lambda rate: cpu_ns_per_s(tier_fits, tiers, rate, batches)


def _tier_order(tier: str, hooks: Sequence[str]) -> int:
    order = ["validators", "framing_io", "ledger", *hooks, "features", "inference", "trove"]
    return order.index(tier) if tier in order else len(order)


def _state_of(profile: str, states: Sequence[StateInput]) -> StateInput | None:
    mine = [s for s in states if s.profile == profile]
    return mine[-1] if mine else None


def _median(values: Iterable[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def _machines(
    tiers: Sequence[TierPlan], memory: float | None, disk: float | None, request: PlanRequest
) -> tuple[int | None, str]:
    """Machines of the given size: one per replica for the sequencer, plus the scale-out tiers' cores."""
    m = request.machine
    if memory is not None and memory > m.memory_bytes:
        return None, (
            f"the sequencer's state ({memory / GIB:,.0f} GiB) does not fit one machine of {m.memory_bytes / GIB:,.0f} "
            "GiB, and it cannot be partitioned: a machine with more memory, or less state per account"
        )
    sequencer_cores = sum(t.cores_high for t in tiers if t.on_sequencer)
    if sequencer_cores > 1.0:
        return None, f"the sequencer's core is over-committed ({sequencer_cores:.2f} cores of work on one core)"
    scale_out = sum(t.cores_high for t in tiers if not t.on_sequencer)
    spare = max(m.cores - 1, 0)  # a sequencer machine's other cores take scale-out work
    extra = max(math.ceil((scale_out - spare) / m.cores), 0) if m.cores else 0
    total = request.replicas + extra
    note = (
        f"{request.replicas} sequencer replica machines (each: the sequencer's core + {spare} cores for the "
        f"scale-out tiers on the primary) + {extra} for the scale-out tiers ({scale_out:.1f} cores, upper band)"
    )
    if disk is not None and m.disk_bytes:
        by_disk = math.ceil(disk / m.disk_bytes)
        if by_disk > total:
            note += f"; disk for the retention needs {by_disk} machines of this size"
            total = by_disk
    return total, note


def predict_max(
    profile: str, runs: Sequence[RunCost], maxima: Sequence[MeasuredMax], trove: TroveLife | None = None
) -> Prediction:
    """The maximum rate this machine sustains by the fit: the sequencer's core, all its cores (the
    server's tiers and the generator's CPU together: they share the machine), or the generator's
    processes (one core each), whichever first.

    A trove profile's runs hold whole flush periods and its search trials at least one flush
    (``benchmarks/plan_first_cut.py``, ``trove_run_seconds``), so both measure the trove between its
    merges: that is what is predicted and checked. With ``trove`` (the cost file's whole-life CPU),
    ``with_merges_tps`` says where the child's one core fills once its merges run too (never checked:
    no measured window holds a merge).

    The error against a searched maximum is stated only where the two measure the same thing: a
    search that stopped because the generator fell behind bounds the generator, not the server,
    so there the note says the prediction is at least that bound (consistent) or, below it, the
    error is a bound: the fit underestimates by at least that much.
    """
    measured = next((m for m in maxima if m.profile == profile), None)
    hooks = runs[-1].hooks
    peak = max(sequencer_cores(r, hooks) for r in runs)
    saturated = max((total_cores(r) for r in runs if not r.server_kept_up), default=None)
    problem = fit_problem(profile, runs)
    if problem is not None:
        return Prediction(
            profile, None, "not predicted", measured, None, peak,
            note=f"not predicted: {problem.what} (measure it: {problem.command})", saturated_cores=saturated,
        )  # fmt: skip
    usable = fitted_runs(runs)
    tier_fits = fits(usable)  # the generator's CPU is a tier here: it shares this machine's cores
    cores = max(r.cores for r in usable)
    batching = batch_model(usable, tier_fits, hooks)
    by_seq = batching.saturation_tps()
    # All the cores: every tier (generator and kernel included) shares them, and the sequencer's
    # batches follow the share of its core the others leave it (``on_machine``). Reached when the
    # others squeeze a busy sequencer: every core is then in use, its batches stop growing toward
    # full in practice (its wall-clock per batch stretches with the run-queue waits: the
    # saturated quiet runs cut 2,000-payment batches, not 8,192), so no headroom is counted there.
    by_all = first_rate_reaching(
        cores * 1e9 * (1 - 1e-6), lambda r: on_machine(tier_fits, hooks, batching, r, cores).total_ns_per_s
    )
    # The generator's own limit: each of its processes is one event loop, at most one core.
    processes = max(r.arrivals.load.processes for r in usable)
    by_generator = first_rate_reaching(processes * 1e9, _cost_fn(tier_fits, [GENERATOR], batching))
    limits = [
        (by_seq, "the sequencer's core"),
        (by_all, f"all {cores} cores: server + generator"),
        (by_generator, f"the generator's {processes} process{'es' if processes > 1 else ''}"),
        *one_core_limits(usable, tier_fits, hooks, batching, cores),
    ]
    options = [(v, w) for v, w in limits if v is not None]
    predicted, limit = min(options) if options else (None, "nothing saturates")
    # Only where the server did not keep up: a kept-up run whose ring filled now and then measured
    # a lower bound of the tier's capacity, not the capacity.
    saturating = [r for r in runs if not r.server_kept_up]
    flat_out = {
        tier: max((r.flat_out_tps[tier], r.backpressure_ns_per_s.get(tier, 0.0) / 1e9) for r in having)
        for tier in ONE_CORE_TIERS
        if (having := [r for r in saturating if tier in r.flat_out_tps])
    }
    error, note = None, ""
    if predicted and measured and measured.median_tps > 0:
        bounded = measured.bounded_by_generator
        if bounded and predicted >= measured.median_tps:
            note = (
                "no check: the search stopped where the generator fell behind, not the server; the prediction is "
                f"{(predicted - measured.median_tps) / measured.median_tps:+.0%} over that bound (consistent; the "
                "check is bounded by the generator)"
            )
        elif bounded:  # the server sustained at least the measured maximum
            error = (predicted - measured.median_tps) / measured.median_tps
            note = (
                "at least this low: the search stopped where the generator fell behind, so the server's own "
                "maximum is at least the measured one (the fit underestimates)"
            )
        else:
            error = (predicted - measured.median_tps) / measured.median_tps
            note = _error_note(error, measured, runs, usable, cores, saturated, KERNEL in tier_fits)
        if measured.stop and (measured.generator_limited or bounded):
            note = note + " " if note else ""
            why = (
                "generator-bound"
                if bounded
                else "a check although the search said the generator fell behind: its processes were not flat out "
                "with cores to spare"
            )
            note += f"({why}: {measured.stop})"
    witness = [
        f"the {tier} ran flat out at {tps:,.0f}/s in a saturated run (the sequencer waited for it {waited:.0%} of "
        "the time): its measured capacity here"
        for tier, (tps, waited) in flat_out.items()
        if limit.startswith(ONE_CORE_TIERS[tier])
    ]
    with_merges = merged_trove_limit(usable, tier_fits, hooks, batching, cores, trove)
    if with_merges is not None:
        witness.append(
            f"with its merges (whole-life CPU, {trove.child_ns_per_row if trove else 0:,.0f} ns a row, measured "
            f"apart) the trove child's core fills at {with_merges:,.0f}/s: the steady state beyond the first "
            "merges, which no measured window holds"
        )
    note = "; ".join([*witness, note] if note else witness)
    return Prediction(
        profile, predicted, limit, measured, error, peak, note=note, saturated_cores=saturated,
        limits={w: v for v, w in options}, flat_out=flat_out, with_merges_tps=with_merges,
    )  # fmt: skip


def merged_trove_limit(
    runs: Sequence[RunCost],
    tier_fits: dict[str, TierFit],
    hooks: Sequence[str],
    batching: BatchModel,
    cores: int,
    trove: TroveLife | None,
) -> float | None:
    """Where the trove child's one core fills on the measured machine with its merges: its whole-life
    CPU per payment (``TroveLife.child_ns_per_row`` x the runs' rows per payment) + its waits for a
    core as the runs measured them (``wall_fit`` less its CPU fit). None: no trove, or no cost file.

    Why apart from the checked limits: a merge comes once 8 segments (8 x 2^22 rows) are written,
    about a minute at 600k/s, so neither a run nor a search trial can hold one in its steady share.
    """
    rows = _median(r.trove_rows_per_payment for r in runs)
    if trove is None or "trove" not in tier_fits or rows is None or trove.child_ns_per_row <= 0:
        return None
    cpu, wall = tier_fits["trove"], wall_fit("trove", runs)
    per_payment = trove.child_ns_per_row * rows

    def cost(rate: float) -> float:
        b = on_machine(tier_fits, hooks, batching, rate, cores).batches_per_s
        return per_payment * rate + max(wall.ns_per_s(b, rate) - cpu.ns_per_s(b, rate), 0.0)

    return first_rate_reaching(1e9, cost)


def _error_note(
    error: float,
    measured: MeasuredMax,
    runs: Sequence[RunCost],
    usable: Sequence[RunCost],
    cores: int,
    saturated: float | None,
    has_kernel: bool,
) -> str:
    """Why a checked prediction misses by more than the aim, from what the result files show ('' within it)."""
    if abs(error) <= PREDICTION_AIM:
        return ""
    parts = []
    top = max(r.offered_tps for r in usable)
    if measured.median_tps > 1.5 * top:
        parts.append(
            f"the fit was measured at up to {top:,.0f}/s and the maximum is {measured.median_tps / top:.1f}x that: "
            "its split into per-batch and per-payment cost is extrapolated there (a run nearer the maximum checks it)"
        )
    idle = [r.idle_cores for r in runs if not r.server_kept_up and r.idle_cores is not None]
    if idle:
        parts.append(
            f"the runs that saturated left {min(idle):.2f}-{max(idle):.2f} of {cores} cores idle (machine_cpu): the "
            "server waited (blocked, or in the run queue) rather than ran out of CPU, which a CPU budget does not "
            "predict"
        )
    elif saturated is not None and not has_kernel:
        parts.append(
            f"the runs that saturated used only {saturated:.2f} of {cores} cores of CPU the result files "
            "account for (server + generator): the rest (kernel networking and disk, the processes' "
            "contention on the cores) is not measured, so a CPU budget of all the cores overshoots"
        )
    return "; ".join(parts)


def meets_aim(predicted_tps: float, measured: MeasuredMax, aim: float = PREDICTION_AIM) -> bool:
    """Whether a predicted maximum is within ``aim`` of a searched one, as far as the search can tell.

    A search that stopped where the generator fell behind bounds the server's maximum from below,
    so there only a prediction more than ``aim`` below that bound is shown wrong (a one-sided check:
    ``benchmarks/test_bench_plan.py`` says so when it happens).
    """
    error = (predicted_tps - measured.median_tps) / measured.median_tps
    return error > -aim if measured.bounded_by_generator else abs(error) < aim


def one_core_limits(
    runs: Sequence[RunCost], tier_fits: dict[str, TierFit], hooks: Sequence[str], batching: BatchModel, cores: int
) -> list[tuple[float | None, str]]:
    """Where each one-core tier (``ONE_CORE_TIERS``) fills its core on the measured machine, by its
    CPU plus its waits for a core (``wall_fit``), with the batches ``on_machine`` gives: past that
    rate it falls behind and the sequencer waits for it."""
    out: list[tuple[float | None, str]] = []
    for tier, what in ONE_CORE_TIERS.items():
        if tier not in tier_fits:
            continue
        wall = wall_fit(tier, runs)
        waits = any(tier in r.waits_ns_per_s for r in runs)

        def cost(rate: float, wall: TierFit = wall) -> float:
            return wall.ns_per_s(on_machine(tier_fits, hooks, batching, rate, cores).batches_per_s, rate)

        out.append((first_rate_reaching(1e9, cost), f"{what}: its CPU{' + waits for a core' if waits else ''}"))
    return out


def build_plan(inputs: Inputs, request: PlanRequest) -> CapacityPlan:
    """The capacity plan for ``request`` from ``inputs``; ValueError if the profile has no measured run."""
    cpu, calibrations = check_one_cpu(
        inputs.runs,
        inputs.maxima,
        request.scale_by_calibration,
        [(f, c.environment.cpu_model) for f, c in inputs.trove_costs],
    )
    runs = list(inputs.runs)
    assumptions = []
    trove = trove_life(inputs.trove_costs)
    if request.scale_by_calibration and calibrations:
        reference = float(statistics.median(calibrations))
        runs = scaled(runs, reference)
        trove = trove_life(inputs.trove_costs, reference)
        assumptions.append(
            f"costs scaled to a CPU calibration score of {reference:,.0f} transfers/s (the median of the files): "
            "each file's ns x its own score / that score"
        )
    by_profile: dict[str, list[RunCost]] = {}
    for r in runs:
        by_profile.setdefault(r.label, []).append(r)
    chosen = _label_of(request.profile, by_profile)
    if chosen is None:
        measured = ", ".join(sorted(by_profile)) or "none"
        raise ValueError(
            f"no measured run of profile {request.profile!r} in the result files (profiles measured: {measured}); "
            f"measure it at two or more rates: cbdc-bench compare --quick --profiles {request.profile} --out DIR"
        )
    if chosen != request.profile:
        assumptions.append(f"profile {request.profile} planned as measured with {chosen} (the most validators)")
    pooled = pooled_fits(by_profile)
    plans = {
        p: plan_profile(p, rs, inputs.states, request, pooled.get(p), trove) for p, rs in sorted(by_profile.items())
    }
    if trove is not None:
        assumptions.append(
            f"the trove is charged its whole per-row life, {trove.ns_per_row:,.0f} ns of CPU "
            f"({trove.ns_per_row_low:,.0f}-{trove.ns_per_row_high:,.0f}) and {trove.bytes_per_row:.1f} bytes per row: "
            f"{trove.parts} (steady state, measured apart: {', '.join(trove.files)}), not the CPU its child spent "
            "inside the runs (they hold its flushes but no merge); the predicted maxima on the measured machine "
            "use the runs' own CPU, flushes included, as the searches they are checked against do (their trials "
            "hold a flush each), and say apart where the child's core fills with its merges"
        )
    plan = plans[chosen]
    deltas = [] if request.profile == "baseline" else [_delta_line(plan, plans.get("baseline"), "baseline")]
    if not request.profile.startswith("signed"):
        deltas.append(_signed_delta(request.profile, plans, by_profile))
    predictions = [predict_max(p, rs, inputs.maxima, trove) for p, rs in sorted(by_profile.items())]
    assumptions += _assumptions(plan, cpu, calibrations, request)
    return CapacityPlan(
        request=request,
        plan=plan,
        others=[p for name, p in plans.items() if name != chosen],
        deltas=deltas,
        predictions=predictions,
        cpu_model=cpu,
        calibration_tps=calibrations,
        assumptions=assumptions,
        skipped=list(inputs.skipped),
    )


def _label_of(profile: str, by_label: dict[str, list[RunCost]]) -> str | None:
    """The runs' label to plan ``profile`` with: itself, or its variant with the most validators."""
    if profile in by_label:
        return profile
    variants = [label for label, runs in by_label.items() if runs[0].profile == profile]
    return max(variants, key=lambda v: max(r.workers.get("validators", 0) for r in by_label[v]), default=None)


def _signed_delta(profile: str, plans: dict[str, ProfilePlan], by_label: dict[str, list[RunCost]]) -> str:
    """What ``profile``'s hooks add over ``signed``: ``signed-<profile>`` minus ``signed``, both with
    signatures checked by the same validators; said to be not given when either is not planned.

    ``profile`` itself verifies no signature, so ``profile`` minus ``signed`` would subtract the
    validators' CPU from the hooks' and mean nothing.
    """
    with_hooks = _label_of(f"signed-{profile}", by_label)
    suffix = with_hooks[len(f"signed-{profile}") :] if with_hooks else ""
    pair = [plans.get(with_hooks or ""), plans.get(f"signed{suffix}")]
    if pair[0] is not None and pair[1] is not None and pair[0].cpu_problem is None and pair[1].cpu_problem is None:
        title = f"what {profile}'s policy and surveillance add over signed ({pair[0].profile} minus {pair[1].profile})"
        return _delta_line(pair[0], pair[1], "signed", title)
    return (
        f"what {profile}'s policy and surveillance add over signed: not given; it is signed-{profile} minus signed "
        "with the same validators, each planned from runs at two or more rates the server kept up with "
        f"(cbdc-bench compare --quick --profiles signed signed-{profile} --validators 2 --out DIR)"
    )


def _delta_line(plan: ProfilePlan, other: ProfilePlan | None, name: str, title: str = "") -> str:
    title = title or f"what {plan.profile}'s policy and surveillance add over {name}"
    if other is None:
        return f"{title}: not measured (cbdc-bench compare --quick --profiles {name} {plan.profile} --out DIR)"
    problem = plan.cpu_problem or other.cpu_problem
    if problem is not None:
        return f"{title}: not given ({problem.what})"
    parts = [f"{plan.cores - other.cores:+,.1f} cores"]
    if plan.memory_bytes is not None and other.memory_bytes is not None:
        parts.append(f"{(plan.memory_bytes - other.memory_bytes) / GIB:+,.0f} GiB memory per replica")
    mine, theirs = sum(plan.disk_per_day_bytes.values()), sum(other.disk_per_day_bytes.values())
    if plan.disk_per_day_complete and other.disk_per_day_complete:
        parts.append(f"{(mine - theirs) * 365 / 1e12:+,.1f} TB disk per year per replica")
    else:
        parts.append("disk not comparable (a store is not measured: see missing inputs)")
    return f"{title}: " + ", ".join(parts)


def size_text(n: float | None, unit: str = "") -> str:
    """Bytes in decimal units (``1.3 TB``), or "not measured"."""
    if n is None:
        return "not measured"
    for div, name in ((1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(n) >= div:
            return f"{n / div:,.1f} {name}{unit}"
    return f"{n:,.0f} B{unit}"


def _assumptions(plan: ProfilePlan, cpu: str, calibrations: Sequence[float], request: PlanRequest) -> list[str]:
    cal = (
        f"CPU calibration score {min(calibrations):,.0f}-{max(calibrations):,.0f} transfers/s"
        if calibrations
        else "no calibration score in these files (format version 1)"
    )
    seq = (
        f"the sequencer's state cannot be partitioned: it must fit one machine "
        f"({'fits' if plan.fits_one_machine else 'does NOT fit' if plan.fits_one_machine is False else 'not known'}); "
        f"its one core is {plan.sequencer_core_busy:.0%} busy at {request.rate_tps:,.0f}/s"
        + (f" (saturates near {plan.sequencer_saturation_tps:,.0f}/s)" if plan.sequencer_saturation_tps else "")
    )
    extrapolated = [t.tier for t in plan.tiers if t.extrapolated]
    lo, hi = min(plan.rates_tps, default=0.0), max(plan.rates_tps, default=0.0)
    outside = (
        [
            f"EXTRAPOLATED IN RATE: {request.rate_tps:,.0f}/s lies outside the measured rates "
            f"({lo:,.0f}-{hi:,.0f}/s): the costs are the fitted ones and the batches come from the batch model "
            "alone; measure at and above the planned rate to check them"
        ]
        if plan.rates_tps and not lo <= request.rate_tps <= hi
        else []
    )
    m = plan.batch_model
    return [
        *outside,
        f"CPU measured on {cpu}, {cal}",
        f"per-batch + per-payment cost fitted over {plan.runs} runs at {len(plan.rates_tps)} rates "
        f"({', '.join(f'{r:,.0f}' for r in plan.rates_tps)}/s)",
        f"batches at {request.rate_tps:,.0f}/s: {plan.batches_per_s:,.0f}/s ({plan.batch_regime} regime of the batch "
        f"model: the generator's {m.arrivals.load.operators} gateways tick "
        f"{m.arrivals.ticks_per_s(request.rate_tps):,.0f} times/s, {m.per_tick_at(request.rate_tps):.2f} batches per "
        "tick "
        + (
            "measured while the sequencer was idle (interpolated in rate between those runs)"
            if m.idle_runs
            else f"from the least busy run: no run's sequencer used at most {IDLE_SEQUENCER_SHARE:.0%} of its core, "
            "so below the measured rates the batches, and the per-batch CPU, are too few"
        )
        + "; busy, the "
        f"sequencer's {m.per_batch_ns / 1e3:,.0f} us per batch + {m.per_payment_ns:,.0f} ns per payment"
        + (f" + {m.per_s_ns / 1e9:.2f} cores whatever the rate" if m.per_s_ns else "")
        + f" fill one core; at most {m.arrivals.full_batch(request.rate_tps):,.0f} payments a batch)",
        "a tier scales linearly in cores up to the workers it was measured with; beyond that it is extrapolation"
        + (f" ({', '.join(extrapolated)})" if extrapolated else ""),
        seq,
        *(
            [
                "one-core tiers besides the sequencer (one process or thread: a second core does not help): "
                + "; ".join(
                    f"{o.tier} ({o.what}) {o.busy:.0%} busy at {request.rate_tps:,.0f}/s"
                    + (f", saturates near {o.saturation_tps:,.0f}/s" if o.saturation_tps else "")
                    for o in plan.one_core
                )
                + " by their CPU; on the measured machine they also waited for a core (the trove child runs at "
                "nice 10), which the predicted maximum there counts"
            ]
            if plan.one_core
            else []
        ),
        f"{request.replicas} replicas each hold the sequencer's state, journal and snapshots; "
        f"{request.snapshots_kept} snapshots kept; retention {request.retention_days:g} days",
        "the load generator is excluded (its CPU is used only to predict this machine's maximum)",
        *(
            [
                "kernel (kernel and other): the measured machine's CPU that no process held (softirq and "
                "interrupts for the loopback network and the disk, processes that exited), "
                "per payment; it includes the generator's side of the network, so it is an upper bound for a server"
            ]
            if any(t.tier == KERNEL for t in plan.tiers)
            else []
        ),
    ]
