"""Persons: each account's home, work place, devices and habits, derived from (seed, account).

Surveillance works on people: where they pay, from which phone, with whom, at what hour. Every
attribute here is a pure function of (seed, account id) computed on demand with a counter-based
hash (``engine.hashing``), so neither the generator nor the server keeps a per-account array for
it (the national-scale rule: 1.4e9 accounts), and every process and every chunking agrees.

The model (defaults in ``PersonsConfig``; sources in the README's "Persons" section):

* **Places.** Location cells form a ``grid_side_cells`` square grid (cell = y * side + x; the
  default 1024 x 1024 = 2**20 cells is what the privacy hook's regions assume), wrapped into a
  torus so no edge is special. ``cities`` city centres are scattered by hash; city sizes follow
  Zipf's law (share of city rank r ~ r**-city_zipf_exponent, exponent ~1 for cities). Each city's
  area is proportional to its population (``urban_area_share`` of the grid is urban), and within a
  city the density falls as 1/distance from the centre: a dense core, thin suburbs.
  A person's home is a point of a Zipf-chosen city; their work cell is another point of the same
  city (a commute).
* **Devices.** One to three (``device_shares``). Device ids are hash64(account * 8 + slot), a
  bijection, so two people never share an id; slots 0..count-1 are the person's own, slots >= 4
  are devices nobody has used (the "new device" behaviour draws from them).
* **Usual time of day** (minute, China Standard Time) from ``hourly_weights``; **spending level**
  a log-normal factor exp(spending_sigma * z) on the person's amounts; **favourite payees**: the
  ``favourites`` uniforms that the workload maps through its popularity law, so favourites are
  popular shops and people and the payee marginal keeps the popularity law.
"""

from __future__ import annotations

import statistics

import msgspec
import numpy as np

from engine.hashing import below, hash64, salt, unit
from engine.powerlaw import powerlaw_cdf, powerlaw_inv

MINUTES_PER_DAY = 1_440
NS_PER_MINUTE = 60 * 10**9
#: China Standard Time is UTC+8: the hour a person keeps is a local hour.
CST_OFFSET_NS = 8 * 3_600 * 10**9
#: Device slots per person: 0..2 may be owned, 4..7 are never used by anyone (new devices).
DEVICE_SLOTS = 8
NEW_DEVICE_SLOT = 4
#: Favourite payees per person are keyed account * MAX_FAVOURITES + j.
MAX_FAVOURITES = 64
#: Resolution of the quantile tables (usual minute, spending z): one table lookup per value.
_TABLE_BITS = 12
_TABLE = 1 << _TABLE_BITS

# Hash purposes: one independent family per attribute.
_HOME, _WORK, _DEVICES, _DEVICE_ID, _MINUTE, _SPEND, _FAVOURITE, _CITY = range(1, 9)

#: Relative share of people whose usual payment time falls in each local hour 0..23: quiet
#: nights, a morning rise, lunch and evening peaks (an assumption shaped like published hourly
#: profiles of mobile payments; no single source).
DEFAULT_HOURLY_WEIGHTS: tuple[float, ...] = (
    0.5, 0.3, 0.2, 0.2, 0.2, 0.4, 1.0, 2.5, 4.0, 4.5, 5.0, 6.5,
    7.0, 5.5, 5.0, 5.0, 5.0, 5.5, 7.0, 7.5, 7.0, 5.5, 3.5, 1.5,
)  # fmt: skip


class PersonsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-person attributes and payment habits (the scenario's ``[workload.persons]``)."""

    #: A power of two (cell arithmetic is shifts and masks on the hot path).
    grid_side_cells: int = 1_024
    cities: int = 4_096
    #: Zipf's law for cities: the r-th largest city holds a share ~ r**-exponent (about 1).
    city_zipf_exponent: float = 1.0
    #: Share of the grid's cells that cities cover (area proportional to population).
    urban_area_share: float = 0.01
    #: Share of people with 1, 2 and 3 devices.
    device_shares: tuple[float, float, float] = (0.55, 0.35, 0.10)
    #: Share of payments made from one of the payer's own devices (the rest: someone else's).
    own_device_share: float = 0.97
    #: Share of payments in or near the home cell, and in or near the work cell; the rest are
    #: elsewhere (travel), always outside both areas.
    home_share: float = 0.55
    work_share: float = 0.30
    #: "Near" a cell: within this many cells in x and in y (Chebyshev distance on the torus).
    near_cells: int = 1
    #: Favourite payees per person, and the share of payments that go to one of them.
    favourites: int = 8
    favourite_share: float = 0.6
    #: Sigma of the per-person log spending level (the workload narrows its per-payment sigma so
    #: the amounts' overall log-normal law is unchanged).
    spending_sigma: float = 0.6
    hourly_weights: tuple[float, ...] = DEFAULT_HOURLY_WEIGHTS
    #: Candidate payers per payment: the one whose usual time is closest to the payment's time of
    #: day pays (1 = time of day ignored). Popularity is unchanged: a person's usual time is
    #: independent of how busy they are.
    hour_candidates: int = 4

    def __post_init__(self) -> None:
        side = self.grid_side_cells
        if not 2 <= side <= 1 << 16 or side & (side - 1):
            raise ValueError(f"persons.grid_side_cells must be a power of two in 2..65536, got {side}")
        if self.cities < 1:
            raise ValueError(f"persons.cities must be >= 1, got {self.cities}")
        if self.city_zipf_exponent < 0:
            raise ValueError(f"persons.city_zipf_exponent must be >= 0, got {self.city_zipf_exponent}")
        if not 0 < self.urban_area_share <= 1:
            raise ValueError(f"persons.urban_area_share must be in (0, 1], got {self.urban_area_share}")
        if min(self.device_shares) < 0 or abs(sum(self.device_shares) - 1) > 1e-9:
            raise ValueError(f"persons.device_shares must be >= 0 and sum to 1, got {list(self.device_shares)}")
        for name in ("own_device_share", "home_share", "work_share", "favourite_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"persons.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.home_share + self.work_share > 1:
            raise ValueError("persons.home_share + persons.work_share must be <= 1")
        if not 0 <= self.near_cells < self.grid_side_cells // 4 + 1:
            raise ValueError(f"persons.near_cells must be in 0..grid_side_cells/4, got {self.near_cells}")
        if not 0 <= self.favourites <= MAX_FAVOURITES:
            raise ValueError(f"persons.favourites must be in 0..{MAX_FAVOURITES}, got {self.favourites}")
        if self.favourites == 0 and self.favourite_share > 0:
            raise ValueError("persons.favourite_share > 0 needs persons.favourites >= 1")
        if self.spending_sigma < 0:
            raise ValueError(f"persons.spending_sigma must be >= 0, got {self.spending_sigma}")
        if len(self.hourly_weights) != 24 or min(self.hourly_weights) < 0 or sum(self.hourly_weights) <= 0:
            raise ValueError("persons.hourly_weights must be 24 non-negative weights (local hours 0..23), not all 0")
        if not 1 <= self.hour_candidates <= 16:
            raise ValueError(f"persons.hour_candidates must be in 1..16, got {self.hour_candidates}")


def minute_of_day(timestamp_ns: np.ndarray) -> np.ndarray:
    """Local (China Standard Time) minute of day 0..1439 of unix-ns timestamps (int64)."""
    return ((timestamp_ns.astype(np.int64) + CST_OFFSET_NS) // NS_PER_MINUTE) % MINUTES_PER_DAY


def minutes_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance between minutes of day (both in 0..1439) on the 24-hour circle (0..720)."""
    d = np.abs(a - b)
    return np.minimum(d, MINUTES_PER_DAY - d)


class Persons:
    """The attributes of every account under ``seed``, computed on demand (vectorised)."""

    def __init__(self, config: PersonsConfig | None = None, *, seed: int) -> None:
        self.config = c = config or PersonsConfig()
        self.seed = seed
        self.side = c.grid_side_cells
        self._bits = np.uint32(c.grid_side_cells.bit_length() - 1)
        self._mask = np.int64(c.grid_side_cells - 1)
        self._salts = {p: salt(seed, p) for p in range(1, 9)}
        edges = powerlaw_cdf(np.arange(c.cities + 1, dtype=np.float64), c.city_zipf_exponent, c.cities)
        share = np.diff(edges)
        self.city_share = share
        centre = hash64(np.arange(c.cities), salt(seed, _CITY))
        self._city_x = below(centre, self.side)
        self._city_y = below(centre >> np.uint64(16) | centre << np.uint64(48), self.side)
        area_cells = share * c.urban_area_share * self.side**2
        self._city_radius = np.maximum(np.sqrt(area_cells / np.pi), 0.5)
        angle = (np.arange(256) + 0.5) * (2 * np.pi / 256)
        self._cos, self._sin = np.cos(angle), np.sin(angle)
        self._device_cdf = np.cumsum(c.device_shares)
        w = np.repeat(np.asarray(c.hourly_weights, dtype=np.float64) / 60, 60)  # per minute
        minute_cdf = np.cumsum(w) / w.sum()
        q = (np.arange(_TABLE) + 0.5) / _TABLE
        self._minute_table = np.searchsorted(minute_cdf, q, side="right").clip(0, MINUTES_PER_DAY - 1).astype(np.int16)
        normal = statistics.NormalDist()
        self._z_table = np.array([normal.inv_cdf(float(x)) for x in q])

    # ---- places ------------------------------------------------------------------------------

    def _point_in(self, city: np.ndarray, h: np.ndarray) -> np.ndarray:
        """A cell of ``city``: angle from the low 8 bits of ``h``, distance from the next 24."""
        angle = (h & np.uint64(255)).astype(np.intp)
        rho = self._city_radius[city] * ((h >> np.uint64(8)) & np.uint64(0xFF_FFFF)).astype(np.float64) / (1 << 24)
        x = (self._city_x[city] + np.rint(rho * self._cos[angle]).astype(np.int64)) & self._mask
        y = (self._city_y[city] + np.rint(rho * self._sin[angle]).astype(np.int64)) & self._mask
        return ((y << self._bits) | x).astype(np.uint32)

    def city_of_hash(self, h: np.ndarray) -> np.ndarray:
        """The city named by the top 32 bits of ``h`` (``_point_in`` uses the low 32)."""
        return self.city_of_unit((h >> np.uint64(32)).astype(np.float64) * (1.0 / (1 << 32)))

    def city_of_unit(self, u: np.ndarray) -> np.ndarray:
        """The city of a uniform ``u`` under the Zipf city-size law (city 0 is the largest)."""
        c = self.config
        return np.floor(powerlaw_inv(u, c.city_zipf_exponent, c.cities)).astype(np.intp).clip(0, c.cities - 1)

    def home_city(self, accounts: np.ndarray) -> np.ndarray:
        return self.city_of_hash(hash64(accounts, self._salts[_HOME]))

    def home_cell(self, accounts: np.ndarray) -> np.ndarray:
        h = hash64(accounts, self._salts[_HOME])
        return self._point_in(self.city_of_hash(h), h)

    def work_cell(self, accounts: np.ndarray) -> np.ndarray:
        """Another point of the home city (hash bits independent of the home point's)."""
        return self.home_and_work(accounts)[1]

    def home_and_work(self, accounts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(home cell, work cell) of each person, sharing the city lookup."""
        h = hash64(accounts, self._salts[_HOME])
        city = self.city_of_hash(h)
        return self._point_in(city, h), self._point_in(city, hash64(accounts, self._salts[_WORK]))

    def place_in_some_city(self, h: np.ndarray) -> np.ndarray:
        """A cell where a random person lives (city by Zipf from the top bits of ``h``)."""
        return self._point_in(self.city_of_hash(h), h)

    def cells_apart(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Chebyshev distance between cells on the torus (int64)."""
        s = self.side
        a, b = a.astype(np.int64), b.astype(np.int64)
        dx, dy = np.abs((a & self._mask) - (b & self._mask)), np.abs((a >> self._bits) - (b >> self._bits))
        return np.maximum(np.minimum(dx, s - dx), np.minimum(dy, s - dy))

    def near(self, cells: np.ndarray, h: np.ndarray) -> np.ndarray:
        """A cell within ``near_cells`` of each of ``cells`` (offsets from the low bits of ``h``)."""
        span = 2 * self.config.near_cells + 1
        dx = below(h, span) - self.config.near_cells
        dy = below(h << np.uint64(32), span) - self.config.near_cells
        return self.shifted(cells, dx, dy)

    def shifted(self, cells: np.ndarray, dx: np.ndarray | int, dy: np.ndarray | int) -> np.ndarray:
        """``cells`` moved by (dx, dy) on the torus."""
        cells = cells.astype(np.int64)
        x = ((cells & self._mask) + dx) & self._mask
        y = ((cells >> self._bits) + dy) & self._mask
        return ((y << self._bits) | x).astype(np.uint32)

    # ---- devices -----------------------------------------------------------------------------

    def device_count(self, accounts: np.ndarray) -> np.ndarray:
        """How many devices each person owns (1..3)."""
        u = unit(hash64(accounts, self._salts[_DEVICES]))
        return 1 + (u >= self._device_cdf[0]).astype(np.int64) + (u >= self._device_cdf[1])

    def device(self, accounts: np.ndarray, slot: np.ndarray | int) -> np.ndarray:
        """Device id of ``slot`` (0..7) of each person: unique over all (account, slot) pairs."""
        key = accounts.astype(np.uint64) * np.uint64(DEVICE_SLOTS) + np.asarray(slot, dtype=np.uint64)
        return hash64(key, self._salts[_DEVICE_ID])

    def own_devices(self, accounts: np.ndarray) -> np.ndarray:
        """(n, 3) device ids; columns beyond a person's device count hold 0 (no device)."""
        ids = np.stack([self.device(accounts, s) for s in range(3)], axis=1)
        ids[np.arange(3)[None, :] >= self.device_count(accounts)[:, None]] = 0
        return ids

    # ---- habits ------------------------------------------------------------------------------

    def usual_minute(self, accounts: np.ndarray) -> np.ndarray:
        """Local minute of day at which each person usually pays (int64)."""
        return self._minute_table[hash64(accounts, self._salts[_MINUTE]) >> np.uint64(64 - _TABLE_BITS)]

    def spending_z(self, accounts: np.ndarray) -> np.ndarray:
        """Standard-normal spending score: a person's amounts scale by exp(spending_sigma * z)."""
        return self._z_table[hash64(accounts, self._salts[_SPEND]) >> np.uint64(64 - _TABLE_BITS)]

    def favourite_unit(self, accounts: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Uniform in [0, 1) naming favourite ``j`` of each person (map it by popularity)."""
        key = accounts.astype(np.uint64) * np.uint64(MAX_FAVOURITES) + j.astype(np.uint64)
        return unit(hash64(key, self._salts[_FAVOURITE]))

    def normal(self, h: np.ndarray) -> np.ndarray:
        """Standard-normal values from hashes (quantile table; used for planted amounts)."""
        return self._z_table[h >> np.uint64(64 - _TABLE_BITS)]
