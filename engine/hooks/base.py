"""The policy-hook interface.

A hook takes part in up to two phases of every batch:

* ``authorize(transfers, ledger)`` runs before money moves, on the transfers that passed the
  ledger's own checks, and returns one reject code per transfer (0 = no objection) or ``None``.
  It reads policy state as of the start of the batch.
* ``observe(batch, codes)`` runs after the batch committed, on the whole batch and its final
  codes, either inline (before replies go out) or deferred (after replies, off the latency path).
  It is where a hook updates its own state (scores, logs, chains).

``begin_batch(batch)`` is called first, on every batch, for time-based state (day rollover).

The ledger times every call and charges it to the hook by name, so each hook's cost per transfer
is measured inside the engine. A hook that raises in ``authorize`` makes the ledger refuse the
whole batch with HOOK_ERROR (nothing applied, no id consumed); one that raises in ``observe`` is
counted, and the committed batch stands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from engine.clock import SequencerClock
from engine.codes import CODE_DTYPE


class SequentialLimits(Protocol):
    """Caps checked in sequence with the money, exactly within a batch (the wallet_limits hook).

    The ledger runs these checks inside its settle step and charges their time (the vectorised
    bound checks and counter updates) to the hook named ``name``.
    """

    name: str
    #: Per wallet class (index = class, 0..4): the daily spending cap and the balance cap, int64.
    daily_cap_fen: np.ndarray
    balance_cap_fen: np.ndarray

    def spent_of(self, accounts: np.ndarray) -> np.ndarray:
        """Fen each of ``accounts`` spent today (int64)."""
        ...

    def set_spent(self, accounts: np.ndarray, spent_fen: np.ndarray) -> None:
        """Store today's spending of distinct ``accounts`` (int64; may saturate above every cap)."""
        ...


class LedgerView(Protocol):
    """What a hook sees of the ledger (``engine.ledger.Ledger`` is one): sizes and state columns.

    Hooks read these, and may keep references to the columns (``flags`` is shared: each hook owns
    the bits it sets, ``engine.accounts``); ``attach`` may install the one ``limits`` hook.
    """

    accounts: int
    operators: int
    #: Per account, uint8: flag bits (``engine.accounts.FLAG_*``) and the wallet class (bits 5-7).
    flags: np.ndarray
    limits: SequentialLimits | None
    #: Every hook of the ledger, in order (a hook may feed another: risk_model lowers scores).
    hooks: tuple[Hook, ...]
    #: The sequencer's business clock (``engine.clock``): the day of daily caps follows it.
    clock: SequencerClock

    def balance_of(self, accounts: np.ndarray) -> np.ndarray:
        """Balances of ``accounts`` (int64 fen)."""
        ...

    def class_of(self, accounts: np.ndarray) -> np.ndarray:
        """Wallet classes of ``accounts`` (uint8, ``engine.accounts.WALLET_CLASSES``)."""
        ...


class Transfers:
    """The transfers an authorize hook sees: columns of ``batch`` at ``index``, built lazily.

    Hooks read only the columns they need, so unused columns cost nothing. ``index`` is the
    position of each transfer in the full batch.

    ``payer_flags(flags)`` and ``payee_flags(flags)`` gather the per-account ``flags`` byte of
    each payer and payee once per batch for every hook that asks and for the ledger's settle
    step: at national account counts each gather from the account-sized column is a cache miss
    per transfer, and wallet_limits, blacklist, freeze and settle all read the same bytes.
    Flags are policy state read as of the start of the batch (no hook writes them in authorize),
    so the gathered bytes stay right for the whole batch.
    """

    def __init__(self, batch: np.ndarray, index: np.ndarray | None = None) -> None:
        self.batch = batch
        self.index = np.arange(len(batch)) if index is None else index
        self._all = index is None
        self._flags_of: np.ndarray | None = None  # the column the two gathers below came from
        self._payer_flags: np.ndarray | None = None
        self._payee_flags: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def column(self, name: str) -> np.ndarray:
        col = self.batch[name]
        return np.ascontiguousarray(col) if self._all else col[self.index]

    @cached_property
    def payer(self) -> np.ndarray:
        return self.column("payer")

    @cached_property
    def payee(self) -> np.ndarray:
        return self.column("payee")

    @cached_property
    def amount_fen(self) -> np.ndarray:
        return self.column("amount_fen")

    @cached_property
    def category(self) -> np.ndarray:
        return self.column("category")

    @cached_property
    def operator(self) -> np.ndarray:
        return self.column("operator")

    @cached_property
    def timestamp_ns(self) -> np.ndarray:
        return self.column("timestamp_ns")

    def payer_flags(self, flags: np.ndarray) -> np.ndarray:
        """``flags[payer]`` for every transfer, gathered once per batch (uint8)."""
        if self._flags_of is not flags:
            self._flags_of, self._payer_flags, self._payee_flags = flags, None, None
        if self._payer_flags is None:
            self._payer_flags = flags[self.payer]
        return self._payer_flags

    def payer_flags_at(self, flags: np.ndarray, at: np.ndarray) -> np.ndarray:
        """``flags[payer[at]]``: from the batch's gather if one was made, else only for ``at``."""
        if self._flags_of is flags and self._payer_flags is not None:
            return self._payer_flags[at]
        return flags[self.payer[at]]

    def payee_flags(self, flags: np.ndarray) -> np.ndarray:
        """``flags[payee]`` for every transfer, gathered once per batch (uint8)."""
        if self._flags_of is not flags:
            self._flags_of, self._payer_flags, self._payee_flags = flags, None, None
        if self._payee_flags is None:
            self._payee_flags = flags[self.payee]
        return self._payee_flags

    def records(self) -> np.ndarray:
        """The transfers as records (a copy unless all of the batch is here)."""
        return self.batch if self._all else self.batch[self.index]


