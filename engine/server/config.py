"""The server's configuration (the ``serve`` command's options) and the limits it checks."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Annotated

import msgspec

from engine.clock import CLOCK_START_NS, payments_per_day
from engine.codes import PRECEDENCE_ID
from engine.journal import REPAIR_MODES, FsyncPolicy, JournalHeader
from engine.population import DEFAULT_SEED, POPULATION_VERSION, Population, PopulationConfig
from engine.profiles import risk_model_sha256
from engine.records import MAX_BATCH, TRANSFER_DTYPE
from engine.snapshot import SnapshotSchedule
from engine.validators import DEFAULT_POLICY as DEFAULT_VALIDATOR_POLICY
from engine.validators import MAX_PARCEL_TRANSFERS, MIN_PARCEL_TRANSFERS, parse_validators
from engine.validators import POLICIES as VALIDATOR_POLICIES
from engine.wire import DEFAULT_MAX_FRAME_BYTES

DEFAULT_PORT = 7480
SERVER_NAME = "cbdc-bench"
#: Bytes of msgpack around the transfers blob in a Submit frame (tag, seq, bin header), upper bound.
SUBMIT_OVERHEAD_BYTES = 32
RECORD_BYTES = TRANSFER_DTYPE.itemsize
#: Profiles that imply ``signatures = "required"`` under ``signatures = "auto"``: a profile is a list
#: of hooks and cannot say it itself (engine/scenarios/default.toml).
SIGNED_PROFILES = frozenset({"signed", "signed-full"})
SIGNATURE_MODES = ("auto", "off", "optional", "required")


def _help(
    description: str, *, metavar: str | None = None, flag: str | None = None, aliases: tuple[str, ...] = ()
) -> msgspec.Meta:
    """A field's ``--help`` text, value name, flag (if not the field's name) and deprecated old
    spellings (see ``engine.options``)."""
    extra: dict[str, object] = {"metavar": metavar} if metavar else {}
    if flag:
        extra["flag"] = flag
    if aliases:
        extra["aliases"] = aliases
    return msgspec.Meta(description=description, extra=extra or None)


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the server is started with: the ``serve`` command's options, generated from
    the fields (``engine.options``)."""

    #: ``--listen`` on every command that runs a server (``serve``, ``run``); ``--target`` connects.
    host: Annotated[
        str,
        _help(
            "address to listen on (default {default}: loopback only)",
            metavar="ADDR",
            flag="listen",
            aliases=("--host",),
        ),
    ] = "127.0.0.1"
    port: Annotated[int, _help("TCP port; 0 picks a free one (default {default})")] = DEFAULT_PORT
    profile: Annotated[str, _help("hook profile (default {default}; {profiles})")] = "baseline"
    scenario: Annotated[
        str | None, _help("TOML scenario file with profile definitions (default: the shipped one)", metavar="FILE")
    ] = None
    accounts: Annotated[int, _help("number of accounts, e.g. 20000, 1.4e9 or 1400M", metavar="N")] = 1_000_000
    #: The ledger starts from ``Population(accounts, seed).initial_state()``.
    seed: Annotated[int, _help("population seed of the initial balances (default {default})")] = DEFAULT_SEED
    operators: Annotated[int, _help("operator numbers accepted")] = 64
    max_batch: Annotated[int, _help("transfers per engine batch")] = 8192
    max_wait_us: Annotated[
        int,
        _help(
            "longest a transfer waits for its batch to fill, in µs, rounded up to whole ms "
            "(default 0: cut each batch at the end of the I/O round that filled it)"
        ),
    ] = 0
    queue_limit: Annotated[int, _help("transfers queued before answering OVERLOADED")] = 65_536
    max_frame_bytes: Annotated[int, _help("largest accepted frame")] = DEFAULT_MAX_FRAME_BYTES
    write_buffer_bytes: Annotated[int, _help("per-connection write buffer high-water mark")] = 1 << 20
    slow_consumer_ms: Annotated[int, _help("cut off a client whose write buffer stays above the mark this long")] = (
        2_000
    )
    max_connections: Annotated[int, _help("most client connections at once")] = 256
    #: Issue 13: 256 idle or half-handshaken connections refused 34 of 40 legitimate operators.
    max_unauthenticated: Annotated[
        int,
        _help(
            "most connections at once that have not completed Hello (and authentication), within "
            "max_connections; at the limit "
            "a new connection closes the oldest unauthenticated one, so idle clients cannot keep operators "
            "out. Counted per server; the connection evicted is the oldest of the address holding the most "
            "waiting connections, so one churning address evicts its own (engine.server.sources)"
        ),
    ] = 64
    connect_rate_per_source: Annotated[
        float,
        _help(
            "new connections per second one source address may open (token bucket, burst "
            "max_unauthenticated); more are closed at once with TOO_MANY_CONNECTIONS. 0 = unlimited "
            "(default: load generators all connect from 127.0.0.1)"
        ),
    ] = 0.0
    #: Issue 13: 250 connections each sending a half frame held 1.1 GiB.
    max_partial_frame_bytes: Annotated[
        int,
        _help(
            "most bytes that incomplete frames may hold across all connections; a connection whose "
            "partial frame would take the total above it gets PARTIAL_FRAMES_FULL and is closed"
        ),
    ] = 128 << 20
    echo: Annotated[bool, _help("calibration mode: acknowledge every transfer OK, no ledger")] = False
    journal: Annotated[
        str,
        _help(
            "append every engine batch and admin change to this journal before acknowledging it; "
            "on start, replay it (default: no journal, nothing survives a restart)",
            metavar="PATH",
        ),
    ] = ""
    trove: Annotated[
        str,
        _help(
            "directory of the surveillance trove of profiles whose surveillance_log runs in trove mode "
            "(surveillance, full), kept across restarts (default: none, which serve refuses for those profiles)",
            metavar="DIR",
        ),
    ] = ""
    fsync: Annotated[
        str,
        _help(
            "journal fsync policy: batch (before every acknowledgement), interval:MS, or off",
            metavar="POLICY",
        ),
    ] = "batch"
    repair: Annotated[
        str,
        _help(
            "truncate: if the journal is damaged before its tail (which refuses the start), drop everything "
            "from the damage on and say exactly what was dropped; keep a copy of the journal first "
            "(default: none, damage refuses the start)",
            metavar="MODE",
        ),
    ] = ""
    snapshot_every: Annotated[
        str,
        _help(
            "with --journal: snapshot the ledger and hook state after this many payments sequenced (5000000 or "
            "5M) or seconds (600s), whichever comes first (both: '5M,600s'; 'off': never); recovery then "
            "replays only the journal after the newest valid snapshot (default {default})",
            metavar="WHEN",
        ),
    ] = "5M,600s"
    snapshot_method: Annotated[
        str,
        _help(
            "fork (a copy-on-write child writes the snapshot; the sequencer stalls for fork(), which grows "
            "with memory), thread (copy-on-update: a writer thread, the sequencer copies 4 MiB chunks between "
            "batches and saves accounts' old values before updating them; memory grows with the updates, not the "
            "state) or auto (fork up to 256 MiB of state, thread above)",
            metavar="METHOD",
        ),
    ] = "auto"
    snapshot_keep: Annotated[
        int,
        _help("snapshots kept, newest first; the older ones are the fallback if the newest is damaged"),
    ] = 2
    snapshot_dir: Annotated[
        str,
        _help("directory of the snapshots (default: the journal path + '.snapshots')", metavar="DIR"),
    ] = ""
    journal_segment_bytes: Annotated[
        int,
        _help(
            "roll the journal into a new segment file after this many bytes; segments every snapshot and the "
            "trove are past are deleted (default {default}, 32 MiB)",
            metavar="BYTES",
        ),
    ] = 32 << 20
    #: The sequencer's business clock (engine.clock): one simulated day = accounts * this many payments.
    payments_per_account_per_day: Annotated[
        float,
        _help(
            "the sequencer's business clock: one simulated day (daily wallet caps) is accounts times this "
            "many payments sequenced (default {default:g}, as the workload)",
            metavar="P",
        ),
    ] = 1.0
    secrets: Annotated[
        str,
        _help(
            "operator and admin secrets (TOML, see engine.auth) or 'env' for CBDC_ADMIN_SECRET and "
            "CBDC_OPERATOR_SECRET_<n>: turns on authentication and account ownership (default off)",
            metavar="FILE",
        ),
    ] = ""
    handshake_timeout_ms: Annotated[
        int, _help("close connections that do not complete Hello/authentication in time")
    ] = 10_000
    frame_timeout_ms: Annotated[int, _help("close connections that leave a frame incomplete this long")] = 10_000
    signatures: Annotated[
        str,
        _help(
            "signed payments (SignedSubmit): required (an unsigned Submit gets BAD_SIGNATURE per transfer), "
            "optional (both accepted), off, or auto (default: required for the profiles signed and signed-full, "
            "off otherwise)",
            metavar="MODE",
        ),
    ] = "auto"
    validators: Annotated[
        str,
        _help(
            "signature verification: N local validator processes (0 = on the sequencer's own thread), "
            "ray:auto or ray:ADDRESS (default {default})",
            metavar="SPEC",
        ),
    ] = "0"
    #: Local validator processes run at this nice (engine.validators, "Priority"): meant to let the
    #: sequencer's and the generator's short bursts have a core sooner; 0 (their old priority) until
    #: a quiet A/B shows it helps.
    validator_nice: Annotated[
        int,
        _help(
            "nice of the local validator processes, 0-19 (default {default}; higher yields the CPU to the "
            "sequencer's short bursts, and starves the workers on a machine shared with other CPU-bound work)",
            metavar="N",
        ),
    ] = 0
    #: Scheduling policy of the local validator processes (engine.validators, "Priority"): "batch"
    #: (``SCHED_BATCH``) keeps a woken worker from preempting the sequencer or the generator;
    #: "normal" by default (a quiet A/B showed no difference).
    validator_policy: Annotated[
        str,
        _help(
            "scheduling policy of the local validator processes: normal, batch (SCHED_BATCH: a woken worker "
            "does not preempt the server or the generator mid-burst) or idle (SCHED_IDLE: the server and the "
            "generator preempt a verifying worker at once) (default {default})",
            metavar="POLICY",
        ),
    ] = DEFAULT_VALIDATOR_POLICY
    #: Local validator parcels are filled up to this many transfers before the queue is split
    #: across workers (engine.validators, "Parcels"): one round trip per generator tick.
    validator_min_parcel: Annotated[
        int,
        _help(
            "transfers a parcel to a local validator process is filled up to before queued work is split "
            "across the processes, 1-512 (default {default}; 32: a fair share per process, more round trips)",
            metavar="N",
        ),
    ] = MIN_PARCEL_TRANSFERS
    #: A signed Submit waits up to this long for the other operators' Submits of its generator tick,
    #: so that the tick goes to the validators as one parcel (engine.server.batcher,
    #: ``Batcher._parcel_hold_s``; engine.validators, "Ticks"); 0 sends each Submit at once.
    validator_gather_us: Annotated[
        int,
        _help(
            "microseconds a signed Submit waits for the other operators' Submits of its tick before going to "
            "the local validator processes with them, as one parcel, 0-5000 (default {default}; 0: at once)",
            metavar="US",
        ),
    ] = 0
    metrics_port: Annotated[
        int | None,
        _help(
            "serve Prometheus metrics (payments by result code, queue depth, batch sizes, hook time, journal, "
            "trove, validators) over HTTP at /metrics on this port; 0 picks a free one (default: no endpoint)",
            metavar="PORT",
        ),
    ] = None
    #: Loopback by default: the figures are global to the server (every operator's traffic) and the
    #: endpoint has no authentication, while with --secrets an operator sees only its own figures.
    metrics_host: Annotated[
        str,
        _help(
            "address of the metrics endpoint (default {default}: loopback only, because the figures cover every "
            "operator's payments and the endpoint has no authentication; open it beyond the machine deliberately)",
            metavar="ADDR",
        ),
    ] = "127.0.0.1"

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be in 1..{MAX_BATCH} (the ledger's batch limit), got {self.max_batch}")
        if self.queue_limit < self.max_batch:
            raise ValueError(f"queue_limit ({self.queue_limit}) must be >= max_batch ({self.max_batch})")
        need = self.max_batch * RECORD_BYTES + SUBMIT_OVERHEAD_BYTES
        if self.max_frame_bytes < need:
            raise ValueError(
                f"max_frame_bytes ({self.max_frame_bytes}) cannot hold a full Submit of max_batch "
                f"({self.max_batch}) transfers; use at least {need}"
            )
        if self.max_wait_us < 0 or self.slow_consumer_ms <= 0 or self.write_buffer_bytes < 1024:
            raise ValueError("max_wait_us must be >= 0, slow_consumer_ms > 0, write_buffer_bytes >= 1024")
        if not 0 <= self.port < 65_536 or self.max_connections < 1:
            raise ValueError("port must be in 0..65535 and max_connections >= 1")
        if not 0 < self.operators <= 65_536:
            raise ValueError(f"operators must be in 1..65536, got {self.operators}")
        FsyncPolicy.parse(self.fsync)
        payments_per_day(self.accounts, self.payments_per_account_per_day)
        if self.repair not in REPAIR_MODES or (self.repair and not self.journal):
            raise ValueError(f"repair must be 'truncate' (with --journal) or empty, got {self.repair!r}")
        if self.journal and self.echo:
            raise ValueError("--journal needs a ledger; --echo runs without one")
        if self.connect_rate_per_source < 0:
            raise ValueError(f"connect_rate_per_source must be >= 0 (0 = off), got {self.connect_rate_per_source}")
        if self.max_unauthenticated < 1:
            raise ValueError(f"max_unauthenticated must be >= 1, got {self.max_unauthenticated}")
        if self.max_partial_frame_bytes < self.max_frame_bytes:
            raise ValueError(
                f"max_partial_frame_bytes ({self.max_partial_frame_bytes}) must hold at least one frame "
                f"of max_frame_bytes ({self.max_frame_bytes})"
            )
        if self.handshake_timeout_ms <= 0 or self.frame_timeout_ms <= 0:
            raise ValueError("handshake_timeout_ms and frame_timeout_ms must be > 0")
        if self.signatures not in SIGNATURE_MODES:
            raise ValueError(f"signatures must be one of {', '.join(SIGNATURE_MODES)}, got {self.signatures!r}")
        parse_validators(self.validators)
        if not 1 <= self.validator_min_parcel <= MAX_PARCEL_TRANSFERS:
            raise ValueError(
                f"validator_min_parcel must be in 1..{MAX_PARCEL_TRANSFERS}, got {self.validator_min_parcel}"
            )
        if self.validator_policy not in VALIDATOR_POLICIES:
            raise ValueError(
                f"validator_policy must be one of {', '.join(VALIDATOR_POLICIES)}, got {self.validator_policy!r}"
            )
        if not 0 <= self.validator_gather_us <= 5000:
            raise ValueError(f"validator_gather_us must be in 0..5000 (0: no wait), got {self.validator_gather_us}")
        if not 0 <= self.validator_nice <= 19:
            raise ValueError(f"validator_nice must be in 0..19 (0: the server's priority), got {self.validator_nice}")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65_536:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        SnapshotSchedule.parse(self.snapshot_every)
        if self.snapshot_method not in ("auto", "fork", "thread"):
            raise ValueError(f"snapshot_method must be auto, fork or thread, got {self.snapshot_method!r}")
        if self.snapshot_keep < 1:
            raise ValueError(f"snapshot_keep must be >= 1, got {self.snapshot_keep}")
        if self.journal_segment_bytes < 1 << 16:
            raise ValueError(f"journal_segment_bytes must be at least 65536, got {self.journal_segment_bytes}")

    @property
    def snapshot_directory(self) -> str:
        """Where snapshots go: ``snapshot_dir``, or beside the journal."""
        return self.snapshot_dir or (self.journal + ".snapshots" if self.journal else "")

    @property
    def signature_mode(self) -> str:
        """``signatures`` with ``auto`` resolved by the profile: required, optional or off."""
        if self.signatures == "auto":
            return "required" if self.profile in SIGNED_PROFILES else "off"
        return self.signatures

    @property
    def flush_wait_s(self) -> float:
        """``max_wait_us`` as the batcher waits it: uvloop timers have whole-millisecond resolution."""
        return math.ceil(self.max_wait_us / 1000) / 1000

    def journal_header(self) -> JournalHeader:
        """What a journal written by this server records about how its ledger is built."""
        digest = hashlib.sha256(Path(self.scenario).read_bytes()).hexdigest() if self.scenario else ""
        return JournalHeader(
            accounts=self.accounts,
            seed=self.seed,
            operators=self.operators,
            profile=self.profile,
            scenario_sha256=digest,
            ownership=bool(self.secrets),
            clock_payments_per_day=payments_per_day(self.accounts, self.payments_per_account_per_day),
            clock_start_ns=CLOCK_START_NS,
            precedence=PRECEDENCE_ID,
            risk_model_sha256="" if self.echo else risk_model_sha256(self.profile, self.scenario),
            population_version=POPULATION_VERSION,
            population_sha256=Population(self.population()).state_sha256(),
        )

    def population(self) -> PopulationConfig:
        """The seeded population the server's ledger starts from."""
        return PopulationConfig(accounts=self.accounts, seed=self.seed)
