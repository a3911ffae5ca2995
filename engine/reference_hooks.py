"""The reference mirror: a ``ReferenceLedger`` in the same state as a ``Ledger``, hooks and all.

Each built-in hook's one-at-a-time twin (``engine.reference_twins``) is named in the hook
registry's row for it (``engine.hooks.registry.BUILTIN_HOOKS``), so a new built-in hook is
mirrored as soon as its row names a twin.
"""

from __future__ import annotations

from typing import Any

from engine.hooks.base import Hook
from engine.hooks.registry import BUILTIN_HOOKS
from engine.hooks.wallet_limits import WalletLimits
from engine.ledger import Ledger
from engine.reference import ReferenceHook, ReferenceLedger
from engine.reference_twins import (
    RefAuditChain,
    RefBlacklist,
    RefFreeze,
    RefPrivacy,
    RefRiskModel,
    RefSocialCredit,
    RefSurveillanceLog,
    siphash24_int,
)

__all__ = [
    "RefAuditChain",
    "RefBlacklist",
    "RefFreeze",
    "RefPrivacy",
    "RefRiskModel",
    "RefSocialCredit",
    "RefSurveillanceLog",
    "mirror",
    "reference_for",
    "siphash24_int",
]


def mirror(hook: Hook) -> ReferenceHook:
    """The reference twin of an attached built-in hook (wallet_limits is native to the reference)."""
    row = next((r for r in BUILTIN_HOOKS if isinstance(hook, r.hook)), None)
    if row is None or row.twin is None:
        raise TypeError(f"no reference model for hook {hook.name!r} ({type(hook).__name__})")
    return row.twin(hook)


def reference_for(ledger: Ledger, **kwargs: Any) -> ReferenceLedger:
    """A reference ledger in the same starting state as ``ledger``, with mirrored hooks."""
    limits = next((h for h in ledger.hooks if isinstance(h, WalletLimits)), None)
    kwargs.setdefault("payments_per_day", ledger.clock.payments_per_day)
    kwargs.setdefault("clock_start_ns", ledger.clock.start_ns)
    ref = ReferenceLedger(
        ledger.balance.tolist(),
        ledger.wallet_class.tolist(),
        operators=ledger.operators,
        wallet_limits=None if limits is None else limits.config,
        hooks=[mirror(h) for h in ledger.hooks if not isinstance(h, WalletLimits)],
        **kwargs,
    )
    ref.payments = ledger.clock.payments  # the same sequencer clock, at the same point
    for twin in ref.hooks:
        bind = getattr(twin, "bind", None)  # twins that read the clock or feed another twin
        if bind is not None:
            bind(ref)
    return ref
