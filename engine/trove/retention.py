"""Bounded disk: which partitions retention expires, and whether the disk can hold the trove.

``max_bytes`` counts everything the trove writes for a partition: its runs' files and the files
derived from them (the rollups ``aggregate`` reads, ~0.1-0.3 B/row, and the sidecars ``co_location`` and
``same_device`` build, ~4.8 B/row: ~9% of the trove at 10^9 rows), which go with their runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from engine.trove import rollup
from engine.trove.config import TroveConfig
from engine.trove.manifest import MANIFEST_NAME, Manifest
from engine.trove.schema import partition_start_ns

#: Bytes per row assumed before the trove has measured its own (zstd Parquet, one ordering).
ASSUMED_BYTES_PER_ROW = 40


class TroveDiskFull(OSError):
    """The trove stopped ingesting: its filesystem is (nearly) full. The message says what to do."""


def expired_partitions(manifest: Manifest, config: TroveConfig, *, root: Path | None = None) -> list[int]:
    """Oldest-first partitions that ``max_age_s``/``max_bytes`` expire; the newest is always kept.

    ``root``: the trove's directory, whose derived files (rollups, sidecars) count toward each
    partition's bytes (``rollup.derived_bytes``); without it, the runs' files alone."""
    parts = sorted({s.partition for s in manifest.segments})
    if len(parts) <= 1:
        return []
    newest = parts[-1]
    expire: list[int] = []
    if config.max_age_s:
        newest_ns = max(s.max_timestamp_ns for s in manifest.segments)
        horizon = newest_ns - config.max_age_s * 10**9
        # A partition expires once all of it is older than the horizon.
        expire = [
            p for p in parts[:-1] if partition_start_ns(manifest.partition_end(p), manifest.partition_ns) <= horizon
        ]
    if config.max_bytes:
        size = {p: 0 for p in parts}
        for s in manifest.segments:
            size[s.partition] += s.bytes
        # Beyond the partitions' files, what no partition frees: the manifest, derived files left
        # by a crash (pruned later).
        fixed = 0
        if root is not None:
            derived = rollup.derived_bytes(root, manifest)
            for p, extra in derived["by_partition"].items():
                size[p] = size.get(p, 0) + extra
            everything = disk_bytes(root, 0, derived)["bytes_on_disk"]
            fixed = everything - sum(derived["by_partition"].values())
        total = fixed + sum(size.get(p, 0) for p in parts if p not in expire)
        for p in parts:
            if total <= config.max_bytes or p == newest:
                break
            if p not in expire:
                expire.append(p)
                total -= size[p]
    return sorted(expire)


def scratch_bytes(config: TroveConfig, bytes_per_row: float) -> int:
    """Disk a merge may need beyond the trove: its largest output, in both orderings."""
    return int(2 * config.max_run_rows * bytes_per_row) if config.compact else 0


def check_disk(root: Path, config: TroveConfig, trove_bytes: int, bytes_per_row: float) -> None:
    """Refuse (ValueError) if the filesystem cannot hold the configured trove plus scratch and reserve."""
    free = shutil.disk_usage(root).free
    growth = max(config.max_bytes - trove_bytes, 0) if config.max_bytes else 0
    need = growth + scratch_bytes(config, bytes_per_row) + config.reserve_free_bytes
    if free < need:
        raise ValueError(
            f"trove {root}: the filesystem has {free / 2**30:.1f} GiB free but the trove needs {need / 2**30:.1f} GiB "
            f"(up to max_bytes {config.max_bytes / 2**30:.1f} GiB, compaction scratch "
            f"{scratch_bytes(config, bytes_per_row) / 2**30:.1f} GiB, reserve {config.reserve_free_bytes / 2**30:.1f} "
            "GiB); free space, lower trove.max_bytes or trove.max_run_rows, or put the trove on another disk"
        )


def disk_bytes(root: Path, segment_bytes: int, derived: dict[str, Any] | None = None) -> dict[str, int]:
    """Everything the trove at ``root`` keeps on disk, given its segments' bytes (the manifest's
    figure): ``bytes_on_disk`` = ``segment_bytes`` + ``sidecar_bytes`` + ``rollup_bytes`` +
    ``manifest_bytes`` (the sum of its files, as ``du`` would count them, but for a merge's
    scratch while it runs). ``derived``: ``rollup.derived_bytes(root)`` if taken already."""
    if derived is None:
        derived = rollup.derived_bytes(root)
    try:
        manifest_bytes = (root / MANIFEST_NAME).stat().st_size
    except FileNotFoundError:
        manifest_bytes = 0
    out = {
        "segment_bytes": segment_bytes,
        "sidecar_bytes": derived["sidecar_bytes"],
        "rollup_bytes": derived["rollup_bytes"],
        "manifest_bytes": manifest_bytes,
    }
    return out | {"bytes_on_disk": sum(out.values())}
