"""The figures a run is judged by, and the one function that judges them.

Defined once here; ``run``, ``load``, ``compare`` (every search trial and equal-load run) and
``report`` all call ``judge``, so no two commands can disagree about the same run.

Figures (all over the transfers *scheduled* inside the measured window):

* **scheduled**: transfers the schedule put in the window;
* **settled**: of those, transfers answered with a ledger result, i.e. any result code except
  ``overloaded`` (shed by admission control) and ``hook_error`` (the batch was refused because a
  hook failed: no ledger decision). A refusal by the ledger (``insufficient_funds``, ``frozen``,
  ...) is a result, so it counts. Transfers answered by an Error frame or never answered are not
  settled. Each transfer is answered at most once, so settled <= scheduled;
* **achieved** = settled / scheduled, never above 100% (replies that arrive after the window still
  count for the transfer they answer, and nothing is counted twice);
* **shed** (``overloaded`` + ``hook_error``) and **unanswered** (sent, no reply when the drain
  ended; unsent transfers are the generator's) are shown beside it.

Verdicts, each with its own exit status so CI can gate on it:

=====================  ======  =================================================================
verdict                status  when
=====================  ======  =================================================================
incomplete             5       the run cannot be judged: a failure (server died, connection
                               lost), a failed audit, protocol errors, no transfer answered, or
                               unanswered transfers while the latency seen so far is within the
                               SLO (their true latency is unknown)
sustained              0       achieved >= the minimum ratio and p99 <= the SLO
generator fell behind  4       the targets were missed while the generator did not keep its
                               schedule (unsent transfers, or send lag p99 over the late
                               threshold): the miss may be the generator's, not the server's
not sustained          3       the targets were missed with the generator on schedule
=====================  ======  =================================================================

They are tested in that order. Latency is taken from the *scheduled* time, so a generator's lag
only adds to it: a run that meets the targets although the generator lagged is sustained (the
system, generator included, kept up), and only a miss needs the generator ruled out. Unanswered
transfers do not make a run incomplete when the latency already recorded (their censored
latency, a lower bound, included) is over the SLO: it failed the SLO whatever their true latency.
A missed target on a virtual machine whose host took at least 5% of its cores over the window
(hypervisor steal, ``loadgen.results.machine_cpu``) keeps its verdict and exit status; its reason
says how much was stolen: the miss may be the host's, not the system's.
"""

from __future__ import annotations

import enum

import msgspec

from engine.profiles import CompareSettings

#: Result codes that are not a ledger decision: shed (``overloaded``) or refused because a hook failed.
UNSETTLED_CODES = ("overloaded", "hook_error")


class Kind(enum.Enum):
    """A verdict; the value is the exit status of ``run`` and ``load``."""

    SUSTAINED = 0
    NOT_SUSTAINED = 3
    GENERATOR_BEHIND = 4
    INCOMPLETE = 5

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def exit_status(self) -> int:
        return self.value


_LABELS = {
    Kind.SUSTAINED: "sustained",
    Kind.NOT_SUSTAINED: "not sustained",
    Kind.GENERATOR_BEHIND: "generator fell behind",
    Kind.INCOMPLETE: "incomplete",
}


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    """What a run is judged by (see the module docstring for each definition)."""

    scheduled: int  # transfers scheduled in the measured window
    settled: int
    shed: int
    answered: int  # measured transfers answered by a Results frame (settled + shed)
    unanswered: int
    unsent: int
    p99_ms: float  # from the schedule, censored unanswered transfers included
    generator_kept_schedule: bool
    send_lag_p99_ms: float = 0.0
    failures: tuple[str, ...] = ()
    audit_ok: bool | None = None
    protocol_errors: int = 0
    #: Cores the hypervisor took from the machine over the window, on average (``MachineCpu.stolen_cores``).
    stolen_cores: float = 0.0
    cores: int = 0  # the machine's cores (0: not recorded)

    @classmethod
    def of_codes(cls, codes: dict[str, int], **kwargs: object) -> Figures:
        """Settled and shed from measured transfers' result codes (name -> count)."""
        shed = sum(codes.get(c, 0) for c in UNSETTLED_CODES)
        answered = sum(codes.values())
        return cls(settled=answered - shed, shed=shed, answered=answered, **kwargs)  # type: ignore[arg-type]

    @property
    def achieved_ratio(self) -> float:
        """Settled / scheduled; 0 when nothing was scheduled."""
        return min(self.settled / self.scheduled, 1.0) if self.scheduled > 0 else 0.0


