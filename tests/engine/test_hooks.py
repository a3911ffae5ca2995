"""Behaviour of each built-in policy hook, on small hand-made batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.categories import Category
from engine.codes import ResultCode
from engine.hooks.blacklist import Blacklist, BlacklistConfig
from engine.hooks.freeze import Freeze, FreezeConfig
from engine.hooks.privacy import Privacy, PrivacyConfig, bit_length, hll_estimate, siphash24
from engine.hooks.social_credit import SocialCredit, SocialCreditConfig
from engine.hooks.surveillance_log import LOG_DTYPE, SurveillanceLog, SurveillanceLogConfig, read_log
from engine.hooks.wallet_limits import WalletLimits
from engine.ledger import Ledger
from engine.records import MAX_BATCH, make_batch
from engine.reference import rows
from engine.reference_hooks import RefSocialCredit, siphash24_int

OK = ResultCode.OK
AIR = Category.AIR_TRAVEL
GAMES = Category.VIDEO_GAMES
FOOD = Category.GROCERIES


def ledger_with(*hooks, accounts: int = 10, balance: int = 1_000_000) -> Ledger:
    return Ledger(accounts, balance_fen=balance, wallet_class=0, hooks=hooks)


class Ids:
    """Fresh transfer ids across batches of one test."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self, n: int) -> np.ndarray:
        ids = np.arange(self.next, self.next + n)
        self.next += n
        return ids


# ---- blacklist ---------------------------------------------------------------------------------


def test_blacklist_vetoes_listed_payers_in_restricted_categories_only() -> None:
    bl = Blacklist(BlacklistConfig(listed_fraction=0))
    ledger = ledger_with(bl)
    bl.add(1)
    codes = ledger.apply(make_batch([1, 1, 2, 3], [2, 2, 1, 1], 100, category=[AIR, FOOD, AIR, AIR]))
    assert codes.tolist() == [ResultCode.BLACKLISTED, OK, OK, OK]
    assert int(ledger.balance[1]) == 1_000_000 - 100 + 200  # paid groceries, was paid twice
    assert bl.stats() == {"listed": 1, "vetoed": 1}


def test_blacklist_add_and_remove_at_runtime_take_arrays_and_apply_to_the_next_batch() -> None:
    bl = Blacklist(BlacklistConfig(listed_fraction=0))
    ledger = ledger_with(bl)
    ids = Ids()
    bl.add(np.array([3, 4, 5]))
    assert bl.listed() == 3
    codes = ledger.apply(make_batch([3, 4, 6], [0, 0, 0], 10, category=AIR, transfer_id=ids(3)))
    assert codes.tolist() == [ResultCode.BLACKLISTED, ResultCode.BLACKLISTED, OK]
    bl.remove([3, 4])
    codes = ledger.apply(make_batch([3, 4, 5], [0, 0, 0], 10, category=AIR, transfer_id=ids(3)))
    assert codes.tolist() == [OK, OK, ResultCode.BLACKLISTED]


def test_blacklist_rejects_bad_admin_input() -> None:
    bl = Blacklist(BlacklistConfig(listed_fraction=0))
    ledger_with(bl)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        bl.add(10)
    with pytest.raises(ValueError, match="ints"):
        bl.add(np.array([1.5]))


def test_blacklist_seeded_listing_is_about_the_configured_share_and_reproducible() -> None:
    a, b = Blacklist(), Blacklist()
    ledger_with(a, accounts=200_000)
    ledger_with(b, accounts=200_000)
    assert 0.019 < a.listed() / 200_000 < 0.021
    assert np.array_equal(a._flags, b._flags)


def test_blacklist_config_names_bad_categories() -> None:
    with pytest.raises(ValueError, match=r"unknown categories.*FLYING"):
        BlacklistConfig(restricted=("FLYING",))


# ---- freeze ------------------------------------------------------------------------------------


