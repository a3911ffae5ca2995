"""Ed25519 wallet keys, signing and verification of transfer records, and the key registry.

Keys
    A wallet's Ed25519 key pair derives from (seed, account id): its 32-byte secret seed is a
    BLAKE2b-256 of the account id keyed by the run's seed (``wallet_secret``). The generator can
    then sign for any payer, and the system holds only public keys, without a key ceremony.
    ``DERIVATION_VERSION`` names this rule; a registry file built under another rule is refused.

What is signed
    The payer's wallet signs the transfer's 48-byte ``TRANSFER_DTYPE`` record exactly as it
    travels (``records.tobytes()``): id, amount, payee, operator and metadata are all covered, so a
    signature cannot be replayed under another id or redirected. Signatures travel as one blob of
    64 bytes per transfer, aligned with the records (``engine.wire.SignedSubmit``).

Library (measured here: ``python benchmarks/bench_validators.py``, 2-core AMD EPYC shared with
other jobs, so per CPU second)
    PyNaCl (libsodium) verifies one signature in ~66 us of CPU (15,200/s per core), ``cryptography``
    (OpenSSL) in ~125 us (8,000/s; re-measured in session 4 of issue 19: ~120 us against ~63-70 us):
    PyNaCl's libsodium is used. libsodium has no batch-verification API. The validators call its
    ``crypto_sign_verify_detached`` (exported by PyNaCl's bundled libsodium, not bound by PyNaCl's
    API) through a ``cffi`` handle, on pointers into the parcel and the mmap'd registry
    (``Verifier``): the curve arithmetic is the same function ``crypto_sign_open`` calls, and what
    it saves is the Python around it (three ``bytes`` per transfer and an output buffer, ~2 us of
    ~65 us per transfer, shared machine). ``verify_records_open`` (the public binding) stays as
    the reference the tests check it against. Nothing cryptographic is written here; verification
    scales by running on more cores (``engine.validators``). Key derivation costs ~25 us per
    account (39,000/s per core).

Key registry
    32 bytes per account (public keys only), in one file: a 128-byte header (magic, format,
    derivation version, seed, accounts, BLAKE2b of the keys, a checksum of the header), then the
    keys. Building costs ~25 us per account (key derivation), so it is built once, over
    processes, and cached by (seed, accounts, derivation version). Processes open it read-only
    through ``mmap``: local validators share one copy through the page cache. ``ensure_registry``
    checks the whole file (header and key checksum) and rebuilds a damaged or foreign file, saying
    why; ``open_registry`` (what a validator worker calls) checks the header and size only, and
    refuses instead of rebuilding.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import mmap
import multiprocessing
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError

from engine.codes import CODE_DTYPE, ResultCode
from engine.records import SIGNATURE_BYTES, TRANSFER_DTYPE

log = logging.getLogger(__name__)

#: Version of the key-derivation rule (``wallet_secret``). History: 1 = BLAKE2b-256(account id as
#: 8-byte LE, key = seed as 32-byte signed LE, person = b"cbdc-wallet-v1") as the Ed25519 seed.
DERIVATION_VERSION: Final = 1
#: Version of the registry file layout. History: 1 = the 128-byte header below, then the keys.
REGISTRY_FORMAT: Final = 1

PUBLIC_KEY_BYTES: Final = 32
RECORD_BYTES: Final = TRANSFER_DTYPE.itemsize

_MAGIC = b"CBDCKREG"
# magic, format, derivation, header bytes, reserved, accounts, seed, keys digest; then the header
# digest over everything before it, then zero padding up to HEADER_BYTES.
_HEADER = struct.Struct("<8sIIII Q 32s 32s")
_HEADER_DIGEST_BYTES = 16
HEADER_BYTES: Final = 128
assert _HEADER.size + _HEADER_DIGEST_BYTES <= HEADER_BYTES

#: Below this many accounts a registry is built in-process: starting workers costs more.
_PARALLEL_MIN_ACCOUNTS = 50_000
_KEYGEN_CHUNK = 1 << 14


# ---- keys and signatures --------------------------------------------------------------------------


def _seed_key(seed: int) -> bytes:
    try:
        return seed.to_bytes(32, "little", signed=True)
    except OverflowError:
        raise ValueError(f"seed {seed} does not fit in 256 bits; use a smaller seed") from None


def wallet_secret(seed: int, account: int) -> bytes:
    """The 32-byte Ed25519 secret seed of ``account``'s wallet (derivation version 1)."""
    return hashlib.blake2b(
        account.to_bytes(8, "little"), digest_size=32, key=_seed_key(seed), person=b"cbdc-wallet-v1"
    ).digest()


