"""Planted behaviours: labelled episodes a surveillance model should find, and a test can check.

Each behaviour is planted as *episodes* of a few payments by the same people, at a configured
share of all payments. Whether a transfer id belongs to an episode, which one, and its position
in it are pure functions of (seed, transfer id): the labels are recomputed by ``labels`` for
training and evaluation, never stored and never sent to the server (the transfer record has no
field for them).

Layout: transfer ids are cut into slots of ``slot_payments`` ids. A slot holds at most one
episode; behaviour b is chosen for a slot with probability rate_b * slot_payments / payments_b,
so exactly ``rate_b`` of all ids carry label b in expectation. The episode's ``payments_b``
members are spread evenly through the slot (stride slot_payments // payments_b, a hashed start),
interleaved with ordinary payments, so an episode lasts one slot of the simulated clock.

The behaviours (all amounts in fen, clipped to 1..max_amount_fen):

* ``STRUCTURING``: one person pays one counterparty repeatedly, each amount just under the
  single-payment cap of their wallet class (within ``structuring_margin``).
* ``NEW_DEVICE_BURST``: a burst of online purchases from a device slot the person never used,
  in a place that is not their home.
* ``IMPOSSIBLE_JUMP``: a person pays alternately at home and half the grid away (hundreds of
  cells; with the default grid, ~1,500 km) within one slot of simulated time.
* ``BLACKLIST_CONTACT``: payments to or from a person on the court blacklist, as the blacklist
  hook selects it (``engine.hashing.SeededSelection`` with its seed and fraction). When payers
  are confined to an operator's accounts, the listed person is always the payee.
* ``GAMBLING``: repeated payments in the ``GAMBLING`` category to one of a few collection accounts.
* ``RING``: ``payments`` accounts pass money round a ring, each keeping a 1% cut.

Episodes depend on (seed, transfer id) only, not on the workload's stream: operators that use the
same ids plant the same episodes (confined to their own accounts when ownership is enforced).
"""

from __future__ import annotations

import enum
from typing import Protocol

import msgspec
import numpy as np

from engine.categories import Category
from engine.hashing import SeededSelection, below, hash64, salt, unit
from engine.persons import NEW_DEVICE_SLOT, Persons

# Hash purposes (disjoint from engine.persons's).
_SLOT, _START, _EPISODE, _MEMBER, _CASINO = range(101, 106)
#: Collection accounts that gambling episodes pay (a few per seed, like a handful of operators).
GAMBLING_ACCOUNTS = 16


class Behaviour(enum.IntEnum):
    """Label of a transfer: NONE for ordinary payments."""

    NONE = 0
    STRUCTURING = 1
    NEW_DEVICE_BURST = 2
    IMPOSSIBLE_JUMP = 3
    BLACKLIST_CONTACT = 4
    GAMBLING = 5
    RING = 6