def test_frozen_accounts_neither_pay_nor_receive_and_unfreeze_restores() -> None:
    fr = Freeze(FreezeConfig(frozen_fraction=0))
    ledger = ledger_with(fr)
    ids = Ids()
    fr.freeze([2])
    batch = make_batch([2, 1, 1], [1, 2, 3], 50, transfer_id=ids(3))
    assert ledger.apply(batch).tolist() == [ResultCode.FROZEN, ResultCode.FROZEN, OK]
    assert int(ledger.balance[2]) == 1_000_000
    fr.freeze([2, 2, 3])
    assert fr.stats()["frozen"] == fr.frozen() == 2
    fr.unfreeze([2, 3, 4])
    assert not fr.is_frozen(2) and fr.stats()["frozen"] == fr.frozen() == 0
    assert ledger.apply(make_batch([2, 1], [1, 2], 50, transfer_id=ids(2))).tolist() == [OK, OK]
    assert ledger.audit().ok


def test_vetoes_follow_the_precedence_table_whatever_the_hook_order() -> None:
    # codes-3: FROZEN (which may be the payee's) ranks after the payer's own checks (engine.codes).
    for order in ((0, 1), (1, 0)):
        fr, bl = Freeze(FreezeConfig(frozen_fraction=0)), Blacklist(BlacklistConfig(listed_fraction=0))
        hooks = [fr, bl]
        ledger = ledger_with(*(hooks[i] for i in order))
        fr.freeze(1)
        bl.add(1)
        assert ledger.apply(make_batch([1], [2], 10, category=AIR)).tolist() == [ResultCode.BLACKLISTED]


def test_freeze_and_blacklist_share_the_flags_column_without_clobbering() -> None:
    fr, bl = Freeze(FreezeConfig(frozen_fraction=0.3, seed=1)), Blacklist(BlacklistConfig(listed_fraction=0.3, seed=2))
    ledger = ledger_with(fr, bl, accounts=10_000)
    assert 2_700 < fr.frozen() < 3_300 and 2_700 < bl.listed() < 3_300
    both = np.count_nonzero(ledger.flags == 3)
    assert 700 < both < 1_100  # independent draws: about 9% of accounts carry both bits
    bl.remove(np.arange(10_000))
    assert bl.listed() == 0 and 2_700 < fr.frozen() < 3_300


# ---- social credit -----------------------------------------------------------------------------


def credit(**kw) -> SocialCredit:
    return SocialCredit(SocialCreditConfig(initial_sd=0, initial_mean=600, **kw))


def test_score_moves_after_the_batch_and_restricts_from_the_next_one() -> None:
    sc = credit(threshold=590, deltas={"VIDEO_GAMES": -5, "UTILITIES": 3})
    ledger = ledger_with(sc)
    ids = Ids()
    # Two games take account 1 to 590, not below the threshold; the flight in the same batch is
    # judged on the score at the start of the batch.
    codes = ledger.apply(make_batch([1, 1, 1], [0, 0, 0], 10, category=[GAMES, GAMES, AIR], transfer_id=ids(3)))
    assert codes.tolist() == [OK, OK, OK]
    assert int(sc.score[1]) == 590
    codes = ledger.apply(make_batch([1, 1], [0, 0], 10, category=[GAMES, AIR], transfer_id=ids(2)))
    assert codes.tolist() == [OK, OK]
    assert int(sc.score[1]) == 585
    codes = ledger.apply(make_batch([1, 1], [0, 0], 10, category=[AIR, Category.UTILITIES], transfer_id=ids(2)))
    assert codes.tolist() == [ResultCode.CREDIT_RESTRICTED, OK]
    assert int(sc.score[1]) == 588
    assert sc.stats()["vetoed"] == 1


def test_rejected_payments_do_not_move_scores() -> None:
    sc = credit()
    ledger = ledger_with(sc, balance=5)
    ledger.apply(make_batch([1, 2], [0, 0], [10, 5], category=GAMES))
    assert ledger.apply(make_batch([1], [0], 10, transfer_id=[7])).tolist() == [ResultCode.INSUFFICIENT_FUNDS]
    assert int(sc.score[1]) == 600 and int(sc.score[2]) == 595


