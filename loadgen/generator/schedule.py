"""Open-loop arrival schedules: when each payment *should* be sent, fixed before the run starts.

A schedule is a sorted int64 array of offsets (ns) from the run's start, one per payment of one
operator gateway. It never depends on how the system under test behaves: that is what makes the
load open-loop and the latency (reply time - scheduled time) free of coordinated omission.

The total rate is split evenly over the gateways:

* ``constant``: gateway ``g`` of ``G`` sends payments ``g, g+G, g+2G...`` of one evenly spaced
  stream at ``rate``, so the merged stream of all gateways is evenly spaced too.
* ``poisson``: each gateway draws exponential gaps at ``rate/G`` from its own seeded stream; the
  superposition of independent Poisson processes is a Poisson process at ``rate``.
"""

from __future__ import annotations

import enum

import numpy as np


class Arrival(enum.StrEnum):
    CONSTANT = "constant"
    POISSON = "poisson"


def gateway_schedule(
    *, rate_tps: float, seconds: float, gateways: int, gateway: int, arrival: Arrival | str, seed: int
) -> np.ndarray:
    """Sorted offsets (ns from the start) of gateway ``gateway``'s payments in ``[0, seconds)``."""
    if rate_tps <= 0 or seconds <= 0:
        raise ValueError(f"rate and seconds must be > 0, got rate {rate_tps} and seconds {seconds}")
    if not 0 <= gateway < gateways:
        raise ValueError(f"gateway {gateway} is outside 0..{gateways - 1}")
    end_ns = int(seconds * 1e9)
    arrival = Arrival(arrival)
    if arrival is Arrival.CONSTANT:
        # Index arithmetic in integers, division last: no drift over long runs.
        total = int(np.ceil(rate_tps * seconds))
        k = np.arange(gateway, total, gateways, dtype=np.int64)
        offsets = (k * 1e9 / rate_tps).astype(np.int64)
        return offsets[offsets < end_ns]
    rng = np.random.default_rng([seed, 0x5C4ED, gateway])
    mean_gap_ns = gateways * 1e9 / rate_tps
    expected = rate_tps / gateways * seconds
    chunks: list[np.ndarray] = []
    last = 0.0
    while last < end_ns:
        gaps = rng.exponential(mean_gap_ns, int(expected + 6 * np.sqrt(expected) + 16))
        times = last + np.cumsum(gaps)
        chunks.append(times)
        last = float(times[-1])
    offsets = np.concatenate(chunks).astype(np.int64)
    return offsets[offsets < end_ns]
