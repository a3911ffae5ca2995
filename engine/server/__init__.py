"""The payment server: uvloop TCP, one ``asyncio.Protocol`` per connection, micro-batched ledger.

The package, one job per module: ``config`` (``ServerConfig``), ``connection`` (one client:
flow control, slow-consumer cut-off, framing of replies), ``session`` (handshake and
authentication), ``batcher`` (admission, fair share, the group-commit queue), ``admin`` (admin
requests; ``AdminOp`` shared with journal replay), ``stats`` (every counter), ``recovery``
(journal replay at start), ``server`` (the wiring ``Server``), ``running`` (``serve``,
``ServerThread``).

Shape (msgspec's ``examples/asyncio-kv``): length-prefixed msgpack frames, tagged-union messages
dispatched by ``match``. What this server adds, and why:

Micro-batching (group commit)
    Valid Submits from every connection go into one FIFO queue. A flush takes whole Submits from
    the head until the next one would exceed ``max_batch`` transfers, applies them as *one* engine
    batch (one ``np.concatenate``, one ``Ledger.apply``), splits the codes back per Submit and
    writes one ``Results`` per Submit, all carrying the batch's commit time. Per connection the
    frames of a flush are joined into one write (one syscall, not one per Submit). Deferred
    observers run after those writes, so they stay off the latency path.

    A batch is cut when the queue holds ``max_batch`` transfers, or when its oldest Submit has
    waited ``max_wait_us``. With ``max_wait_us = 0`` (the default) it is cut at the end of the
    event-loop round that queued it: everything read from every socket in one poll is one batch,
    and while a batch runs, the next one accumulates in the socket buffers, so batches grow with
    load on their own and idle latency stays minimal. uvloop timers have 1 ms resolution, so a
    positive wait is rounded up to whole milliseconds. When a flush leaves Submits behind (the
    queue held more than one batch) the next flush is scheduled at once, after one I/O round.

The engine runs on the event-loop thread. While a batch runs nothing is read: new frames wait in
the kernel's socket buffers (TCP's own bounded queue) and are read, validated and queued or shed
in the next I/O round. The alternative, a worker thread, would overlap little under the GIL and
would make the batch boundaries depend on thread scheduling.

Ordering
    Per connection, Results come in Submit order except for shed Submits (below), whose Results
    are sent immediately and can overtake queued ones; clients match Results by ``seq``.
    Admin requests first apply everything queued (from every connection), so they observe, and
    take effect after, every Submit received before them; with signatures on, an admin request
    that arrives while Submits await their verdicts waits behind them in arrival order (and the
    Submits after it wait behind it), so the order is the same as without signatures.

Bounded everything
    * Queue: at most ``queue_limit`` transfers (a Submit counts at least 1). A Submit that does
      not fit is answered at once with OVERLOADED for each of its transfers; it never reaches the
      ledger, and the queue (hence memory and queueing delay) stays bounded. No operator (all its
      connections together) may hold more than its fair share of the queue (``queue_limit`` /
      connected operators, at least ``max_batch``), so one operator flooding the server, from
      however many connections, cannot get the others' payments shed.
    * Frames: a header above ``max_frame_bytes`` gets FRAME_TOO_LARGE and the connection is
      closed (the stream cannot be trusted after it); the read buffer is bounded by the limit.
    * Write buffers: the transport's high-water mark is ``write_buffer_bytes``. Above it the
      connection stops being read (TCP pushes back on that client only); if it stays above for
      ``slow_consumer_ms``, or grows past four times the mark, the client is cut off with
      SLOW_CONSUMER.
    * Connections: at most ``max_connections``; more get TOO_MANY_CONNECTIONS.

Malformed input gets a specific ``Error`` naming what was wrong and what to do; nothing of a
rejected frame is applied, and the connection stays usable unless the framing itself is broken.
Transfers that reached the queue are applied even if their client disconnects before the
Results go out (the server accepted them; a retry is caught by the idempotency window).

Durability (``journal``)
    Each engine batch is appended to the journal (records, result codes and the sequencer clock at
    its start: one entry, one fsync under ``fsync="batch"``) after ``apply`` and *before* its
    Results are written: a transfer is acknowledged only once it is in the journal. State-changing
    admin requests are journalled before their Ack. On start (``engine.server.recovery.open_journal``)
    the journal is locked (a second server on it refuses, naming the holder's pid), then an
    existing journal is replayed into the freshly built ledger (see ``engine.journal``); its
    header must match this server's accounts, seed, operators, profile, scenario, ownership,
    clock and code precedence. Damage before the journal's tail refuses the start (``repair=
    "truncate"`` drops it, saying what). If the journal cannot be written or fsynced, the server
    stops acknowledging anything (JOURNAL_FAILED to every client) and exits without retrying the
    fsync: memory is then ahead of the journal, and only a restart (replaying the journal) gives
    a state that matches what was acknowledged. Under ``interval:MS`` a loop timer syncs a quiet
    server's last interval.

    Snapshots and segments (``snapshot_every``, ``journal_segment_bytes``; issue 15): between
    batches a forked child writes the ledger's and every hook's state to a checksummed snapshot
    file (``engine.snapshot``, ``engine.server.snapshots``); the journal rolls into segments and a
    segment is deleted once every durable consumer (the oldest kept snapshot, the trove) is past
    it. A restart restores the newest valid snapshot (a damaged one is refused by name and the
    previous one used) and replays only the segments after it.

    The fsync runs on the journal's own thread (``engine.journal``, "Fsync policies"), never on
    the event loop, since 2026-12-04 (session 10). Under ``batch`` that is a pipelined group
    commit: the loop writes a batch's entry, hands the fsync to the thread and goes on applying
    and writing the next batches (``Batcher.held`` keeps each batch's Results, by connection, in
    order); when an fsync returns, ``Journal.on_durable`` releases the Results of every batch it
    covered, and the next fsync starts at once for whatever was written meanwhile. A payment still
    waits for an fsync that covers its batch, but no longer for the loop to be free of another
    batch's fsync, and one fsync covers as many batches as were written while the previous one ran
    (group commit adapting to load without the loop stopping). Held Results are bounded like the
    queue: past ``queue_limit`` transfers held, the loop syncs itself (a disk slower than the load
    then slows the clients through their sockets, as before); the stats show ``journal.held_batches``
    and ``held_transfers``. Admin entries and the drains before
    admin requests and at shutdown still sync on the loop (their Ack waits anyway). The order of
    journal entries is still the loop's (only the fsync moved); replies still follow their entry's
    durability. Before, the fsync blocked the loop (~0.25 ms per fsync idle, ~0.64 ms under
    200,000 transfers/s, 14% of the loop's time; benchmarks/durability_table.py). Under
    ``interval:MS`` acknowledgements never waited for the fsync; now neither does the loop.

Authentication (``secrets``)
    With secrets, ``Hello`` is answered with a ``Challenge`` nonce and the client must answer
    ``Authenticate`` (HMAC, ``engine.auth``; compared in constant time) before anything else;
    a wrong or missing answer gets AUTH_FAILED and the connection is closed. Operators may then
    debit only their own account range (``owner_ranges``; FORBIDDEN_PAYER otherwise), which
    Welcome states. Admin connections (the admin secret) may freeze, unfreeze, blacklist, audit
    and read any balance but not submit; operators get NOT_PERMITTED for those, and may read
    only balances of their own accounts. Stats are open to every authenticated connection.
    Without secrets everything is as before: no authentication, no ownership.

Signatures (``signatures``, ``validators``; issue 19)
    With signatures on (``required``, ``optional``, or ``auto`` with the profiles ``signed`` and
    ``signed-full``), a ``SignedSubmit`` passes the usual checks and admission (fair share first,
    so one operator's flood of bad signatures cannot starve another), then its transfers go to the
    validation tier (``--validators``: N local processes, 0 = the sequencer's own thread, or Ray);
    the loop goes on while they are verified, and Submits enter the queue in arrival order once
    their verdicts (and every earlier Submit's) are in. A transfer whose signature does not verify
    is answered BAD_SIGNATURE in its place: it never reaches the ledger, does not consume its
    transfer id (a correctly signed retry with the same id applies) and is not journalled, so the
    journal holds verified transfers only and replay never re-verifies. If the tier cannot verify
    (``ValidatorsUnavailable``: its workers died), the Submit is answered OVERLOADED: nothing
    applied, safe to retry (a validator process that dies mid-run has its chunks re-verified by
    another and is replaced; ``engine.validators``). With ``required``, an unsigned ``Submit``
    gets BAD_SIGNATURE for each transfer; a server with signatures off answers ``SignedSubmit``
    UNKNOWN_MESSAGE.

Timeouts
    A connection must complete Hello (and authentication) within ``handshake_timeout_ms``, and
    a frame once started must be complete within ``frame_timeout_ms`` of the last complete frame
    (a client trickling a frame, or gone half-way through one); both are cut off with an Error.
    Idle connections without a partial frame are legitimate (an operator with nothing to send);
    TCP keepalive detects their peers vanishing.

``--echo`` (``ServerConfig.echo``) runs the same framing, validation, queueing and batching but
answers OK for every transfer without a ledger: the calibration target for the load generator.
"""

from engine.server.admin import PRIVILEGED, AdminOp
from engine.server.batcher import Batcher, QueuedSubmit
from engine.server.config import DEFAULT_PORT, SERVER_NAME, SUBMIT_OVERHEAD_BYTES, ServerConfig
from engine.server.connection import CUTOFF_GRACE_S, HARD_WRITE_LIMIT_FACTOR, Connection
from engine.server.running import ServerThread, serve
from engine.server.server import Server, build_ledger
from engine.server.stats import ServerStats

#: The connection class under its former private name (tests/fuzz_support.py drives one directly).
_Connection = Connection

__all__ = [
    "CUTOFF_GRACE_S",
    "DEFAULT_PORT",
    "HARD_WRITE_LIMIT_FACTOR",
    "PRIVILEGED",
    "SERVER_NAME",
    "SUBMIT_OVERHEAD_BYTES",
    "AdminOp",
    "Batcher",
    "Connection",
    "QueuedSubmit",
    "Server",
    "ServerConfig",
    "ServerStats",
    "ServerThread",
    "build_ledger",
    "serve",
]