class Planted(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One behaviour: its share of all payments and the payments per episode."""

    rate: float
    payments: int


class BehaviourConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Rates of the planted behaviours (the scenario's ``[workload.behaviours]``).

    Default rates (0.05% of payments each, 0.3% in all) are chosen to give a model a learnable
    signal in a few million payments, not measured from the world.
    """

    slot_payments: int = 1_024
    structuring: Planted = Planted(0.0005, 4)
    new_device_burst: Planted = Planted(0.0005, 6)
    impossible_jump: Planted = Planted(0.0005, 2)
    blacklist_contact: Planted = Planted(0.0005, 3)
    gambling: Planted = Planted(0.0005, 5)
    ring: Planted = Planted(0.0005, 5)
    #: Structuring amounts lie in [cap * (1 - margin), cap - 1 fen].
    structuring_margin: float = 0.03

    def planted(self) -> tuple[tuple[Behaviour, Planted], ...]:
        """(label, settings) of every behaviour, in label order."""
        return tuple((b, getattr(self, b.name.lower())) for b in Behaviour if b is not Behaviour.NONE)

    def __post_init__(self) -> None:
        if not 1 <= self.slot_payments <= 1 << 20:
            raise ValueError(f"behaviours.slot_payments must be in 1..1048576, got {self.slot_payments}")
        for b, p in self.planted():
            name = f"behaviours.{b.name.lower()}"
            if not 0 <= p.rate <= 1:
                raise ValueError(f"{name}.rate must be in [0, 1], got {p.rate}")
            least = {Behaviour.RING: 3, Behaviour.IMPOSSIBLE_JUMP: 2}.get(b, 1)
            if not least <= p.payments <= self.slot_payments:
                raise ValueError(f"{name}.payments must be in {least}..slot_payments, got {p.payments}")
        load = sum(p.rate * self.slot_payments / p.payments for _, p in self.planted())
        if load > 1:
            raise ValueError(
                f"behaviours: the rates need {load:.2f} episodes per slot of {self.slot_payments} payments; "
                "at most 1 fits: lower the rates or slot_payments, or raise payments per episode"
            )
        if not 0 < self.structuring_margin < 1:
            raise ValueError(f"behaviours.structuring_margin must be in (0, 1), got {self.structuring_margin}")


class Population(Protocol):
    """What planting needs from the workload's population model."""

    @property
    def accounts(self) -> int: ...

    def account_of_unit(self, u: np.ndarray) -> np.ndarray:
        """Accounts drawn by the popularity law from uniforms ``u`` (uint32)."""
        ...

    def single_cap_fen(self, accounts: np.ndarray) -> np.ndarray:
        """Single-payment cap of each account's wallet class (finite; int64)."""
        ...


class Episodes(msgspec.Struct, frozen=True):
    """Where transfer ids sit among the episodes: label, slot number, position in the episode."""

    label: np.ndarray  # uint8 Behaviour
    slot: np.ndarray  # int64
    position: np.ndarray  # int64, 0..payments-1 (meaningless where label is NONE)


class _Slots(msgspec.Struct, frozen=True):
    """Each slot's episode: ``kind`` (index into ``planted()``; len = none), members, stride, start."""

    kind: np.ndarray
    payments: np.ndarray
    stride: np.ndarray
    start: np.ndarray


def _slots(config: BehaviourConfig, seed: int, slots: np.ndarray) -> _Slots:
    """The episode layout of ``slots`` (int64): the one rule ``episodes`` and ``planted_ids`` share."""
    planted = config.planted()
    thresholds = np.cumsum([p.rate * config.slot_payments / p.payments for _, p in planted])
    kind = np.searchsorted(thresholds, unit(hash64(slots, salt(seed, _SLOT))), side="right")  # len = none
    payments = np.array([p.payments for _, p in planted] + [1], dtype=np.int64)[kind]
    stride = config.slot_payments // payments
    return _Slots(kind, payments, stride, below(hash64(slots, salt(seed, _START)), stride))


def episodes(config: BehaviourConfig, seed: int, transfer_ids: np.ndarray) -> Episodes:
    """Label, slot and position of each transfer id under (config, seed)."""
    ids = np.asarray(transfer_ids, dtype=np.int64)
    L = config.slot_payments
    slot, offset = np.divmod(ids, L)
    label = np.zeros(len(ids), dtype=np.uint8)
    position = np.zeros(len(ids), dtype=np.int64)
    if not len(ids):
        return Episodes(label, slot, position)
    # Work per slot, not per id, when the ids are a run (a batch spans a few slots).
    first, last = int(slot.min()), int(slot.max())
    dense = last - first < len(ids)
    lay = _slots(config, seed, np.arange(first, last + 1, dtype=np.int64) if dense else slot)
    none = len(config.planted())
    at = slot - first if dense else np.arange(len(ids))
    rows = np.flatnonzero(lay.kind[at] < none)
    at = at[rows]
    rel = offset[rows] - lay.start[at]
    pos = rel // lay.stride[at]
    member = (rel >= 0) & (rel % lay.stride[at] == 0) & (pos < lay.payments[at])
    label[rows[member]] = lay.kind[at[member]] + 1
    position[rows[member]] = pos[member]
    return Episodes(label, slot, position)


def planted_ids(config: BehaviourConfig, seed: int, first_id: int, end_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) of every planted transfer id in ``first_id..end_id-1``, ascending.

    The same truth as ``labels`` over that range, computed per slot instead of per id (a replayed
    pool places each pass's episodes with it: O(slots + members), not O(ids)).
    """
    L = config.slot_payments
    if end_id <= first_id:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8)
    slots = np.arange(first_id // L, (end_id - 1) // L + 1, dtype=np.int64)
    lay = _slots(config, seed, slots)
    some = np.flatnonzero(lay.kind < len(config.planted()))
    counts = lay.payments[some]
    episode = np.repeat(some, counts)
    k = np.arange(len(episode)) - np.repeat(np.cumsum(counts) - counts, counts)  # position in its episode
    ids = slots[episode] * L + lay.start[episode] + k * lay.stride[episode]
    keep = (ids >= first_id) & (ids < end_id)
    return ids[keep], (lay.kind[episode][keep] + 1).astype(np.uint8)


def labels(config: BehaviourConfig, seed: int, transfer_ids: np.ndarray) -> np.ndarray:
    """The Behaviour label (uint8) of each transfer id: the ground truth for models and tests."""
    return episodes(config, seed, transfer_ids).label


class Planter:
    """Writes the planted episodes into a batch (rows whose ids carry a label)."""

    def __init__(
        self,
        config: BehaviourConfig,
        *,
        seed: int,
        persons: Persons,
        population: Population,
        listed: SeededSelection,
        median_amount_fen: int,
        max_amount_fen: int,
    ) -> None:
        if config.blacklist_contact.rate > 0 and listed.count == 0:
            raise ValueError(
                "behaviours.blacklist_contact.rate > 0 needs someone on the blacklist: "
                "set hooks.blacklist.listed_fraction > 0 or the rate to 0"
            )
        self.config = config
        self.seed = seed
        self.persons = persons
        self.population = population
        self.listed = listed
        self.median_amount_fen = median_amount_fen
        self.max_amount_fen = max_amount_fen
        self._casinos = below(hash64(np.arange(GAMBLING_ACCOUNTS), salt(seed, _CASINO)), population.accounts)

    def plant(self, batch: np.ndarray, payer_range: tuple[int, int] | None = None) -> np.ndarray:
        """Overwrite the rows of ``batch`` that carry a label; returns every row's label (uint8)."""
        ep = episodes(self.config, self.seed, batch["transfer_id"])
        rows = np.flatnonzero(ep.label)
        if len(rows):
            self._plant(batch, rows, ep.label[rows], ep.slot[rows], ep.position[rows], payer_range)
        return ep.label

    def _actor(self, key: np.ndarray, purpose: int, payer_range: tuple[int, int] | None) -> np.ndarray:
        """A person chosen uniformly (not by popularity) from hashes of ``key``; in range if given."""
        h = hash64(key, salt(self.seed, purpose))
        if payer_range is None:
            return below(h, self.population.accounts)
        lo, hi = payer_range
        return lo + below(h, hi - lo)

    def _amount(self, key: np.ndarray, purpose: int, factor: float) -> np.ndarray:
        """Log-normal amounts, median ``factor`` times the workload's, sigma 0.5."""
        z = self.persons.normal(hash64(key, salt(self.seed, purpose)))
        return self.median_amount_fen * factor * np.exp(0.5 * z)

    def _plant(
        self,
        batch: np.ndarray,
        rows: np.ndarray,
        label: np.ndarray,
        slot: np.ndarray,
        position: np.ndarray,
        payer_range: tuple[int, int] | None,
    ) -> None:
        """Fill the planted ``rows``: what all episodes share first, then each behaviour's own."""
        p, n, B = self.persons, self.population.accounts, Behaviour
        member = batch["transfer_id"][rows]
        payer = self._actor(slot, _EPISODE, payer_range)
        episode_hash = hash64(slot, salt(self.seed, _EPISODE + 1000))
        member_unit = unit(hash64(member, salt(self.seed, _MEMBER)))
        payee = self.population.account_of_unit(member_unit).astype(np.int64)
        amount = self._amount(member, _MEMBER, 2.0)
        category = np.full(len(rows), Category.PEER_TO_PEER, dtype=np.uint16)
        device_slot = np.zeros(len(rows), dtype=np.int64)
        cell = np.full(len(rows), -1, dtype=np.int64)  # -1: the final payer's home

        if (m := label == B.STRUCTURING).any():
            payee[m] = self.population.account_of_unit(unit(episode_hash[m]))
            cap = self.population.single_cap_fen(payer[m])
            amount[m] = cap - 1 - np.floor(cap * self.config.structuring_margin * member_unit[m])
        if (m := label == B.NEW_DEVICE_BURST).any():
            device_slot[m] = NEW_DEVICE_SLOT + below(episode_hash[m], 4)
            cell[m] = p.place_in_some_city(episode_hash[m])
            category[m] = Category.ONLINE_SHOPPING
        if (m := label == B.IMPOSSIBLE_JUMP).any():
            home, half = p.home_cell(payer[m]), p.side // 2
            cell[m] = np.where(position[m] % 2 == 0, home, p.shifted(home, half, half))
            category[m] = Category.RETAIL
            amount[m] /= 2
        if (m := label == B.BLACKLIST_CONTACT).any():
            listed = self.listed.member(below(episode_hash[m], self.listed.count))
            actor = payer[m]
            actor = np.where(actor == listed, self._actor(slot[m] + 1, _EPISODE, payer_range), actor)
            pays = (episode_hash[m] & np.uint64(1)).astype(bool) & (payer_range is None)
            payer[m], payee[m] = np.where(pays, listed, actor), np.where(pays, actor, listed)
        if (m := label == B.GAMBLING).any():
            payee[m] = self._casinos[below(episode_hash[m], GAMBLING_ACCOUNTS)]
            category[m] = Category.GAMBLING
        if (m := label == B.RING).any():
            ring = slot[m] * self.config.slot_payments
            after = (position[m] + 1) % self.config.ring.payments
            payer[m] = self._actor(ring + position[m], _EPISODE + 2000, payer_range)
            payee[m] = self._actor(ring + after, _EPISODE + 2000, payer_range)
            amount[m] = self._amount(slot[m], _EPISODE, 20.0) * (1 - 0.01 * position[m])

        clash = payee == payer
        payee[clash] = (payee[clash] + 1) % n
        at_home = cell < 0
        cell[at_home] = p.home_cell(payer[at_home])
        batch["payer"][rows] = payer
        batch["payee"][rows] = payee
        batch["amount_fen"][rows] = np.clip(amount, 1, self.max_amount_fen).astype(np.int64)
        batch["category"][rows] = category
        batch["device_id"][rows] = p.device(payer, device_slot)
        batch["location_cell"][rows] = cell
