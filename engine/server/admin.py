"""Admin requests: audit, balances, and the policy operations (freeze, blacklist).

``AdminOp`` names each state-changing operation once: the live path applies it and journals its
value, and journal replay parses that value back and applies it the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import numpy as np

from engine import wire
from engine.auth import Secrets
from engine.hooks.base import Hook
from engine.journal import AdminEntry, Journal
from engine.ledger import Ledger
from engine.server.config import ServerConfig
from engine.server.connection import Connection
from engine.server.snapshots import Snapshotter
from engine.server.stats import ServerStats
from engine.wire import ErrorCode, Message

#: Admin requests that change or reveal ledger-wide state: with authentication on, admin only.
PRIVILEGED = (wire.Freeze, wire.Unfreeze, wire.BlacklistAdd, wire.BlacklistRemove, wire.AuditRequest)


class _Freezes(Protocol):
    def freeze(self, accounts: np.ndarray) -> None: ...
    def unfreeze(self, accounts: np.ndarray) -> None: ...


class _Lists(Protocol):
    def add(self, accounts: np.ndarray) -> None: ...
    def remove(self, accounts: np.ndarray) -> None: ...


class AdminOp(enum.Enum):
    """A state-changing admin operation; the value is its name in the journal ("hook.method")."""

    FREEZE = "freeze.freeze"
    UNFREEZE = "freeze.unfreeze"
    BLACKLIST_ADD = "blacklist.add"
    BLACKLIST_REMOVE = "blacklist.remove"

    @property
    def hook_name(self) -> str:
        """The hook that carries this operation."""
        return self.value.partition(".")[0]

    @classmethod
    def of(cls, msg: Message) -> AdminOp | None:
        """The operation a wire request asks for; None for requests that change nothing."""
        match msg:
            case wire.Freeze():
                return cls.FREEZE
            case wire.Unfreeze():
                return cls.UNFREEZE
            case wire.BlacklistAdd():
                return cls.BLACKLIST_ADD
            case wire.BlacklistRemove():
                return cls.BLACKLIST_REMOVE
        return None

    def apply(self, hooks: Sequence[Hook], accounts: np.ndarray) -> None:
        """Do it on the hook named ``hook_name``; LookupError if there is none."""
        hook = find_hook(hooks, self.hook_name)
        if hook is None:
            raise LookupError(f"no {self.hook_name!r} hook")
        match self:
            case AdminOp.FREEZE:
                cast(_Freezes, hook).freeze(accounts)
            case AdminOp.UNFREEZE:
                cast(_Freezes, hook).unfreeze(accounts)
            case AdminOp.BLACKLIST_ADD:
                cast(_Lists, hook).add(accounts)
            case AdminOp.BLACKLIST_REMOVE:
                cast(_Lists, hook).remove(accounts)


def find_hook(hooks: Sequence[Hook], name: str) -> Hook | None:
    return next((h for h in hooks if h.name == name), None)


def replay_admin(ledger: Ledger, entry: AdminEntry) -> None:
    """Redo a journalled admin operation during recovery."""
    try:
        op = AdminOp(entry.op)
    except ValueError:
        op = None
    if op is None or find_hook(ledger.hooks, op.hook_name) is None:
        raise ValueError(f"journal admin entry {entry.op!r} names no operation this server's hooks have")
    op.apply(ledger.hooks, np.array(entry.accounts, dtype=np.uint32))


class Admin:
    """Answers admin requests on a ledger server (echo mode has none: ECHO_MODE).

    ``drain`` applies everything queued first (an admin request observes, and takes effect after,
    every Submit received before it); ``failed`` says whether that drain hit a fatal fault.
    """

    def __init__(
        self,
        config: ServerConfig,
        ledger: Ledger | None,
        secrets: Secrets | None,
        metrics: ServerStats,
        *,
        require_hello: Callable[[Connection, int], bool],
        drain: Callable[[], None],
        failed: Callable[[], bool],
        on_journal_failed: Callable[[OSError], None],
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.secrets = secrets
        self.metrics = metrics
        self.journal: Journal | None = None
        #: Told before an operation modifies accounts (copy-on-update snapshots), if snapshots are on.
        self.snapshotter: Snapshotter | None = None
        self._require_hello = require_hello
        self._drain = drain
        self._failed = failed
        self._on_journal_failed = on_journal_failed

    def handle(self, conn: Connection, msg: Message) -> None:
        req = getattr(msg, "req", -1)
        if not self._require_hello(conn, req):
            return
        ledger = self.ledger
        if ledger is None:
            conn.error(
                ErrorCode.ECHO_MODE,
                f"{type(msg).__name__} needs a ledger, but this server runs in --echo calibration mode; "
                f"start it without --echo",
                req,
            )
            return
        session = conn.session
        if self.secrets is not None and not session.admin and isinstance(msg, PRIVILEGED):
            conn.error(
                ErrorCode.NOT_PERMITTED,
                f"{type(msg).__name__} needs the admin credential; this connection is operator "
                f"{session.operator}. Nothing done.",
                req,
            )
            return
        self._drain()  # admin requests take effect after everything received before them
        if self._failed():
            return
        match msg:
            case wire.AuditRequest():
                a = ledger.audit()
                conn.send(wire.AuditReply(req, a.ok, a.total_fen, a.expected_fen, a.negative_accounts))
            case wire.Balance(account=account):
                if self._check_account(conn, msg, account) and self._may_read(conn, req, account):
                    conn.send(wire.BalanceReply(req, account, int(ledger.balance_of(np.array([account]))[0])))
            case (
                wire.Freeze(account=account)
                | wire.Unfreeze(account=account)
                | wire.BlacklistAdd(account=account)
                | wire.BlacklistRemove(account=account)
            ):
                op = AdminOp.of(msg)
                assert op is not None
                self._policy(conn, msg, op, account)
            case _:  # pragma: no cover - the decoder only yields ClientMessage types
                raise AssertionError(f"unhandled message {msg!r}")

    def _may_read(self, conn: Connection, req: int, account: int) -> bool:
        """With authentication, an operator reads only balances of the accounts it owns."""
        owners = None if self.ledger is None else self.ledger.owners
        operator = conn.session.operator
        if conn.session.admin or owners is None or owners[operator] <= account < owners[operator + 1]:
            return True
        conn.error(
            ErrorCode.NOT_PERMITTED,
            f"Balance: account {account} belongs to another operator; operator {operator} owns accounts "
            f"{int(owners[operator])}..{int(owners[operator + 1]) - 1} (Welcome.owned_from/owned_to)",
            req,
        )
        return False

    def _check_account(self, conn: Connection, msg: Message, account: int) -> bool:
        if 0 <= account < self.config.accounts:
            return True
        conn.error(
            ErrorCode.UNKNOWN_ACCOUNT,
            f"{type(msg).__name__}: account {account} does not exist; this ledger has accounts "
            f"0..{self.config.accounts - 1}. Nothing done.",
            getattr(msg, "req", -1),
        )
        return False

    def _policy(self, conn: Connection, msg: Message, op: AdminOp, account: int) -> None:
        req: int = getattr(msg, "req", -1)
        assert self.ledger is not None
        if find_hook(self.ledger.hooks, op.hook_name) is None:
            conn.error(
                ErrorCode.HOOK_NOT_ENABLED,
                f"{type(msg).__name__} needs the {op.hook_name!r} hook, which profile {self.config.profile!r} "
                f"does not enable; start the server with a profile that includes it",
                req,
            )
            return
        if not self._check_account(conn, msg, account):
            return
        if self.snapshotter is not None:
            self.snapshotter.before_admin(np.array([account], dtype=np.int64))
        try:
            op.apply(self.ledger.hooks, np.array([account], dtype=np.uint32))
        except Exception as exc:  # the hook refused (e.g. a limit of its own): report, keep serving
            conn.error(
                ErrorCode.BAD_FIELD,
                f"{type(msg).__name__}: the {op.hook_name!r} hook refused account {account}: "
                f"{type(exc).__name__}: {exc}",
                req,
            )
            return
        if self.journal is not None:
            # Recorded before the Ack (and only if the hook accepted it, so replay never fails on it).
            try:
                self.journal.append_admin(AdminEntry(op.value, [account]))
            except OSError as exc:
                self._on_journal_failed(exc)
                return
        self.metrics.counters["admin_" + type(msg).__name__.lower()] += 1
        conn.send(wire.Ack(req))
