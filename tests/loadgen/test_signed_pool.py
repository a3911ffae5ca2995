"""Signed pools: generated and signed ahead of the run, cached by their parameters, rebuilt if damaged."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from engine import signing
from engine.codes import ResultCode
from loadgen.generator.signed_pool import PoolExhausted, SignedPoolParams, pool_path, signed_pool
from loadgen.generator.workload import Workload, WorkloadConfig

ACCOUNTS = 2_000


def params(**kw: object) -> SignedPoolParams:
    base: dict[str, object] = {
        "workload": WorkloadConfig(accounts=ACCOUNTS, seed=99),
        "batches": 3,
        "batch_size": 40,
        "operator": 1,
        "first_id": 1000,
        "payer_range": (0, 1000),
    }
    return SignedPoolParams(**{**base, **kw})  # type: ignore[arg-type]


def test_pool_is_signed_in_order_and_cached(tmp_path: Path) -> None:
    p = params()
    pool = signed_pool(p, tmp_path, processes=1)
    assert not pool.from_cache
    # The records are the workload's own batches, and every signature verifies.
    wl = Workload(p.workload)
    registry = signing.ensure_registry(99, ACCOUNTS, tmp_path)
    for i in range(len(pool)):
        records, sigs = pool.next()
        want = wl.batch(40, first_id=1000 + 40 * i, operator=1, payer_range=(0, 1000))
        np.testing.assert_array_equal(records, want)
        codes = signing.verify_records(records.tobytes(), sigs, registry.public_keys())
        assert (codes == ResultCode.OK).all()
    with pytest.raises(PoolExhausted, match="rate x duration"):
        pool.next()

    again = signed_pool(p, tmp_path)
    assert again.from_cache and again.rebuilt_because is None
    np.testing.assert_array_equal(again.records, pool.records)
    np.testing.assert_array_equal(again.signatures, pool.signatures)
    # Other parameters are another pool, in another file.
    assert pool_path(params(batch_size=41), tmp_path) != pool_path(p, tmp_path)
    assert pool_path(params(workload=WorkloadConfig(accounts=ACCOUNTS, seed=100)), tmp_path) != pool_path(p, tmp_path)


def test_damaged_pool_cache_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = params()
    pool = signed_pool(p, tmp_path, processes=1)
    path = pool_path(p, tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="loadgen.generator.signed_pool"):
        rebuilt = signed_pool(p, tmp_path, processes=1)
    assert not rebuilt.from_cache and rebuilt.rebuilt_because
    assert "rebuilding it" in caplog.text
    np.testing.assert_array_equal(rebuilt.signatures, pool.signatures)
    assert signed_pool(p, tmp_path).from_cache
