"""The wire protocol: length-prefixed msgpack frames carrying tagged-union messages.

Frame: a 4-byte little-endian unsigned body length, then the msgpack body. Bodies are
``array_like`` Structs tagged by their class name, so a message is encoded as ``[tag, field...]``.
Schema evolution (msgspec rules): new fields go at the end with defaults; fields are never
reordered or retyped; bump ``PROTOCOL_VERSION`` for anything else.

Transfers travel as raw TRANSFER_DTYPE records (48 bytes each) inside a msgpack binary field, so
the server turns them into a numpy batch with ``np.frombuffer`` and no per-transfer decoding;
result codes come back the same way, one uint8 per transfer.

Conversation: the client sends ``Hello`` first and gets ``Welcome`` (or ``Error`` and a close).
A server started with secrets answers ``Hello`` with a ``Challenge`` (a fresh nonce) instead;
the client sends ``Authenticate`` (role and HMAC answer, ``engine.auth.respond``) and gets
``Welcome``, or ``Error(AUTH_FAILED)`` and a close.
Then any number of ``Submit`` or ``SignedSubmit`` (answered by one ``Results`` each, matched by ``seq``) and admin
requests (answered by ``Ack``, ``BalanceReply``, ``AuditReply`` or ``StatsReply``, matched by
``req``). Anything malformed gets an ``Error`` naming what was wrong; see ``ErrorCode``.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

import msgspec
import numpy as np

from engine.codes import CODE_DTYPE
from engine.records import SIGNATURE_BYTES, TRANSFER_DTYPE

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<I")
DEFAULT_MAX_FRAME_BYTES = 4 << 20


class ErrorCode(enum.StrEnum):
    """Why the server refused a frame or a request (the ``code`` of an ``Error``)."""

    MALFORMED_FRAME = "malformed_frame"  # body is not valid msgpack or not a known message shape
    FRAME_TOO_LARGE = "frame_too_large"  # declared length above the server's max_frame_bytes
    UNKNOWN_MESSAGE = "unknown_message"  # tag names no message type
    BAD_FIELD = "bad_field"  # a field has the wrong type or an out-of-range value
    HELLO_REQUIRED = "hello_required"  # first message was not Hello, or Hello sent twice
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    BAD_RECORDS = "bad_records"  # transfers blob is not a whole number of 48-byte records
    BATCH_TOO_LARGE = "batch_too_large"  # more transfers in one Submit than max_batch
    OPERATOR_MISMATCH = "operator_mismatch"  # a record's operator is not this connection's
    UNKNOWN_ACCOUNT = "unknown_account"  # admin request names an account outside the ledger
    HOOK_NOT_ENABLED = "hook_not_enabled"  # admin request needs a hook the profile lacks
    AUTH_FAILED = "auth_failed"
    SLOW_CONSUMER = "slow_consumer"  # the client did not read its replies; connection closed
    SHUTTING_DOWN = "shutting_down"
    ECHO_MODE = "echo_mode"  # request needs a ledger, but the server runs in --echo calibration mode
    TOO_MANY_CONNECTIONS = "too_many_connections"  # the server's connection limit is reached
    NOT_PERMITTED = "not_permitted"  # authenticated, but this role may not make this request
    HANDSHAKE_TIMEOUT = "handshake_timeout"  # no completed Hello (and authentication) in time; closed
    FRAME_TIMEOUT = "frame_timeout"  # a started frame was not completed in time; closed
    JOURNAL_FAILED = "journal_failed"  # the journal could not be written: nothing more is acknowledged
    ENGINE_FAILED = "engine_failed"  # an unexpected fault inside the engine: nothing more is acknowledged
    BAD_SIGNATURES = "bad_signatures"  # SignedSubmit: signatures blob not 64 bytes per transfer, or unknown scheme
    PARTIAL_FRAMES_FULL = "partial_frames_full"  # incomplete frames of all connections at the server's bound; closed


class Message(msgspec.Struct, array_like=True, tag=True, gc=False):
    """Base of every wire message."""


# ---- client -> server ------------------------------------------------------------------------


class Hello(Message):
    operator: int
    client: str = ""
    protocol: int = PROTOCOL_VERSION


class Submit(Message):
    seq: int
    transfers: bytes  # n * 48 bytes of TRANSFER_DTYPE records


#: Signature schemes of ``SignedSubmit``. History: 1 = Ed25519 by the payer's wallet key over the
#: 48-byte record, keys derived as ``engine.signing`` derivation version 1.
SIGNATURE_SCHEME = 1


class SignedSubmit(Message):
    """A Submit whose transfers carry their payers' signatures (issue 19; additive to protocol 1).

    ``signatures`` is one blob of 64 bytes per transfer, in the order of ``transfers``: signature
    i is the payer wallet's Ed25519 signature over record i's 48 bytes (``engine.signing``).
    Unsigned operation (``Submit``) is unchanged. A server that does not verify signatures
    answers UNKNOWN_MESSAGE; one that requires them answers an unsigned Submit with
    BAD_SIGNATURE for each transfer.
    """

    seq: int
    transfers: bytes  # n * 48 bytes of TRANSFER_DTYPE records
    signatures: bytes  # n * 64 bytes, aligned with transfers
    scheme: int = SIGNATURE_SCHEME


class Freeze(Message):
    req: int
    account: int


class Unfreeze(Message):
    req: int
    account: int


class BlacklistAdd(Message):
    req: int
    account: int


class BlacklistRemove(Message):
    req: int
    account: int


class Authenticate(Message):
    """The answer to a ``Challenge``: ``role`` is "operator" or "admin"."""

    role: str
    answer: bytes  # HMAC-SHA256(secret, nonce || role || operator), see engine.auth.respond


class Balance(Message):
    req: int
    account: int


class AuditRequest(Message):
    req: int


class StatsRequest(Message):
    req: int


ClientMessage = (
    Hello
    | Submit
    | SignedSubmit
    | Freeze
    | Unfreeze
    | BlacklistAdd
    | BlacklistRemove
    | Balance
    | AuditRequest
    | StatsRequest
    | Authenticate
)
#: Tags of the messages a client may send (a message's tag is its class name).
CLIENT_TAGS = frozenset(
    t.__name__
    for t in (
        Hello,
        Submit,
        SignedSubmit,
        Freeze,
        Unfreeze,
        BlacklistAdd,
        BlacklistRemove,
        Balance,
        AuditRequest,
        StatsRequest,
        Authenticate,
    )
)

# ---- server -> client ------------------------------------------------------------------------


class Welcome(Message):
    server: str
    protocol: int
    accounts: int
    profile: str
    max_batch: int
    max_frame_bytes: int
    queue_limit: int = 0  # transfers the server queues before answering OVERLOADED (0 = not stated)
    max_wait_us: int = 0  # how long a transfer may wait for its engine batch to fill
    echo: bool = False  # calibration mode: every transfer acknowledged OK, no ledger
    #: One above the largest transfer id this operator has had applied (0 if none, or echo):
    #: a client that reconnects or restarts numbers from here instead of replaying old ids.
    next_transfer_id: int = 0
    auth: bool = False  # the server authenticated this connection (started with secrets)
    role: str = "operator"  # "operator" or "admin" (admin connections administer, never submit)
    #: With ownership on, this operator may debit only accounts owned_from <= a < owned_to
    #: (others get FORBIDDEN_PAYER); with it off, any account.
    ownership: bool = False
    owned_from: int = 0
    owned_to: int = 0


class Challenge(Message):
    """Sent instead of Welcome by a server with authentication on: answer with Authenticate."""

    nonce: bytes


class Results(Message):
    seq: int
    codes: bytes  # one uint8 ResultCode per submitted transfer, in order
    commit_ns: int  # server wall clock (time.time_ns) when the engine batch committed


class Error(Message):
    code: str  # an ErrorCode value
    message: str  # human-readable: what was wrong and what to do
    ref: int = -1  # seq or req of the offending request, when known


class Ack(Message):
    req: int


class BalanceReply(Message):
    req: int
    account: int
    balance_fen: int


class AuditReply(Message):
    req: int
    ok: bool
    total_fen: int
    expected_fen: int
    negative_accounts: int


class StatsReply(Message):
    req: int
    stats: dict[str, Any]


#: Kept as an alias: ``SignedSubmit`` is in ``ClientMessage`` (a server that does not verify
#: signatures answers it UNKNOWN_MESSAGE).
SignedClientMessage = ClientMessage

ServerMessage = Welcome | Results | Error | Ack | BalanceReply | AuditReply | StatsReply | Challenge


# ---- framing ---------------------------------------------------------------------------------


class FrameTooLarge(ValueError):
    """A frame header declared more than the limit; ``frames`` are the complete bodies before it."""

    def __init__(self, length: int, limit: int, frames: list[bytes] | None = None) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit
        self.frames = frames or []


class Codec:
    """One encoder and the decoders for both directions, created once and reused."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self.client_decoder = msgspec.msgpack.Decoder(ClientMessage)
        self.server_decoder = msgspec.msgpack.Decoder(ServerMessage)

    def frame(self, msg: Message) -> bytes:
        """``msg`` as one length-prefixed frame."""
        body = self._encoder.encode(msg)
        return HEADER.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into frame bodies; feed it what the transport delivers."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Complete frame bodies now available; raises FrameTooLarge on an oversized header."""
        self._buf += data
        frames: list[bytes] = []
        buf = self._buf
        pos = 0
        end = len(buf)
        while end - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > self.max_frame_bytes:
                del buf[:pos]
                raise FrameTooLarge(length, self.max_frame_bytes, frames)
            if end - pos - HEADER.size < length:
                break
            start = pos + HEADER.size
            frames.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return frames


def records_from_bytes(blob: bytes) -> np.ndarray:
    """A transfers blob as a (read-only) batch; ValueError if not whole 48-byte records."""
    if len(blob) % TRANSFER_DTYPE.itemsize:
        raise ValueError(
            f"transfers blob of {len(blob)} bytes is not a whole number of {TRANSFER_DTYPE.itemsize}-byte records"
        )
    return np.frombuffer(blob, dtype=TRANSFER_DTYPE)


def signed_records(msg: SignedSubmit) -> tuple[np.ndarray, bytes]:
    """A SignedSubmit's batch and signatures blob; ValueError saying what is wrong with them."""
    if msg.scheme != SIGNATURE_SCHEME:
        raise ValueError(f"signature scheme {msg.scheme} is not supported; this server verifies {SIGNATURE_SCHEME}")
    records = records_from_bytes(msg.transfers)
    if len(msg.signatures) != len(records) * SIGNATURE_BYTES:
        raise ValueError(
            f"signatures blob of {len(msg.signatures)} bytes does not hold one {SIGNATURE_BYTES}-byte signature "
            f"for each of the {len(records)} transfers ({len(records) * SIGNATURE_BYTES} bytes)"
        )
    return records, msg.signatures


def codes_from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=CODE_DTYPE)
