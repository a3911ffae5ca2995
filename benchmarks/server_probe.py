"""Indicative server capacity probe: one client keeps ``window`` Submits in flight for ``seconds``.

Closed loop on purpose: it measures how fast the server drains Submits when never starved, not
latency (the open-loop generator, ``cbdc-bench load``, is the reference for that). Starts
``cbdc-bench serve`` as a separate process, warms up, measures, audits through the server, stops
it, and prints one JSON line.

    python benchmarks/server_probe.py --accounts 1000000 --batch 1000 --window 8 --seconds 5
    python benchmarks/server_probe.py --echo ...
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

import numpy as np

from engine.client import Client
from engine.wire import Results, Submit
from loadgen.generator.workload import DEFAULT_SEED, Workload, WorkloadConfig


def probe(args: argparse.Namespace) -> dict[str, object]:
    cmd = [sys.executable, "-m", "loadgen", "serve", "--port", "0", "--accounts", str(args.accounts)]
    cmd += ["--profile", args.profile, "--seed", str(args.seed), "--max-wait-us", str(args.max_wait_us)]
    if args.echo:
        cmd.append("--echo")
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        wl = Workload(WorkloadConfig(accounts=args.accounts, seed=args.seed))
        pool = [wl.batch(args.batch, first_id=i * args.batch, operator=args.operator) for i in range(args.pool)]
        id_step = args.pool * args.batch
        with Client("127.0.0.1", port, operator=args.operator) as c:
            encode = c.codec.frame
            state = {"i": 0, "cycle": 0, "seq": 0}

            def next_frame() -> bytes:
                i = state["i"]
                b = pool[i]
                if state["cycle"]:  # fresh ids; payer/payee swapped so balances do not drain
                    b["transfer_id"] += id_step
                    b["payer"], b["payee"] = b["payee"].copy(), b["payer"].copy()
                state["i"] = (i + 1) % len(pool)
                if state["i"] == 0:
                    state["cycle"] += 1
                state["seq"] += 1
                return encode(Submit(state["seq"], b.tobytes()))

            def run(seconds: float) -> tuple[int, np.ndarray, float]:
                codes = np.zeros(32, dtype=np.int64)
                done = 0
                in_flight = 0
                t0 = time.perf_counter()
                end = t0 + seconds
                while True:
                    now = time.perf_counter()
                    while in_flight < args.window and now < end:
                        c.send_raw(next_frame())
                        in_flight += 1
                    if in_flight == 0:
                        return done, codes, now - t0
                    msg = c.recv()
                    assert type(msg) is Results, msg
                    k = np.frombuffer(msg.codes, dtype=np.uint8)
                    codes += np.bincount(k, minlength=32)
                    done += len(k)
                    in_flight -= 1

            run(args.warmup)
            before = c.stats()
            done, codes, elapsed = run(args.seconds)
            after = c.stats()
            audit_ok = None if args.echo else c.audit().ok
        batches = after["batches"] - before["batches"]
        return {
            "mode": "echo" if args.echo else args.profile,
            "accounts": args.accounts,
            "submit_batch": args.batch,
            "window": args.window,
            "seconds": round(elapsed, 3),
            "transfers": done,
            "transfers_per_s": round(done / elapsed),
            "ok_share": round(float(codes[0] / max(done, 1)), 4),
            "engine_batches": batches,
            "engine_batch_mean": round((after["transfers"] - before["transfers"]) / max(batches, 1)),
            "engine_busy_share": round((after["engine_s"] - before["engine_s"]) / elapsed, 3),
            "overloaded": after["overloaded"] - before["overloaded"],
            "audit_ok": audit_ok,
        }
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, default=1_000_000)
    p.add_argument("--profile", default="baseline")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--batch", type=int, default=1000, help="transfers per Submit")
    p.add_argument("--window", type=int, default=8, help="Submits in flight")
    p.add_argument("--pool", type=int, default=64, help="pre-generated Submits cycled with fresh ids")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--max-wait-us", type=int, default=0)
    p.add_argument("--operator", type=int, default=0)
    p.add_argument("--echo", action="store_true")
    print(json.dumps(probe(p.parse_args())))


if __name__ == "__main__":
    main()
