"""The local validation tier: verdicts equal the single-thread verifier's, dead workers, refusal."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from engine import signing
from engine.codes import ResultCode
from engine.validators import (
    MIN_PARCEL_TRANSFERS,
    InlineValidators,
    LocalValidators,
    ValidatorsUnavailable,
    chunk_size,
    make_validators,
    parse_validators,
    tier_ms_bucket,
    verify_all,
)
from tests.engine.test_signing import ACCOUNTS, SEED, forge, signed_batch


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> signing.KeyRegistry:
    return signing.ensure_registry(SEED, ACCOUNTS, tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def stream(registry: signing.KeyRegistry) -> list[tuple[bytes, bytes]]:
    """Batches of different sizes (one empty, one of a single transfer), some with forged signatures."""
    rng = np.random.default_rng(11)
    out: list[tuple[bytes, bytes]] = []
    for i, n in enumerate([300, 1, 0, 700, 300, 300, 300, 300]):
        batch, sigs = signed_batch(n, stream=i)
        out.append(forge(batch, sigs, rng)[:2] if n >= 300 and i % 2 else (batch.tobytes(), sigs))
    return out


def expected(registry: signing.KeyRegistry, stream: list[tuple[bytes, bytes]]) -> list[np.ndarray]:
    """The verdicts through PyNaCl's public ``crypto_sign_open``, one transfer at a time: the oracle
    for the tiers' ``Verifier`` (libsodium's detached verification on pointers)."""
    keys = registry.public_keys()
    return [signing.verify_records_open(r, s, keys) for r, s in stream]


def test_inline_tier_equals_crypto_sign_open(registry: signing.KeyRegistry, stream: list[tuple[bytes, bytes]]) -> None:
    want = expected(registry, stream)
    inline = InlineValidators(registry)
    for (r, s), w in zip(stream, want, strict=True):
        np.testing.assert_array_equal(inline.verify_now(r, s), w)


@pytest.mark.parametrize("workers", [1, 2])
def test_pool_verdicts_equal_single_thread(
    registry: signing.KeyRegistry, stream: list[tuple[bytes, bytes]], workers: int
) -> None:
    want = expected(registry, stream)
    assert any((w == ResultCode.BAD_SIGNATURE).any() for w in want)

    async def run() -> list[np.ndarray]:
        pool = LocalValidators(registry, workers, chunk_transfers=128)
        await pool.start()
        try:
            got = await verify_all(pool, stream)  # all in flight at once
            assert pool.stats().batches == len(stream)
            return got
        finally:
            await pool.close()

    got = asyncio.run(run())
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_small_batches_travel_together_and_are_not_split(registry: signing.KeyRegistry) -> None:
    """Submits of tens of transfers (the signed profile's regime): each is one chunk (below
    ``2 x min_split`` a batch is not split across workers: a 37-transfer Submit is not sent as 32 +
    5), and chunks queued together go to a worker as one parcel, one round trip; verdicts are
    still each batch's own, in order."""
    rng = np.random.default_rng(5)
    small = []
    for i in range(40):
        batch, sigs = signed_batch(int(rng.integers(1, 64)), stream=500 + i)
        if i % 3 == 0:  # one forged signature, last in its batch
            sigs = sigs[:-1] + bytes([sigs[-1] ^ 1])
        small.append((batch.tobytes(), sigs))
    want = expected(registry, small)
    assert sum(int((w == ResultCode.BAD_SIGNATURE).sum()) for w in want) == len(range(0, 40, 3))

    async def run() -> tuple[list[np.ndarray], int, int]:
        pool = LocalValidators(registry, 2, chunk_transfers=256)
        await pool.start()
        try:
            got = await verify_all(pool, small)
            return got, pool.stats().chunks, pool.stats().parcels
        finally:
            await pool.close()

    got, chunks, parcels = asyncio.run(run())
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert chunks == len(small)  # none split
    assert parcels < chunks  # queued together, sent together


