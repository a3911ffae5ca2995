"""audit_chain: roots, the chain file, and verification that names the modified batch."""

from __future__ import annotations

import pytest

from engine.hooks.audit_chain import BATCH_HEADER, FILE_HEADER, AuditChain, AuditChainConfig, verify_chain
from engine.ledger import Ledger
from engine.records import TRANSFER_DTYPE
from loadgen.cli.main import main
from loadgen.generator.workload import Workload, WorkloadConfig

N = 300  # transfers per batch


def write_chain(path, batches: int = 5, seed: int = 1, **config) -> AuditChain:
    chain = AuditChain(AuditChainConfig(path=str(path), deferred=False, leaf_transfers=16, **config))
    wl = Workload(WorkloadConfig(accounts=500, seed=seed))
    balance, classes = wl.initial_state()
    ledger = Ledger(500, balance_fen=balance, wallet_class=classes, hooks=[chain])
    for i in range(batches):
        ledger.apply(wl.batch(N, first_id=i * N))
    chain.close()
    return chain


def offset_of_record(batch: int, record: int) -> int:
    entry = BATCH_HEADER.size + N * (TRANSFER_DTYPE.itemsize + 1)
    return FILE_HEADER.size + batch * entry + BATCH_HEADER.size + record * TRANSFER_DTYPE.itemsize


@pytest.mark.parametrize("algorithm", ["sha256", "blake2b"])
def test_intact_chain_verifies_and_matches_the_reported_head(tmp_path, algorithm) -> None:
    path = tmp_path / "chain.bin"
    chain = write_chain(path, algorithm=algorithm)
    report = verify_chain(path, expect_head=chain.head.hex())
    assert report.ok and report.batches == 5 and report.transfers == 5 * N and report.head == chain.head.hex()


def test_verify_detects_a_flipped_byte_and_names_the_batch(tmp_path, rng) -> None:
    path = tmp_path / "chain.bin"
    write_chain(path)
    data = bytearray(path.read_bytes())
    batch, record = int(rng.integers(0, 5)), int(rng.integers(0, N))
    at = offset_of_record(batch, record) + int(rng.integers(0, TRANSFER_DTYPE.itemsize))
    data[at] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))
    report = verify_chain(path)
    assert not report.ok and report.bad_batch == batch and "modified" in report.problem


def test_verify_detects_a_changed_result_code(tmp_path) -> None:
    path = tmp_path / "chain.bin"
    write_chain(path)
    data = bytearray(path.read_bytes())
    data[offset_of_record(3, N) + 7] ^= 0x0F  # the 8th code of batch 3 (codes follow the records)
    path.write_bytes(bytes(data))
    assert verify_chain(path).bad_batch == 3


def test_verify_detects_a_rewritten_chain_only_against_the_trusted_head(tmp_path) -> None:
    real, forged = tmp_path / "real.bin", tmp_path / "forged.bin"
    chain = write_chain(real, seed=1)
    write_chain(forged, seed=2)  # a whole different, internally consistent history
    assert verify_chain(forged).ok
    report = verify_chain(forged, expect_head=chain.head.hex())
    assert not report.ok and "not the expected" in report.problem


def test_verify_detects_a_removed_batch_and_truncation(tmp_path) -> None:
    path = tmp_path / "chain.bin"
    write_chain(path)
    data = path.read_bytes()
    entry = BATCH_HEADER.size + N * 49
    cut = data[: FILE_HEADER.size + entry] + data[FILE_HEADER.size + 2 * entry :]
    path.write_bytes(cut)
    assert verify_chain(path).bad_batch == 1
    path.write_bytes(data[:-10])
    assert verify_chain(path).bad_batch == 4


def test_chain_file_refuses_to_overwrite_an_existing_chain(tmp_path) -> None:
    path = tmp_path / "chain.bin"
    write_chain(path, batches=1)
    with pytest.raises(ValueError, match="not empty"):
        write_chain(path, batches=1)


def test_verify_chain_cli(tmp_path, capsys) -> None:
    path = tmp_path / "chain.bin"
    chain = write_chain(path)
    assert main(["verify-chain", str(path), "--expect-head", chain.head.hex()]) == 0
    assert "chain ok: 5 batches" in capsys.readouterr().out
    data = bytearray(path.read_bytes())
    data[offset_of_record(2, 5)] ^= 0x80
    path.write_bytes(bytes(data))
    assert main(["verify-chain", str(path)]) == 1
    assert "chain FAILED at batch 2" in capsys.readouterr().out
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a chain file")
    assert main(["verify-chain", str(tmp_path / "junk.bin")]) == 1
    assert "not an audit chain file" in capsys.readouterr().out
