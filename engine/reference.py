"""The oracle: a pure-Python ledger that applies transfers strictly one at a time.

It shares no code with ``engine.ledger`` beyond the constants and result codes, so the
differential tests compare two independent implementations of the same rules. It is slow on
purpose: plain dicts and ints, one transfer after another, checks in precedence order.

Reference hooks implement ``ReferenceHook``: per-transfer ``authorize_one`` reading state as of
the start of the batch, and ``observe_batch`` after the batch to update that state.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from engine.clock import CLOCK_START_NS
from engine.codes import LEDGER_CHECKS, PRECEDENCE, ResultCode, late_rank
from engine.hooks.wallet_limits import FEN_PER_YUAN, NO_CAP_FEN, WalletLimitsConfig
from engine.idempotency import DEFAULT_TOTAL_WINDOW_BYTES, DEFAULT_WINDOW
from engine.records import MAX_ID_AHEAD, MAX_TRANSFER_FEN, MAX_TRANSFER_ID
from engine.simtime import NS_PER_DAY, cst_day

Tx = dict[str, Any]
_RANK = {code: rank for rank, code in enumerate(PRECEDENCE)}
_LATE_RANK = late_rank()


class ReferenceHook(Protocol):
    name: str

    def begin_batch(self, txs: list[Tx]) -> None: ...

    def authorize_one(self, tx: Tx, ledger: ReferenceLedger) -> int: ...

    def observe_batch(self, txs: list[Tx], codes: list[int]) -> None: ...


def rows(batch: np.ndarray) -> list[Tx]:
    """A batch as a list of plain dicts of Python ints."""
    names = batch.dtype.names or ()
    return [dict(zip(names, r, strict=True)) for r in batch.tolist()]


class ReferenceLedger:
    """One-at-a-time model of ``engine.ledger.Ledger`` (see there for the rules)."""

    def __init__(
        self,
        balances: Sequence[int],
        wallet_classes: Sequence[int],
        *,
        operators: int = 64,
        id_window: int = DEFAULT_WINDOW,
        wallet_limits: WalletLimitsConfig | None = None,
        hooks: Sequence[ReferenceHook] = (),
        owners: Sequence[int] | None = None,
        payments_per_day: int | None = None,
        clock_start_ns: int = CLOCK_START_NS,
    ) -> None:
        self.balance = [int(b) for b in balances]
        self.wallet_class = [int(c) for c in wallet_classes]
        self.operators = operators
        self.window = min(id_window, DEFAULT_TOTAL_WINDOW_BYTES // max(operators, 1))  # as engine.idempotency
        self.high: dict[int, int] = {}
        self.seen: dict[int, set[int]] = {}
        self.limits = wallet_limits
        self.daily_spent = [0] * len(self.balance)
        self.day: int | None = None
        self.hooks = list(hooks)
        self.supply = sum(self.balance)
        self.owners = None if owners is None else [int(b) for b in owners]
        # The sequencer's clock (engine.clock), kept as plain ints: payments sequenced so far.
        self.payments_per_day = len(self.balance) if payments_per_day is None else payments_per_day
        self.clock_start_ns = clock_start_ns
        self.payments = 0

    def _caps(self, account: int) -> tuple[int, int, int]:
        assert self.limits is not None
        if self.wallet_class[account] == 0:  # institutional wallets have no caps
            return NO_CAP_FEN, NO_CAP_FEN, NO_CAP_FEN
        c = self.limits.classes()[self.wallet_class[account] - 1]
        return c.single_yuan * FEN_PER_YUAN, c.daily_yuan * FEN_PER_YUAN, c.balance_yuan * FEN_PER_YUAN

    def apply(self, batch: np.ndarray) -> list[int]:
        txs = rows(batch)
        if not txs:
            return []
        saved = copy.deepcopy((self.balance, self.high, self.seen, self.daily_spent, self.day))
        try:
            for h in self.hooks:
                h.begin_batch(txs)
            if self.limits is not None:
                if self.payments_per_day:
                    day = cst_day(self.clock_start_ns + self.payments * NS_PER_DAY // self.payments_per_day)
                else:  # format 1 journals: days from client timestamps
                    day = cst_day(txs[0]["timestamp_ns"])
                if self.day is not None and day > self.day:
                    self.daily_spent = [0] * len(self.balance)
                if self.day is None or day > self.day:
                    self.day = day
            codes = [self._apply_one(tx) for tx in txs]
        except Exception:
            self.balance, self.high, self.seen, self.daily_spent, self.day = saved
            return [ResultCode.HOOK_ERROR] * len(txs)
        self.payments += sum(1 for c in codes if c not in LEDGER_CHECKS)
        for h in self.hooks:
            h.observe_batch(txs, codes)
        return codes

    def _apply_one(self, tx: Tx) -> int:
        op, tid = tx["operator"], tx["transfer_id"]
        payer, payee, amount = tx["payer"], tx["payee"], tx["amount_fen"]
        if op >= self.operators:
            return ResultCode.UNKNOWN_OPERATOR
        if tid < 0:
            return ResultCode.INVALID_ID
        high = self.high.get(op, -1)
        if tid > MAX_TRANSFER_ID or tid > high + MAX_ID_AHEAD:
            return ResultCode.ID_OUT_OF_RANGE
        if tid <= high - self.window:
            return ResultCode.STALE_ID
        seen = self.seen.setdefault(op, set())
        if tid in seen:
            return ResultCode.DUPLICATE
        seen.add(tid)
        self.high[op] = max(high, tid)
        if amount <= 0 or amount > MAX_TRANSFER_FEN:
            return ResultCode.INVALID_AMOUNT
        if payer == payee:
            return ResultCode.SAME_ACCOUNT
        n = len(self.balance)
        if payer >= n or payee >= n:
            return ResultCode.UNKNOWN_ACCOUNT
        if self.owners is not None and not self.owners[op] <= payer < self.owners[op + 1]:
            return ResultCode.FORBIDDEN_PAYER
        vetoes = [h.authorize_one(tx, self) for h in self.hooks]
        if self.limits is not None and amount > self._caps(payer)[0]:
            vetoes.append(ResultCode.WALLET_SINGLE_LIMIT)
        vetoes = [v for v in vetoes if v]
        veto = min(vetoes, key=lambda v: _RANK[ResultCode(v)]) if vetoes else 0
        if veto and _RANK[ResultCode(veto)] <= _LATE_RANK:
            return veto
        # The settlement checks, in precedence order (engine.codes): the payer's before the payee's.
        if self.limits is not None and self.daily_spent[payer] + amount > self._caps(payer)[1]:
            return ResultCode.WALLET_DAILY_LIMIT
        if self.balance[payer] < amount:
            return ResultCode.INSUFFICIENT_FUNDS
        if self.limits is not None and self.balance[payee] + amount > self._caps(payee)[2]:
            return ResultCode.WALLET_BALANCE_LIMIT
        if veto:  # a late veto: ranked after the settlement checks, which this transfer passed
            return veto
        self.balance[payer] -= amount
        self.balance[payee] += amount
        self.daily_spent[payer] += amount
        return ResultCode.OK