class Verdict(msgspec.Struct, frozen=True):
    kind: Kind
    reason: str = ""

    @property
    def exit_status(self) -> int:
        return self.kind.exit_status

    @property
    def sustained(self) -> bool:
        return self.kind is Kind.SUSTAINED

    @property
    def line(self) -> str:
        """``verdict: sustained`` or ``verdict: <label> (<reason>)``."""
        return f"verdict: {self.kind.label}" + (f" ({self.reason})" if self.reason else "")


#: A miss is flagged as possibly the host's when steal took at least this share of the machine's cores.
STEAL_NOTE_SHARE = 0.05


def steal_spoiled(stolen_cores: float, cores: int) -> bool:
    """Whether the host's steal took at least ``STEAL_NOTE_SHARE`` of the machine's cores over a window.

    One rule for the verdict's note and for the searches and scripts that re-run such a window
    (``compare --steal-retries``, ``benchmarks/plan_first_cut.py``, the plan's marks).
    """
    return cores > 0 and stolen_cores >= STEAL_NOTE_SHARE * cores


def _stolen(f: Figures) -> str:
    """A note on the host's steal when it was large enough to explain a miss ('' otherwise)."""
    if not steal_spoiled(f.stolen_cores, f.cores):
        return ""
    return f"; the host stole {f.stolen_cores:.2f} of {f.cores} cores (steal): the miss may be the host's, re-run"


def meets_targets(achieved_ratio: float, p99_ms: float, *, slo_p99_ms: float, min_achieved_ratio: float) -> bool:
    """The targets themselves: achieved >= the minimum ratio and p99 <= the SLO (``judge`` and the search)."""
    return achieved_ratio >= min_achieved_ratio and p99_ms <= slo_p99_ms


def _missed(f: Figures, settings: CompareSettings) -> str:
    """Why the targets were missed ('' when they were met)."""
    why = []
    if f.achieved_ratio < settings.min_achieved_ratio:
        why.append(
            f"settled {f.achieved_ratio:.1%} of {f.scheduled:,} scheduled < {settings.min_achieved_ratio:.0%}; "
            f"shed {f.shed:,}, unanswered {f.unanswered:,}"
        )
    if f.p99_ms > settings.slo_p99_ms:
        bound = " (a lower bound: unanswered transfers)" if f.unanswered else ""
        why.append(f"p99 {f.p99_ms:,.2f} ms > SLO {settings.slo_p99_ms:g} ms{bound}")
    return "; ".join(why)


def judge(f: Figures, settings: CompareSettings | None = None) -> Verdict:
    """The verdict on a run's figures against ``settings``' targets (the scenario's, or the defaults)."""
    settings = settings or CompareSettings()
    if f.failures:
        return Verdict(Kind.INCOMPLETE, "; ".join(f.failures))
    if f.audit_ok is False:
        return Verdict(Kind.INCOMPLETE, "conservation audit failed")
    if f.protocol_errors:
        return Verdict(Kind.INCOMPLETE, f"{f.protocol_errors:,} protocol errors")
    if f.scheduled == 0:
        return Verdict(Kind.INCOMPLETE, "no transfer scheduled in the measured window")
    if f.answered == 0:
        return Verdict(Kind.INCOMPLETE, f"none of {f.scheduled:,} scheduled transfers answered")
    if f.unanswered and f.p99_ms <= settings.slo_p99_ms:
        return Verdict(Kind.INCOMPLETE, f"{f.unanswered:,} transfers unanswered, their latency unknown")
    if meets_targets(
        f.achieved_ratio, f.p99_ms, slo_p99_ms=settings.slo_p99_ms, min_achieved_ratio=settings.min_achieved_ratio
    ):
        return Verdict(Kind.SUSTAINED)
    missed = _missed(f, settings)
    if not f.generator_kept_schedule:
        return Verdict(
            Kind.GENERATOR_BEHIND,
            f"{missed}; generator send lag p99 {f.send_lag_p99_ms:,.2f} ms, unsent {f.unsent:,}: "
            f"add --processes or lower --rate{_stolen(f)}",
        )
    return Verdict(Kind.NOT_SUSTAINED, missed + _stolen(f))
