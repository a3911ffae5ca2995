"""The server's counters, in one object (Locust's ``stats.py``): the code that does the work
reports events to it and keeps no counters of its own."""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.codes import ResultCode, name_counts
from engine.hooks.risk_model import RiskModel
from engine.records import MAX_BATCH

if TYPE_CHECKING:
    from engine.journal import Journal, Recovery
    from engine.ledger import Ledger
    from engine.server.config import ServerConfig
    from engine.server.snapshots import Snapshotter


class ConnectionLoad:
    """One connection's share of the queue; changed only through ``ServerStats``."""

    __slots__ = ("operator", "pending", "queued", "submitter")

    def __init__(self) -> None:
        self.pending = 0  # Submits of this connection in the queue
        self.queued = 0  # their transfers, as counted against queue_limit
        self.submitter = False  # a Welcomed operator connection: its operator has a fair share
        self.operator = -1  # the authenticated operator it submits for (set when Welcomed)


class ServerStats:
    """Every counter of one server: traffic, queue occupancy, batches, errors, engine time."""

    def __init__(self) -> None:
        self.started_ns = time.monotonic_ns()
        self.counters: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.codes = np.zeros(len(ResultCode), dtype=np.int64)  # every code sent, incl. shed
        # Engine batch sizes in power-of-two buckets: bucket b holds sizes 2**(b-1)..2**b - 1.
        self.batch_sizes = np.zeros(MAX_BATCH.bit_length() + 1, dtype=np.int64)
        self.queued = 0  # transfers in the queue, as counted against queue_limit
        self.queued_records = 0  # real transfer records in the queue
        self.queue_peak = 0
        # The fair share is per authenticated operator, not per connection (issue 13: one operator
        # with 16 connections got another's payments shed): operators with a Welcomed connection,
        # how many connections each has, and each one's transfers queued across all of them.
        self.submitters = 0  # distinct operators with a Welcomed connection
        self.partial_frame_bytes = 0  # held by incomplete frames, all connections (max_partial_frame_bytes)
        self.operator_connections: collections.Counter[int] = collections.Counter()
        self.operator_queued: collections.Counter[int] = collections.Counter()
        self.engine_ns = 0
        self.wait_ns_sum = 0
        self.wait_ns_max = 0

    # ---- queue occupancy ---------------------------------------------------------------------

    def enqueued(self, load: ConnectionLoad, n: int, cost: int) -> None:
        """A Submit of ``n`` transfers (``cost`` against queue_limit) joined the queue."""
        self.queued += cost
        self.queued_records += n
        load.queued += cost
        load.pending += 1
        self.operator_queued[load.operator] += cost
        if self.queued > self.queue_peak:
            self.queue_peak = self.queued

    def dequeued(self, load: ConnectionLoad, n: int, cost: int) -> None:
        """A Submit of ``n`` transfers (``cost`` against queue_limit) left the queue for an engine batch."""
        self.queued -= cost
        self.queued_records -= n
        load.queued -= cost
        load.pending -= 1
        self.operator_queued[load.operator] -= cost

    def queue_cleared(self, loads: list[ConnectionLoad]) -> None:
        """Everything queued was dropped (a fatal fault)."""
        self.queued = self.queued_records = 0
        for load in loads:
            load.queued = 0
        self.operator_queued.clear()

    def submitter_joined(self, load: ConnectionLoad, operator: int) -> None:
        if not load.submitter:
            load.submitter = True
            load.operator = operator
            self.operator_connections[operator] += 1
            self.submitters = len(self.operator_connections)

    def submitter_left(self, load: ConnectionLoad) -> None:
        if load.submitter:
            load.submitter = False
            left = self.operator_connections[load.operator] - 1
            if left:
                self.operator_connections[load.operator] = left
            else:
                del self.operator_connections[load.operator]
            self.submitters = len(self.operator_connections)

    # ---- events ------------------------------------------------------------------------------

    def shed(self, n: int, over_share: bool) -> None:
        """A Submit of ``n`` transfers was answered OVERLOADED at the edge."""
        self.counters["shed_submits"] += 1
        self.counters["shed_over_fair_share"] += over_share
        self.codes[ResultCode.OVERLOADED] += n

    def batch_done(self, n: int, codes: np.ndarray, engine_ns: int, wait_ns: int) -> None:
        """One engine batch of ``n`` transfers committed after ``engine_ns`` in the engine."""
        self.engine_ns += engine_ns
        self.wait_ns_sum += wait_ns
        self.wait_ns_max = max(self.wait_ns_max, wait_ns)
        self.counters["batches"] += 1
        self.counters["transfers"] += n
        self.batch_sizes[n.bit_length()] += 1
        self.codes += np.bincount(codes, minlength=len(ResultCode))

    # ---- report ------------------------------------------------------------------------------

    def report(
        self,
        config: ServerConfig,
        *,
        connections: int,
        write_buffered: list[int],
        queue_submits: int,
        fair_share: int,
        auth_enabled: bool,
        operators_enrolled: int,
        journal: Journal | None,
        snapshots: Snapshotter | None,
        recovery: Recovery | None,
        recovery_s: float,
        ledger: Ledger | None,
    ) -> dict[str, Any]:
        """Counters for StatsReply (see ``Server.stats``)."""
        c = self.counters
        batches = c["batches"]
        stats: dict[str, Any] = {
            "mode": "echo" if config.echo else "ledger",
            "profile": "echo" if config.echo else config.profile,
            "accounts": config.accounts,
            "uptime_s": (time.monotonic_ns() - self.started_ns) / 1e9,
            # CPU of the server process, all its threads (not its validator processes): lets a
            # load generator that did not start the server (``--target``) measure its CPU.
            "process_cpu_s": time.process_time(),
            "connections": connections,
            "connections_total": c["connections_total"],
            "frames": c["frames"],
            "submits": c["submits"],
            "batches": batches,
            "transfers": c["transfers"],
            "codes": name_counts(self.codes),
            "overloaded": int(self.codes[ResultCode.OVERLOADED]),
            "shed_submits": c["shed_submits"],
            "shed_over_fair_share": c["shed_over_fair_share"],
            "queue_transfers": self.queued,
            "queue_submits": queue_submits,
            "queue_limit": config.queue_limit,
            "fair_share": fair_share,
            "queue_peak_transfers": self.queue_peak,
            "oldest_enqueue_to_commit_us_mean": self.wait_ns_sum / batches / 1e3 if batches else 0.0,
            "oldest_enqueue_to_commit_us_max": self.wait_ns_max / 1e3,
            "engine_s": self.engine_ns / 1e9,
            "batch_size_mean": c["transfers"] / batches if batches else 0.0,
            "batch_sizes": {
                f"{1 << (b - 1)}-{(1 << b) - 1}" if b else "0": int(k) for b, k in enumerate(self.batch_sizes) if k
            },
            "write_buffered_bytes": sum(write_buffered),
            "write_buffered_max_bytes": max(write_buffered, default=0),
            "errors": dict(self.errors),
            "slow_consumers": c["slow_consumers"],
            "partial_frames_dropped": c["partial_frames_dropped"],
            "admin": {k.removeprefix("admin_"): v for k, v in c.items() if k.startswith("admin_")},
            "auth": {
                "enabled": auth_enabled,
                "operators_enrolled": operators_enrolled,
                "failures": c["auth_failures"],
                "operator_logins": c["auth_operator"],
                "admin_logins": c["auth_admin"],
            },
        }
        if journal is not None:
            stats["journal"] = journal.stats()
        if snapshots is not None:
            stats["snapshots"] = snapshots.stats()
        if recovery is not None:
            r = recovery
            stats["recovery"] = {
                "entries": r.entries,
                "batches": r.batches,
                "transfers": r.transfers,
                "admin_ops": r.admin_ops,
                "truncated_bytes": r.truncated_bytes,
                "format": r.version,
                "durable_seq": r.durable_seq,
                "dropped_seqs": list(r.dropped_seqs),
                "seconds": recovery_s,
                "message": r.message,
            }
        if ledger is not None:
            seen = max(ledger.stats.transfers, 1)
            stats["ledger"] = {
                "batches": ledger.stats.batches,
                "transfers": ledger.stats.transfers,
                "exact_path_transfers": ledger.stats.exact_path_transfers,
                "refused_batches": ledger.stats.refused_batches,
            }
            stats["hooks"] = {
                name: {
                    "ns_per_transfer": t.total_ns / seen,
                    "authorize_ns": t.authorize_ns,
                    "observe_ns": t.observe_ns,
                    "begin_ns": t.begin_ns,
                    "begin_max_ns": t.begin_max_ns,
                    "background_ns": t.background_ns,
                    "errors": t.errors,
                    "last_error": t.last_error,
                }
                for name, t in ledger.hook_timing.items()
            }
            for hook in ledger.hooks:
                if getattr(hook, "trove", None) is not None:
                    # Rows durable, backlog, and ``failure`` (a stopped trove: disk full), not
                    # hidden among observe errors.
                    stats["trove"] = hook.stats()
                if isinstance(hook, RiskModel):  # the model's sha256 and its cost split (result files)
                    stats["risk_model"] = hook.stats()
        return stats
