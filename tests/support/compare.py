"""Helpers for end-to-end ``compare`` tests: a tiny plan, and judging a busy machine's trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from loadgen.results.compare import CompareSummary, Plan
from loadgen.results.run import load, verdict_of
from loadgen.results.verdict import Kind

#: Seconds-long phases on a few thousand accounts: compare's machinery, not a measurement.
TINY_PLAN = Plan(
    mode="test",
    accounts=5_000,
    repeats=2,
    precision=0.1,
    confirm_repeats=1,
    search_warmup_s=0.3,
    search_seconds=0.7,
    equal_warmup_s=0.3,
    equal_seconds=0.7,
    drain_s=1.0,
)


def tiny_plan(**overrides: Any) -> Plan:
    """``TINY_PLAN`` with ``overrides`` (validated as any ``Plan``)."""
    return msgspec.structs.replace(TINY_PLAN, **overrides)


def generator_fell_behind(summary: CompareSummary, folder: Path) -> str | None:
    """Why the search trials that failed cannot count against the server, or None.

    Judged by the one verdict (``loadgen.results.verdict``) of each failed trial's own result
    file: when every failed search trial's verdict is "generator fell behind" (a machine too busy
    to keep the schedule), the verdict lines; when none failed, or any failed for another reason
    (not sustained, incomplete), None, and the test's own assertions decide.
    """
    failed = [r for r in summary.runs if r.stage == "search" and not r.sustained]
    verdicts = [verdict_of(load(folder / r.file), summary.settings) for r in failed]
    if not verdicts or any(v.kind is not Kind.GENERATOR_BEHIND for v in verdicts):
        return None
    return "; ".join(f"{r.profile} at {r.offered_tps:,.0f}/s: {v.line}" for r, v in zip(failed, verdicts, strict=True))
