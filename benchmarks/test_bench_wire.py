"""pytest-benchmark: wire encoding and decoding of a 1,000-transfer Submit and its Results.

Run: python -m pytest benchmarks -m benchmark --benchmark-enable
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.wire import Codec, FrameReader, Results, Submit, records_from_bytes
from loadgen.generator.workload import Workload, WorkloadConfig

pytestmark = pytest.mark.benchmark

N = 1_000


@pytest.fixture(scope="module")
def submit_frame() -> bytes:
    batch = Workload(WorkloadConfig(accounts=100_000)).batch(N, first_id=0)
    return Codec().frame(Submit(seq=1, transfers=batch.tobytes()))


def test_encode_submit(benchmark) -> None:  # type: ignore[no-untyped-def]
    codec = Codec()
    blob = Workload(WorkloadConfig(accounts=100_000)).batch(N, first_id=0).tobytes()
    benchmark.extra_info["transfers_per_round"] = N
    benchmark(lambda: codec.frame(Submit(seq=1, transfers=blob)))


def test_decode_submit_to_batch(benchmark, submit_frame: bytes) -> None:  # type: ignore[no-untyped-def]
    codec = Codec()
    reader = FrameReader()

    def decode() -> np.ndarray:
        (body,) = reader.feed(submit_frame)
        msg = codec.client_decoder.decode(body)
        assert isinstance(msg, Submit)
        return records_from_bytes(msg.transfers)

    benchmark.extra_info["transfers_per_round"] = N
    assert len(benchmark(decode)) == N


def test_encode_results(benchmark) -> None:  # type: ignore[no-untyped-def]
    codec = Codec()
    codes = np.zeros(N, dtype=np.uint8).tobytes()
    benchmark.extra_info["transfers_per_round"] = N
    benchmark(lambda: codec.frame(Results(seq=1, codes=codes, commit_ns=0)))
