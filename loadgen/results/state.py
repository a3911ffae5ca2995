"""Per-account state figures a result can carry: what the ledger and each hook keep per account.

The capacity plan (``cbdc-bench plan``) multiplies these by the population, so they are stored
beside the CPU figures rather than recomputed: ``bytes_per_account`` has one entry per piece of
state (``ledger`` for the ledger's own columns, then one per hook by name, e.g. ``wallet_limits``,
``risk_model``), so the plan can say which piece costs what. Snapshot and build figures are
filled by the commands that measure them (issue 14 ``scale``, issue 15 snapshots); absent means
not measured, never zero.
"""

from __future__ import annotations

import msgspec


class StateFootprint(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes per account of every piece of per-account state, and what snapshotting it cost (the build's
    cost is the server's ``build_seconds``/``peak_rss_bytes`` and the engine result's ``build_*``)."""

    #: ``ledger`` and each hook by name: resident bytes per account of that piece's state.
    bytes_per_account: dict[str, float] = {}
    #: Bytes of one snapshot file per account (issue 15), None: not measured.
    snapshot_bytes_per_account: float | None = None
    #: Seconds to write one snapshot, and the accounts it held (issue 15), None: not measured.
    snapshot_seconds: float | None = None
    snapshot_accounts: int | None = None
