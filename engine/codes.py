"""Result codes: one per transfer, with a documented precedence.

A transfer is checked stage by stage; the first failing check wins. The numeric value of a code is
*not* its precedence (codes are append-only for wire compatibility); ``PRECEDENCE`` is.

Rules for changing this table (issue 13 owns it):

* A new code gets the next numeric value and is inserted into ``PRECEDENCE`` at the place its
  check runs; its row below says where and why. Appending a code that no existing transfer can
  get leaves every earlier outcome unchanged.
* Changing the order of existing codes changes the outcome of journalled transfers, so it is a
  journal format change: bump ``PRECEDENCE_ID``. Journals record the id in their header
  (``JournalHeader.precedence``) and a server with another id refuses to replay them.
* The codes up to FORBIDDEN_PAYER are the ledger's own checks (``LEDGER_CHECKS``); a transfer
  refused by one of them is not a payment and does not advance the sequencer's clock.

Precedence, highest first:

==================  =====================================================================
code                meaning
==================  =====================================================================
BAD_SIGNATURE       (signed operation) the payer wallet's Ed25519 signature over the record is
                    missing or does not verify, or the payer has no key; checked by the
                    validators before anything else (see below)
UNKNOWN_OPERATOR    the operator number is outside the ledger's configured operators
INVALID_ID          transfer_id is negative
ID_OUT_OF_RANGE     transfer_id is above MAX_TRANSFER_ID (2**62 - 1, engine.records) or more than
                    MAX_ID_AHEAD (2**32) above the operator's highest id; see below
STALE_ID            transfer_id is older than the operator's idempotency window, so it cannot
                    be proven new; rejected rather than risk a double payment
DUPLICATE           (operator, transfer_id) was already processed; no money moves
INVALID_AMOUNT      amount_fen <= 0 or > MAX_TRANSFER_FEN
SAME_ACCOUNT        payer == payee
UNKNOWN_ACCOUNT     payer or payee is not an account of this ledger
FORBIDDEN_PAYER     the operator does not hold the payer's account (servers with authentication on)
BLACKLISTED         payer is on the blacklist and the category is restricted (blacklist hook)
CREDIT_RESTRICTED   payer's social-credit score is below the threshold for this category
WALLET_SINGLE_LIMIT amount exceeds the payer's wallet-class single-payment cap
WALLET_DAILY_LIMIT  payer's spending today would exceed the wallet-class daily cap
INSUFFICIENT_FUNDS  payer's balance at that point in the sequence is below the amount
WALLET_BALANCE_LIMIT payee's balance would exceed its wallet-class balance cap
FROZEN              payer or payee is frozen (freeze hook); after the settlement checks, see below
HOOK_ERROR          an authorize hook raised; the whole batch is refused, nothing applied
OVERLOADED          the server shed the transfer before it reached the ledger
==================  =====================================================================

BAD_SIGNATURE (appended for issue 19, value 18) is decided before the transfer reaches the ledger:
such a transfer never moves money, does not consume its transfer id (a correctly signed resend of
the same id is applied, not answered DUPLICATE), is not journalled (the journal records verified
transfers only, and replay never re-verifies), and so never takes part in idempotency or the
sequential batch. Because it is never journalled, placing it first changes nothing in the
precedence of the codes a journal holds.

ID_OUT_OF_RANGE (appended for issue 13, value 19) sits right after INVALID_ID: both are checks of
the id alone. Before it, an id of 2**63 - 1 was accepted and raised the operator's window to the
top of int64, so every later id was STALE_ID (the operator was blocked for good) and
``Welcome.next_transfer_id`` overflowed. Valid ids are 0..MAX_TRANSFER_ID; an id out of range is not
consumed and moves no window. Existing codes kept their order, but a journal holding an id above
the range would replay with another code, so the precedence id moved to ``codes-2``.
The MAX_ID_AHEAD bound (``codes-3``) closes the same hole from inside the range: an id of
2**62 - 1 was valid and left its operator no new id above it (a self-block). An id may now run at
most 2**32 ahead of the operator's highest consumed id (before its first, of -1).

What an operator may learn about accounts it does not hold (``codes-3``, issue 13)
    Only what paying them reveals: a payment that would move money from the operator's own
    customer is refused if the payee cannot receive it (WALLET_BALANCE_LIMIT, FROZEN), and the
    refusal says why. Nothing about a payee is answered for a payment that could not have moved
    money anyway. Under ``codes-2`` the payee's checks came before the payer's funds, so a payer
    with no money probed for free: the amount at which WALLET_BALANCE_LIMIT turned into
    INSUFFICIENT_FUNDS gave the payee's exact balance, and FROZEN gave the payee's frozen state.
    Now every check of the payer's side (its wallet caps, its funds) comes first: a probe that
    learns anything about the payee moves the amount to the payee when the answer is OK, so a
    balance costs money to learn. FROZEN stays one code for payer and payee (the operator knows
    its own customer's state). The order of the engine follows: a hook veto ranked after the
    settlement checks (``SETTLEMENT_CHECKS``) stands only for a transfer that passes them at its
    place in the sequence (it then moves no money); one ranked before them refuses the transfer
    before they run. UNKNOWN_ACCOUNT stays early: the number of accounts is public (Welcome).
    Reordering changes the codes a journal holds, so the precedence id is ``codes-3``.
"""