@pytest.mark.parametrize(
    ("min_parcel", "submits", "parcels"),
    [(MIN_PARCEL_TRANSFERS, 5, 1), (MIN_PARCEL_TRANSFERS, 10, 2), (32, 5, 3)],
)
def test_submits_of_one_loop_iteration_share_parcels(
    registry: signing.KeyRegistry, min_parcel: int, submits: int, parcels: int
) -> None:
    """Submits of 20 arriving in one loop iteration with two idle workers leave together at the end
    of the iteration. By default a parcel is filled up to ``min_parcel`` (128) before the queue is
    split: five Submits (100, a generator tick's two Submits at ~20,000/s) are one round trip and
    one reply; ten (200) are split over both workers. With ``min_parcel=32`` the queue is cut in
    fair shares (100 queued / 2 workers = 50): each worker gets 40 at once and one of them 20 more
    to hold in its pipe, three round trips. Either way no verdict is left waiting."""
    small = [signed_batch(20, stream=700 + i) for i in range(submits)]
    want = expected(registry, [(b.tobytes(), s) for b, s in small])

    async def run() -> None:
        pool = LocalValidators(registry, 2, chunk_transfers=128, min_parcel=min_parcel)
        await pool.start()
        try:
            futures = [pool.verify_future(b.tobytes(), s) for b, s in small]  # no await in between
            assert pool.stats().parcels == 0  # sent at the end of this iteration, together
            await asyncio.sleep(0)
            assert pool.stats().parcels == parcels
            got = await asyncio.gather(*futures)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
            assert pool.stats().parcels == parcels
        finally:
            await pool.close()

    asyncio.run(run())


def test_a_held_submit_waits_for_its_tick_and_a_hold_runs_out(registry: signing.KeyRegistry) -> None:
    """``hold_s``: a Submit held for its tick's others is not sent while loop iterations pass (the
    loop's dispatch after a reply included), and leaves with the next unheld Submit as one parcel;
    a hold that no Submit ends sends what it held after ``hold_s``. Verdicts as always."""
    small = [signed_batch(20, stream=800 + i) for i in range(3)]
    pairs = [(b.tobytes(), s) for b, s in small]
    want = expected(registry, pairs)

    async def run() -> None:
        pool = LocalValidators(registry, 2, chunk_transfers=128)
        await pool.start()
        try:
            first = pool.verify_future(*pairs[0], hold_s=30.0)
            await asyncio.sleep(0.05)
            assert (pool.stats().parcels, pool.holding) == (0, True)
            second = pool.verify_future(*pairs[1])  # the tick's last Submit: no hold
            assert not pool.holding
            got = await asyncio.gather(first, second)
            assert pool.stats().parcels == 1
            late = await pool.verify_future(*pairs[2], hold_s=0.01)  # nobody ends this hold
            for g, w in zip([*got, late], want, strict=True):
                np.testing.assert_array_equal(g, w)
            s = pool.stats()
            assert (s.parcels, s.holds, s.holds_expired) == (2, 2, 1)
        finally:
            await pool.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(1, [1]), (37, [37]), (63, [63]), (64, [32, 32]), (101, [51, 50]), (1000, [125] * 8), (129, [65, 64])],
)
def test_chunks_split_evenly_never_leaving_a_sliver(n: int, sizes: list[int]) -> None:
    per = chunk_size(n, workers=2, min_split=32, max_chunk=128)
    assert [min(per, n - o) for o in range(0, n, per)] == sizes


def test_killed_worker_chunks_are_reverified_once(registry: signing.KeyRegistry) -> None:
    rng = np.random.default_rng(5)
    batches = []
    for i in range(12):
        batch, sigs = signed_batch(400, stream=100 + i)
        batches.append(forge(batch, sigs, rng)[:2])
    want = expected(registry, batches)

    async def run() -> None:
        pool = LocalValidators(registry, 2, chunk_transfers=100)
        await pool.start()
        try:
            victim = pool.worker_pids()[0]
            futures = [asyncio.ensure_future(pool.verify(r, s)) for r, s in batches]
            await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
            os.kill(victim, signal.SIGKILL)  # every feeder still has a chunk in flight: the queue is long
            got = await asyncio.gather(*futures)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
            s = pool.stats()
            assert (s.worker_deaths, s.restarts, s.failed_batches) == (1, 1, 0)
            assert s.requeued_chunks >= 1
            assert victim not in pool.worker_pids()
            for _ in range(200):  # the replacement may still be starting (bounded wait, not a timing assert)
                if len(pool.worker_pids()) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(pool.worker_pids()) == 2
            # The replacement works.
            np.testing.assert_array_equal(await pool.verify(*batches[0]), want[0])
        finally:
            await pool.close()

    asyncio.run(run())


