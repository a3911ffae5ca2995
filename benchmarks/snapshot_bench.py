"""Snapshot figures (issue 15): restart time and peak RSS as the journal grows; snapshot stall,
time and size by ledger size. Each measurement that needs a clean RSS runs in a fresh process
that prints one JSON line.

    python -m benchmarks.snapshot_bench restart --accounts 1000000 --interval 200000 --max-multiple 12
    python -m benchmarks.snapshot_bench snapshot --accounts 1000000
    python -m benchmarks.snapshot_bench snapshot --accounts 100000000 --uniform   # 1.5 GiB of state
    python -m benchmarks.snapshot_bench snapshot --accounts 100000000 --uniform --method thread

``restart``: a journal is written as the server writes it (the same ledger, hooks, journal, and
forked snapshots every ``--interval`` payments, segments retired behind the watermark), and at
1, 2, 5, 10 and ``--max-multiple`` times the interval a fresh process starts a ``Server`` on it
and reports how long recovery took and its peak RSS; then the same with ``--snapshot-every off``
on a copy of the journal that never had snapshots (whole-journal replay), for comparison.
``snapshot``: one forked snapshot of a ledger of ``--accounts`` (profile ``enforcement``): the
sequencer's stall (capture + fork), the child's time to write and fsync, the file's size, the
time to verify it and read it back in place, and a restart from it in a fresh process (its time
and peak RSS: the population is not drawn when a snapshot is restored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

PROFILE = "enforcement"
BATCH = 8_192


def _config(journal: Path, accounts: int, snapshot_every: str) -> Any:
    from engine.server import ServerConfig

    return ServerConfig(
        port=0, accounts=accounts, profile=PROFILE, journal=str(journal), fsync="off", snapshot_every=snapshot_every
    )


def _rss_mib() -> float:
    """This process's peak RSS: ``VmHWM`` (ru_maxrss would carry the forking parent's RSS over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def restart_probe(journal: Path, accounts: int, snapshot_every: str) -> dict[str, Any]:
    """Start a server's state on ``journal`` (what ``serve`` does before listening) in this process."""
    from engine.server import Server

    t0 = time.perf_counter()
    server = Server(_config(journal, accounts, snapshot_every))
    seconds = time.perf_counter() - t0
    rec = server.recovery
    assert rec is not None
    return {
        "restart_s": seconds,
        "recovery_s": server.recovery_s,
        "peak_rss_mib": _rss_mib(),
        "batches_replayed": rec.batches,
        "entries": rec.entries,
    }


