"""CPU of the tiers that run outside the server process, from the server's own stats (issue 19).

A result file's ``server.cpu_s`` is the server process's CPU. Local validator processes are its
children, not its threads: their CPU is reported by the server in its stats
(``stats["validators"]["cpu_s"]``, ``engine.validator_api.ValidatorStats``), and this turns the
two stats snapshots around the measured window into the result file's ``server.tier_cpu_s`` /
``tier_workers`` entries, so every ``run``/``load`` with ``--validators N`` records the tier's CPU
(before, only ``benchmarks/signed_tiers.py`` filled them). The capacity plan and
``cpu_ns_per_payment`` read the field first (``loadgen.plan.inputs``).
"""

from __future__ import annotations

from typing import Any


def measured_tiers(stats_start: dict[str, Any], stats_end: dict[str, Any]) -> tuple[dict[str, float], dict[str, int]]:
    """({tier: CPU seconds over the window}, {tier: workers}) of the out-of-process tiers the stats cover.

    Only a local validator tier with workers counts: the inline tier (``--validators 0``) verifies
    on the server's thread (its CPU is ``server.cpu_s``), and Ray actors run on other machines
    (their CPU is not the server's to report). A window in which a worker died is left out: the
    dead worker took its CPU with it, so the difference would understate the tier (empty: not
    measured, as in a file from before).
    """
    a, b = stats_start.get("validators"), stats_end.get("validators")
    if not isinstance(a, dict) or not isinstance(b, dict) or b.get("kind") != "local":
        return {}, {}
    workers = _int(b.get("workers"))
    cpu_s = _float(b.get("cpu_s")) - _float(a.get("cpu_s"))
    if workers <= 0 or _int(b.get("worker_deaths")) != _int(a.get("worker_deaths")) or cpu_s < 0:
        return {}, {}
    return {"validators": cpu_s}, {"validators": workers}


def _float(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else 0