def wallet_keypair(seed: int, account: int) -> tuple[bytes, bytes]:
    """(public key 32 bytes, libsodium secret key 64 bytes) of ``account``'s wallet."""
    return crypto_sign_seed_keypair(wallet_secret(seed, account))


def public_keys(seed: int, first_account: int, count: int) -> bytes:
    """Public keys of accounts ``first_account..first_account+count-1``, 32 bytes each."""
    key = _seed_key(seed)
    out = bytearray(count * PUBLIC_KEY_BYTES)
    for i in range(count):
        secret = hashlib.blake2b(
            (first_account + i).to_bytes(8, "little"), digest_size=32, key=key, person=b"cbdc-wallet-v1"
        ).digest()
        out[i * PUBLIC_KEY_BYTES : (i + 1) * PUBLIC_KEY_BYTES] = crypto_sign_seed_keypair(secret)[0]
    return bytes(out)


def sign_records(records: np.ndarray | bytes, seed: int) -> bytes:
    """Signatures (64 bytes each, in record order) by each record's payer wallet over its 48 bytes."""
    blob = records.tobytes() if isinstance(records, np.ndarray) else bytes(records)
    payers = np.frombuffer(blob, dtype=TRANSFER_DTYPE)["payer"].tolist()
    secrets: dict[int, bytes] = {}  # payers repeat (popularity is skewed): derive each key once
    out = bytearray(len(payers) * SIGNATURE_BYTES)
    for i, payer in enumerate(payers):
        sk = secrets.get(payer)
        if sk is None:
            sk = secrets[payer] = wallet_keypair(seed, payer)[1]
        out[i * SIGNATURE_BYTES : (i + 1) * SIGNATURE_BYTES] = crypto_sign(
            blob[i * RECORD_BYTES : (i + 1) * RECORD_BYTES], sk
        )[:SIGNATURE_BYTES]
    return bytes(out)