def restricted_veto(
    transfers: Transfers,
    restricted: np.ndarray,
    barred: Callable[[np.ndarray], np.ndarray],
    code: int,
) -> tuple[np.ndarray | None, int]:
    """Veto ``code`` for payments in a restricted category whose payer is ``barred``.

    ``restricted`` is a boolean table indexed by category; ``barred(at)`` says which payers of
    the transfers at positions ``at`` may not pay those categories. Restricted categories are a
    few percent of payments, so they are tested first and the per-payer state is gathered for
    those only.
    Returns the codes (or None when nothing is vetoed) and the number vetoed.
    """
    candidates = np.flatnonzero(restricted[transfers.category])
    if len(candidates) == 0:
        return None, 0
    hit = candidates[barred(candidates)]
    if len(hit) == 0:
        return None, 0
    codes = np.zeros(len(transfers), dtype=CODE_DTYPE)
    codes[hit] = code
    return codes, len(hit)


class Hook:
    """Base class for policy hooks; override the phases the hook takes part in."""

    name: str = "hook"
    #: Run ``observe`` after replies are sent (off the latency path) rather than inline.
    deferred: bool = False
    #: Set by a journalled server before recovery: the hook will get ``note_journal_seq``.
    journalled: bool = False
    #: Bytes of per-account state ``attach`` allocates (what ``state_bytes()`` will report per
    #: account): the memory check (``engine.memory``) adds these up before anything is built.
    state_bytes_per_account: int = 0
    #: Set by a server about to restore this hook from a snapshot (``restore_scalars``) before
    #: ``attach``: output files are continued from the snapshot's position, not started anew, and
    #: seeded state is allocated but not drawn (the snapshot's arrays overwrite every byte: at 10^8
    #: accounts drawing it was most of a restart).
    resuming: bool = False
    #: Attribute names of the hook's state for snapshots (``engine.snapshot``): arrays are
    #: written chunk by chunk and restored in place; scalars are msgpack values (ints, bytes, str).
    #: ``None`` (the default) means "not declared": a ledger with such a hook takes no snapshots
    #: and recovers by replaying its whole journal, since its state could not be restored exactly.
    snapshot_arrays: ClassVar[tuple[str, ...] | None] = None
    snapshot_scalars: ClassVar[tuple[str, ...]] = ()
    #: Those of ``snapshot_arrays`` indexed by account, which the hook modifies only at the
    #: accounts of the batch at hand (or after ``snapshot_touches_all``): a copy-on-update
    #: snapshot copies them chunk by chunk while the sequencer runs; other arrays whole at capture.
    snapshot_per_account: ClassVar[tuple[str, ...]] = ()

    def attach(self, ledger: LedgerView) -> None:
        """Allocate per-account state sized to ``ledger``; called once when the ledger is built."""

    def begin_batch(self, batch: np.ndarray) -> None:
        """Called with every batch before any check."""

    def authorize(self, transfers: Transfers, ledger: LedgerView) -> np.ndarray | None:
        """Reject codes for ``transfers`` (0 = no objection), or None for no objection at all."""
        return None

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        """See a committed batch and its final result codes."""

    @property
    def authorizes(self) -> bool:
        return type(self).authorize is not Hook.authorize

    @property
    def observes(self) -> bool:
        return type(self).observe is not Hook.observe

    def state_bytes(self) -> int:
        """Per-account memory this hook holds (it grows with the accounts), for bytes per account.

        Fixed-size buffers (a bounded log, aggregates) do not scale with the accounts: hooks
        report those in ``stats()`` instead.
        """
        return 0

    @property
    def snapshots(self) -> bool:
        """Whether this hook declared its state (``snapshot_arrays``), so it can be snapshotted."""
        return self.snapshot_arrays is not None

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The hook's state arrays by name: live references, not copies (a layout change of a hook
        needs only its ``snapshot_arrays`` kept up to date, no snapshot code)."""
        return {name: getattr(self, name) for name in self.snapshot_arrays or ()}

    def per_account_arrays(self) -> tuple[str, ...]:
        """Names of the state arrays indexed by account (``snapshot_per_account``)."""
        return self.snapshot_per_account

    def state_scalars(self) -> dict[str, Any]:
        """The hook's small non-array state (counters, a chain head), msgpack-able."""
        return {name: getattr(self, name) for name in self.snapshot_scalars}

    def restore_scalars(self, scalars: dict[str, Any]) -> None:
        """Set the scalar state from a snapshot, after ``attach`` and before the snapshot's arrays
        are read into ``state_arrays()`` in place (a hook whose arrays' shapes depend on its
        scalars allocates them here)."""
        for name in self.snapshot_scalars:
            setattr(self, name, scalars[name])

    def prepare_snapshot(self) -> None:
        """Called on the sequencer just before its state is captured: push buffered output to the
        kernel, so that the snapshot writer's fsync of ``output_files`` covers everything the
        captured state has written."""

    def snapshot_touches_all(self, batch: np.ndarray) -> bool:
        """Whether applying ``batch`` will modify this hook's per-account arrays beyond the batch's
        payers and payees (a daily reset): a copy-on-update snapshot in progress then saves them
        whole first (``engine.copy_on_update``). Default: no."""
        return False

    def snapshot_touches_others(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Accounts of *other* hooks' per-account arrays (by hook name) that this hook will modify
        while ``batch`` is applied, beyond the batch's payers and payees (risk_model lowers the
        scores of earlier batches' payers): a copy-on-update snapshot saves them first. Default: none."""
        return {}

    def durable_journal_seq(self) -> int | None:
        """The journal entry number this hook's durable output has everything through, if the hook
        rebuilds from the journal (the trove); None if it keeps no such output. Journal segments
        are kept until every such consumer is past them (``engine.journal``)."""
        return None

    def replay_output(self, seq: int, batch: np.ndarray, codes: np.ndarray) -> None:
        """A journalled batch (entry ``seq``) that a snapshot covers but this hook's durable output
        (``durable_journal_seq``) does not: write its output again, without touching state."""

    def background_ns(self) -> int:
        """CPU time this hook's own threads or processes have spent so far (writers, compaction).

        The ledger adds it to the hook's measured time, so a hook that moves work off the
        sequencer still pays for it in its cost per transfer.
        """
        return 0

    def drain_background(self) -> None:
        """Return once the work handed to this hook's own threads or processes so far is done.

        A benchmark calls it after its warm-up, so the measured window's ``background_ns`` does
        not include work the warm-up queued. Default: nothing is queued.
        """

    def stats(self) -> dict[str, Any]:
        """Hook-specific figures for result files (counts, sizes)."""
        return {}

    def close(self) -> None:
        """Flush and release files; called once when the run ends."""

    def note_journal_seq(self, seq: int) -> None:
        """The journal entry number of the next batch this hook will observe (live and in replay).

        Called by a journalled server before each batch is applied, so a hook with durable
        output (the trove) can tell which batches it already holds. Default: ignored.
        """

    def output_files(self) -> list[Path]:
        """Files this hook writes from the batches it observes (logs, chains).

        They are a deterministic function of the batches, so when a server recovers from its
        journal it sets the existing ones aside and the replay writes them again, complete.
        """
        return []


def note_journal_seqs(hooks: Sequence[Hook], seq: int) -> None:
    """Tell every hook the journal entry number of the batch about to be applied."""
    for hook in hooks:
        hook.note_journal_seq(seq)


def as_accounts(accounts: int | np.ndarray | list[int], ledger_accounts: int) -> np.ndarray:
    """Account ids from an int or array for runtime admin calls, checked against the ledger's range."""
    ids = np.atleast_1d(np.asarray(accounts))
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"accounts must be an int or a 1-d array of ints, got {ids.dtype} of shape {ids.shape}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= ledger_accounts):
        raise ValueError(f"accounts must be in 0..{ledger_accounts - 1}, got {int(ids.min())}..{int(ids.max())}")
    return ids.astype(np.int64)


PerTransferAuthorize = Callable[[np.void], int]
PerTransferObserve = Callable[[np.void, int], None]


class PerTransferHook(Hook):
    """Adapts plain per-payment Python callbacks to the batch interface.

    This is the "naive" way to write a hook: one Python call per payment. It exists so that its
    cost against a vectorised hook is itself a measured comparison.
    """

    def __init__(
        self,
        name: str,
        authorize: PerTransferAuthorize | None = None,
        observe: PerTransferObserve | None = None,
        *,
        deferred: bool = False,
    ) -> None:
        self.name = name
        self.deferred = deferred
        self._authorize_one = authorize
        self._observe_one = observe

    @property
    def authorizes(self) -> bool:
        return self._authorize_one is not None

    @property
    def observes(self) -> bool:
        return self._observe_one is not None

    def authorize(self, transfers: Transfers, ledger: LedgerView) -> np.ndarray | None:
        if self._authorize_one is None:
            return None
        fn = self._authorize_one
        return np.fromiter((fn(t) for t in transfers.records()), dtype=CODE_DTYPE, count=len(transfers))

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        if self._observe_one is None:
            return
        fn = self._observe_one
        for t, c in zip(batch, codes.tolist(), strict=True):
            fn(t, c)
