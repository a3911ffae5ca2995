"""``cbdc-bench scale`` at small sizes: one population per size, trials reset, result file and plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadgen.cli.common_args import account_counts
from loadgen.cli.main import main
from loadgen.harness.scale import SCALE_FORMAT_VERSION, ScaleSettings, load_scale, run_scale


def test_scale_measures_every_size_and_profile_and_writes_its_file_and_plot(tmp_path: Path) -> None:
    settings = ScaleSettings(
        sizes=(2_000, 30_000),
        trials=2,
        seconds=0.15,
        warmup=0.05,
        batch=1_024,
        pool=4,
        e2e_sizes=(2_000,),
        e2e_seconds=0.5,
        e2e_max_tps=5_000,
    )
    lines: list[str] = []
    result = run_scale(settings, tmp_path, log=lines.append)
    assert load_scale(tmp_path / "scale.json") == result and result.format_version == SCALE_FORMAT_VERSION
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"
    assert [b.accounts for b in result.builds] == [2_000, 30_000]
    assert len(result.engine) == 2 * 2 * 2 and all(t.audit_ok and t.transfers_per_s > 0 for t in result.engine)
    full = [t for t in result.engine if t.profile == "full"]
    assert all(t.rollover_stall_max_ns is not None and t.rollover_stall_max_ns > 0 for t in full)
    assert [(e.accounts, e.profile) for e in result.e2e] == [(2_000, "baseline"), (2_000, "full")]
    # A search ran against a server of that size (whether 5,000/s is sustained depends on the machine).
    assert all(e.trials >= 1 and 0 <= e.max_sustainable_tps <= 5_000 and e.note for e in result.e2e)


def test_scale_cli_rejects_fractional_account_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert account_counts("1e4, 1.4e9,1400M") == (10_000, 1_400_000_000, 1_400_000_000)
    with pytest.raises(SystemExit):
        main(["scale", "--sizes", "1.5"])
    assert "not a whole number" in capsys.readouterr().err


def test_scale_cli_runs_and_prints_the_medians(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["scale", "--sizes", "3e3", "--profiles", "baseline", "--trials", "1", "--seconds", "0.1"]
    assert main([*argv, "--warmup", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3,000 accounts: population built" in out and "baseline: engine" in out
    assert np.isfinite(load_scale(tmp_path / "scale.json").engine[0].transfers_per_s)
    argv[2] = "4e3"
    assert main([*argv, "--warmup", "0", "--out", str(tmp_path), "--append"]) == 0
    merged = load_scale(tmp_path / "scale.json")
    assert merged.settings.sizes == (3_000, 4_000) and [t.accounts for t in merged.engine] == [3_000, 4_000]