def test_hung_worker_is_killed_and_its_chunk_reverified(registry: signing.KeyRegistry) -> None:
    batches = [signed_batch(200, stream=400 + i) for i in range(6)]
    want = expected(registry, [(b.tobytes(), s) for b, s in batches])

    async def run() -> None:
        pool = LocalValidators(registry, 2, chunk_transfers=50, chunk_timeout_s=1.0)
        await pool.start()
        try:
            victim = pool.worker_pids()[0]
            futures = [asyncio.ensure_future(pool.verify(b.tobytes(), s)) for b, s in batches]
            await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
            os.kill(victim, signal.SIGSTOP)  # alive but silent
            got = await asyncio.gather(*futures)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
            s = pool.stats()
            assert (s.worker_deaths, s.failed_batches) == (1, 0) and s.requeued_chunks >= 1
            assert victim not in pool.worker_pids()
            for _ in range(200):  # reaped before its replacement starts (bounded wait, not a timing assert)
                if len(pool.worker_pids()) == 2:
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(ProcessLookupError):
                os.kill(victim, 0)  # killed and reaped: it can never deliver its chunk late
        finally:
            await pool.close()

    asyncio.run(run())


def test_no_worker_left_refuses_batches(registry: signing.KeyRegistry) -> None:
    batches = [signed_batch(300, stream=200 + i) for i in range(6)]

    async def run() -> None:
        pool = LocalValidators(registry, 1, chunk_transfers=50, max_restarts=0)
        await pool.start()
        try:
            futures = [asyncio.ensure_future(pool.verify(b.tobytes(), s)) for b, s in batches]
            await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
            os.kill(pool.worker_pids()[0], signal.SIGKILL)
            results = await asyncio.gather(*futures, return_exceptions=True)
            refused = [r for r in results if isinstance(r, ValidatorsUnavailable)]
            assert refused, "batches queued behind the dead worker must be refused"
            assert all(isinstance(r, np.ndarray | ValidatorsUnavailable) for r in results)
            assert "restart budget" in str(refused[-1]) or "died" in str(refused[-1])
            with pytest.raises(ValidatorsUnavailable, match="restart the server"):
                await pool.verify(batches[0][0].tobytes(), batches[0][1])
        finally:
            await pool.close()

    asyncio.run(run())


def test_damaged_registry_stops_the_start(registry: signing.KeyRegistry, tmp_path: Path) -> None:
    bad = tmp_path / registry.path.name
    bad.write_bytes(registry.path.read_bytes()[:-1])
    reg = signing.KeyRegistry(bad, SEED, ACCOUNTS, registry._mm)  # the parent's view is fine, the file is not
    with pytest.raises(ValidatorsUnavailable, match="truncated or damaged"):
        asyncio.run(LocalValidators(reg, 1).start())


def test_parse_and_make() -> None:
    assert parse_validators(0) == ("local", 0)
    assert parse_validators("2") == ("local", 2)
    assert parse_validators("ray:auto") == ("ray", "auto")
    assert parse_validators("ray:10.0.0.1:6379") == ("ray", "10.0.0.1:6379")
    for bad in ("-1", "two", "ray:"):
        with pytest.raises(ValueError, match="validators"):
            parse_validators(bad)


def test_make_validators_kinds(registry: signing.KeyRegistry) -> None:
    assert isinstance(make_validators("0", registry), InlineValidators)
    pool = make_validators(2, registry)
    assert isinstance(pool, LocalValidators) and pool.workers == 2
    batch, sigs = signed_batch(2)
    with pytest.raises(ValidatorsUnavailable, match="start"):  # not started: refused, never a silent wait
        asyncio.run(pool.verify(batch.tobytes(), sigs))
    with pytest.raises(ValueError, match="at least one worker"):
        LocalValidators(registry, 0)