def _probe(journal: Path, accounts: int, snapshot_every: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.snapshot_bench", "probe", "--journal", str(journal)]
    cmd += ["--accounts", str(accounts), "--snapshot-every", snapshot_every]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


class _Writer:
    """The server's write path without the network: apply, journal, observe, snapshot between batches."""

    def __init__(
        self, journal: Path, accounts: int, snapshot_every: str, *, uniform: bool = False, method: str = "fork"
    ) -> None:
        from engine.journal import Journal, create
        from engine.server import build_ledger
        from engine.server.snapshots import Snapshotter
        from engine.snapshot import SnapshotSchedule
        from loadgen.generator.workload import BatchPool, Workload, WorkloadConfig

        config = _config(journal, accounts, snapshot_every)
        self.ledger = build_ledger(config, from_snapshot=uniform)
        if uniform:  # every account holds 1,000 yuan: the state's size without drawing the population
            self.ledger.balance[:] = 100_000
            self.ledger.supply_fen = 100_000 * accounts
        create(journal, config.journal_header())
        self.journal = Journal(journal, "off", segment_bytes=config.journal_segment_bytes)
        config = msgspec.structs.replace(config, snapshot_method=method)
        enabled = SnapshotSchedule.parse(snapshot_every).enabled
        self.snapshotter = Snapshotter.for_config(config, self.ledger, self.journal) if enabled else None
        self.pool = BatchPool(Workload(WorkloadConfig(accounts=accounts, seed=config.seed)), 32, BATCH)
        self.next_id = 0

    def write(self, payments: int) -> None:
        from engine.hooks.base import note_journal_seqs

        target = self.ledger.clock.payments + payments
        while self.ledger.clock.payments < target:
            batch = self.pool.next().copy()
            batch["transfer_id"] = self.next_id + batch["transfer_id"] % BATCH  # fresh ids: no duplicates
            batch["operator"] = 0
            self.next_id += BATCH
            clock = self.ledger.clock.payments
            note_journal_seqs(self.ledger.hooks, self.journal.seq + 1)
            codes = self.ledger.apply(batch)
            self.journal.append_batch(batch, codes, clock)
            self.ledger.run_deferred()
            if self.snapshotter is not None:
                self.snapshotter.maybe_start()

    def settle(self) -> None:
        if self.snapshotter is not None:
            self.snapshotter.close()
        self.journal.sync()


def restart_table(accounts: int, interval: int, max_multiple: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cbdc-snapbench-") as tmp:
        for every in (str(interval), "off"):
            journal = Path(tmp) / f"j-{every}"
            writer = _Writer(journal, accounts, every)
            done = 0
            for multiple in sorted({1, 2, 5, 10, max_multiple}):
                writer.write(multiple * interval - done)
                done = multiple * interval
                writer.settle()
                probe_dir = Path(tmp) / "probe"
                shutil.rmtree(probe_dir, ignore_errors=True)
                probe_dir.mkdir()
                for p in Path(tmp).iterdir():  # a copy: the probe's recovery must not change the writer's files
                    if p.name.startswith(journal.name + ".snapshots"):
                        shutil.copytree(p, probe_dir / p.name)
                    elif p.name.startswith(journal.name) and p.is_file() and not p.name.endswith(".lock"):
                        shutil.copy2(p, probe_dir / p.name)
                disk = sum(f.stat().st_size for f in probe_dir.rglob("*") if f.is_file())
                row = _probe(probe_dir / journal.name, accounts, every)
                row |= {"snapshot_every": every, "payments": done, "multiple": multiple, "disk_mib": disk / 2**20}
                print(json.dumps(row), flush=True)
                rows.append(row)
            writer.journal.close()
    return rows


def snapshot_figures(accounts: int, *, uniform: bool = False, method: str = "fork") -> dict[str, Any]:
    """One snapshot of a ledger of ``accounts`` (stall, write time, size, verify and load time), then a
    restart from it (time and peak RSS).

    The writer runs in its own process (``write``), which exits before the restart probe starts:
    at 1.4e9 accounts each holds ~15 GiB, and both at once do not fit 24 GiB (the writer's arrays
    are not reliably returned to the OS while its process lives).
    """
    with tempfile.TemporaryDirectory(prefix="cbdc-snapbench-") as tmp:
        cmd = [sys.executable, "-m", "benchmarks.snapshot_bench", "write", "--dir", tmp]
        cmd += ["--accounts", str(accounts), "--method", method] + (["--uniform"] if uniform else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(result), file=sys.stderr, flush=True)  # kept if the probe is lost
        restart = _probe(Path(tmp) / "j", accounts, "off")
        result |= {"restart_s": restart["restart_s"], "restart_peak_rss_mib": restart["peak_rss_mib"]}
    return result


def snapshot_write(directory: Path, accounts: int, *, uniform: bool, method: str) -> dict[str, Any]:
    """The writer's half of ``snapshot_figures``: build, one batch, one timed snapshot, verify, load."""
    from engine.server.snapshots import state_owners
    from engine.snapshot import list_snapshots, load_into, verify

    t0 = time.perf_counter()
    writer = _Writer(directory / "j", accounts, "1", uniform=uniform, method=method)  # started by hand below
    build_s = time.perf_counter() - t0
    writer.write(BATCH)
    snap = writer.snapshotter
    assert snap is not None
    snap.poll(wait=True)
    t0 = time.perf_counter()
    snap.start()
    snap.poll(wait=True)
    write_s = time.perf_counter() - t0
    (_, path), *_ = list_snapshots(snap.directory)
    t0 = time.perf_counter()
    meta = verify(path)
    verify_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_into(path, meta, dict(state_owners(writer.ledger)))
    load_s = time.perf_counter() - t0
    writer.write(BATCH)  # one batch after the snapshot, for the restart to replay
    writer.journal.close()
    return {
        "method": method,
        "accounts": accounts,
        "state_mib": writer.ledger.state_bytes() / 2**20,
        "snapshot_mib": path.stat().st_size / 2**20,
        "stall_ms": snap.stalls_ns[-1] / 1e6,
        "step_ms_max": snap.step_ns_max / 1e6,
        "write_s": write_s,
        "verify_s": verify_s,
        "load_s": load_s,
        "build_s": build_s,
        "peak_rss_mib": _rss_mib(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("restart")
    r.add_argument("--accounts", type=int, default=1_000_000)
    r.add_argument("--interval", type=int, default=200_000, help="payments between snapshots")
    r.add_argument("--max-multiple", type=int, default=12)
    s = sub.add_parser("snapshot")
    s.add_argument("--accounts", type=int, default=1_000_000)
    s.add_argument(
        "--uniform",
        action="store_true",
        help="every account starts with 1,000 yuan instead of the drawn population (same state size; "
        "the population's build peaks at ~3x the state at 10^8 accounts)",
    )
    s.add_argument("--method", choices=("fork", "thread"), default="fork")
    w = sub.add_parser("write", help="(internal) the writer's half of `snapshot`, in its own process")
    w.add_argument("--dir", type=Path, required=True)
    w.add_argument("--accounts", type=int, required=True)
    w.add_argument("--uniform", action="store_true")
    w.add_argument("--method", choices=("fork", "thread"), default="fork")
    q = sub.add_parser("probe")
    q.add_argument("--journal", type=Path, required=True)
    q.add_argument("--accounts", type=int, required=True)
    q.add_argument("--snapshot-every", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.cmd == "restart":
        restart_table(args.accounts, args.interval, args.max_multiple)
    elif args.cmd == "snapshot":
        print(json.dumps(snapshot_figures(args.accounts, uniform=args.uniform, method=args.method)))
    elif args.cmd == "write":
        print(json.dumps(snapshot_write(args.dir, args.accounts, uniform=args.uniform, method=args.method)))
    else:
        print(json.dumps(restart_probe(args.journal, args.accounts, args.snapshot_every)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
