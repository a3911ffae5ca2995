"""``--ramp``: arrivals follow the staged rate exactly (constant) or in law (Poisson), fixed up front."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.server import ServerConfig, ServerThread
from loadgen.cli.main import main
from loadgen.generator.ramp import parse_ramp, ramp_peak_tps, ramp_schedule
from loadgen.generator.schedule import gateway_schedule
from loadgen.results.run import load


def _merged(spec: str, seconds: float, gateways: int = 3, arrival: str = "constant", seed: int = 1) -> np.ndarray:
    parts = [
        ramp_schedule(parse_ramp(spec), seconds=seconds, gateways=gateways, gateway=g, arrival=arrival, seed=seed)
        for g in range(gateways)
    ]
    for p in parts:
        assert np.all(np.diff(p) >= 0)
    return np.sort(np.concatenate(parts))


def _per_second(offsets: np.ndarray, seconds: int) -> np.ndarray:
    return np.bincount(offsets // 1_000_000_000, minlength=seconds)[:seconds]


def test_linear_ramp_then_hold() -> None:
    """0 -> 1,000/s over 10 s: second i gets the integral of 100 t over it, 50 (2i + 1); then 1,000/s."""
    counts = _per_second(_merged("0:1k:10s", 13), 13)
    expected = [50 * (2 * i + 1) for i in range(10)] + [1000] * 3
    assert np.abs(counts - expected).max() <= 1


def test_steps_and_a_flat_ramp_equal_the_constant_schedule() -> None:
    counts = _per_second(_merged("100:100:2s,300:300:2s", 5), 5)
    assert np.abs(counts - [100, 100, 300, 300, 300]).max() <= 1
    flat = ramp_schedule(parse_ramp("2k:2k:3s"), seconds=3, gateways=2, gateway=1, arrival="constant", seed=0)
    plain = gateway_schedule(rate_tps=2000, seconds=3, gateways=2, gateway=1, arrival="constant", seed=0)
    assert len(flat) == len(plain) and np.abs(flat - plain).max() <= 1  # ns rounding


def test_poisson_ramp_follows_the_rate(seed: int) -> None:
    counts = _per_second(_merged("0:20k:4s", 4, arrival="poisson", seed=seed), 4)
    expected = np.array([2500, 7500, 12500, 17500])
    assert np.all(np.abs(counts - expected) <= 6 * np.sqrt(expected))


def test_bad_ramps_are_refused() -> None:
    with pytest.raises(ValueError, match="not FROM:TO:DURATION"):
        parse_ramp("0:300k")
    with pytest.raises(ValueError, match="not FROM:TO:DURATION"):
        parse_ramp("0:fast:10s")
    with pytest.raises(ValueError, match="end at a rate above 0"):
        parse_ramp("300k:0:10s")
    assert ramp_peak_tps(parse_ramp("100k:400k:2m,400k:200k:1m")) == 400_000


def test_load_with_a_ramp_records_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ServerThread(ServerConfig(port=0, accounts=2000, echo=True)) as st:
        argv = ["load", "--target", f"127.0.0.1:{st.address[1]}", "--ramp", "0:4k:2s", "--seconds", "2"]
        argv += ["--warmup", "0", "--drain", "1", "--out", str(tmp_path), "--json"]
        main(argv)
    result = load(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result_file"])
    assert result.load.ramp == "0:4k:2s" and result.summary.offered_tps == 4000
    assert result.counts.scheduled == 4000  # the integral of the ramp
    assert result.series.sent[1] > 2 * result.series.sent[0]
