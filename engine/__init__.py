"""cbdc-bench engine: the account ledger, policy hooks, wire format and server."""

from engine.codes import ResultCode
from engine.ledger import Audit, Ledger
from engine.records import MAX_TRANSFER_FEN, TRANSFER_DTYPE, empty_batch, make_batch

__all__ = ["MAX_TRANSFER_FEN", "TRANSFER_DTYPE", "Audit", "Ledger", "ResultCode", "empty_batch", "make_batch"]
