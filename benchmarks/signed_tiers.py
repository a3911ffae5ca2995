"""Signed payments end to end by validation tier: maximum sustainable rates and CPU per payment by tier.

Run from the repository root on a quiet machine (not part of the test suite; about 4 minutes per
profile with the defaults on a 2-core machine, so ``--profiles signed`` for one sweep):

    python benchmarks/signed_tiers.py [--out results/signed-tiers] [--accounts 100000] [--profiles signed]

For each of ``signed`` and ``signed-full`` with 0 (inline: the sequencer's own thread), 1 and 2
local validator processes it starts one server, then searches its maximum sustainable rate
(``loadgen.harness.search``: bracket from a start estimated from this machine's Ed25519 rate,
bisect to ``--precision``, no confirmation runs) against the shipped scenario's p99 SLO (or
``--slo-ms``). A trial that is not sustained is run again at the same rate (``--retries``, once by
default) and counts as sustained if a repeat is: on a shared machine, or under the hypervisor's
steal, interference only ever adds latency, so a lone failure is as likely noise as the limit,
while a pass is not luck; with 2-second trials and no repeats, one noisy trial sent a search down
to a third of its answer (README, issue 19). Each trial is a ``load`` of that server
(``loadgen.harness.measured.measure``: signed pools signed before the trial, outside its window;
warm-up, measured window, drain, conservation audit); before the next trial the script waits for
the server to have nothing queued or being verified, so a trial past the maximum leaves no
backlog to the next one, then measures the machine's Ed25519 speed for ``--trial-calibration-s``
(0.5 s) on the idle machine: the host's speed moved by up to 40% within minutes here with no steal
recorded, so each trial carries its own calibration (in its result file too), and each tier's
``share_of_cores`` judges its maximum against the one before its highest sustained trial
(``share_of_validator_cpu`` against the validators' own CPU per payment in that trial). A trial
whose window lost 5% of the cores to the host's steal (``verdict.steal_spoiled``) is measured
again, up to ``--steal-retries`` times (2), and the least stolen kept
(``loadgen.results.steal.least_stolen``, as ``benchmarks/plan_first_cut.py`` and ``compare`` do):
the attempts set aside go to ``spoiled/`` (never read by the plan), and a trial spoiled in every
attempt is marked ``spoiled`` in ``signed-tiers.json``.

Written to ``--out`` (a new directory ``signed-tiers-<stamp>``):

* every trial's result file (the ``run`` format: ``server.tier_cpu_s["validators"]`` and
  ``tier_workers``, as every run with ``--validators N`` records them, and ``cpu_ns_per_payment``):
  what ``cbdc-bench plan --results DIR`` reads;
* ``signed-tiers.json`` (``SignedTiers``): per tier the maximum sustainable rate and the CPU per
  applied signed payment by process (generator, server, validator processes: the result file's
  ``cpu_ns_per_payment`` grouped) at the highest sustained trial, the trials, and the machine's
  Ed25519 calibration.

One JSON line per tier is printed as it finishes. The figures are wall-clock bound: on a shared
machine they say what the machine gave at the time (the load average is recorded with each tier,
the cores the hypervisor stole with each trial). ``--validator-nice 0,10`` searches each tier
once per nice of the local validator processes (``serve --validator-nice``; a tier with 0
validators has none and is searched once): the A/B of that setting in one run;
``--validator-min-parcel 32,128`` the same for the parcel size (``serve --validator-min-parcel``),
``--validator-policy normal,batch`` for the workers' scheduling policy and ``--validator-gather-us
0,1000`` for the wait for a tick's other Submits (several given: every combination). ``--tick-us
5000,2000`` searches each tier once per generator tick (``load --tick-us``; 0 = the generator's
auto tick): the wait in the operators' outboxes against the generator's and the server's cost per
frame.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import msgspec

from engine.profiles import load_scenario, trove_needed
from engine.signing import ed25519_verify_rate
from loadgen.generator.gateway import GatewayError, LoadConfig, new_event_loop
from loadgen.harness.admin import AdminClient
from loadgen.harness.calibration import ED25519_RATE, Calibration, cpu_calibration, with_ed25519
from loadgen.harness.measured import run_measure
from loadgen.harness.search import RunOutcome, find_max_sustainable
from loadgen.harness.server import running_server, server_arguments
from loadgen.plan.inputs import GENERATOR, SPOILED
from loadgen.results.run import RunResult, save
from loadgen.results.steal import least_stolen, result_steal
from loadgen.results.verdict import steal_spoiled

PROFILES = ("signed", "signed-full")
#: ``SignedTiers.format`` (history in its docstring).
SIGNED_TIERS_FORMAT = 7
VALIDATORS = ("0", "1", "2")
#: Start of each search as a share of (Ed25519 verifications per CPU second x max(workers, 1)):
#: near the expected answer, so the bracket takes few trials (the answer is found either way).
START_SHARE = {"0": 0.5, "1": 0.6, "2": 0.6}
#: ``serve --validator-NAME`` settings that ``--validator-NAME A,B`` searches once per value (their product).
SETTINGS = ("nice", "min-parcel", "policy", "gather-us")
#: Default ``--steal-retries``: as ``benchmarks/plan_first_cut.py`` and ``compare --steal-retries``.
STEAL_RETRIES = 2


class TierCpu(msgspec.Struct, frozen=True):
    """CPU microseconds per applied signed payment over a trial's measured window, by tier: the
    trial's result file's ``cpu_ns_per_payment`` (``loadgen.harness.cpu_split``, the capacity
    plan's tiers) grouped into the three processes."""

    generator_us: float
    #: The server process: framing, the sequencer, the ledger and hooks, feeding the validators
    #: (and, with 0 validators, the verification itself): every plan tier but these two.
    server_us: float
    #: The local validator processes (``server.tier_cpu_s["validators"]``, which every run with
    #: ``--validators N`` records; 0 with the inline tier: its verification is in ``server_us``).
    validators_us: float
    total_us: float


class TrialRow(msgspec.Struct, frozen=True):
    offered_tps: float
    achieved_tps: float
    p99_ms: float
    sustained: bool
    file: str
    #: 0 for a rate's first trial, k for its k-th repeat after a failure (``--retries``).
    repeat: int = 0
    #: Cores the hypervisor took over the trial's window (``machine_cpu``), -1 if not recorded.
    stolen_cores: float = -1.0
    #: Attempts at this trial set aside because the host's steal spoiled them (``--steal-retries``,
    #: saved under ``spoiled/``); ``spoiled``: every attempt was, this (least-stolen) one too.
    set_aside: int = 0
    spoiled: bool = False
    #: Ed25519 verifications per CPU second of one core, measured just before the trial (``--trial-calibration-s``
    #: on the idle machine, after the last trial's backlog): the host's speed at the time, which
    #: moved by up to 40% within minutes on the shared VM with no steal recorded. -1: not measured.
    ed25519_verify_per_cpu_s: float = -1.0


class TierResult(msgspec.Struct, frozen=True):
    profile: str
    validators: str
    #: ``serve --validator-nice`` of this tier's server; None: the server's default.
    validator_nice: int | None
    max_sustainable_tps: float
    #: The search's note (``sustained up to the search ceiling``, ``not sustained even at``...), "" if bracketed.
    note: str
    slo_p99_ms: float
    #: The offered rate of the trial the CPU figures come from (the highest sustained one).
    cpu_at_tps: float | None
    cpu_per_payment: TierCpu | None
    trials: list[TrialRow]
    wall_s: float
    load_average: tuple[float, float, float]
    #: ``serve --validator-min-parcel`` of this tier's server; None: the server's default.
    validator_min_parcel: int | None = None
    #: ``serve --validator-policy`` and ``--validator-gather-us`` of this tier's server (None: default).
    validator_policy: str | None = None
    validator_gather_us: int | None = None
    #: The generator's ``--tick-us`` in this tier's trials (0: its auto tick; None: before format 6).
    tick_us: int | None = None
    #: The maximum as a share of the machine's cores' verification rate at the time: max / (cores x
    #: the Ed25519 rate measured just before the highest sustained trial). Issue 19's target is 0.60
    #: with 2 validators on 2 cores. None: nothing sustained, or no per-trial calibration.
    share_of_cores: float | None = None
    #: ``os.cpu_count()`` of that share.
    cores: int | None = None
    #: The same maximum against what the validator processes themselves spent per payment in that
    #: trial: max / (cores / ``cpu_per_payment.validators_us``), the cores' verification rate at the
    #: speed the trial ran at (the tenth session's check). None: inline tier, or nothing sustained.
    share_of_validator_cpu: float | None = None


class SignedTiers(msgspec.Struct, frozen=True):
    """What ``benchmarks/signed_tiers.py`` measured (``signed-tiers.json``).

    ``format`` history: 1 = CPU per *settled* payment, computed here from the servers' stats; 2 =
    CPU per *applied* payment, the result files' ``cpu_ns_per_payment`` grouped (the same figures
    as the capacity plan; in a sustained trial the two counts differ by the few replies of the
    window's edges); 3 = a failed trial is repeated (``retries``; trials carry ``repeat`` and
    ``stolen_cores``), tiers carry ``validator_nice``; 4 = tiers carry ``validator_min_parcel``;
    5 = a trial whose window the host's steal spoiled is measured again (``steal_retries``; trials
    carry ``set_aside`` and ``spoiled``), tiers carry ``validator_policy`` and ``validator_gather_us``;
    6 = tiers carry ``tick_us`` (``--tick-us``); 7 = each trial is preceded by its own Ed25519
    calibration (trials carry ``ed25519_verify_per_cpu_s``, which their result files' calibration
    holds too), tiers carry ``share_of_cores`` against the one before their highest sustained trial
    and ``share_of_validator_cpu`` against the validators' own CPU per payment in that trial.
    """

    kind: str
    format: int
    created_utc: str
    accounts: int
    seconds: float
    warmup: float
    precision: float
    retries: int
    ed25519_verify_per_cpu_s: float
    engine_calibration_tps: float
    tiers: list[TierResult]
    steal_retries: int = 0


def tier_cpu(result: RunResult) -> TierCpu | None:
    """CPU per applied payment by process, from the result file's own split (None without it)."""
    split = result.cpu_ns_per_payment
    if not split:
        return None
    generator = split.get(GENERATOR, 0.0) / 1e3
    validators = split.get("validators", 0.0) / 1e3
    total = sum(split.values()) / 1e3
    return TierCpu(
        generator_us=round(generator, 2),
        server_us=round(total - generator - validators, 2),
        validators_us=round(validators, 2),
        total_us=round(total, 2),
    )


def trial_calibration(calibration: Calibration, seconds: float) -> Calibration:
    """``calibration`` with its Ed25519 rate measured now for ``seconds`` (the search's own, from its
    start, if ``seconds`` is 0)."""
    return with_ed25519(calibration, seconds) if seconds > 0 else calibration


def wait_idle(host: str, port: int, timeout_s: float = 60.0) -> None:
    """Block until the server has nothing queued and nothing being verified (or ``timeout_s``)."""

    async def poll() -> None:
        admin = AdminClient(host, port)
        await admin.connect()
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                stats = await admin.stats()
                tier = stats.get("validators") or {}
                if not stats.get("queue_transfers") and not tier.get("queue_transfers"):
                    return
                await asyncio.sleep(0.1)
        finally:
            admin.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(poll())


def search_tier(
    profile: str,
    validators: str,
    args: argparse.Namespace,
    out: Path,
    settings: dict[str, str],
    tick_us: int = 0,
) -> TierResult:
    """One server for ``profile`` with ``validators`` (and the ``serve --validator-*`` ``settings``,
    flag name without ``--validator-`` -> value), its maximum sustainable rate searched with the
    generator's tick at ``tick_us`` (0: auto)."""
    t0 = time.perf_counter()
    rows: list[TrialRow] = []
    best: RunResult | None = None
    best_ed25519 = -1.0
    with contextlib.ExitStack() as stack:
        extra: tuple[str, ...] = ("--validators", validators)
        for name, value in settings.items():
            extra += (f"--validator-{name}", value)
        if trove_needed(profile, None):  # signed-full keeps a surveillance trove: a fresh one, removed after
            extra += ("--trove", stack.enter_context(tempfile.TemporaryDirectory(prefix="cbdc-signed-tiers-trove-")))
        server_args = server_arguments(
            profile=profile, accounts=args.accounts, seed=args.seed, operators=2, extra=extra
        )
        server = stack.enter_context(running_server(server_args, accounts=args.accounts))

        def measure(rate: float) -> RunOutcome:
            """A trial at ``rate``, repeated up to ``--retries`` times while it is not sustained."""
            for repeat in range(args.retries + 1):
                outcome = trial(rate, repeat)
                if outcome.sustained:
                    break
            return outcome

        def trial(rate: float, repeat: int) -> RunOutcome:
            nonlocal best, best_ed25519
            try:
                result, spoiled = least_stolen(lambda: load(rate), result_steal, args.steal_retries)
            except GatewayError as exc:  # a trial that could not run counts as not sustained
                rows.append(TrialRow(rate, 0.0, -1.0, False, f"failed: {exc}", repeat))
                return RunOutcome(offered_tps=rate, achieved_tps=0.0, p99_ms=float("inf"), sustained=False)
            for attempt in spoiled:  # kept, apart: never read as the plan's inputs (``plan.inputs.SPOILED``)
                save(attempt, out / SPOILED)
            s = result.summary
            stolen_cores, of_cores = result_steal(result)
            # Spoiled in every attempt: the least stolen is kept, marked (steal only adds latency, so
            # its pass still counts; its failure is repeated by ``--retries`` like any other).
            still_spoiled = steal_spoiled(stolen_cores, of_cores)
            ok = s.exit_status == 0
            path = save(result, out)
            stolen = -1.0 if result.machine_cpu is None else round(stolen_cores, 3)
            measured = result.environment.calibration  # the one just before this attempt (``load``)
            ed25519 = -1.0 if measured is None else measured.rates.get(ED25519_RATE, -1.0)
            rows.append(
                TrialRow(
                    rate,
                    s.achieved_tps,
                    s.p99_ms,
                    ok,
                    path.name,
                    repeat,
                    stolen,
                    len(spoiled),
                    still_spoiled,
                    round(ed25519),
                )
            )
            if ok and (best is None or rate > best.summary.offered_tps):
                best, best_ed25519 = result, ed25519
            return RunOutcome(
                offered_tps=rate,
                achieved_tps=s.achieved_tps,
                p99_ms=s.p99_ms,
                generator_kept_schedule=s.generator_kept_schedule,
                scheduled_tps=s.scheduled_tps,
                sustained=ok,
            )

        def load(rate: float) -> RunResult:
            """One load of the server at ``rate`` (after it has nothing left of the last one), the
            machine's Ed25519 speed measured just before it and kept in the result's calibration."""
            wait_idle(server.host, server.port)
            calibration = trial_calibration(args.calibration, args.trial_calibration_s)
            config = LoadConfig(
                host=server.host,
                port=server.port,
                rate_tps=rate,
                seconds=args.seconds,
                warmup=args.warmup,
                drain=args.drain,
                seed=args.seed,
                signed=True,
                tick_us=tick_us,
            )
            return run_measure(
                config,
                kind="run",
                server_pid=server.pid,
                audit=True,
                targets=args.targets,
                calibration=calibration,
                server_args=tuple(server_args),
                validators=validators,
            )

        start = START_SHARE[validators] * args.ed25519 * max(int(validators), 1)
        start = min(max(round(start, -2), args.min), args.max)
        found = find_max_sustainable(
            measure,
            slo_p99_ms=args.targets.slo_p99_ms,
            start_tps=start,
            max_tps=args.max,
            min_tps=args.min,
            precision=args.precision,
            confirm_repeats=0,
            growth=args.growth,
        )
    note = "" if found.note == "confirmed" or found.note.startswith("confirmation") else found.note
    cores = os.cpu_count() or 1
    share = None if best_ed25519 <= 0 else round(found.max_sustainable_tps / (cores * best_ed25519), 3)
    cpu = None if best is None else tier_cpu(best)
    by_validators = None
    if cpu is not None and cpu.validators_us > 0:
        by_validators = round(found.max_sustainable_tps * cpu.validators_us / (cores * 1e6), 3)
    return TierResult(
        profile=profile,
        validators=validators,
        validator_nice=int(settings["nice"]) if "nice" in settings else None,
        validator_min_parcel=int(settings["min-parcel"]) if "min-parcel" in settings else None,
        validator_policy=settings.get("policy"),
        validator_gather_us=int(settings["gather-us"]) if "gather-us" in settings else None,
        tick_us=tick_us,
        share_of_cores=share,
        cores=cores,
        max_sustainable_tps=round(found.max_sustainable_tps),
        note=note,
        slo_p99_ms=args.targets.slo_p99_ms,
        cpu_at_tps=None if best is None else best.summary.offered_tps,
        cpu_per_payment=cpu,
        share_of_validator_cpu=by_validators,
        trials=rows,
        wall_s=round(time.perf_counter() - t0, 1),
        load_average=tuple(round(x, 2) for x in os.getloadavg()),  # type: ignore[arg-type]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results", help="directory for the new signed-tiers-<stamp> directory")
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated (default: both)")
    parser.add_argument("--validators", default=",".join(VALIDATORS), help="comma-separated (default: 0,1,2)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per trial")
    parser.add_argument(
        "--retries", type=int, default=1, help="repeats of a trial that is not sustained, at the same rate (default 1)"
    )
    parser.add_argument(
        "--steal-retries",
        type=int,
        default=STEAL_RETRIES,
        help="measure a trial again, up to this many times, while the host's steal spoiled its window (5%% of "
        f"the cores, the verdict's rule; the least stolen kept, the others under spoiled/; default {STEAL_RETRIES})",
    )
    for name in SETTINGS:
        parser.add_argument(
            f"--validator-{name}",
            default="",
            help=f"comma-separated serve --validator-{name} values, each searched (default: the server's)",
        )
    parser.add_argument(
        "--tick-us",
        default="0",
        help="comma-separated generator ticks in us (load --tick-us), each searched (default 0: the auto tick)",
    )
    parser.add_argument(
        "--trial-calibration-s",
        type=float,
        default=0.5,
        help="seconds of Ed25519 calibration on the idle machine before each trial (0: the search's one, at its "
        "start); each tier's share_of_cores is judged against the one before its highest sustained trial",
    )
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--drain", type=float, default=2.0, help="seconds a trial waits for late replies")
    parser.add_argument("--min", type=float, default=500, help="lowest rate a search tries")
    parser.add_argument("--max", type=float, default=64_000, help="highest rate a search tries")
    parser.add_argument("--precision", type=float, default=0.1)
    parser.add_argument("--growth", type=float, default=1.5, help="bracket step (multiplier)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--slo-ms", type=float, default=None, help="p99 SLO of the searches (default: the shipped scenario's)"
    )
    args = parser.parse_args()
    targets = load_scenario(None).compare
    if args.slo_ms is not None:
        targets = msgspec.structs.replace(targets, slo_p99_ms=args.slo_ms)
    args.targets = targets
    # Key registry and signed pools: a fresh cache, removed after (unless CBDC_CACHE_DIR names one).
    own_cache = "CBDC_CACHE_DIR" not in os.environ
    if own_cache:
        os.environ["CBDC_CACHE_DIR"] = tempfile.mkdtemp(prefix="cbdc-signed-tiers-")
    try:
        args.calibration = with_ed25519(cpu_calibration())
        args.ed25519 = ed25519_verify_rate()
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out = Path(args.out) / f"signed-tiers-{created.replace(':', '').replace('-', '')}"
        tiers: list[TierResult] = []
        given = {name: getattr(args, f"validator_{name.replace('-', '_')}") for name in SETTINGS}
        axes = [[(name, v) for v in value.split(",")] for name, value in given.items() if value]
        ticks = [int(v) for v in args.tick_us.split(",")]
        for profile in args.profiles.split(","):
            for validators in args.validators.split(","):
                local = validators != "0"  # the inline tier has no validator processes to set
                for combo in itertools.product(*axes) if local else [()]:
                    for tick_us in ticks:
                        tier = search_tier(profile, validators, args, out, dict(combo), tick_us)
                        tiers.append(tier)
                        print(msgspec.json.encode(msgspec.structs.replace(tier, trials=[])).decode(), flush=True)
        summary = SignedTiers(
            kind="signed-tiers",
            format=SIGNED_TIERS_FORMAT,
            created_utc=created,
            accounts=args.accounts,
            seconds=args.seconds,
            warmup=args.warmup,
            precision=args.precision,
            retries=args.retries,
            steal_retries=args.steal_retries,
            ed25519_verify_per_cpu_s=round(args.ed25519),
            engine_calibration_tps=round(args.calibration.engine_tps),
            tiers=tiers,
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "signed-tiers.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary), indent=1))
        print(f"results in {out}")
    finally:
        if own_cache:
            with contextlib.suppress(OSError):
                shutil.rmtree(os.environ.pop("CBDC_CACHE_DIR"))


if __name__ == "__main__":
    main()