from __future__ import annotations

import enum

import numpy as np


class ResultCode(enum.IntEnum):
    OK = 0
    UNKNOWN_OPERATOR = 1
    INVALID_ID = 2
    DUPLICATE = 3
    STALE_ID = 4
    INVALID_AMOUNT = 5
    SAME_ACCOUNT = 6
    UNKNOWN_ACCOUNT = 7
    FORBIDDEN_PAYER = 8
    FROZEN = 9
    BLACKLISTED = 10
    CREDIT_RESTRICTED = 11
    WALLET_SINGLE_LIMIT = 12
    WALLET_DAILY_LIMIT = 13
    WALLET_BALANCE_LIMIT = 14
    INSUFFICIENT_FUNDS = 15
    HOOK_ERROR = 16
    OVERLOADED = 17
    BAD_SIGNATURE = 18
    ID_OUT_OF_RANGE = 19


#: Codes in precedence order, highest first (OK last: it only stands when nothing failed).
PRECEDENCE: tuple[ResultCode, ...] = (
    ResultCode.BAD_SIGNATURE,
    ResultCode.UNKNOWN_OPERATOR,
    ResultCode.INVALID_ID,
    ResultCode.ID_OUT_OF_RANGE,
    ResultCode.STALE_ID,
    ResultCode.DUPLICATE,
    ResultCode.INVALID_AMOUNT,
    ResultCode.SAME_ACCOUNT,
    ResultCode.UNKNOWN_ACCOUNT,
    ResultCode.FORBIDDEN_PAYER,
    ResultCode.BLACKLISTED,
    ResultCode.CREDIT_RESTRICTED,
    ResultCode.WALLET_SINGLE_LIMIT,
    ResultCode.WALLET_DAILY_LIMIT,
    ResultCode.INSUFFICIENT_FUNDS,
    ResultCode.WALLET_BALANCE_LIMIT,
    ResultCode.FROZEN,
    ResultCode.HOOK_ERROR,
    ResultCode.OVERLOADED,
    ResultCode.OK,
)

#: The ledger's own checks (before any policy hook): a transfer refused by one of them is not a
#: payment, so it does not advance the sequencer's clock (``engine.clock``).
LEDGER_CHECKS: frozenset[ResultCode] = frozenset(PRECEDENCE[: PRECEDENCE.index(ResultCode.FORBIDDEN_PAYER) + 1])

#: The checks of settlement, decided one transfer at a time in sequence order (``Ledger._settle``).
#: A hook veto ranked after all of them is "late": it stands only if the transfer passes them.
SETTLEMENT_CHECKS: frozenset[ResultCode] = frozenset(
    {ResultCode.WALLET_DAILY_LIMIT, ResultCode.INSUFFICIENT_FUNDS, ResultCode.WALLET_BALANCE_LIMIT}
)

#: Identifies this precedence table. Journals record it (``JournalHeader.precedence``): replaying
#: a journal under another precedence would give other codes, so changing the order (not
#: appending a code at its documented place without changing any earlier outcome) changes this
#: id and is a journal format change.
PRECEDENCE_ID = "codes-3"

CODE_DTYPE = np.dtype(np.uint8)


def rank_table() -> np.ndarray:
    """Rank of each code value (lower rank wins); indexed by code value."""
    table = np.zeros(len(ResultCode), dtype=np.uint8)
    for rank, code in enumerate(PRECEDENCE):
        table[code] = rank
    return table


def late_rank() -> int:
    """Rank above which a hook veto is late (ranked after every settlement check)."""
    return max(PRECEDENCE.index(c) for c in SETTLEMENT_CHECKS)


def merge(codes: np.ndarray, new: np.ndarray, ranks: np.ndarray) -> None:
    """Fold ``new`` reject codes into ``codes`` in place; the higher-precedence code wins."""
    np.copyto(codes, new, where=ranks[new] < ranks[codes])


def name_counts(counts: np.ndarray) -> dict[str, int]:
    """Per-code counts (indexed by code value) keyed by lower-case code name, zeros left out."""
    return {ResultCode(i).name.lower(): int(c) for i, c in enumerate(counts) if c}


def counts_by_name(codes: np.ndarray) -> dict[str, int]:
    """Histogram of result codes keyed by lower-case code name (zero counts left out)."""
    return name_counts(np.bincount(codes, minlength=len(ResultCode)))