def test_scores_clip_to_the_range_after_summing_the_batch() -> None:
    sc = SocialCredit(SocialCreditConfig(initial_mean=352, initial_sd=0, deltas={"VIDEO_GAMES": -5, "UTILITIES": 300}))
    ledger = ledger_with(sc)
    sc.set_scores(2, 940)
    ledger.apply(make_batch([1, 2, 2], [0, 0, 0], 1, category=[GAMES, Category.UTILITIES, GAMES]))
    assert int(sc.score[1]) == 350
    # 940 + 300 - 5 = 1235 -> 950 (summed, then clipped; clipping per payment would give 945).
    assert int(sc.score[2]) == 950


@settings(max_examples=60, deadline=None)
@given(
    start=st.lists(st.integers(350, 950), min_size=6, max_size=6),
    txs=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([GAMES, Category.UTILITIES, FOOD]), st.sampled_from([0, 15])),
        max_size=40,
    ),
)
def test_score_update_matches_the_reference_model(start, txs) -> None:
    sc = credit(deltas={"VIDEO_GAMES": -7, "UTILITIES": 11})
    ledger_with(sc, accounts=6)
    sc.score[:] = start
    ref = RefSocialCredit(start, 550, set(), {int(GAMES): -7, int(Category.UTILITIES): 11}, 350, 950)
    batch = make_batch([t[0] for t in txs], 0, 1, category=[t[1] for t in txs]) if txs else make_batch([], [], [])
    codes = np.array([t[2] for t in txs], dtype=np.uint8)
    if txs:
        sc.observe(batch, codes)
    ref.observe_batch(rows(batch), codes.tolist())
    assert sc.score.tolist() == ref.scores


def test_social_credit_config_is_validated() -> None:
    with pytest.raises(ValueError, match="threshold"):
        SocialCreditConfig(threshold=100)
    with pytest.raises(ValueError, match="deltas"):
        SocialCreditConfig(deltas={"VIDEO_GAMES": -1000})


# ---- surveillance log --------------------------------------------------------------------------


def test_log_keeps_every_payment_with_metadata_and_answers_queries(tmp_path) -> None:
    path = tmp_path / "trove.log"
    log = SurveillanceLog(SurveillanceLogConfig(mode="buffer", capacity=MAX_BATCH, path=str(path), deferred=False))
    ledger = ledger_with(log, balance=100)
    batch = make_batch([1, 2, 1], [2, 3, 3], [60, 10, 60], location_cell=[7, 8, 9], device_id=[11, 12, 13])
    codes = ledger.apply(batch)
    assert codes.tolist() == [OK, OK, ResultCode.INSUFFICIENT_FUNDS]
    got = log.query(1)
    assert got["location_cell"].tolist() == [7, 9] and got["device_id"].tolist() == [11, 13]
    assert got["code"].tolist() == [OK, ResultCode.INSUFFICIENT_FUNDS]
    assert log.query(3)["payer"].tolist() == [2, 1]
    assert len(log.query(5)) == 0
    log.close()
    on_disk = read_log(path)
    assert on_disk.dtype == LOG_DTYPE and LOG_DTYPE.itemsize == 49
    assert on_disk["code"].tolist() == codes.tolist() and on_disk["payer"].tolist() == [1, 2, 1]


def test_log_ring_drops_the_oldest_rows_and_queries_stay_in_order() -> None:
    log = SurveillanceLog(SurveillanceLogConfig(mode="buffer", capacity=MAX_BATCH, deferred=False))
    ledger = ledger_with(log, accounts=4, balance=10**12)
    n = 10_000
    for i in range(4):  # 40,000 rows into 32,768 slots
        ids = np.arange(i * n, (i + 1) * n)
        ledger.apply(make_batch(1 + ids % 2, 3, 1, transfer_id=ids, device_id=ids))
    st = log.stats()
    assert log.rows_seen == 4 * n and st["rows_kept"] == MAX_BATCH and st["rows_dropped"] == 4 * n - MAX_BATCH
    got = log.query(3)["device_id"]
    assert got.tolist() == list(range(4 * n - MAX_BATCH, 4 * n))
    assert log.stats()["store_bytes"] == MAX_BATCH * 49


