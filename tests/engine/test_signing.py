"""Wallet keys, signing and verification of records, the key registry cache, SignedSubmit, BAD_SIGNATURE."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.signing import VerifyKey

from engine import signing
from engine.codes import PRECEDENCE, ResultCode
from engine.records import SIGNATURE_BYTES, TRANSFER_DTYPE
from engine.wire import (
    CLIENT_TAGS,
    SIGNATURE_SCHEME,
    ClientMessage,
    Codec,
    SignedClientMessage,
    SignedSubmit,
    Submit,
    signed_records,
)
from loadgen.generator.workload import Workload, WorkloadConfig

ACCOUNTS = 10_000
SEED = 4_242


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> signing.KeyRegistry:
    return signing.ensure_registry(SEED, ACCOUNTS, tmp_path_factory.mktemp("keys"))


def signed_batch(n: int = 200, *, seed: int = SEED, stream: int = 0) -> tuple[np.ndarray, bytes]:
    batch = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=seed), stream=stream).batch(n, first_id=0)
    return batch, signing.sign_records(batch, seed)


def forge(batch: np.ndarray, signatures: bytes, rng: np.random.Generator) -> tuple[bytes, bytes, np.ndarray]:
    """Damage some transfers in every way that must fail; returns (records, signatures, which failed)."""
    records = bytearray(batch.tobytes())
    sigs = bytearray(signatures)
    bad = np.zeros(len(batch), dtype=bool)
    picks = rng.choice(len(batch), 40, replace=False)
    for kind, i in enumerate(picks.tolist()):
        match kind % 5:
            case 0:  # a flipped signature bit
                sigs[i * 64 + int(rng.integers(64))] ^= 1 << int(rng.integers(8))
            case 1:  # the amount changed after signing
                records[i * 48 + 16] ^= 0x01
            case 2:  # signed by someone else: the payer's key does not match
                sigs[i * 64 : (i + 1) * 64] = signing.sign_records(batch[i : i + 1], SEED + 1)
            case 3:  # missing: all zero
                sigs[i * 64 : (i + 1) * 64] = bytes(64)
            case 4:  # a payer with no key in the registry (re-signed, so only the registry can refuse it)
                one = batch[i : i + 1].copy()
                one["payer"] = ACCOUNTS + 5
                records[i * 48 : (i + 1) * 48] = one.tobytes()
                sigs[i * 64 : (i + 1) * 64] = signing.sign_records(one, SEED)
        bad[i] = True
    return bytes(records), bytes(sigs), bad


def oracle(records: bytes, signatures: bytes, seed: int, accounts: int) -> np.ndarray:
    """One transfer at a time through PyNaCl's high-level API and keys derived afresh."""
    batch = np.frombuffer(records, dtype=TRANSFER_DTYPE)
    out = []
    for i, payer in enumerate(batch["payer"].tolist()):
        ok = payer < accounts
        if ok:
            try:
                VerifyKey(signing.wallet_keypair(seed, payer)[0]).verify(
                    records[i * 48 : (i + 1) * 48], signatures[i * 64 : (i + 1) * 64]
                )
            except Exception:
                ok = False
        out.append(ResultCode.OK if ok else ResultCode.BAD_SIGNATURE)
    return np.array(out, dtype=np.uint8)


def test_wallet_keys_are_derived_and_distinct() -> None:
    assert signing.wallet_keypair(SEED, 7) == signing.wallet_keypair(SEED, 7)
    keys = {signing.wallet_keypair(s, a)[0] for s in (SEED, SEED + 1) for a in range(50)}
    assert len(keys) == 100
    assert signing.public_keys(SEED, 10, 3) == b"".join(signing.wallet_keypair(SEED, a)[0] for a in (10, 11, 12))
    with pytest.raises(ValueError, match="256 bits"):
        signing.wallet_secret(1 << 300, 0)


