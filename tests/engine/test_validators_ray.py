"""The Ray validation tier on a local two-node cluster: same verdicts as local and inline; a killed actor.

Ray's cluster is bound to 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray resolve
"localhost" to the loopback address instead of the machine's external one, which a sandbox may not
route), with usage stats and the dashboard off and an 80 MB object store per node, and writes only
under a temporary directory (``RAY_TMPDIR``), removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine import signing
from engine.codes import ResultCode
from engine.reference import ReferenceLedger
from engine.validators import InlineValidators, LocalValidators, verify_all
from engine.wire import SignedSubmit
from loadgen.generator.workload import Workload, WorkloadConfig
from tests.engine.test_signing import ACCOUNTS, SEED, forge, signed_batch
from tests.support.servers import TEST_ACCOUNTS, TEST_SEED, StartServer, connect

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A two-node local Ray cluster (one CPU each); yields the address to connect to."""
    base = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
            mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported and by its processes
            mp.setenv("RAY_TMPDIR", base)  # every file Ray writes (sessions, its address file) goes here
            yield from _cluster(os.path.join(base, "ray"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _cluster(temp_dir: str) -> Iterator[str]:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.makedirs(temp_dir)
    node = {"num_cpus": 1, "object_store_memory": 80 << 20, "node_ip_address": "127.0.0.1", "temp_dir": temp_dir}
    cluster = Cluster()
    try:
        cluster.add_node(**node, include_dashboard=False)
        cluster.add_node(**node)
        address = "127.0.0.1:" + cluster.address.rsplit(":", 1)[1]
        ray.init(address=address, logging_level="warning", log_to_driver=False)
        yield address
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> signing.KeyRegistry:
    return signing.ensure_registry(SEED, ACCOUNTS, tmp_path_factory.mktemp("keys"))


def forged_stream(count: int, n: int) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(17)
    out = []
    for i in range(count):
        batch, sigs = signed_batch(n, stream=300 + i)
        out.append(forge(batch, sigs, rng)[:2])
    return out


def test_ray_verdicts_equal_local_pool_and_single_thread(ray_cluster: str, registry: signing.KeyRegistry) -> None:
    from engine.validators_ray import RayValidators

    stream = forged_stream(4, 300)
    inline = InlineValidators(registry)
    want = [inline.verify_now(r, s) for r, s in stream]
    assert all((w == ResultCode.BAD_SIGNATURE).any() for w in want)

    async def run() -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        import ray

        tier = RayValidators(registry, address=ray_cluster, chunk_transfers=64)
        local = LocalValidators(registry, 2, chunk_transfers=64)
        await asyncio.gather(tier.start(), local.start())
        try:
            nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
            got_ray = await verify_all(tier, stream)
            got_local = await verify_all(local, stream)
            return got_ray, got_local, sorted(nodes)
        finally:
            await asyncio.gather(tier.close(), local.close())

    got_ray, got_local, nodes = asyncio.run(run())
    assert len(nodes) == 2
    for r, loc, w in zip(got_ray, got_local, want, strict=True):
        np.testing.assert_array_equal(r, w)
        np.testing.assert_array_equal(loc, w)


def test_killed_ray_actor_is_taken_over(ray_cluster: str, registry: signing.KeyRegistry) -> None:
    import ray

    from engine.validators_ray import RayValidators

    stream = forged_stream(8, 200)
    inline = InlineValidators(registry)
    want = [inline.verify_now(r, s) for r, s in stream]

    async def run() -> None:
        tier = RayValidators(registry, address=ray_cluster, chunk_transfers=50, replicas=2)
        await tier.start()
        try:
            assert tier.workers == 2
            futures = [asyncio.ensure_future(tier.verify(r, s)) for r, s in stream]
            await asyncio.sleep(0)  # every chunk is dispatched
            ray.kill(tier.actor_handles()[0], no_restart=True)
            got = await asyncio.gather(*futures)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
            s = tier.stats()
            assert (s.worker_deaths, s.failed_batches) == (1, 0)
            assert s.requeued_chunks >= 1
            assert len(tier.actor_handles()) == 1
        finally:
            await tier.close()

    asyncio.run(run())


def test_signed_payments_through_a_server_with_ray_validators(
    ray_cluster: str, start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve --validators ray:ADDRESS``: a SignedSubmit with forged signatures gives the codes and
    balances of the reference model (which the local pool and the inline tier match above)."""
    monkeypatch.setenv("CBDC_CACHE_DIR", str(tmp_path / "cache"))
    st = start_server(profile="signed", validators=f"ray:{ray_cluster}")
    ledger = st.server.ledger
    assert ledger is not None
    ref = ReferenceLedger(
        *st.call(lambda: (ledger.balance.tolist(), ledger.wallet_class.tolist())), operators=st.config.operators
    )
    batch = Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED)).batch(400, first_id=0, operator=0)
    sigs, bad = bytearray(signing.sign_records(batch, TEST_SEED)), np.zeros(len(batch), dtype=bool)
    bad[::9] = True
    for i in np.flatnonzero(bad).tolist():
        sigs[i * 64 + 5] ^= 0x10
    with connect(st) as client:
        seq = client.next_ref()
        client.send(SignedSubmit(seq, batch.tobytes(), bytes(sigs)))
        codes = client.results(seq)
        assert client.audit().ok
    assert (codes[bad] == ResultCode.BAD_SIGNATURE).all()
    np.testing.assert_array_equal(codes[~bad], ref.apply(batch[~bad]))
    assert st.call(lambda: ledger.balance.tolist()) == ref.balance
    tier = st.call(st.server.stats)["validators"]
    assert tier["kind"] == "ray" and tier["workers"] == 2 and tier["transfers"] == len(batch)
