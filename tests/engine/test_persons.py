"""Persons and planted behaviours: derived attributes, habits at their configured shares, labels.

Sampling bounds: a share p measured over n independent payments is checked against
|observed - p| <= 5 * sqrt(p (1 - p) / n) (a false alarm about once in 1.7 million runs).
Planted labels come whole episodes at a time, so their counts are checked against
k * Binomial(slots, p_slot) with the same 5-sigma bound (plus one episode per edge slot).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import msgspec
import numpy as np
import pytest

from engine.behaviours import Behaviour, BehaviourConfig, Planted, episodes, labels
from engine.categories import Category
from engine.hashing import SeededPermutation, SeededSelection, hash64, salt
from engine.hooks.blacklist import Blacklist, BlacklistConfig
from engine.ledger import FLAG_BLACKLISTED, Ledger
from engine.persons import Persons, PersonsConfig, minute_of_day, minutes_apart
from engine.profiles import load_scenario
from loadgen.generator.workload import ReplayPool, Workload, WorkloadConfig

SEED = 20_261_203
ACCOUNTS = 40_000


def sampling_bound(p: float, n: int) -> float:
    return 5 * float(np.sqrt(p * (1 - p) / n))


def attribute_digest(accounts: np.ndarray, seed: int) -> str:
    """sha256 over every derived attribute of ``accounts`` (used in this process and a child)."""
    p = Persons(seed=seed)
    parts = [
        *p.home_and_work(accounts),
        p.own_devices(accounts),
        p.usual_minute(accounts),
        p.spending_z(accounts),
        p.favourite_unit(accounts, accounts % 8),
        labels(BehaviourConfig(), seed, accounts),
    ]
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in parts)).hexdigest()


def generate(config: WorkloadConfig, n: int, chunk: int = 8_192, **kwargs: object) -> np.ndarray:
    w = Workload(config)
    return np.concatenate([w.batch(min(chunk, n - i), first_id=i, **kwargs) for i in range(0, n, chunk)])  # type: ignore[arg-type]


def test_attributes_are_identical_across_processes_and_chunkings() -> None:
    accounts = np.arange(0, 3_000_000, 97, dtype=np.int64)
    whole = attribute_digest(accounts, SEED)
    code = (
        "import numpy as np, tests.engine.test_persons as t;"
        f"print(t.attribute_digest(np.arange(0, 3_000_000, 97, dtype=np.int64), {SEED}))"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == whole
    p = Persons(seed=SEED)
    home = p.home_cell(accounts)
    chunks = np.array_split(accounts, [1, 10, 1_000, 7_777, 20_000])
    assert np.array_equal(np.concatenate([p.home_cell(c) for c in chunks]), home)
    assert np.array_equal(
        np.concatenate([labels(BehaviourConfig(), SEED, c) for c in chunks]), labels(BehaviourConfig(), SEED, accounts)
    )
    assert attribute_digest(accounts, SEED + 1) != whole


def test_planted_payments_do_not_depend_on_chunking() -> None:
    config = WorkloadConfig(accounts=ACCOUNTS, seed=SEED)
    a, b = generate(config, 40_000, chunk=8_192), generate(config, 40_000, chunk=1_000)
    planted = labels(config.behaviours, SEED, a["transfer_id"]) != 0
    assert planted.any()
    assert np.array_equal(a[planted], b[planted])


@pytest.mark.parametrize(
    "persons",
    [PersonsConfig(), PersonsConfig(own_device_share=0.8, home_share=0.4, work_share=0.2, near_cells=2)],
    ids=["default", "other"],
)
def test_own_devices_and_home_or_work_area_at_their_configured_shares(persons: PersonsConfig) -> None:
    config = WorkloadConfig(accounts=ACCOUNTS, seed=SEED, persons=persons)
    b = generate(config, 60_000)
    b = b[labels(config.behaviours, SEED, b["transfer_id"]) == 0]
    p, n = Persons(persons, seed=SEED), len(b)
    own = (p.own_devices(b["payer"]) == b["device_id"][:, None]).any(axis=1).mean()
    assert abs(own - persons.own_device_share) <= sampling_bound(persons.own_device_share, n)
    home, work = p.home_and_work(b["payer"])
    cell = b["location_cell"]
    in_area = np.minimum(p.cells_apart(cell, home), p.cells_apart(cell, work)) <= persons.near_cells
    expected = persons.home_share + persons.work_share
    assert abs(in_area.mean() - expected) <= sampling_bound(expected, n)


def test_payers_pay_near_their_usual_time_and_to_their_favourites() -> None:
    def mean_minutes_off(candidates: int) -> float:
        persons = PersonsConfig(hour_candidates=candidates)
        b = generate(WorkloadConfig(accounts=ACCOUNTS, seed=SEED, persons=persons), 30_000)
        usual = Persons(persons, seed=SEED).usual_minute(b["payer"])
        return float(minutes_apart(usual, minute_of_day(b["timestamp_ns"]).astype(np.int16)).mean())

    # Four candidates: the expected gap to the nearest of four usual times is well under that of one.
    assert mean_minutes_off(4) < 0.6 * mean_minutes_off(1)

    config = WorkloadConfig(accounts=ACCOUNTS, seed=SEED)
    w = Workload(config)
    b = generate(config, 30_000)
    b = b[labels(config.behaviours, SEED, b["transfer_id"]) == 0]
    fav = np.stack([w.account_of_unit(w.persons.favourite_unit(b["payer"], np.full(len(b), j))) for j in range(8)], 1)
    to_favourite = (fav == b["payee"][:, None]).any(axis=1).mean()
    share = config.persons.favourite_share
    assert to_favourite >= share - sampling_bound(share, len(b))  # plus chance hits of popular favourites


def test_planted_behaviours_appear_at_their_configured_rates() -> None:
    config = BehaviourConfig()
    n = 4_000_000
    got = np.bincount(labels(config, SEED, np.arange(n)), minlength=len(Behaviour))
    slots = n / config.slot_payments
    for b, planted in config.planted():
        p_slot = planted.rate * config.slot_payments / planted.payments
        bound = planted.payments * (5 * np.sqrt(slots * p_slot * (1 - p_slot)) + 2)
        assert abs(got[b] - planted.rate * n) <= bound, b.name


def test_planted_labels_round_trip_and_describe_their_payments() -> None:
    rates = BehaviourConfig(
        slot_payments=128,
        **{b.name.lower(): Planted(0.004, p.payments) for b, p in BehaviourConfig().planted()},  # type: ignore[arg-type]
    )
    config = WorkloadConfig(
        accounts=ACCOUNTS, seed=SEED, behaviours=rates, invalid_fraction=0.01, duplicate_fraction=0.01
    )
    w = Workload(config)
    batches = [w.batch(4_096, first_id=i) for i in range(0, 65_536, 4_096)]
    b = np.concatenate(batches)
    # The label of every row is recomputed from (seed, transfer id) alone.
    planted_labels = np.concatenate([Workload(config).planter.plant(x.copy()) for x in batches])
    label = labels(rates, SEED, b["transfer_id"])
    assert np.array_equal(label, planted_labels)
    for kind in Behaviour:
        assert (label == kind).sum() > 0, kind.name
    planted = label != 0
    # Bad transfers and duplicates never touch a planted row or re-send a planted id.
    assert (b["amount_fen"][planted] > 0).all() and (b["payee"][planted] < ACCOUNTS).all()
    assert len(np.unique(b["transfer_id"][planted])) == planted.sum()
    assert ((b["category"] == Category.GAMBLING) == (label == Behaviour.GAMBLING)).all()

    rows = b[label == Behaviour.STRUCTURING]
    cap = w.single_cap_fen(rows["payer"])
    assert ((rows["amount_fen"] < cap) & (rows["amount_fen"] >= cap * (1 - rates.structuring_margin))).all()

    rows = b[label == Behaviour.NEW_DEVICE_BURST]
    assert not (w.persons.own_devices(rows["payer"]) == rows["device_id"][:, None]).any()

    ep = episodes(rates, SEED, b["transfer_id"])
    whole = dict.fromkeys((Behaviour.IMPOSSIBLE_JUMP, Behaviour.RING), 0)
    for kind in whole:
        size = getattr(rates, kind.name.lower()).payments
        for slot in np.unique(ep.slot[label == kind]):
            at = np.flatnonzero((ep.slot == slot) & (label == kind))
            rows = b[at[np.argsort(ep.position[at])]]
            if len(rows) < size:  # an episode cut by the end of the generated ids
                continue
            whole[kind] += 1
            if kind is Behaviour.IMPOSSIBLE_JUMP:  # one person, half the 1024-cell grid apart
                assert len(np.unique(rows["payer"])) == 1
                assert (w.persons.cells_apart(rows["location_cell"][:-1], rows["location_cell"][1:]) == 512).all()
            else:  # the money comes back round the ring
                assert np.array_equal(rows["payee"], np.roll(rows["payer"], -1))
    assert min(whole.values()) > 0


@pytest.mark.parametrize("payer_range", [None, (10_000, 20_000)])
def test_blacklist_contacts_involve_accounts_the_blacklist_hook_lists(payer_range: tuple[int, int] | None) -> None:
    blacklist = BlacklistConfig(listed_fraction=0.01, seed=77)
    rates = BehaviourConfig(slot_payments=128, blacklist_contact=Planted(0.01, 3))
    config = WorkloadConfig(accounts=ACCOUNTS, seed=SEED, behaviours=rates, blacklist=blacklist)
    b = generate(config, 30_000, payer_range=payer_range)
    rows = b[labels(rates, SEED, b["transfer_id"]) == Behaviour.BLACKLIST_CONTACT]
    hook = Blacklist(blacklist)
    ledger = Ledger(ACCOUNTS, hooks=[hook])
    assert hook.listed() == round(0.01 * ACCOUNTS)
    listed = (ledger.flags & FLAG_BLACKLISTED) != 0
    assert len(rows) > 0 and (listed[rows["payer"]] | listed[rows["payee"]]).all()
    if payer_range is None:
        assert listed[rows["payer"]].any() and listed[rows["payee"]].any()  # both directions
    else:
        assert listed[rows["payee"]].all() and ((rows["payer"] >= 10_000) & (rows["payer"] < 20_000)).all()


def test_hash64_is_the_splitmix64_stream() -> None:
    def splitmix64(state: int, count: int) -> list[int]:
        out = []
        for _ in range(count):
            state = (state + 0x9E3779B97F4A7C15) % 2**64
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
            out.append(z ^ (z >> 31))
        return out

    s = salt(SEED, 3)
    assert hash64(np.arange(5), s).tolist() == splitmix64(s, 5)


def test_seeded_permutation_inverts_and_selection_is_exact() -> None:
    for n in (1, 2, 3, 1_000, 65_537):
        perm = SeededPermutation(n, seed=5)
        y = perm.forward(np.arange(n))
        assert np.array_equal(np.sort(y), np.arange(n)) and np.array_equal(perm.inverse(y), np.arange(n))
    sel = SeededSelection(10_000, 0.03, seed=9)
    assert sel.contains(np.arange(10_000)).sum() == sel.count == 300
    assert sel.contains(sel.member(np.arange(sel.count))).all()


def test_scenario_workload_defaults_and_errors(tmp_path: object) -> None:
    assert load_scenario().workload.persons == PersonsConfig()
    with pytest.raises(ValueError, match="power of two"):
        PersonsConfig(grid_side_cells=1000)
    with pytest.raises(ValueError, match="episodes per slot"):
        BehaviourConfig(gambling=Planted(0.5, 5))
    with pytest.raises(ValueError, match="listed_fraction"):
        Workload(WorkloadConfig(accounts=1_000, blacklist=BlacklistConfig(listed_fraction=0)))
    with pytest.raises(msgspec.ValidationError, match=r"\$\.workload\.persons"):
        msgspec.toml.decode(b"profiles = {a = []}\n[workload.persons]\nhome_share = 2.0\n", type=type(load_scenario()))


@pytest.mark.parametrize("payer_range", [None, (10_000, 20_000)])
def test_labels_hold_in_every_pass_of_a_replayed_pool(payer_range: tuple[int, int] | None) -> None:
    """A replayed pool plants each pass by its own ids: (seed, transfer id) is the truth in every pass."""
    rates = BehaviourConfig(
        slot_payments=128,
        **{b.name.lower(): Planted(0.004, p.payments) for b, p in BehaviourConfig().planted()},  # type: ignore[arg-type]
    )
    config = WorkloadConfig(accounts=ACCOUNTS, seed=SEED, behaviours=rates, duplicate_fraction=0.01)
    size, first_id = 3_000, 500  # a pass is not a whole number of slots
    pool = ReplayPool(Workload(config), size, chunk=700, first_id=first_id, payer_range=payer_range)
    reference = Workload(config)  # pass 0 is exactly the workload's own batches
    pass0 = [
        reference.batch(min(700, size - a), first_id=first_id + a, payer_range=payer_range) for a in range(0, size, 700)
    ]
    stream = np.concatenate(
        [pool.take(p * size + a, min(450, size - a)) for p in range(4) for a in range(0, size, 450)]
    )
    assert len(stream) == 4 * size
    np.testing.assert_array_equal(stream[:size], np.concatenate(pass0))
    label = labels(rates, SEED, stream["transfer_id"])
    planter = Workload(config).planter
    for p in range(4):
        part, part_label = stream[p * size : (p + 1) * size], label[p * size : (p + 1) * size]
        assert (part_label != 0).sum() > 0
        # Every planted row is what planting its id gives; every ordinary row is the pool's own
        # payment (payer and payee swapped on odd passes), never a planted one left from pass 0.
        rows = part[part_label != 0]
        np.testing.assert_array_equal(rows, planter_rows(planter, rows, payer_range))
        assert ((part["category"] == Category.GAMBLING) == (part_label == Behaviour.GAMBLING)).all()
        if payer_range is not None:
            assert ((part["payer"] >= payer_range[0]) & (part["payer"] < payer_range[1])).all()
    assert (np.bincount(label, minlength=len(Behaviour)) > 0).all()  # every behaviour planted
    # From pass 1 on, ordinary payments pay back and forth between the same two accounts (within an
    # operator's range too), so replaying never drains one side.
    for p in (1, 2):
        a, b = stream[p * size : (p + 1) * size], stream[(p + 1) * size : (p + 2) * size]
        both = (label[p * size : (p + 1) * size] == 0) & (label[(p + 1) * size : (p + 2) * size] == 0)
        assert both.mean() > 0.9
        np.testing.assert_array_equal(a["payer"][both], b["payee"][both])
        np.testing.assert_array_equal(a["payee"][both], b["payer"][both])
    # touched_accounts names every account the stream named (the scale harness resets them).
    named = np.unique(np.concatenate([stream["payer"], stream["payee"]]))
    assert np.isin(named, pool.touched_accounts()).all()


def planter_rows(planter: object, rows: np.ndarray, payer_range: tuple[int, int] | None) -> np.ndarray:
    """``rows`` planted again from their own ids (planting is a pure function of the id)."""
    again = rows.copy()
    planter.plant(again, payer_range)  # type: ignore[attr-defined]
    return again