def sign_records_parallel(records: np.ndarray, seed: int, *, processes: int | None = None) -> bytes:
    """``sign_records`` over worker processes (signing costs ~55 us per transfer with key derivation)."""
    n = len(records)
    procs = _processes(processes)
    if procs <= 1 or n < 4_096:
        return sign_records(records, seed)
    step = -(-n // (procs * 4))
    parts = [records[i : i + step].tobytes() for i in range(0, n, step)]
    return b"".join(_map_processes(sign_records, [(p, seed) for p in parts], procs))


class PublicKeys:
    """Public keys of the accounts ``first_account..first_account+count-1``, as a byte source.

    ``blob`` is anything whose byte slices are ``bytes`` (``bytes`` or a read-only ``mmap``), at
    ``offset``: slicing 32 bytes is ~0.1 us, against ~1 us for a numpy row turned into bytes.
    """

    def __init__(self, blob: bytes | mmap.mmap, first_account: int, count: int, offset: int = 0) -> None:
        if len(blob) < offset + count * PUBLIC_KEY_BYTES:
            raise ValueError(f"key blob of {len(blob)} bytes cannot hold {count} keys at offset {offset}")
        self.blob = blob
        self.first_account = first_account
        self.count = count
        self.offset = offset

    def key(self, account: int) -> bytes:
        """The public key of ``account`` (which must be in range)."""
        o = self.offset + (account - self.first_account) * PUBLIC_KEY_BYTES
        return bytes(self.blob[o : o + PUBLIC_KEY_BYTES])


def pair_count(records: bytes | memoryview, signatures: bytes | memoryview) -> int:
    """The number of transfers in a (records, signatures) pair; ValueError if they do not align."""
    n, extra = divmod(len(records), RECORD_BYTES)
    if extra or len(signatures) != n * SIGNATURE_BYTES:
        raise ValueError(
            f"{len(records)} bytes of records and {len(signatures)} bytes of signatures are not n "
            f"{RECORD_BYTES}-byte records with n {SIGNATURE_BYTES}-byte signatures"
        )
    return n


class Verifier:
    """Verdicts for batches against one key source, through libsodium's detached verification.

    ``crypto_sign_verify_detached`` (exported by PyNaCl's bundled libsodium, not bound by PyNaCl's
    own API) is called through a ``cffi`` ABI-mode handle on that same library, with pointers into
    the records, signatures and key blobs: no per-transfer ``bytes`` (signature + message, the
    key's 32 bytes, the opened message ``crypto_sign_open`` returns) and no Python objects but the
    pointers. The verification itself is libsodium's, unchanged (``crypto_sign_open`` calls the same
    function, then copies the message out). Built once per process (parsing the declaration costs
    ~0.1 ms): a validator worker and the inline tier each hold one.
    """

    def __init__(self, keys: PublicKeys) -> None:
        import cffi  # PyNaCl's own dependency
        import nacl._sodium  # the extension module that carries PyNaCl's libsodium
        import nacl.bindings

        nacl.bindings.sodium_init()
        ffi = cffi.FFI()
        ffi.cdef(
            "int crypto_sign_verify_detached(const unsigned char *sig, const unsigned char *m,"
            " unsigned long long mlen, const unsigned char *pk);"
        )
        self._ffi = ffi
        self._verify = ffi.dlopen(nacl._sodium.__file__).crypto_sign_verify_detached
        self.keys = keys
        self._key_base = ffi.from_buffer(keys.blob) + keys.offset

    def verify(self, records: bytes | memoryview, signatures: bytes | memoryview) -> np.ndarray:
        """OK or BAD_SIGNATURE per transfer (``verify_records``); ``records``/``signatures`` may be
        views into one buffer (a parcel as received)."""
        n = pair_count(records, signatures)
        keys = self.keys
        payer = np.frombuffer(records, dtype=TRANSFER_DTYPE, count=n)["payer"].astype(np.int64) - keys.first_account
        known = np.flatnonzero((payer >= 0) & (payer < keys.count))
        ok = bytearray(n)
        if len(known):
            from_buffer, verify, base = self._ffi.from_buffer, self._verify, self._key_base
            rec, sig = from_buffer(records), from_buffer(signatures)
            for i, o in zip(known.tolist(), (payer[known] * PUBLIC_KEY_BYTES).tolist(), strict=True):
                if not verify(sig + i * SIGNATURE_BYTES, rec + i * RECORD_BYTES, RECORD_BYTES, base + o):
                    ok[i] = 1
        codes = np.full(n, ResultCode.BAD_SIGNATURE, dtype=CODE_DTYPE)
        codes[np.frombuffer(ok, dtype=np.bool_)] = ResultCode.OK
        return codes


def verify_records(records: bytes, signatures: bytes, keys: PublicKeys) -> np.ndarray:
    """Verdicts for one batch: a result code per transfer, OK or BAD_SIGNATURE.

    A payer outside ``keys``' accounts has no key here, so its signature cannot be valid:
    BAD_SIGNATURE (the signature check precedes every other check, ``engine.codes``). Raises
    ValueError if the blobs are not whole records and signatures of the same count. For many
    batches, hold one ``Verifier`` (this builds one per call).
    """
    return Verifier(keys).verify(records, signatures)


def verify_records_open(records: bytes, signatures: bytes, keys: PublicKeys) -> np.ndarray:
    """``verify_records`` through PyNaCl's public ``crypto_sign_open`` (signature + message as one
    ``bytes`` per transfer): the reference the ``Verifier`` is checked and measured against."""
    n = pair_count(records, signatures)
    codes = np.full(n, ResultCode.BAD_SIGNATURE, dtype=CODE_DTYPE)
    payer = np.frombuffer(records, dtype=TRANSFER_DTYPE)["payer"].astype(np.int64) - keys.first_account
    known = np.flatnonzero((payer >= 0) & (payer < keys.count))
    blob, base = keys.blob, keys.offset
    for i, p in zip(known.tolist(), payer[known].tolist(), strict=True):
        o = base + p * PUBLIC_KEY_BYTES
        s = i * SIGNATURE_BYTES
        r = i * RECORD_BYTES
        try:
            crypto_sign_open(
                signatures[s : s + SIGNATURE_BYTES] + records[r : r + RECORD_BYTES], blob[o : o + PUBLIC_KEY_BYTES]
            )
        except BadSignatureError:
            continue
        codes[i] = ResultCode.OK
    return codes


# ---- the key registry ----------------------------------------------------------------------------


class RegistryError(Exception):
    """A key registry file is damaged, foreign (another seed, size or rule) or unreadable."""


class KeyRegistry:
    """A key registry file opened read-only: ``keys`` is an (accounts, 32) uint8 view on its mmap.

    The view is what ``np.memmap(path, mode="r")`` would give (a read-only array over the page
    cache); the ``mmap`` object is kept too, because ``verify_records`` slices 32-byte keys out of
    it as ``bytes`` (what PyNaCl takes) ten times faster than from a numpy row.
    """

    def __init__(self, path: Path, seed: int, accounts: int, mm: mmap.mmap) -> None:
        self.path = path
        self.seed = seed
        self.accounts = accounts
        self._mm = mm
        keys = np.frombuffer(mm, dtype=np.uint8, count=accounts * PUBLIC_KEY_BYTES, offset=HEADER_BYTES)
        self.keys: np.ndarray = keys.reshape(accounts, PUBLIC_KEY_BYTES)
        #: Why ``ensure_registry`` rebuilt the file, or None if it was built fresh or reused as is.
        self.rebuilt_because: str | None = None
        self.built = False

    def public_keys(self) -> PublicKeys:
        """Every account's key as a byte source for ``verify_records`` (no copy)."""
        return PublicKeys(self._mm, 0, self.accounts, HEADER_BYTES)

    def partition(self, first_account: int, end_account: int) -> bytes:
        """A copy of the keys of accounts ``first_account..end_account-1`` (for remote validators)."""
        return self._mm[HEADER_BYTES + first_account * PUBLIC_KEY_BYTES : HEADER_BYTES + end_account * PUBLIC_KEY_BYTES]


def registry_path(cache_dir: str | os.PathLike[str], seed: int, accounts: int) -> Path:
    """Where the registry for (seed, accounts) under the current derivation rule is cached."""
    return Path(cache_dir) / f"keys-d{DERIVATION_VERSION}-s{seed}-n{accounts}.bin"


def default_cache_dir() -> Path:
    """``$CBDC_CACHE_DIR``, else ``$XDG_CACHE_HOME/cbdc-bench``, else ``~/.cache/cbdc-bench``."""
    if env := os.environ.get("CBDC_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cbdc-bench"


def open_registry(path: str | os.PathLike[str], *, seed: int, accounts: int, verify_keys: bool = False) -> KeyRegistry:
    """Open a registry read-only, checking that it is whole and is the one for (seed, accounts).

    Checks the header (magic, versions, its checksum, seed, accounts) and the file size; with
    ``verify_keys`` also the checksum of every key (~0.3 s per 10 million accounts). Raises
    RegistryError saying what is wrong; never rebuilds (``ensure_registry`` does).
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < HEADER_BYTES:
                raise RegistryError(f"{p}: {size} bytes is shorter than a registry header ({HEADER_BYTES}); damaged")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise RegistryError(f"{p}: cannot read the key registry ({exc})") from exc
    head = mm[:HEADER_BYTES]
    magic, fmt, derivation, header_bytes, _, n, seed_bytes, keys_digest = _HEADER.unpack_from(head)
    if magic != _MAGIC:
        raise RegistryError(f"{p}: not a cbdc-bench key registry (magic {magic!r})")
    digest = hashlib.blake2b(head[: _HEADER.size], digest_size=_HEADER_DIGEST_BYTES).digest()
    if head[_HEADER.size : _HEADER.size + _HEADER_DIGEST_BYTES] != digest:
        raise RegistryError(f"{p}: header checksum mismatch; damaged")
    if fmt != REGISTRY_FORMAT or header_bytes != HEADER_BYTES:
        raise RegistryError(f"{p}: registry format {fmt} (this version reads {REGISTRY_FORMAT})")
    if derivation != DERIVATION_VERSION:
        raise RegistryError(f"{p}: keys derived under rule {derivation}, this version uses rule {DERIVATION_VERSION}")
    file_seed = int.from_bytes(seed_bytes, "little", signed=True)
    if (file_seed, n) != (seed, accounts):
        raise RegistryError(f"{p}: registry of seed {file_seed} and {n:,} accounts, not seed {seed} and {accounts:,}")
    expected = HEADER_BYTES + n * PUBLIC_KEY_BYTES
    if size != expected:
        raise RegistryError(f"{p}: {size:,} bytes, expected {expected:,}; truncated or damaged")
    if verify_keys and _keys_digest(memoryview(mm)[HEADER_BYTES:]) != keys_digest:
        raise RegistryError(f"{p}: key checksum mismatch; damaged")
    return KeyRegistry(p, seed, accounts, mm)


def ensure_registry(
    seed: int,
    accounts: int,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    processes: int | None = None,
) -> KeyRegistry:
    """The registry for (seed, accounts): the cached file if whole, else (re)built and cached.

    A damaged or foreign file is rebuilt with a warning on this module's logger saying why
    (``KeyRegistry.rebuilt_because``). Building uses ``processes`` worker processes (default: every
    core, from 50,000 accounts up); the file is written under a temporary name and renamed into place,
    so a crash mid-build leaves no half-written registry behind.
    """
    if accounts < 1:
        raise ValueError(f"a key registry needs at least one account, got {accounts}")
    path = registry_path(cache_dir if cache_dir is not None else default_cache_dir(), seed, accounts)
    reason: str | None = None
    if path.exists():
        try:
            return open_registry(path, seed=seed, accounts=accounts, verify_keys=True)
        except RegistryError as exc:
            reason = str(exc)
            log.warning("key registry %s is unusable (%s); rebuilding it", path, reason)
    build_registry(path, seed, accounts, processes=processes)
    registry = open_registry(path, seed=seed, accounts=accounts)
    registry.built = True
    registry.rebuilt_because = reason
    return registry


def build_registry(path: Path, seed: int, accounts: int, *, processes: int | None = None) -> None:
    """Derive every account's public key and write the registry file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    procs = _processes(processes)
    chunks = [(seed, lo, min(_KEYGEN_CHUNK, accounts - lo)) for lo in range(0, accounts, _KEYGEN_CHUNK)]
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(HEADER_BYTES))
            hasher = hashlib.blake2b(digest_size=32)
            parts: Iterable[bytes]
            if procs > 1 and (processes is not None or accounts >= _PARALLEL_MIN_ACCOUNTS):
                parts = _map_processes(public_keys, chunks, procs)
            else:
                parts = (public_keys(*c) for c in chunks)
            for part in parts:
                hasher.update(part)
                f.write(part)
            head = _HEADER.pack(
                _MAGIC, REGISTRY_FORMAT, DERIVATION_VERSION, HEADER_BYTES, 0, accounts, _seed_key(seed), hasher.digest()
            )
            head += hashlib.blake2b(head, digest_size=_HEADER_DIGEST_BYTES).digest()
            f.seek(0)
            f.write(head)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _keys_digest(view: memoryview) -> bytes:
    hasher = hashlib.blake2b(digest_size=32)
    step = 1 << 24
    for o in range(0, len(view), step):
        hasher.update(view[o : o + step])
    return hasher.digest()


# ---- process helpers -----------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` from /proc (0.0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def ed25519_verify_rate(seconds: float = 0.25) -> float:
    """Ed25519 verifications per CPU second of this thread, through libsodium (PyNaCl) as the
    validators call it: the machine's calibration for signed runs (issue 19 measured 16,000-18,000
    on an AMD EPYC core). Per CPU second, not per wall second, so a shared machine's other load
    lowers it little; one fixed message and key, so only the verification itself is timed."""
    key, secret = crypto_sign_seed_keypair(b"\x07" * 32)
    signed = crypto_sign(bytes(RECORD_BYTES), secret)
    open_ = crypto_sign_open
    open_(signed, key)  # warm-up
    done = 0
    c0 = time.thread_time()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or done == 0:
        for _ in range(100):
            open_(signed, key)
        done += 100
    return done / max(time.thread_time() - c0, 1e-9)


def process_context() -> multiprocessing.context.BaseContext:
    """'forkserver' where available (cheap starts, no fork of a threaded parent), else 'spawn'."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _processes(processes: int | None) -> int:
    return max(1, processes if processes is not None else (os.cpu_count() or 1))


def _map_processes(fn: Callable[..., bytes], args: Sequence[tuple[Any, ...]], processes: int) -> Iterable[bytes]:
    """``fn(*a)`` for each ``a`` over a process pool, results in order (a generator)."""
    with concurrent.futures.ProcessPoolExecutor(max_workers=processes, mp_context=process_context()) as pool:
        futures = [pool.submit(fn, *a) for a in args]
        for fut in futures:
            yield fut.result()