def test_verdicts_match_one_at_a_time_oracle_and_cryptography(registry: signing.KeyRegistry, rng) -> None:
    batch, sigs = signed_batch()
    records, forged, bad = forge(batch, sigs, rng)
    codes = signing.verify_records(records, forged, registry.public_keys())
    np.testing.assert_array_equal(codes, oracle(records, forged, SEED, ACCOUNTS))
    np.testing.assert_array_equal(codes == ResultCode.BAD_SIGNATURE, bad)
    assert (codes[~bad] == ResultCode.OK).all()
    # The other library agrees on the untouched signatures (same scheme, not just same code).
    for i in np.flatnonzero(~bad)[:20].tolist():
        key = Ed25519PublicKey.from_public_bytes(bytes(registry.keys[batch["payer"][i]]))
        key.verify(forged[i * 64 : (i + 1) * 64], records[i * 48 : (i + 1) * 48])
    i = int(np.flatnonzero(bad)[0])
    with pytest.raises(InvalidSignature):
        key = Ed25519PublicKey.from_public_bytes(bytes(registry.keys[min(batch["payer"][i], ACCOUNTS - 1)]))
        key.verify(forged[i * 64 : (i + 1) * 64], records[i * 48 : (i + 1) * 48])


def test_verifier_reads_views_of_one_parcel_and_partial_key_sources(registry: signing.KeyRegistry, rng) -> None:
    """A validator worker verifies a parcel in place (records then signatures, as views into the
    received buffer) and a Ray actor against a partition of the keys (``first_account`` > 0, the
    registry's bytes at an offset): the verdicts are the oracle's either way."""
    batch, sigs = signed_batch(200)
    records, forged, _ = forge(batch, sigs, rng)
    want = oracle(records, forged, SEED, ACCOUNTS)
    view = memoryview(records + forged)
    verifier = signing.Verifier(registry.public_keys())
    np.testing.assert_array_equal(verifier.verify(view[: len(records)], view[len(records) :]), want)
    first, end = 100, ACCOUNTS - 50
    partial = signing.PublicKeys(b"\xee" * 7 + registry.partition(first, end), first, end - first, offset=7)
    payers = np.frombuffer(records, dtype=TRANSFER_DTYPE)["payer"]
    outside = (payers < first) | (payers >= end)
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(
        signing.Verifier(partial).verify(records, forged),
        np.where(outside, ResultCode.BAD_SIGNATURE, want),
    )


def test_verify_refuses_misaligned_blobs(registry: signing.KeyRegistry) -> None:
    batch, sigs = signed_batch(3)
    with pytest.raises(ValueError, match="64-byte signatures"):
        signing.verify_records(batch.tobytes(), sigs[:-1], registry.public_keys())
    with pytest.raises(ValueError, match="48-byte records"):
        signing.verify_records(batch.tobytes()[:-1], sigs, registry.public_keys())
    assert len(signing.verify_records(b"", b"", registry.public_keys())) == 0


def test_parallel_signing_and_keygen_equal_serial(tmp_path: Path) -> None:
    batch, sigs = signed_batch(4_096)
    assert signing.sign_records_parallel(batch, SEED, processes=2) == sigs
    path = tmp_path / "par.bin"
    signing.build_registry(path, SEED, 3 * (1 << 14) + 17, processes=2)  # several chunks, a ragged last one
    reg = signing.open_registry(path, seed=SEED, accounts=3 * (1 << 14) + 17, verify_keys=True)
    for a in (0, 1 << 14, 3 * (1 << 14) + 16):
        assert bytes(reg.keys[a]) == signing.wallet_keypair(SEED, a)[0]


