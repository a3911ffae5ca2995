"""The chunked population build: same bytes for any chunk size and worker count, bounded memory.

Peak RSS is read from ``/proc/self/status`` (VmHWM) in a fresh subprocess, so the figure is that
build's alone; the bound is the final state plus 1 GiB (issue 14), not a timing.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.chunks import TtyProgress, fill_in_chunks
from engine.ledger import Ledger
from engine.memory import build_bytes_per_account
from engine.population import Population, PopulationConfig
from engine.profiles import build_hooks, profile_names

GIB = 1 << 30


@pytest.mark.parametrize(("chunk", "workers"), [(1, 1), (777, 2), (4096, 3), (1 << 20, 2)])
def test_chunked_build_gives_the_same_state_for_any_chunk_size_and_worker_count(chunk: int, workers: int) -> None:
    population = Population(PopulationConfig(accounts=10_007, seed=11))
    reference = population.build_state(chunk=10_007, workers=1)
    balance, bits = population.build_state(chunk=chunk, workers=workers)
    assert np.array_equal(balance, reference[0]) and np.array_equal(bits, reference[1])
    # The state is the population's: classes by popularity rank, balances below the class ceilings.
    wallet_class = bits >> 5
    assert np.bincount(wallet_class, minlength=5).tolist()[0] == round(0.001 * 10_007)
    assert int(balance[wallet_class == 4].max()) <= 500 * 100 and int(balance.min()) >= 0


def test_hook_state_is_chunk_independent_too() -> None:
    # social_credit draws its starting scores per account, so they are the same at any size prefix.
    small = Ledger(1_000, hooks=build_hooks("full"))
    large = Ledger(50_000, hooks=build_hooks("full"))
    score = {h.name: h for h in small.hooks}["social_credit"].score  # type: ignore[attr-defined]
    assert np.array_equal(score, {h.name: h for h in large.hooks}["social_credit"].score[:1_000])  # type: ignore[attr-defined]
    for ledger in (small, large):
        for h in ledger.hooks:
            h.close()


def test_fill_in_chunks_reports_progress_and_raises_a_workers_error() -> None:
    seen: list[tuple[int, int]] = []
    out = np.zeros(100, dtype=np.int64)

    def fill(lo: int, hi: int) -> None:
        out[lo:hi] = np.arange(lo, hi)

    fill_in_chunks(100, fill, chunk=7, workers=2, progress=lambda done, total: seen.append((done, total)))
    assert out.tolist() == list(range(100))
    assert seen[-1] == (100, 100) and len(seen) == 15

    def broken(lo: int, hi: int) -> None:
        raise RuntimeError(f"chunk {lo}")

    with pytest.raises(RuntimeError, match="chunk"):
        fill_in_chunks(100, broken, chunk=7, workers=2)


@pytest.mark.parametrize("profile", profile_names())
def test_declared_bytes_per_account_are_what_the_hooks_allocate(profile: str) -> None:
    ledger = Ledger(1_000, hooks=build_hooks(profile))
    try:
        assert ledger.state_bytes() == 1_000 * build_bytes_per_account(profile)
    finally:
        for h in ledger.hooks:
            h.close()


_BUILD = """
import json, sys
from engine.server.config import ServerConfig
from engine.server.server import build_ledger
ledger = build_ledger(ServerConfig(accounts=int(sys.argv[1]), profile=sys.argv[2]))
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({"hwm": int(status["VmHWM"].split()[0]) * 1024, "state": ledger.state_bytes()}))
"""


def _peak_of_build(accounts: int, profile: str) -> dict[str, int]:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _BUILD, str(accounts), profile], cwd=root, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_peak_rss_of_a_10_million_account_build_is_the_state_plus_less_than_1_gib() -> None:
    figures = _peak_of_build(10_000_000, "full")
    print(figures)
    assert figures["state"] == 10_000_000 * build_bytes_per_account("full")
    # The interpreter, numpy and the hooks' code count too: all of it within the 1 GiB.
    assert figures["hwm"] <= figures["state"] + GIB


@pytest.mark.benchmark
def test_peak_rss_of_a_100_million_account_build_is_the_state_plus_less_than_1_gib() -> None:
    figures = _peak_of_build(100_000_000, "full")
    print(figures)
    assert figures["hwm"] <= figures["state"] + GIB


def test_the_ledger_adopts_the_arrays_it_is_given_without_copying() -> None:
    balance, bits = Population(PopulationConfig(accounts=5_000)).build_state()
    ledger = Ledger(5_000, balance_fen=balance, account_bits=bits, hooks=build_hooks("full"))
    assert ledger.balances.narrow is balance and ledger.flags is bits
    assert ledger.balance.tolist() == balance.tolist()  # no starting balance needed the side table
    for h in ledger.hooks:
        h.close()


def test_progress_line_redraws_in_place_and_ends_with_a_newline() -> None:
    stream = io.StringIO()
    progress = TtyProgress("building", stream)
    progress(10, 100)
    progress(20, 100)  # within half a second of the last line: not redrawn
    progress(100, 100)
    assert stream.getvalue().count("\r") == 2 and stream.getvalue().endswith("(100%, 0 s)\n")
    assert "building: 10 of 100 (10%" in stream.getvalue()


def test_reset_accounts_restores_the_built_state_of_the_accounts_given() -> None:
    population = Population(PopulationConfig(accounts=3_000, seed=4))
    balance, bits = population.build_state()
    pristine = balance.copy(), bits.copy()
    touched = np.array([0, 17, 2_999])
    balance[touched] = 7
    bits[touched] |= 1
    population.reset_accounts(balance, bits, touched)
    assert np.array_equal(balance, pristine[0]) and np.array_equal(bits, pristine[1])
