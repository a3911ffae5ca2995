"""Will a ledger of N accounts fit? Checked before allocating, so the answer is one line, not a traceback.

A ledger far larger than the machine (``--accounts 100000000000``) used to die inside numpy with a
36-line ``_ArrayMemoryError``, after the user had waited for part of the population to be built.
The need is computed, not sampled: the ledger's own per-account bytes (``Ledger.STATE_BYTES_PER_ACCOUNT``)
plus what each of the profile's hooks declares (``Hook.state_bytes_per_account``), times the
accounts, plus the chunked build's temporaries (``engine.chunks``: a few arrays of one chunk per
worker), which do not grow with the accounts. That figure is compared with ``MemAvailable`` from
``/proc/meminfo`` (the kernel's estimate of memory that can be allocated without swapping).
Tests check the declarations against ``state_bytes()`` of built hooks and the build's peak RSS.
"""

from __future__ import annotations

from pathlib import Path

from engine.chunks import DEFAULT_CHUNK, DEFAULT_WORKERS
from engine.ledger import Ledger
from engine.profiles import build_hooks

#: Temporaries of the chunked build: about eight float64/int64 arrays of one chunk per worker.
BUILD_TEMPORARY_BYTES = DEFAULT_WORKERS * DEFAULT_CHUNK * 8 * 8

GIB = float(1 << 30)


class MemoryBudgetError(ValueError):
    """The requested accounts need more memory than the machine has available."""


def _proc_field_bytes(path: Path, field: str) -> int | None:
    """A ``Name:  value kB`` field of a /proc file in bytes, or None where the file or field is missing."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024  # the kernel writes kB
    return None


def peak_rss_bytes(status: Path = Path("/proc/self/status")) -> int | None:
    """This process's peak resident set size (``VmHWM``) in bytes, or None where unknown (not Linux)."""
    return _proc_field_bytes(status, "VmHWM")


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` in bytes, or None where the file or the field is missing (not Linux)."""
    return _proc_field_bytes(meminfo, "MemAvailable")


def build_bytes_per_account(profile: str = "baseline", scenario: str | None = None) -> float:
    """Per-account bytes of the ledger and ``profile``'s hooks, as declared (no sample is built)."""
    hooks = build_hooks(profile, scenario)
    try:
        return Ledger.STATE_BYTES_PER_ACCOUNT + sum(h.state_bytes_per_account for h in hooks)
    finally:
        for h in hooks:
            h.close()


def check_accounts_fit(
    accounts: int, profile: str = "baseline", scenario: str | None = None, *, available_bytes: int | None = None
) -> None:
    """Raise MemoryBudgetError, with need and availability in one line, if ``accounts`` cannot fit.

    ``available_bytes`` defaults to ``MemAvailable``; where that is unknown nothing is checked.
    """
    available = mem_available_bytes() if available_bytes is None else available_bytes
    if available is None:
        return
    per_account = build_bytes_per_account(profile, scenario)
    need = accounts * per_account + BUILD_TEMPORARY_BYTES
    if need > available:
        raise MemoryBudgetError(
            f"{accounts:,} accounts need about {need / GIB:,.1f} GiB ({per_account:.0f} bytes/account to build "
            f"the population, ledger and hooks of profile {profile!r}) but {available / GIB:,.1f} GiB is "
            "available (MemAvailable in /proc/meminfo); use fewer --accounts"
        )
