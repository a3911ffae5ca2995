"""The trove's whole per-row life, as a result file the capacity plan reads (issue 21).

Why a file of its own: the trove's writer keeps a 2^22-row / 10-second memtable and merges
size-tiered runs up to ``max_run_rows`` (2^26), so a 3-second run never flushes, never merges and
never builds a sidecar: the CPU a run measures in its trove child is only the rows' copy into the
memtable. A hook's cost is all the work it causes, wherever and whenever it runs, so the plan
charges the trove tier what ``benchmarks/trove_merge_cost.py --out DIR`` measures for a row's
whole life instead, in steady state (on this machine, with its CPU calibration score):

* writing the memtable in both orderings (``writer_ns_per_row``: sort, gather, encode, write);
* every merge up to the final run: merges per row by the size-tiered policy simulated over
  ``policy_rows`` rows (``compaction.plan_merge``), each at the measured CPU per row merged
  (intermediate tiers lz4, the last tier zstd);
* the per-run sidecars (``sidecar_ns_per_row``: one build per final run, what ``trove sidecars``
  or the first co-location / device query does), when measured.

Disk: ``final_bytes_per_row`` (a final run's two orderings, zstd) + ``sidecar_bytes_per_row``.
A run's own ``traffic.trove_per_payment`` is the memtable's first segments, not the final layout.

Format history (``TROVE_COST_SCHEMA_VERSION``): 1 (issue 21, first version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from loadgen.results.compare import now_utc
from loadgen.results.environment import Environment
from loadgen.results.run import ResultVersionError, require_version

TROVE_COST_KIND = "trove-cost"
TROVE_COST_SCHEMA_VERSION = 1


class TroveCost(msgspec.Struct, frozen=True, kw_only=True):
    """A trove row's whole life in CPU and bytes, measured by ``benchmarks/trove_merge_cost.py``."""

    schema_version: int = TROVE_COST_SCHEMA_VERSION
    kind: str = TROVE_COST_KIND
    created_utc: str = ""
    command: str
    environment: Environment
    #: The writer's memtable in both orderings, per row (the larger of the merge-sized and the
    #: memtable-sized measurement).
    writer_ns_per_row: float
    #: Rows merged per row written, all tiers and the last (zstd) tier (the simulated policy).
    merges_per_row: float
    last_tier_merges_per_row: float
    merge_intermediate_ns_per_row_merged: float
    merge_last_ns_per_row_merged: float
    #: Writer + every merge up to the final run, per row (``trove_merge_cost``'s ``steady_ns_per_row``).
    steady_ns_per_row: float
    #: Bytes per row of a final run (both orderings, the last tier's codec).
    final_bytes_per_row: float
    #: Per-run sidecars of a final run (every key), CPU and bytes per row; None: not measured.
    sidecar_ns_per_row: float | None = None
    sidecar_bytes_per_row: float | None = None
    #: The settings it was measured with (segment rows, fan-in, codecs, max_run_rows, policy rows).
    settings: dict[str, Any] = {}

    @property
    def ns_per_row(self) -> float:
        """CPU per row over its whole life: writer, merges and (when measured) sidecars."""
        return self.steady_ns_per_row + (self.sidecar_ns_per_row or 0.0)

    @property
    def bytes_per_row(self) -> float:
        """Bytes per row once its partition's runs are final: the run's two orderings + sidecars."""
        return self.final_bytes_per_row + (self.sidecar_bytes_per_row or 0.0)


def loads_trove_cost(data: bytes, *, source: str = "trove cost result") -> TroveCost:
    """Parse a trove cost file, refusing any format version but ``TROVE_COST_SCHEMA_VERSION``."""
    try:
        version = msgspec.json.decode(data, type=_Version).schema_version
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ResultVersionError(f"{source} is not a trove cost result file: {exc}") from exc
    require_version(version, TROVE_COST_SCHEMA_VERSION, f"{source} is a trove cost result with", "or re-measure")
    return msgspec.json.decode(data, type=TroveCost)


def save_trove_cost(cost: TroveCost, out_dir: str | Path) -> Path:
    """Write ``cost`` as ``OUT_DIR/<time>-trove-cost.json`` (stamped now if not yet); its path."""
    stamped = cost if cost.created_utc else msgspec.structs.replace(cost, created_utc=now_utc())
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamped.created_utc.replace('-', '').replace(':', '')}-trove-cost.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(stamped), indent=1))
    return path


class _Version(msgspec.Struct):
    schema_version: int
