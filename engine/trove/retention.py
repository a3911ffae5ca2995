"""Bounded disk: which partitions retention expires, and whether the disk can hold the trove."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.trove.config import TroveConfig
from engine.trove.manifest import Manifest
from engine.trove.schema import partition_start_ns

#: Bytes per row assumed before the trove has measured its own (zstd Parquet, one ordering).
ASSUMED_BYTES_PER_ROW = 40


class TroveDiskFull(OSError):
    """The trove stopped ingesting: its filesystem is (nearly) full. The message says what to do."""


def expired_partitions(manifest: Manifest, config: TroveConfig) -> list[int]:
    """Oldest-first partitions that ``max_age_s``/``max_bytes`` expire; the newest is always kept."""
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
        total = sum(size[p] for p in parts if p not in expire)
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
