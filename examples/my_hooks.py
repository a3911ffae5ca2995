"""Two example policy hooks of your own, loaded by ``module:attribute`` (see ``my_hooks.toml``).

Run them from this directory (the working directory is always on the import path) or from
anywhere with ``--hooks-path examples``::

    cbdc-bench engine --scenario examples/my_hooks.toml --profile mine --hooks-path examples
    cbdc-bench run --scenario examples/my_hooks.toml --profile mine --hooks-path examples

``LargePaymentCap`` is vectorised: one numpy comparison per batch, the way hooks stay cheap at
300,000 payments/s. ``CategoryCounter`` is written one payment at a time, the way a first draft
usually is; the engine measures each hook's time per payment (``hooks`` in ``engine --json`` and
in the result file), so the difference between the two styles shows up there.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from engine.codes import CODE_DTYPE, ResultCode
from engine.hooks.base import Hook, LedgerView, Transfers


class LargePaymentCap(Hook):
    """Refuse any single payment above ``cap_yuan`` (code WALLET_SINGLE_LIMIT), for every wallet class."""

    name = "large_payment_cap"

    def __init__(self, cap_yuan: int = 50_000) -> None:
        self.cap_fen = cap_yuan * 100
        self.refused = 0

    def authorize(self, transfers: Transfers, ledger: LedgerView) -> np.ndarray | None:
        over = transfers.amount_fen > self.cap_fen
        if not over.any():
            return None
        self.refused += int(over.sum())
        codes = np.zeros(len(transfers), dtype=CODE_DTYPE)
        codes[over] = ResultCode.WALLET_SINGLE_LIMIT
        return codes

    def stats(self) -> dict[str, Any]:
        return {"refused": self.refused, "cap_fen": self.cap_fen}


class CategoryCounter(Hook):
    """Count settled payments per category, one payment at a time (a plain Python loop)."""

    name = "category_counter"
    deferred = True  # after the replies: off the latency path

    def __init__(self) -> None:
        self.settled: Counter[int] = Counter()

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        for category, code in zip(batch["category"].tolist(), codes.tolist(), strict=True):
            if code == 0:
                self.settled[category] += 1

    def stats(self) -> dict[str, Any]:
        return {"settled": sum(self.settled.values()), "categories": len(self.settled)}