def test_workers_run_at_the_given_nice(registry: signing.KeyRegistry) -> None:
    """``nice`` lowers the workers' priority (the server's own stays), and verdicts are unchanged."""
    batch, sigs = signed_batch(40, stream=900)
    want = expected(registry, [(batch.tobytes(), sigs)])[0]

    async def run() -> list[int]:
        pool = make_validators(2, registry, nice=7)
        await pool.start()
        try:
            np.testing.assert_array_equal(await pool.verify(batch.tobytes(), sigs), want)
            assert isinstance(pool, LocalValidators)
            return [os.getpriority(os.PRIO_PROCESS, pid) for pid in pool.worker_pids()]
        finally:
            await pool.close()

    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert asyncio.run(run()) == [min(own + 7, 19)] * 2
    with pytest.raises(ValueError, match="nice"):
        LocalValidators(registry, 1, nice=20)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
@pytest.mark.parametrize("policy", ["batch", "idle", "normal"])
def test_workers_run_under_the_given_policy(registry: signing.KeyRegistry, policy: str) -> None:
    """``policy`` "batch" makes the workers SCHED_BATCH (a woken worker does not preempt
    the server mid-burst), "idle" SCHED_IDLE (any other task preempts them), "normal" leaves them
    SCHED_OTHER; verdicts are unchanged."""
    batch, sigs = signed_batch(40, stream=901)
    want = expected(registry, [(batch.tobytes(), sigs)])[0]

    async def run() -> list[int]:
        pool = make_validators(2, registry) if policy == "normal" else make_validators(2, registry, policy=policy)
        await pool.start()
        try:
            np.testing.assert_array_equal(await pool.verify(batch.tobytes(), sigs), want)
            assert isinstance(pool, LocalValidators)
            return [os.sched_getscheduler(pid) for pid in pool.worker_pids()]
        finally:
            await pool.close()

    scheduler = {"batch": os.SCHED_BATCH, "idle": os.SCHED_IDLE, "normal": os.SCHED_OTHER}[policy]
    assert asyncio.run(run()) == [scheduler] * 2
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the server's own policy stays
    with pytest.raises(ValueError, match="policy"):
        LocalValidators(registry, 1, policy="realtime")


@pytest.mark.parametrize(
    ("ns", "bucket"),
    [(0, "0-1"), (999_999, "0-1"), (1_000_000, "1-2"), (2_500_000, "2-4"), (7_999_999, "4-8"), (40_000_000, "32-64")],
)
def test_tier_time_buckets(ns: int, bucket: str) -> None:
    assert tier_ms_bucket(ns) == bucket


def test_timing_counters_account_for_every_verified_transfer(registry: signing.KeyRegistry) -> None:
    """Every verified transfer is timed once: its time in the server's queue, behind another
    parcel in a worker's pipe and in service add up to what the histogram counts; a held Submit's
    wait (``hold_s``) shows as queue time."""
    pairs = [(b.tobytes(), s) for b, s in (signed_batch(n, stream=1000 + n) for n in (20, 40, 300, 7))]

    async def run() -> None:
        pool = LocalValidators(registry, 2, chunk_transfers=128)
        await pool.start()
        try:
            await pool.verify_future(*pairs[0], hold_s=0.05)  # nobody ends this hold: 50 ms queued
            held = pool.stats()
            assert held.timed_transfers == 20
            assert held.wait_us_sum / 20 >= 50_000  # the hold's timer: a lower bound, not a speed
            assert held.service_us_sum > 0 and held.behind_us_sum == 0
            await verify_all(pool, pairs[1:])
            s = pool.stats()
            assert s.timed_transfers == s.transfers == sum(len(r) // 48 for r, _ in pairs)
            assert sum(s.tier_ms.values()) == s.timed_transfers
            assert min(s.wait_us_sum, s.behind_us_sum) >= 0 and s.service_us_sum > 0
            assert s.tier_ms is not pool.stats().tier_ms  # a copy: the caller cannot change the pool's
        finally:
            await pool.close()

    asyncio.run(run())
