"""Will a ledger of N accounts fit? Checked before allocating, so the answer is one line, not a traceback.

A ledger far larger than the machine (``--accounts 100000000000``) used to die inside numpy with a
36-line ``_ArrayMemoryError``, after the user had waited for part of the population to be built.
The check here measures what building one costs per account, for the profile asked for, on a small
sample (after one build that fills caches): the peak of Python-tracked allocations (numpy
reports its buffers to ``tracemalloc``) while
the seeded population, the ledger and the profile's hooks are built, at two sample sizes, so fixed
costs (tables, hook buffers) cancel out and what is left scales with the accounts. That figure times
the accounts is compared with ``MemAvailable`` from ``/proc/meminfo`` (the kernel's estimate of
memory that can be allocated without swapping).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from engine.ledger import Ledger
from engine.population import Population, PopulationConfig
from engine.profiles import build_hooks

#: The two sample sizes whose difference gives the per-account cost.
_SAMPLE_ACCOUNTS = (1 << 15, 1 << 17)

GIB = float(1 << 30)


class MemoryBudgetError(ValueError):
    """The requested accounts need more memory than the machine has available."""


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` in bytes, or None where the file or the field is missing (not Linux)."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) * 1024  # the kernel writes kB
    return None


def _build_peak_bytes(accounts: int, profile: str, scenario: str | None) -> int:
    hooks = build_hooks(profile, scenario)
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    balance, wallet_class = Population(PopulationConfig(accounts=accounts)).initial_state()
    ledger = Ledger(accounts, balance_fen=balance, wallet_class=wallet_class, hooks=hooks)
    _, peak = tracemalloc.get_traced_memory()
    for h in ledger.hooks:
        h.close()
    return peak - before


def build_bytes_per_account(profile: str = "baseline", scenario: str | None = None) -> float:
    """Peak bytes per account of building the population, the ledger and ``profile``'s hooks."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        _build_peak_bytes(_SAMPLE_ACCOUNTS[0], profile, scenario)  # first builds fill caches: not per account
        small, large = (_build_peak_bytes(n, profile, scenario) for n in _SAMPLE_ACCOUNTS)
    finally:
        if started:
            tracemalloc.stop()
    return max(large - small, 0) / (_SAMPLE_ACCOUNTS[1] - _SAMPLE_ACCOUNTS[0])


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
    need = accounts * per_account
    if need > available:
        raise MemoryBudgetError(
            f"{accounts:,} accounts need about {need / GIB:,.1f} GiB ({per_account:.0f} bytes/account to build "
            f"the population, ledger and hooks of profile {profile!r}) but {available / GIB:,.1f} GiB is "
            "available (MemAvailable in /proc/meminfo); use fewer --accounts"
        )