def test_registry_is_cached_and_matches_derivation(registry: signing.KeyRegistry) -> None:
    assert registry.keys.shape == (ACCOUNTS, 32)
    assert not registry.keys.flags.writeable
    for a in (0, 1, ACCOUNTS // 2, ACCOUNTS - 1):
        assert bytes(registry.keys[a]) == signing.wallet_keypair(SEED, a)[0]
    again = signing.ensure_registry(SEED, ACCOUNTS, registry.path.parent)
    assert (again.built, again.rebuilt_because) == (False, None)
    assert registry.path.name == signing.registry_path(registry.path.parent, SEED, ACCOUNTS).name


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("key_bit", "key checksum mismatch"),
        ("header_bit", "header checksum mismatch"),
        ("truncate", "truncated or damaged"),
        ("foreign", "not seed"),
        ("garbage", "not a cbdc-bench key registry"),
        ("short", "shorter than a registry header"),
    ],
)
def test_damaged_or_foreign_registry_is_refused_then_rebuilt(
    tmp_path: Path, damage: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    accounts = 300
    reg = signing.ensure_registry(SEED, accounts, tmp_path)
    path = reg.path
    good = path.read_bytes()
    del reg
    data = bytearray(good)
    match damage:
        case "key_bit":
            data[signing.HEADER_BYTES + 1000] ^= 0x10
        case "header_bit":
            data[30] ^= 0x01
        case "truncate":
            data = data[:-32]
        case "foreign":
            other = signing.ensure_registry(SEED + 1, accounts, tmp_path / "other")
            data = bytearray(other.path.read_bytes())
        case "garbage":
            data = bytearray(b"x" * len(good))
        case "short":
            data = data[:20]
    path.write_bytes(bytes(data))
    with pytest.raises(signing.RegistryError, match=reason):
        signing.open_registry(path, seed=SEED, accounts=accounts, verify_keys=True)
    with caplog.at_level(logging.WARNING, logger="engine.signing"):
        rebuilt = signing.ensure_registry(SEED, accounts, tmp_path)
    assert rebuilt.built and rebuilt.rebuilt_because is not None and reason in rebuilt.rebuilt_because
    assert "rebuilding it" in caplog.text
    assert path.read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_other_derivation_version_is_foreign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k.bin"
    monkeypatch.setattr(signing, "DERIVATION_VERSION", 99)
    signing.build_registry(path, SEED, 10)
    monkeypatch.undo()
    with pytest.raises(signing.RegistryError, match="rule 99"):
        signing.open_registry(path, seed=SEED, accounts=10)


# ---- wire and codes ------------------------------------------------------------------------------


def test_signed_submit_round_trips_and_unsigned_is_unchanged() -> None:
    batch, sigs = signed_batch(5)
    codec = Codec()
    decoder = msgspec.msgpack.Decoder(SignedClientMessage)
    frame = codec.frame(SignedSubmit(seq=9, transfers=batch.tobytes(), signatures=sigs))
    msg = decoder.decode(frame[4:])
    assert isinstance(msg, SignedSubmit)
    assert (msg.seq, msg.scheme) == (9, SIGNATURE_SCHEME)
    records, blob = signed_records(msg)
    np.testing.assert_array_equal(records, batch)
    assert blob == sigs
    # Unsigned Submit decodes as before, with either decoder.
    plain = codec.frame(Submit(seq=1, transfers=batch.tobytes()))[4:]
    assert decoder.decode(plain) == codec.client_decoder.decode(plain) == Submit(1, batch.tobytes())
    # SignedSubmit is part of the client union (a server that does not verify answers UNKNOWN_MESSAGE).
    assert "SignedSubmit" in CLIENT_TAGS
    assert msgspec.msgpack.Decoder(ClientMessage).decode(frame[4:]) == msg


def test_signed_submit_shape_errors() -> None:
    batch, sigs = signed_batch(4)
    with pytest.raises(ValueError, match="one 64-byte signature for each of the 4"):
        signed_records(SignedSubmit(1, batch.tobytes(), sigs[:-64]))
    with pytest.raises(ValueError, match="scheme 2"):
        signed_records(SignedSubmit(1, batch.tobytes(), sigs, scheme=2))
    with pytest.raises(ValueError, match="48-byte records"):
        signed_records(SignedSubmit(1, batch.tobytes()[:-1], sigs))
    assert SIGNATURE_BYTES == 64


def test_bad_signature_code_is_appended_and_first_in_precedence() -> None:
    assert ResultCode.BAD_SIGNATURE == 18  # appended: no existing value moved
    assert ResultCode.OVERLOADED == ResultCode.BAD_SIGNATURE - 1
    assert PRECEDENCE[0] is ResultCode.BAD_SIGNATURE
    assert sorted(PRECEDENCE) == sorted(ResultCode)
