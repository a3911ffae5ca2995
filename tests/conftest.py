"""Shared fixtures. Every random test draws from a seed that is printed, so a failure replays."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A seed for this test: CBDC_TEST_SEED if set, else fresh; printed for replay on failure."""
    value = int(os.environ.get("CBDC_TEST_SEED") or secrets.randbits(32))
    print(f"\n[seed] {request.node.nodeid}: replay with CBDC_TEST_SEED={value}")
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