# ---- privacy -----------------------------------------------------------------------------------


def test_siphash_matches_the_published_test_vector_and_the_integer_version(rng) -> None:
    key = bytes(range(16))
    message = np.array([int.from_bytes(bytes(range(8)), "little")], dtype=np.uint64)
    assert int(siphash24(key, message)[0]) == 0x93F5F5799A932462  # SipHash paper, vectors.h
    values = rng.integers(0, 2**32, 50, dtype=np.uint64)
    other = rng.bytes(16)
    assert siphash24(other, values).tolist() == [siphash24_int(other, int(v)) for v in values]


def test_bit_length_is_exact_at_the_float_precision_edges() -> None:
    xs = [0, 1, 2**32 - 1, 2**32, 2**53 - 1, 2**53 + 1, 2**63, 2**64 - 1]
    assert bit_length(np.array(xs, dtype=np.uint64)).tolist() == [x.bit_length() for x in xs]


def test_privacy_keeps_region_category_aggregates_and_nothing_per_person(rng) -> None:
    pv = Privacy(PrivacyConfig(regions=4, cells_per_region=100, hll_precision=10, deferred=False))
    accounts = 5_000
    ledger = ledger_with(pv, accounts=accounts)
    payer = rng.integers(1, 3_001, 20_000)  # 3,000 distinct payers, all in region 1, groceries
    for i in range(0, len(payer), 5_000):
        part = payer[i : i + 5_000]
        ledger.apply(make_batch(part, 0, 7, transfer_id=np.arange(i, i + len(part)), location_cell=150, category=FOOD))
    (cell,) = pv.aggregates()
    assert (cell["region"], cell["category"], cell["accepted"], cell["amount_fen"]) == (1, "GROCERIES", 20_000, 140_000)
    distinct = len(np.unique(payer))
    assert abs(cell["distinct_payers"] - distinct) < 0.1 * distinct  # 2**10 registers: ~3% standard error
    # Fixed-size state whatever the number of accounts: no per-account array anywhere.
    assert pv.state_bytes() == 0
    assert all(a.size < accounts for a in (pv.accepted, pv.amount_fen, pv.rejected))


def test_hll_estimate_small_range() -> None:
    regs = np.zeros(64, dtype=np.uint8)
    assert hll_estimate(regs) == 0
    regs[:3] = 1
    assert 2.5 < hll_estimate(regs) < 3.5


# ---- memory ------------------------------------------------------------------------------------


def test_enforcement_state_fits_12_bytes_per_account() -> None:
    ledger = ledger_with(WalletLimits(), Blacklist(), Freeze(), SocialCredit(), accounts=1000)
    # balance uint32 + class and flags 1 + day-stamped spend 4 + score 2 (docs/design.md).
    assert ledger.bytes_per_account() == 4 + 1 + 4 + 2 <= 12


def test_transfers_gather_flags_once_and_per_column() -> None:
    from engine.hooks.base import Transfers

    flags = np.arange(10, dtype=np.uint8) * 3
    batch = make_batch([1, 4, 7, 2], [5, 0, 9, 3], [1, 1, 1, 1])
    transfers = Transfers(batch, np.array([0, 2, 3]))
    at = np.array([2, 0])
    assert transfers.payer_flags_at(flags, at).tolist() == [6, 3]  # no gather yet: only these
    payer = transfers.payer_flags(flags)
    assert payer.tolist() == [3, 21, 6]
    assert transfers.payer_flags(flags) is payer  # the batch's one gather, shared
    assert transfers.payee_flags(flags).tolist() == [15, 27, 9]
    assert transfers.payer_flags_at(flags, at).tolist() == [6, 3]
    other = flags + 1  # another column is gathered anew, never read from the first one's bytes
    assert transfers.payer_flags(other).tolist() == [4, 22, 7]
    assert transfers.payer_flags_at(other, at).tolist() == [7, 4]
