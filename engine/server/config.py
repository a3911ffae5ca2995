"""The server's configuration (the ``serve`` command's options) and the limits it checks."""

from __future__ import annotations

import hashlib

import msgspec

from engine.journal import FsyncPolicy, JournalHeader
from engine.population import DEFAULT_SEED
from engine.records import MAX_BATCH, TRANSFER_DTYPE
from engine.wire import DEFAULT_MAX_FRAME_BYTES

DEFAULT_PORT = 7480
SERVER_NAME = "cbdc-bench"
#: Bytes of msgpack around the transfers blob in a Submit frame (tag, seq, bin header), upper bound.
SUBMIT_OVERHEAD_BYTES = 32
RECORD_BYTES = TRANSFER_DTYPE.itemsize


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the server is started with (the ``serve`` command's options)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    profile: str = "baseline"
    scenario: str | None = None
    accounts: int = 1_000_000
    seed: int = DEFAULT_SEED  # population seed: the ledger starts from Population.initial_state()
    operators: int = 64
    max_batch: int = 8192
    max_wait_us: int = 0
    queue_limit: int = 65_536
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    write_buffer_bytes: int = 1 << 20
    slow_consumer_ms: int = 2_000
    max_connections: int = 256
    echo: bool = False
    journal: str = ""  # journal path; "" = none (acknowledged payments do not survive a restart)
    fsync: str = "batch"  # "batch", "interval:MS" or "off" (see engine.journal)
    secrets: str = ""  # "" = authentication off; a secrets TOML path, or "env" (CBDC_* variables)
    handshake_timeout_ms: int = 10_000
    frame_timeout_ms: int = 10_000

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
        if self.journal and self.echo:
            raise ValueError("--journal needs a ledger; --echo runs without one")
        if self.handshake_timeout_ms <= 0 or self.frame_timeout_ms <= 0:
            raise ValueError("handshake_timeout_ms and frame_timeout_ms must be > 0")

    def journal_header(self) -> JournalHeader:
        """What a journal written by this server records about how its ledger is built."""
        digest = hashlib.sha256(open(self.scenario, "rb").read()).hexdigest() if self.scenario else ""  # noqa: SIM115
        return JournalHeader(
            accounts=self.accounts,
            seed=self.seed,
            operators=self.operators,
            profile=self.profile,
            scenario_sha256=digest,
            ownership=bool(self.secrets),
        )
