"""A run's CPU per payment by tier (issue 18), from the same tiers as the capacity plan."""

from __future__ import annotations

import msgspec
import pytest

from loadgen.cli.output import format_summary
from loadgen.harness.cpu_split import cpu_ns_per_payment
from tests.support.plan_fixtures import default_model, synthetic_run


def test_cpu_per_payment_recovers_each_tiers_cost() -> None:
    model = default_model()
    per_payment_only = msgspec.structs.replace(model, per_batch_ns={}, per_tick_ns={})
    run = synthetic_run(per_payment_only, rate_tps=200_000.0, batch_size=1_000.0)
    split = cpu_ns_per_payment(run)
    assert set(split) == model.tiers
    for tier, ns in per_payment_only.per_payment_ns.items():
        assert split[tier] == pytest.approx(ns, abs=0.1), tier
    assert list(split.values()) == sorted(split.values(), reverse=True)
    shown = format_summary(msgspec.structs.replace(run, cpu_ns_per_payment=split))
    assert f"total {sum(split.values()):,.0f}" in shown


def test_a_run_without_ledger_figures_has_no_split() -> None:
    run = synthetic_run(default_model(), rate_tps=1_000.0, batch_size=10.0)
    echo = msgspec.structs.replace(run, summary=msgspec.structs.replace(run.summary, echo=True))
    assert cpu_ns_per_payment(echo) == {}
