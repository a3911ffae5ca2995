"""Shared fixtures: printed seeds for random tests, in-process servers on port 0, workloads.

Where a test goes, and what it uses:

- ``tests/engine/``: the ledger, hooks, journal, profiles, in process. Compare the vectorised
  ledger with the one-at-a-time reference through ``tests.support.oracle`` (``twins``,
  ``random_batch``, ``assert_same``); random inputs take the ``seed``/``rng`` fixtures.
- ``tests/server/``: the server over TCP in this process: the ``start_server`` fixture below,
  ``tests.support.servers`` (``connect``, ``TEST_ACCOUNTS``/``TEST_SEED``, exactly-once checks).
  Raw bytes into one connection without a network: ``tests.support.fuzz``; its corpus is
  ``tests/server/fuzz_corpus/``.
- ``tests/loadgen/``: the generator, results and reports without a real server: the wire-protocol
  double ``tests.support.wire_double.DoubleServer``; saved result files in
  ``tests/loadgen/fixtures/results/``.
- ``tests/e2e/``: whole processes (``cbdc-bench run``/``compare``/``serve``, Locust, crashes,
  overload); mark them ``slow``.
- Any of them: hooks that fail on purpose, take a known time, or are loaded by
  ``module:attribute`` from a scenario (``"tests.support.hooks:PacedHook"``), and the real freeze
  and blacklist hooks with empty lists: ``tests.support.hooks``.

Benchmarks are not tests: they live in ``benchmarks/`` and run with ``-m benchmark``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.hooks.base import Hook
from engine.server import ServerConfig, ServerThread
from loadgen.generator.workload import Workload, WorkloadConfig
from tests.support.servers import TEST_ACCOUNTS, TEST_SEED, StartServer

#: A small model for tests (the default model's 100 trees are trained by `cbdc-bench model train`).
TEST_MODEL_SIZE = {"accounts": 3_000, "payments": 60_000, "trees": 20}


@pytest.fixture(scope="session", autouse=True)
def risk_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny risk model as this session's default model, in a cache dir of its own.

    Profiles with ``risk_model`` load the cached default model; tests must neither train the
    100-tree model (a minute) nor write to the user's cache, so CBDC_BENCH_CACHE points here for
    the session (servers started as processes inherit it) and a 20-tree model is trained once.
    """
    from engine.risk.model import default_model_path
    from loadgen.cli.model import train_model

    cache = tmp_path_factory.mktemp("cbdc-bench-cache")
    before = os.environ.get("CBDC_BENCH_CACHE")
    os.environ["CBDC_BENCH_CACHE"] = str(cache)
    train_model(default_model_path(), quiet=True, **TEST_MODEL_SIZE)
    yield default_model_path()
    if before is None:
        os.environ.pop("CBDC_BENCH_CACHE", None)
    else:
        os.environ["CBDC_BENCH_CACHE"] = before


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A seed for this test: CBDC_TEST_SEED if set, else fresh; printed for replay on failure."""
    value = int(os.environ.get("CBDC_TEST_SEED") or secrets.randbits(32))
    print(f"\n[seed] {request.node.nodeid}: replay with CBDC_TEST_SEED={value}")
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """``start_server(hooks=None, **config)``: a running in-process server, stopped after the test."""
    started: list[ServerThread] = []

    def start(hooks: Sequence[Hook] | None = None, **config: Any) -> ServerThread:
        cfg = ServerConfig(**{"port": 0, "accounts": TEST_ACCOUNTS, "seed": TEST_SEED, **config})
        st = ServerThread(cfg, hooks=hooks)
        started.append(st)
        st.start()
        return st

    yield start
    for st in started:
        st.stop()


@pytest.fixture
def workload() -> Workload:
    return Workload(WorkloadConfig(accounts=TEST_ACCOUNTS, seed=TEST_SEED))
