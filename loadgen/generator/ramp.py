"""Ramped open-loop load (``--ramp 0:300k:60s``): the offered rate changes along stages, fixed up front.

A ramp is a list of stages ``FROM:TO:DURATION``; within a stage the rate moves linearly from
``FROM`` to ``TO`` payments/s, stages follow each other from the run's start (warm-up included),
and after the last one the rate holds at its ``TO`` until the schedule ends. ``0:300k:60s`` is a
one-minute linear ramp to 300,000/s; ``100k:100k:30s,100k:400k:2m`` holds 100k for 30 s, then
climbs; ``100k:100k:30s,300k:300k:30s`` steps from 100k to 300k after 30 s. Stages beyond the
end of the schedule (warm-up + measured seconds) are cut off there.

The schedule stays open-loop: arrival times come from the expected count of payments up to time
t, ``Λ(t)`` (the integral of the rate, piecewise quadratic), inverted exactly per stage. A
constant arrival puts payment ``k`` at ``Λ⁻¹(k)`` (evenly spaced in "count time", so the merged
gateways are evenly spaced as without a ramp); a Poisson arrival maps a unit-rate Poisson process
through ``Λ⁻¹`` (time rescaling), which gives a Poisson process of rate ``r(t)``.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import numpy as np

from engine.options import parse_rate, parse_seconds
from loadgen.generator.schedule import Arrival


class RampStage(NamedTuple):
    from_tps: float
    to_tps: float
    seconds: float


def parse_ramp(text: str) -> tuple[RampStage, ...]:
    """``FROM:TO:DURATION[,FROM:TO:DURATION...]`` (suffixes as ``--rate``/``--seconds``); ValueError otherwise."""
    stages = []
    for part in str(text).split(","):
        fields = part.strip().split(":")
        try:
            if len(fields) != 3:
                raise argparse.ArgumentTypeError("expected three fields")
            stage = RampStage(parse_rate(fields[0]), parse_rate(fields[1]), parse_seconds(fields[2]))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(
                f"--ramp stage {part!r} is not FROM:TO:DURATION (e.g. 0:300k:60s; stages separated by commas): {exc}"
            ) from None
        if stage.from_tps < 0 or stage.to_tps < 0 or stage.seconds <= 0:
            raise ValueError(f"--ramp stage {part!r}: rates must be >= 0 and the duration > 0")
        stages.append(stage)
    if stages[-1].to_tps <= 0:
        raise ValueError("--ramp must end at a rate above 0 (it holds there until the schedule ends)")
    return tuple(stages)


def ramp_peak_tps(stages: tuple[RampStage, ...]) -> float:
    """The highest rate of the ramp (what a result records as its offered rate)."""
    return max(max(s.from_tps, s.to_tps) for s in stages)


def _segments(stages: tuple[RampStage, ...], seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per segment up to ``seconds``: start time (s), start rate, slope (/s²), expected count at its start."""
    starts, rates, slopes = [], [], []
    t = 0.0
    for s in stages:
        if t >= seconds:
            break
        starts.append(t)
        rates.append(s.from_tps)
        slopes.append((s.to_tps - s.from_tps) / s.seconds)
        t += s.seconds
    if t < seconds:  # hold the final rate
        starts.append(t)
        rates.append(stages[-1].to_tps)
        slopes.append(0.0)
    start = np.array(starts)
    rate = np.array(rates)
    slope = np.array(slopes)
    length = np.diff(np.append(start, max(seconds, start[-1])))
    counts = rate * length + slope * length**2 / 2
    return start, rate, slope, np.concatenate(([0.0], np.cumsum(counts)))


def _invert(count: np.ndarray, start: np.ndarray, rate: np.ndarray, slope: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """``Λ⁻¹(count)`` in seconds: the time by which ``count`` payments are expected."""
    seg = np.clip(np.searchsorted(cum, count, side="right") - 1, 0, len(start) - 1)
    d = count - cum[seg]
    r, a = rate[seg], slope[seg]
    # Solve r*τ + a*τ²/2 = d in the form that stays exact when a is 0 or r is 0.
    root = np.sqrt(np.maximum(r * r + 2 * a * d, 0.0))
    denom = r + root
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(denom > 0, 2 * d / np.where(denom > 0, denom, 1.0), 0.0)
    return start[seg] + tau


def ramp_schedule(
    stages: tuple[RampStage, ...], *, seconds: float, gateways: int, gateway: int, arrival: Arrival | str, seed: int
) -> np.ndarray:
    """Sorted offsets (ns from the start) of gateway ``gateway``'s payments in ``[0, seconds)`` under the ramp."""
    if not 0 <= gateway < gateways:
        raise ValueError(f"gateway {gateway} is outside 0..{gateways - 1}")
    start, rate, slope, cum = _segments(stages, seconds)
    total = float(cum[-1])
    if Arrival(arrival) is Arrival.CONSTANT:
        counts = np.arange(gateway, int(np.ceil(total)), gateways, dtype=np.float64)
    else:
        rng = np.random.default_rng([seed, 0x5C4ED, gateway, 0x7A3])
        expected = total / gateways
        # A unit-rate process in this gateway's share of "count time", scaled to all gateways' counts.
        steps = rng.exponential(1.0, int(expected + 6 * np.sqrt(expected) + 16))
        counts = np.cumsum(steps) * gateways
    counts = counts[counts < total]
    offsets = (_invert(counts, start, rate, slope, cum) * 1e9).astype(np.int64)
    offsets = offsets[offsets < int(seconds * 1e9)]
    return np.maximum.accumulate(offsets) if len(offsets) else offsets  # float rounding never unsorts
