"""Shared fixtures: seeded randomness that reports its seed when a test fails."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (or CBDC_TEST_SEED to replay one), printed so a failure shows it."""
    value = int(os.environ.get("CBDC_TEST_SEED") or secrets.randbits(32))
    print(f"seed={value} (replay with CBDC_TEST_SEED={value})")
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
