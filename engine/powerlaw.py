"""The bounded continuous power law behind account popularity and city sizes.

Density ~ (x + 1)**-s on [0, n]: rank ``floor(x)`` of a draw is Zipf-like with exponent ``s``
(exactly log-spaced when s = 1). Inverting the CDF costs one ``pow`` (or ``expm1``) per draw,
where a table search over n items would cost a cache miss per level.
"""

from __future__ import annotations

import numpy as np


def powerlaw_cdf(x: np.ndarray, s: float, n: int) -> np.ndarray:
    """CDF of density ~ (x+1)^-s on [0, n]."""
    if abs(s - 1) < 1e-12:
        return np.log1p(x) / np.log1p(n)
    return ((x + 1) ** (1 - s) - 1) / ((n + 1) ** (1 - s) - 1)


def powerlaw_inv(u: np.ndarray, s: float, n: int) -> np.ndarray:
    """Inverse of ``powerlaw_cdf``: the x with CDF u, for u in [0, 1)."""
    if abs(s - 1) < 1e-12:
        return np.expm1(u * np.log1p(n))
    return (u * ((n + 1) ** (1 - s) - 1) + 1) ** (1 / (1 - s)) - 1
