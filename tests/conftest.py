"""Shared fixtures: in-process servers on port 0 and seeded workloads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from engine.hooks.base import Hook
from engine.server import ServerConfig, ServerThread
from loadgen.workload import Workload, WorkloadConfig
from tests.server_support import TEST_ACCOUNTS, TEST_SEED, StartServer


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
