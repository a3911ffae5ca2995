"""Where a run's CPU went, per payment: the capacity plan's tiers divided by the payments applied.

``loadgen.plan.inputs.run_cost`` already splits a run's measured window into CPU by tier (the
server's framing and I/O, the ledger, each hook on the sequencer's thread, the risk model's
features and inference, the trove's child process, validators, the generator); this divides each
tier by the payments the ledger applied in the window, so a result file says, e.g. for
``realistic``, how many ns of CPU each payment cost in features, inference, trove, server and
generator (issue 18). One code path with the plan: the two never disagree.
"""

from __future__ import annotations

from loadgen.plan.inputs import run_cost
from loadgen.results.run import RunResult


def cpu_ns_per_payment(result: RunResult) -> dict[str, float]:
    """CPU ns per applied payment by tier, largest first; empty when the run has no ledger figures."""
    cost = run_cost(result)
    if cost is None or cost.transfers_per_s <= 0:
        return {}
    per = {tier: ns / cost.transfers_per_s for tier, ns in cost.tier_ns_per_s.items()}
    return {tier: round(ns, 1) for tier, ns in sorted(per.items(), key=lambda kv: -kv[1])}
