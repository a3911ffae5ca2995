"""The account ledger: columnar state and exact sequential batch semantics.

Rules (docs/design.md, "Ledger semantics"):

* Money is int64 fen. Accounts are dense ids ``0..N-1``; state is one numpy column per field.
* ``apply(batch)`` returns one ResultCode per transfer and leaves exactly the balances and codes
  that applying the transfers one by one, in batch order, would leave. Checks run in the
  precedence order documented in ``engine.codes``; the first failing check wins.
* Policy state kept by hooks is read as of the start of the batch; the caps that move with the
  money (daily spending, balance caps: ``SequentialLimits``) are exact within a batch.
* Total money is constant except for explicit ``issue``/``redeem``; no balance goes negative.

How ``apply`` stays exact and fast: it computes, per account touched by the batch, worst-case
bounds (every debit succeeds and no credit arrives; every credit arrives and no debit happens).
A transfer whose payer and payee both pass every check under the worst case succeeds whatever the
order, so all such transfers are applied in one vectorised step. Only transfers that touch an
account failing a bound run through an exact one-at-a-time loop, in batch order. Because the
bounds hold for any subset of outcomes, the two parts cannot influence each other's checks.
Before the loop, transfers that fail in any order (``_certain_failures``) get their codes and
leave the bounds, so a hot payer out of money or over its day's cap does not send its other
transfers, and its counterparties', to the loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from engine.accounts import (
    FLAG_BLACKLISTED,
    FLAG_FROZEN,
    WALLET_CLASSES,
    bits_of_class,
    class_of_bits,
    unique_accounts,
)
from engine.balances import NarrowBalances
from engine.build_progress import PHASE_HOOKS, BuildProgress, BuildStep
from engine.clock import SequencerClock
from engine.codes import CODE_DTYPE, ResultCode, late_rank, merge, rank_table
from engine.hooks.base import Hook, SequentialLimits, Transfers
from engine.idempotency import DEFAULT_WINDOW, IdWindow
from engine.records import MAX_BATCH, MAX_SUPPLY_FEN, MAX_TRANSFER_FEN, MAX_TRANSFER_ID, TRANSFER_DTYPE

# Re-exported: the flag bits, wallet classes and the limits interface were defined here first.
__all__ = [
    "FLAG_BLACKLISTED",
    "FLAG_FROZEN",
    "WALLET_CLASSES",
    "Audit",
    "HookTiming",
    "Ledger",
    "LedgerStats",
    "SequentialLimits",
    "owner_ranges",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Audit:
    """Outcome of a conservation check."""

    ok: bool
    total_fen: int
    expected_fen: int
    negative_accounts: int

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"audit {verdict}: total {self.total_fen} fen, expected {self.expected_fen} fen, "
            f"{self.negative_accounts} negative balances"
        )


@dataclass(slots=True)
class HookTiming:
    """Time spent in one hook, by phase, in nanoseconds."""

    authorize_ns: int = 0
    observe_ns: int = 0
    begin_ns: int = 0
    #: The longest single ``begin_batch`` call: how long the hook held up one batch (day rollover).
    begin_max_ns: int = 0
    #: CPU of the hook's own threads/processes (``Hook.background_ns``), as of its last observe.
    background_ns: int = 0
    errors: int = 0
    last_error: str = ""

    @property
    def total_ns(self) -> int:
        return self.authorize_ns + self.observe_ns + self.begin_ns + self.background_ns


@dataclass(slots=True)
class LedgerStats:
    batches: int = 0
    transfers: int = 0
    exact_path_transfers: int = 0
    refused_batches: int = 0
    codes: np.ndarray = field(default_factory=lambda: np.zeros(len(ResultCode), dtype=np.int64))


def owner_ranges(accounts: int, operators: int) -> np.ndarray:
    """Bounds giving each operator an equal contiguous share of the accounts."""
    return np.linspace(0, accounts, operators + 1).round().astype(np.int64)


class Ledger:
    """In-memory account ledger with policy hooks.

    ``accounts`` dense ids; ``balance_fen`` and ``wallet_class`` are a scalar or one value per
    account. ``operators`` bounds the operator numbers accepted; ``id_window`` is the
    idempotency window per operator (see ``engine.idempotency``). ``owners``, if given, makes
    each operator hold a contiguous range of accounts (``owner_ranges``): operator k may debit
    only accounts ``owners[k] <= a < owners[k+1]`` (FORBIDDEN_PAYER otherwise); it costs no
    per-account memory. ``clock`` is the sequencer's business clock (``engine.clock``; default:
    one payment per account per day): it drives the day of daily caps and advances by the
    transfers of each applied batch that pass the ledger's own checks. ``progress`` hears each
    hook's attach (``engine.build_progress``: a hook's state can take as long as the accounts').

    Storage (docs/design.md, "Per-account state"): balances are ``NarrowBalances`` (uint32 plus a
    side table; ``balance_fen`` given as a uint32 array is adopted, not copied) and the wallet
    class shares the ``flags`` byte (``engine.accounts``; ``account_bits`` given as a uint8 array
    of such bytes is adopted, not copied, and ``wallet_class`` is then not used).
    """

    #: uint32 balance + one byte of wallet class and flags (the side table is extra, and rare).
    STATE_BYTES_PER_ACCOUNT = 5

    def __init__(
        self,
        accounts: int,
        *,
        balance_fen: int | np.ndarray = 0,
        wallet_class: int | np.ndarray = 1,
        account_bits: np.ndarray | None = None,
        operators: int = 64,
        id_window: int = DEFAULT_WINDOW,
        hooks: Sequence[Hook] = (),
        owners: np.ndarray | None = None,
        clock: SequencerClock | None = None,
        progress: BuildProgress | None = None,
    ) -> None:
        if not 0 < accounts < 2**32:
            raise ValueError(f"accounts must be in 1..{2**32 - 1}, got {accounts}")
        if not 0 < operators <= 2**16:
            raise ValueError(f"operators must be in 1..65536, got {operators}")
        self.accounts = accounts
        self.operators = operators
        if isinstance(balance_fen, np.ndarray) and balance_fen.dtype == np.uint32:
            if len(balance_fen) != accounts:
                raise ValueError(f"need one balance per account ({accounts}), got {len(balance_fen)}")
            self.balances = NarrowBalances(balance_fen)
        else:
            self.balances = NarrowBalances.from_fen(accounts, balance_fen)
        if account_bits is None:
            account_bits = np.empty(accounts, dtype=np.uint8)
            account_bits[:] = bits_of_class(np.clip(wallet_class, 0, 7))
            if not np.isin(wallet_class, WALLET_CLASSES).all():
                raise ValueError(f"wallet classes must be one of {WALLET_CLASSES}")
        elif account_bits.dtype != np.uint8 or account_bits.shape != (accounts,):
            got = f"{account_bits.dtype} of shape {account_bits.shape}"
            raise ValueError(f"account_bits must be {accounts} uint8 values, got {got}")
        elif len(account_bits) and int(class_of_bits(account_bits.max())) > max(WALLET_CLASSES):
            raise ValueError(f"wallet classes must be one of {WALLET_CLASSES}")
        #: Per account: flag bits 0-4 and the wallet class in bits 5-7 (``engine.accounts``).
        self.flags = account_bits
        self.supply_fen = self.balances.total_fen()
        if self.supply_fen > MAX_SUPPLY_FEN:
            raise ValueError(f"total initial money exceeds MAX_SUPPLY_FEN ({MAX_SUPPLY_FEN} fen)")
        self.ids = IdWindow(operators, id_window)
        self.owners: np.ndarray | None = None
        if owners is not None:
            bounds = np.asarray(owners, dtype=np.int64)
            if len(bounds) != operators + 1 or bounds[0] != 0 or bounds[-1] != accounts or (np.diff(bounds) < 0).any():
                raise ValueError(f"owners must be {operators + 1} non-decreasing bounds from 0 to {accounts}")
            self.owners = bounds
        self.limits: SequentialLimits | None = None
        self.clock = clock if clock is not None else SequencerClock.for_accounts(accounts)
        self.stats = LedgerStats()
        self._ranks = rank_table()
        self._late_rank = late_rank()
        self._deferred: list[tuple[Hook, np.ndarray, np.ndarray]] = []
        self.hooks: tuple[Hook, ...] = tuple(hooks)
        names = [h.name for h in self.hooks]
        if len(set(names)) != len(names):
            raise ValueError(f"hook names must be unique, got {names}")
        self.hook_timing = {h.name: HookTiming() for h in self.hooks}
        for i, h in enumerate(self.hooks):
            if progress is not None:
                progress(BuildStep(PHASE_HOOKS, i, len(self.hooks), "hooks", h.name))
            h.attach(self)
        if progress is not None and self.hooks:
            progress(BuildStep(PHASE_HOOKS, len(self.hooks), len(self.hooks), "hooks"))

    # ---- state -----------------------------------------------------------------------------

    def state_bytes(self) -> int:
        """Bytes of per-account state: ledger columns plus every hook's state."""
        return self.ledger_state_bytes() + sum(h.state_bytes() for h in self.hooks)

    def ledger_state_bytes(self) -> int:
        """Bytes of the ledger's own per-account state: balances (with the side table) and flags."""
        return self.balances.nbytes + self.flags.nbytes

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The ledger's own state arrays by name (live references) for snapshots (``engine.snapshot``).

        Every per-account column belongs here: a snapshot is written from and read into exactly
        these, so a new or repacked column needs only its entry here. Hooks list theirs
        (``Hook.state_arrays``).
        """
        arrays: dict[str, np.ndarray] = {
            # The narrow balances (their side table is a scalar) and the class-and-flags byte.
            "balance": self.balances.narrow,
            "flags": self.flags,
            "ids.high": self.ids.high,
            "stats.codes": self.stats.codes,
        }
        return arrays | {f"ids.seen.{op}": seen for op, seen in sorted(self.ids.seen_rings().items())}

    def per_account_arrays(self) -> tuple[str, ...]:
        """The state arrays indexed by account: modified only at a batch's payers and payees, or at
        an admin operation's accounts (copy-on-update snapshots rely on it, ``engine.copy_on_update``)."""
        return ("balance", "flags")

    def state_scalars(self) -> dict[str, Any]:
        """The ledger's non-array state: issued money, the sequencer clock, counters, id rings present."""
        s = self.stats
        return {
            "supply_fen": self.supply_fen,
            "clock_payments": self.clock.payments,
            "stats": [s.batches, s.transfers, s.exact_path_transfers, s.refused_batches],
            "ids.window": self.ids.window,
            "ids.operators": sorted(self.ids.seen_rings()),
            # Balances past 2**32 - 1 fen (rare, engine.balances): sorted accounts and their fen.
            "balances.spill": [self.balances.spill_accounts.tobytes(), self.balances.spill_fen.tobytes()],
        }

    def restore_scalars(self, scalars: dict[str, Any]) -> None:
        """Set the non-array state from a snapshot and allocate the id rings it has (arrays follow)."""
        if scalars["ids.window"] != self.ids.window:
            raise ValueError(f"snapshot id window {scalars['ids.window']} is not this ledger's {self.ids.window}")
        self.supply_fen = scalars["supply_fen"]
        self.clock.payments = scalars["clock_payments"]
        s = self.stats
        s.batches, s.transfers, s.exact_path_transfers, s.refused_batches = scalars["stats"]
        self.ids.allocate(scalars["ids.operators"])
        spill_accounts, spill_fen = scalars["balances.spill"]
        self.balances.spill_accounts = np.frombuffer(spill_accounts, dtype=np.int64).copy()
        self.balances.spill_fen = np.frombuffer(spill_fen, dtype=np.int64).copy()

    def bytes_per_account(self) -> float:
        return self.state_bytes() / self.accounts

    @property
    def balance(self) -> np.ndarray:
        """Every balance as int64 fen: a new array (8 bytes per account), for tests and small ledgers."""
        return self.balances.to_int64()

    @property
    def wallet_class(self) -> np.ndarray:
        """Every account's wallet class (uint8): a new array, for tests and small ledgers."""
        return class_of_bits(self.flags)

    def balance_of(self, accounts: np.ndarray) -> np.ndarray:
        """Balances of ``accounts`` (int64 fen)."""
        return self.balances.gather(np.asarray(accounts, dtype=np.int64))

    def class_of(self, accounts: np.ndarray) -> np.ndarray:
        """Wallet classes of ``accounts`` (uint8)."""
        return class_of_bits(self.flags[accounts])

    def set_balance(self, account: int, balance_fen: int) -> None:
        """Overwrite one balance without touching the supply (tests use it to break an audit)."""
        self._check_account(account)
        self.balances.scatter(np.array([account], dtype=np.int64), np.array([balance_fen], dtype=np.int64))

    def audit(self) -> Audit:
        """Conservation check: total money equals what was issued, and nothing is negative."""
        total = self.balances.total_fen()
        # uint32 storage cannot hold a negative balance and the side table refuses one; counted anyway.
        negative = int(np.count_nonzero(self.balances.spill_fen < 0))
        return Audit(total == self.supply_fen and negative == 0, total, self.supply_fen, negative)

    def issue(self, account: int, amount_fen: int) -> None:
        """Create money in ``account`` (central-bank issuance)."""
        self._check_account(account)
        if amount_fen <= 0 or self.supply_fen + amount_fen > MAX_SUPPLY_FEN:
            raise ValueError(f"cannot issue {amount_fen} fen (supply {self.supply_fen})")
        self._add_to(account, amount_fen)
        self.supply_fen += amount_fen

    def redeem(self, account: int, amount_fen: int) -> None:
        """Destroy money held in ``account`` (redemption to reserves)."""
        self._check_account(account)
        held = int(self.balance_of(np.array([account]))[0])
        if amount_fen <= 0 or amount_fen > held:
            raise ValueError(f"cannot redeem {amount_fen} fen from balance {held}")
        self._add_to(account, -amount_fen)
        self.supply_fen -= amount_fen

    def _add_to(self, account: int, amount_fen: int) -> None:
        ids = np.array([account], dtype=np.int64)
        self.balances.scatter(ids, self.balances.gather(ids) + amount_fen)

    def _check_account(self, account: int) -> None:
        if not 0 <= account < self.accounts:
            raise ValueError(f"unknown account {account}: this ledger has accounts 0..{self.accounts - 1}")

    # ---- applying batches --------------------------------------------------------------------

    def apply(self, batch: np.ndarray) -> np.ndarray:
        """Apply ``batch`` (records of TRANSFER_DTYPE) and return one result code per transfer.

        Deferred observers are queued, not run: call ``run_deferred()`` when the replies are
        out. The caller must not modify ``batch`` until then.
        """
        if batch.dtype != TRANSFER_DTYPE:
            raise TypeError(f"batch dtype must be TRANSFER_DTYPE, got {batch.dtype}")
        n = len(batch)
        if n > MAX_BATCH:
            raise ValueError(f"batch of {n} transfers exceeds MAX_BATCH {MAX_BATCH}; split it")
        codes = np.zeros(n, dtype=CODE_DTYPE)
        if n == 0:
            return codes
        try:
            for h in self.hooks:
                timing = self.hook_timing[h.name]
                before = timing.begin_ns
                self._timed(h, "begin_ns", h.begin_batch, batch)
                timing.begin_max_ns = max(timing.begin_max_ns, timing.begin_ns - before)
        except Exception:  # a failing hook refuses the batch, never corrupts the ledger
            return self._refuse(codes)

        operator = batch["operator"]
        transfer_id = batch["transfer_id"]
        payer = batch["payer"]
        payee = batch["payee"]
        amount = batch["amount_fen"]
        # Lowest precedence first, so each higher-precedence check overwrites.
        if self.owners is not None:
            owner = np.searchsorted(self.owners, payer, side="right") - 1
            codes[owner != operator] = ResultCode.FORBIDDEN_PAYER
        codes[(payer >= self.accounts) | (payee >= self.accounts)] = ResultCode.UNKNOWN_ACCOUNT
        codes[payer == payee] = ResultCode.SAME_ACCOUNT
        codes[(amount <= 0) | (amount > MAX_TRANSFER_FEN)] = ResultCode.INVALID_AMOUNT
        bad_operator = operator >= self.operators
        bad_id = transfer_id < 0
        out_of_range = transfer_id > MAX_TRANSFER_ID
        id_codes, consumed = self.ids.check(operator, transfer_id, ~(bad_operator | bad_id | out_of_range))
        np.copyto(codes, id_codes, where=id_codes != 0)
        codes[out_of_range] = ResultCode.ID_OUT_OF_RANGE
        codes[bad_id] = ResultCode.INVALID_ID
        codes[bad_operator] = ResultCode.UNKNOWN_OPERATOR

        pending = np.flatnonzero(codes == 0)
        if len(pending):
            transfers = Transfers(batch, None if len(pending) == n else pending)
            # Settling needs these columns anyway; extracting them here keeps their cost out of
            # whichever hook happens to read them first.
            _ = transfers.payer, transfers.payee, transfers.amount_fen
            sub = np.zeros(len(pending), dtype=CODE_DTYPE)
            for h in self.hooks:
                if not h.authorizes:
                    continue
                try:
                    vetoes = self._timed(h, "authorize_ns", h.authorize, transfers, self)
                except Exception:  # a failing hook refuses the batch, never corrupts the ledger
                    return self._refuse(codes)
                if vetoes is not None:
                    merge(sub, np.asarray(vetoes, dtype=CODE_DTYPE), self._ranks)
            # A late veto (ranked after the settlement checks, engine.codes "What an operator may
            # learn") stands only for a transfer that passes them: it is settled "dry".
            late = (sub != 0) & (self._ranks[sub] > self._late_rank)
            go = (sub == 0) | late
            pays, gets, amounts, dry = transfers.payer, transfers.payee, transfers.amount_fen, late
            # The caps need each account's class: from the flags the hooks gathered (Transfers).
            bits = (
                None if self.limits is None else (transfers.payer_flags(self.flags), transfers.payee_flags(self.flags))
            )
            if not go.all():
                pays, gets, amounts, dry = pays[go], gets[go], amounts[go], late[go]
                bits = None if bits is None else (bits[0][go], bits[1][go])
            settled = self._settle(pays, gets, amounts, dry if dry.any() else None, bits)
            sub[go] = np.where(dry & (settled == 0), sub[go], settled)
            codes[pending] = sub
        self.ids.commit(consumed)
        self.clock.advance(len(pending))
        self._count(codes)

        for h in self.hooks:
            if not h.observes:
                continue
            if h.deferred:
                self._deferred.append((h, batch, codes))
            else:
                self._observe(h, batch, codes)
        return codes

    def _refuse(self, codes: np.ndarray) -> np.ndarray:
        codes[:] = ResultCode.HOOK_ERROR
        self.stats.refused_batches += 1
        self._count(codes)
        return codes

    def run_deferred(self) -> None:
        """Run the deferred observers queued by earlier ``apply`` calls, in order."""
        queue, self._deferred = self._deferred, []
        for h, batch, codes in queue:
            self._observe(h, batch, codes)

    def _observe(self, h: Hook, batch: np.ndarray, codes: np.ndarray) -> None:
        # The batch is committed; an observer's failure is counted (in _timed), not fatal.
        with contextlib.suppress(Exception):
            self._timed(h, "observe_ns", h.observe, batch, codes)
        self.hook_timing[h.name].background_ns = h.background_ns()

    def _timed(self, h: Hook, phase: str, fn: Callable[..., _T], *args: Any) -> _T:
        timing = self.hook_timing[h.name]
        t0 = time.perf_counter_ns()
        try:
            return fn(*args)
        except Exception as exc:
            timing.errors += 1
            timing.last_error = f"{phase.removesuffix('_ns')}: {type(exc).__name__}: {exc}"
            raise
        finally:
            setattr(timing, phase, getattr(timing, phase) + time.perf_counter_ns() - t0)

    def _count(self, codes: np.ndarray) -> None:
        self.stats.batches += 1
        self.stats.transfers += len(codes)
        self.stats.codes += np.bincount(codes, minlength=len(ResultCode))

    def _settle(
        self,
        payer: np.ndarray,
        payee: np.ndarray,
        amount: np.ndarray,
        dry: np.ndarray | None = None,
        bits: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Move money for transfers that passed every other check; codes for the sequential checks.

        ``dry`` marks transfers with a late veto: they are checked at their place in the sequence
        but never move money (OK here means "passed": the caller puts the veto there). They count
        in the worst-case bounds below, which only makes those bounds more cautious. ``bits``:
        the ``flags`` bytes of each payer and payee, if already gathered (``Transfers.payer_flags``).
        """
        k = len(payer)
        codes = np.zeros(k, dtype=CODE_DTYPE)
        if k == 0:
            return codes
        accounts, local = unique_accounts(np.concatenate([payer, payee]))
        lp, lq = local[:k], local[k:]
        m = len(accounts)
        debit = np.zeros(m, dtype=np.int64)
        credit = np.zeros(m, dtype=np.int64)
        np.add.at(debit, lp, amount)
        np.add.at(credit, lq, amount)
        balance = self.balances.gather(accounts)
        limits = self.limits
        safe = balance >= debit
        if limits is not None:
            t0 = time.perf_counter_ns()
            if bits is None:
                cls = class_of_bits(self.flags[accounts])
            else:  # every account is some transfer's payer or payee: no second gather from ``flags``
                account_bits = np.empty(m, dtype=np.uint8)
                account_bits[lp], account_bits[lq] = bits
                cls = class_of_bits(account_bits)
            spent = limits.spent_of(accounts)
            daily_cap = limits.daily_cap_fen[cls]
            balance_cap = limits.balance_cap_fen[cls]
            safe &= spent + debit <= daily_cap
            safe &= balance + credit <= balance_cap
            limits_ns = time.perf_counter_ns() - t0
        if safe.all():
            if dry is not None:
                np.subtract.at(debit, lp[dry], amount[dry])
                np.subtract.at(credit, lq[dry], amount[dry])
            self.balances.scatter(accounts, balance + credit - debit)
            if limits is not None:
                t0 = time.perf_counter_ns()
                limits.set_spent(accounts, spent + debit)
                self.hook_timing[limits.name].authorize_ns += limits_ns + time.perf_counter_ns() - t0
            return codes

        # Failures certain in any order, decided without the loop: a payer's spending and every
        # balance move only by transfers that succeed, and spending only grows, so a check that
        # fails against the most favourable state it could meet fails wherever the transfer
        # stands. The daily cap (checked first) fails if the spending at the batch start is
        # already too high; funds fail (the daily check surely passing: the payer's spending plus
        # all its other debits fit) if the balance plus every credit the batch could bring is
        # short. Such transfers move nothing, so they leave the bounds below and, at national
        # account counts (a hot payer out of money or over its cap for the day), most of the
        # loop's transfers with them: at 5x10^7 accounts, `full` without the trove, 5.2% of the
        # transfers went to the loop and 1.5% once these are out, the same codes and balances
        # (``benchmarks/apply_cpu.py 50e6 full 1200 --batch 4096 --pool 64``, 2026-12-04).
        day = None if limits is None else (spent, daily_cap)
        failed, failed_codes = self._certain_failures(lp, lq, amount, balance, debit, credit, day)
        if len(failed):
            safe = balance >= debit
            if limits is not None:
                safe &= spent + debit <= daily_cap
                safe &= balance + credit <= balance_cap
        # Exact one-at-a-time path, on plain Python ints, for the transfers whose outcome
        # depends on order: those touching an account that fails a worst-case bound. Their state
        # starts at the batch start, because certain transfers never touch such accounts and
        # every other account passes its checks whatever subset of transfers succeeds.
        unsure = ~(safe[lp] & safe[lq])
        if len(failed):
            unsure[failed] = False
        uncertain = np.flatnonzero(unsure)
        self.stats.exact_path_transfers += len(uncertain)
        up, uq, ua = lp[uncertain], lq[uncertain], amount[uncertain]
        # Certain transfers' totals: everything minus what the uncertain (and the dry) ones asked
        # for; the certain failures' asks are out of the totals already.
        if dry is None:
            taken = unsure
        else:
            taken = unsure | dry
            taken[failed] = False
        np.subtract.at(debit, lp[taken], amount[taken])
        np.subtract.at(credit, lq[taken], amount[taken])
        u_dry = [False] * len(uncertain) if dry is None else dry[uncertain].tolist()
        involved, loop_local = np.unique(np.concatenate([up, uq]), return_inverse=True)
        u = len(uncertain)
        start_bal = balance[involved]
        bal = start_bal.tolist()
        out = [0] * u
        pairs = zip(loop_local[:u].tolist(), loop_local[u:].tolist(), ua.tolist(), u_dry, strict=True)
        if limits is None:
            for j, (p, q, a, d) in enumerate(pairs):
                if bal[p] < a:
                    out[j] = ResultCode.INSUFFICIENT_FUNDS
                elif not d:
                    bal[p] -= a
                    bal[q] += a
        else:
            start_spent = spent[involved]
            sp = start_spent.tolist()
            dcap = daily_cap[involved].tolist()
            bcap = balance_cap[involved].tolist()
            for j, (p, q, a, d) in enumerate(pairs):
                if sp[p] + a > dcap[p]:
                    out[j] = ResultCode.WALLET_DAILY_LIMIT
                elif bal[p] < a:
                    out[j] = ResultCode.INSUFFICIENT_FUNDS
                elif bal[q] + a > bcap[q]:
                    out[j] = ResultCode.WALLET_BALANCE_LIMIT
                elif not d:
                    bal[p] -= a
                    bal[q] += a
                    sp[p] += a
            t0 = time.perf_counter_ns()
            spent += debit
            spent[involved] += np.array(sp, dtype=np.int64) - start_spent
            limits.set_spent(accounts, spent)
            self.hook_timing[limits.name].authorize_ns += limits_ns + time.perf_counter_ns() - t0
        new_balance = balance + credit - debit
        new_balance[involved] += np.array(bal, dtype=np.int64) - start_bal
        self.balances.scatter(accounts, new_balance)
        codes[uncertain] = out
        codes[failed] = failed_codes
        return codes

    @staticmethod
    def _certain_failures(
        lp: np.ndarray,
        lq: np.ndarray,
        amount: np.ndarray,
        balance: np.ndarray,
        debit: np.ndarray,
        credit: np.ndarray,
        day: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions (sorted) and codes of the transfers that fail whatever the order (``_settle``).

        Takes their amounts out of the per-account ``debit`` and ``credit`` totals, in place.
        ``day``: each account's spending today and daily cap, or None without sequential limits.
        """
        if day is None:
            over_day = np.zeros(len(lp), dtype=np.bool_)
            poor = amount > balance[lp] + credit[lp]
        else:
            spent, daily_cap = day
            over_day = spent[lp] + amount > daily_cap[lp]
            np.subtract.at(debit, lp[over_day], amount[over_day])
            np.subtract.at(credit, lq[over_day], amount[over_day])
            day_sure = spent + debit <= daily_cap
            poor = ~over_day & day_sure[lp] & (amount > balance[lp] + credit[lp])
        np.subtract.at(debit, lp[poor], amount[poor])
        np.subtract.at(credit, lq[poor], amount[poor])
        failed = np.flatnonzero(over_day | poor)
        codes = np.where(over_day[failed], ResultCode.WALLET_DAILY_LIMIT, ResultCode.INSUFFICIENT_FUNDS)
        return failed, codes.astype(CODE_DTYPE)
