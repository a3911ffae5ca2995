"""Does scoring on the risk model's own thread help the sequencer? Engine throughput, thread vs inline.

The ``risk_model`` hook in observe mode scores each batch on a background thread (every runtime
releases the GIL while it predicts), so on two cores the model's CPU should come off the
sequencer's. This runs ``cbdc-bench engine --profile realistic`` with the shipped scenario's
``[hooks.risk_model]`` changed to each of ``predictor`` in (lleaves, lightgbm) x ``model_thread``
in (true, false), each in a fresh process, ``--rounds`` times interleaved, and prints one JSON line
per run and a table of medians with the thread/inline ratio per predictor. On a quiet 2-core
machine (about 3 minutes with the defaults):

    python benchmarks/risk_model_thread.py --accounts 1000000 --seconds 3 --rounds 2

On a shared machine the second core is often busy with other jobs: the ratio then says little.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.profiles import default_scenario_text

VARIANTS = [(p, t) for p in ("lleaves", "lightgbm") for t in (True, False)]


def scenario(folder: Path, predictor: str, model_thread: bool) -> Path:
    """The shipped scenario with ``predictor`` and ``model_thread`` set."""
    text = default_scenario_text().decode()
    for key, value in (("predictor", f'"{predictor}"'), ("model_thread", str(model_thread).lower())):
        lines = [line for line in text.splitlines() if line.startswith(f"{key} =")]
        assert len(lines) == 1, f"the shipped scenario should set {key} once"
        text = text.replace(lines[0], f"{key} = {value}")
    path = folder / f"{predictor}-{'thread' if model_thread else 'inline'}.toml"
    path.write_text(text)
    return path


def run(path: Path, accounts: int, seconds: float) -> dict[str, float]:
    """One engine run in a fresh process: its rate and the risk model's figures."""
    command = [sys.executable, "-m", "loadgen", "engine", "--profile", "realistic", "--accounts", str(accounts)]
    command += ["--seconds", str(seconds), "--scenario", str(path), "--json"]
    out = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    risk = out["hook_stats"]["risk_model"]
    return {
        "transfers_per_s": out["transfers_per_s"],
        "features_ns_per_payment": risk["features_ns_per_payment"],
        "inference_ns_per_payment": risk["inference_ns_per_payment"],
        "wait_ms": risk["wait_ns"] / 1e6,
        "risk_model_ns_per_transfer": out["hooks"]["risk_model"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates: dict[tuple[str, bool], list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="risk-thread-") as tmp:
        paths = {v: scenario(Path(tmp), *v) for v in VARIANTS}
        for round_ in range(args.rounds):
            for predictor, thread in VARIANTS:
                figures = run(paths[predictor, thread], args.accounts, args.seconds)
                rates[predictor, thread].append(figures["transfers_per_s"])
                line = {"round": round_, "predictor": predictor, "model_thread": thread, **figures}
                print(json.dumps(line), flush=True)
    print(f"{'predictor':<10}{'thread /s':>12}{'inline /s':>12}{'thread/inline':>15}")
    for predictor in ("lleaves", "lightgbm"):
        thread, inline = statistics.median(rates[predictor, True]), statistics.median(rates[predictor, False])
        print(f"{predictor:<10}{thread:>12,.0f}{inline:>12,.0f}{thread / inline:>15.2f}")


if __name__ == "__main__":
    main()
