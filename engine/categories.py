"""Merchant categories: the ``category`` field of a transfer.

The restricted ones are those the court blacklist and low social-credit scores bar people from
(air travel, high-speed rail, luxury hotels...), and the ones a score-keeper counts as "bad"
(video games, gambling-adjacent entertainment).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import numpy as np


class Category(enum.IntEnum):
    GROCERIES = 0
    RESTAURANTS = 1
    RETAIL = 2
    ONLINE_SHOPPING = 3
    UTILITIES = 4
    LOCAL_TRANSPORT = 5
    HEALTHCARE = 6
    EDUCATION = 7
    PEER_TO_PEER = 8
    AIR_TRAVEL = 9
    HIGH_SPEED_RAIL = 10
    LUXURY_HOTEL = 11
    VIDEO_GAMES = 12
    ENTERTAINMENT = 13
    LUXURY_GOODS = 14
    PRIVATE_SCHOOL = 15
    #: Betting and unlicensed lotteries (illegal in mainland China outside the state lotteries):
    #: absent from the default mix, paid only by the workload's planted gambling behaviour.
    GAMBLING = 16


#: Share of payments per category in the default workload (sums to 1).
DEFAULT_MIX: dict[Category, float] = {
    Category.GROCERIES: 0.22,
    Category.RESTAURANTS: 0.16,
    Category.RETAIL: 0.12,
    Category.ONLINE_SHOPPING: 0.14,
    Category.UTILITIES: 0.05,
    Category.LOCAL_TRANSPORT: 0.08,
    Category.HEALTHCARE: 0.03,
    Category.EDUCATION: 0.02,
    Category.PEER_TO_PEER: 0.08,
    Category.AIR_TRAVEL: 0.02,
    Category.HIGH_SPEED_RAIL: 0.03,
    Category.LUXURY_HOTEL: 0.01,
    Category.VIDEO_GAMES: 0.02,
    Category.ENTERTAINMENT: 0.015,
    Category.LUXURY_GOODS: 0.003,
    Category.PRIVATE_SCHOOL: 0.002,
}


#: Categories the court blacklist and a low social-credit score bar by default.
RESTRICTED_DEFAULT: tuple[str, ...] = (
    "AIR_TRAVEL",
    "HIGH_SPEED_RAIL",
    "LUXURY_HOTEL",
    "LUXURY_GOODS",
    "PRIVATE_SCHOOL",
)


def check_names(names: Iterable[str], field: str) -> None:
    """Raise ValueError naming ``field`` unless every item of ``names`` is a Category name."""
    unknown = [n for n in names if n not in Category.__members__]
    if unknown:
        raise ValueError(f"{field}: unknown categories {unknown}; known: {', '.join(Category.__members__)}")


def category_table(values: dict[str, int], dtype: type[np.generic]) -> np.ndarray:
    """Lookup table indexed by any ``category`` value (uint16): ``values`` by name, 0 elsewhere."""
    table = np.zeros(1 << 16, dtype=dtype)
    for name, v in values.items():
        table[Category[name]] = v
    return table
