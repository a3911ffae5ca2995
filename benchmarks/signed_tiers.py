"""Signed payments end to end by validation tier: CPU per payment and short maximum-rate searches.

Run from the repository root (not part of the test suite; each trial is a ``cbdc-bench run``):

    python benchmarks/signed_tiers.py [--accounts 100000] [--cpu-rate 2000] [--seconds 2]

For each tier (unsigned ``baseline`` as the reference; ``signed`` with 0 = inline, 1 and 2 local
validator processes) it prints one JSON line:

* ``cpu_us_per_payment``: server process CPU plus the validator workers' CPU (the tier's own
  counter, ``ValidatorStats.cpu_s``) over the measured window, per settled payment, at a fixed
  rate every tier sustains (``--cpu-rate``). Per CPU second, so a shared machine's other load
  moves it little: this is what a capacity plan multiplies.
* ``max_sustainable_tps``: a short search (``loadgen.harness.search``: bracket, bisect to
  ``--precision``, no confirmation runs) against the shipped scenario's SLO (or ``--slo-ms``: a
  loaded shared machine misses 20 ms at any rate, from scheduling alone). Wall-clock bound:
  on a shared machine it says what this machine gave at that time; compare tiers taken in one
  invocation (the order of tiers is fixed, so note the load average printed with each line).
* ``ed25519_verify_per_cpu_s``: the calibration every signed result file carries.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import msgspec

from engine.profiles import load_scenario
from engine.signing import ed25519_verify_rate
from loadgen.generator.gateway import LoadConfig
from loadgen.harness.measured import run_benchmark
from loadgen.harness.search import RunOutcome, find_max_sustainable
from loadgen.results.run import RunResult

TIERS: tuple[tuple[str, str | None], ...] = (("baseline", None), ("signed", "0"), ("signed", "1"), ("signed", "2"))


def _trial(profile: str, validators: str | None, rate: float, args: argparse.Namespace) -> RunResult:
    config = LoadConfig(rate_tps=rate, seconds=args.seconds, warmup=args.warmup, drain=5.0, seed=args.seed)
    return run_benchmark(
        config,
        profile=profile,
        accounts=args.accounts,
        validators=validators,
        targets=args.targets,
    )


def cpu_per_payment_us(result: RunResult) -> float | None:
    """(server CPU + validator workers' CPU) over the window per settled payment, in us."""
    if result.server.cpu_s is None or not result.summary.settled:
        return None

    def workers_cpu(stats: dict[str, Any]) -> float:
        tier = stats.get("validators")
        return float(tier.get("cpu_s", 0.0)) if isinstance(tier, dict) else 0.0

    workers = workers_cpu(result.server.stats_end) - workers_cpu(result.server.stats_start)
    return (result.server.cpu_s + workers) / result.summary.settled * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--cpu-rate", type=float, default=2_000, help="offered rate of the CPU-per-payment runs")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per trial")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--start", type=float, default=4_000, help="first rate of each search")
    parser.add_argument("--max", type=float, default=64_000, help="highest rate a search tries")
    parser.add_argument("--precision", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-search", action="store_true", help="only the CPU-per-payment runs")
    parser.add_argument(
        "--slo-ms", type=float, default=None, help="p99 SLO of the searches (default: the shipped scenario's)"
    )
    args = parser.parse_args()
    targets = load_scenario(None).compare
    if args.slo_ms is not None:
        targets = msgspec.structs.replace(targets, slo_p99_ms=args.slo_ms)
    args.targets = targets
    os.environ.setdefault("CBDC_CACHE_DIR", os.path.join(tempfile.gettempdir(), "cbdc-bench-signed-tiers"))
    calibration = ed25519_verify_rate()
    for profile, validators in TIERS:
        fixed = _trial(profile, validators, args.cpu_rate, args)
        line: dict[str, Any] = {
            "profile": profile,
            "validators": validators,
            "ed25519_verify_per_cpu_s": round(calibration),
            "cpu_rate_tps": args.cpu_rate,
            "cpu_us_per_payment": cpu_per_payment_us(fixed),
            "p50_ms_at_cpu_rate": round(fixed.summary.p50_ms, 2),
            "p99_ms_at_cpu_rate": round(fixed.summary.p99_ms, 2),
        }
        if not args.no_search:

            def measure(rate: float, profile: str = profile, validators: str | None = validators) -> RunOutcome:
                r = _trial(profile, validators, rate, args)
                s = r.summary
                return RunOutcome(
                    offered_tps=rate,
                    achieved_tps=s.achieved_tps,
                    p99_ms=s.p99_ms,
                    generator_kept_schedule=s.generator_kept_schedule,
                    scheduled_tps=s.scheduled_tps,
                    sustained=s.exit_status == 0,
                )

            found = find_max_sustainable(
                measure,
                slo_p99_ms=args.targets.slo_p99_ms,
                start_tps=args.start,
                max_tps=args.max,
                min_tps=250,
                precision=args.precision,
                confirm_repeats=0,
            )
            line["slo_p99_ms"] = args.targets.slo_p99_ms
            line["max_sustainable_tps"] = round(found.max_sustainable_tps)
            line["trials"] = len(found.trials)
        line["load_average"] = [round(x, 1) for x in os.getloadavg()]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
