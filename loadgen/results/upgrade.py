"""Upgrades of older result files to the current format, one version step at a time.

A result file is never rewritten on disk: ``loadgen.results.run.loads`` upgrades the decoded
document in memory and then validates it against the current Structs, so reports read the
committed reference runs (version 1) next to new ones. Each step takes a document of version
``n`` and returns one of version ``n + 1``; a step only fills in what the older version can
tell (what it did not record stays absent, e.g. a v1 file's resolved settings).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loadgen.results.verdict import Figures, judge

Document = dict[str, Any]


def _v1_to_v2(doc: Document) -> Document:
    """Version 2 always stores settled, shed, the verdict and its exit status, and a settled-based achieved.

    Version 1's first files stored ``achieved_*`` from replies received in the window (which could
    exceed 100% and counted shed transfers); they are recomputed from the codes by the one
    definition (``loadgen.results.verdict``). A stored verdict is kept (it was judged against the
    run's own targets); a file without one is judged against the default targets.
    """
    summary, counts, generator = dict(doc["summary"]), doc["counts"], doc["generator"]
    figures = Figures.of_codes(
        {str(k): int(v) for k, v in doc["codes"].items()},
        scheduled=int(counts["scheduled_measured"]),
        unanswered=int(counts["unanswered"]),
        unsent=int(counts["unsent"]),
        p99_ms=float(doc["latency"]["p99_ms"]),
        generator_kept_schedule=bool(generator["kept_schedule"]),
        send_lag_p99_ms=float(generator["send_lag"]["p99_ms"]),
        failures=tuple(doc.get("failures") or ()),
        audit_ok=summary.get("audit_ok"),
        protocol_errors=int(counts.get("protocol_errors", 0)),
    )
    seconds = float(summary["seconds"])
    summary["settled"], summary["shed"] = figures.settled, figures.shed
    summary["achieved_ratio"] = figures.achieved_ratio
    summary["achieved_tps"] = figures.settled / seconds if seconds > 0 else 0.0
    if summary.get("verdict") is None or summary.get("exit_status") is None:
        verdict = judge(figures)
        summary["verdict"], summary["exit_status"] = verdict.line, verdict.exit_status
    return {**doc, "summary": summary, "schema_version": 2}


#: ``STEPS[n]`` upgrades a version-``n`` document to version ``n + 1``.
STEPS: dict[int, Callable[[Document], Document]] = {1: _v1_to_v2}


def upgrade(doc: Document, to_version: int) -> Document:
    """``doc`` upgraded step by step to ``to_version``."""
    version = int(doc["schema_version"])
    while version < to_version:
        doc = STEPS[version](doc)
        version = int(doc["schema_version"])
    return doc
