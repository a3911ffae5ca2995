"""Workload.batch generation rate: this tree against another git revision, in one process.

Usage: python benchmarks/generator_rate.py [--ref main] [--batch 8192] [--rounds 7]

Both generators run interleaved in the same process, rounds of ~0.4 s of CPU time each, and the
best round of each is kept; CPU time (not wall time) so that a shared machine's contention skews
both alike. Prints one JSON line: payments/s of each and the ratio this/ref.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def load_ref(ref: str, folder: Path) -> Any:
    """loadgen/workload.py as of ``ref``, imported as a standalone module (engine/ from this tree)."""
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:loadgen/workload.py"], capture_output=True, check=True
    ).stdout
    path = folder / "workload_ref.py"
    path.write_bytes(text)
    spec = importlib.util.spec_from_file_location("workload_ref", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default="main")
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--accounts", type=int, default=1_000_000)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from loadgen import workload as this

    with tempfile.TemporaryDirectory() as folder:
        ref = load_ref(args.ref, Path(folder))
    gens = {
        args.ref: ref.Workload(ref.WorkloadConfig(accounts=args.accounts, seed=1)),
        "this": this.Workload(this.WorkloadConfig(accounts=args.accounts, seed=1)),
    }
    best = dict.fromkeys(gens, 0.0)
    first_id = 0
    for _ in range(args.rounds):
        for name, w in gens.items():
            t0, made = time.process_time(), 0
            while time.process_time() - t0 < 0.4:
                w.batch(args.batch, first_id=first_id)
                first_id += args.batch
                made += args.batch
            best[name] = max(best[name], made / (time.process_time() - t0))
    rates = {f"{k}_per_s": round(v) for k, v in best.items()}
    print(json.dumps({"batch": args.batch, **rates, "this/ref": round(best["this"] / best[args.ref], 3)}))


if __name__ == "__main__":
    main()
