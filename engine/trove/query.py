"""The queries a surveillance state runs against the trove, in DuckDB over its Parquet files
(``payments``: pyarrow row-group reads through a sparse index, see there).

(a) ``payments``: a person's payments, sent and received, in a time window;
(b) ``counterparties``: who they pay and are paid by, one and two hops, ranked, top-k;
(c) ``co_location``: who paid in a location cell during a window;
(d) ``same_device``: accounts that paid from a device the person paid from;
(e) ``aggregate``: payments by region and category per hour or day.

A query reads only the files of a committed snapshot of the manifest, chosen per ordering: rows
sent by N from the payer-sorted file of each run, rows received from the payee-sorted one, plus
the (recent) arrival-ordered ingest segments not merged yet; so each row is read once, and a lookup by
account reads the few row groups whose statistics contain N. Files found damaged at open are
named in ``problems`` and left out. Times are unix ns on the simulated clock; windows are
half-open [since, until). Every result is a ``pyarrow.Table``.

A reader of a directory (``TroveReader.open``) in another process than the writer holds no
snapshot the compactor respects: a merge deletes its input files once the new manifest is
committed, so a query may find a file gone. It then reloads the committed manifest and runs again
(``RETRIES_ON_VANISHED`` times): the rows are the same, only their files changed. Under `full` at
300,000/s into a 10^7-row trove, 4 of 42 device and two-hop queries hit this before the retry.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from engine.simtime import CST_OFFSET_NS, NS_PER_DAY, NS_PER_HOUR
from engine.trove.config import TroveConfig
from engine.trove.files import CorruptSegment, check_file
from engine.trove.manifest import Segment, load_manifest
from engine.trove.schema import arrow_schema

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from engine.trove.process import TroveProcess
    from engine.trove.store import Trove

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Times a directory reader reloads the manifest and re-runs a query whose files a merge deleted.
RETRIES_ON_VANISHED = 5
#: Files ``payments`` reads side by side: more than the cores, since most of a cold lookup is
#: waiting for the disk (pyarrow reads and decodes without the GIL).
LOOKUP_THREADS = 4


def _retry_on_vanished(query: Callable[_P, _R]) -> Callable[_P, _R]:
    """Re-run ``query`` on a freshly loaded manifest when a file it read was compacted away."""

    @functools.wraps(query)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        reader = args[0]
        assert isinstance(reader, TroveReader)
        for attempt in range(RETRIES_ON_VANISHED + 1):
            try:
                return query(*args, **kwargs)
            except Exception as exc:
                if attempt == RETRIES_ON_VANISHED or not reader._reload_if_vanished(exc):
                    raise
        raise AssertionError("unreachable")

    return run


#: ``aggregate`` dimensions and the SQL of each (region as the privacy hook defines it).
DIMENSIONS = ("region", "category", "operator", "code")
BUCKETS = {"hour": NS_PER_HOUR, "day": NS_PER_DAY}
_ALL_TIME = (-(2**63), 2**63 - 1)
_ORDER = "timestamp_ns, batch_seq, batch_index"


class TroveReader:
    """Queries over a trove: a live ``Trove`` (``TroveReader(trove=...)``) or a directory (``open``)."""

    def __init__(
        self,
        *,
        trove: Trove | TroveProcess | None = None,
        root: Path | None = None,
        segments: Sequence[Segment] = (),
        config: TroveConfig | None = None,
        threads: int | None = None,
        lookup_threads: int = LOOKUP_THREADS,
    ) -> None:
        import duckdb

        self._trove = trove
        self.root = trove.root if trove is not None else root
        self._segments = list(segments)
        self.config = trove.config if trove is not None else (config or TroveConfig())
        self.problems: list[str] = list(trove.problems) if trove is not None else []
        self._con: duckdb.DuckDBPyConnection = duckdb.connect(config={"threads": threads} if threads else {})
        # Footers are read once per file, not once per query (files never change once written).
        self._con.execute("SET parquet_metadata_cache = true")
        self._deep_check = False
        #: (segment id, file path) already checked by ``refresh`` (files are immutable once listed).
        self._checked: set[tuple[int, str]] = set()
        #: (file, account column) -> its open ParquetFile and the column's min/max per row group
        #: (``payments``' sparse index; dropped for files its snapshot no longer lists).
        self._row_groups: dict[tuple[str, str], _LookupIndex] = {}
        #: Threads ``payments`` reads files on (1: one after another, on the caller's thread).
        self.lookup_threads = lookup_threads
        self._pool: Any = None
        #: Row groups ``payments`` read: the account column alone, and whole (what its cost follows).
        self.lookup_counts = {"account_column_groups": 0, "whole_groups": 0}
        self._count_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        root: str | Path,
        *,
        deep_check: bool = False,
        threads: int | None = None,
        lookup_threads: int = LOOKUP_THREADS,
    ) -> TroveReader:
        """A reader of the trove at ``root`` (another process may be writing it)."""
        path = Path(root)
        good, problems, config = _committed_segments(path, deep_check=deep_check)
        reader = cls(root=path, segments=good, config=config, threads=threads, lookup_threads=lookup_threads)
        reader.problems = problems
        reader._deep_check = deep_check
        reader._checked = {(s.id, f.path) for s in good for f in s.files}
        return reader

    def _reload_if_vanished(self, exc: Exception) -> bool:
        """Whether ``exc`` is a file of this directory reader's snapshot gone (then the snapshot is reloaded)."""
        if self._trove is not None or self.root is None:
            return False  # a live trove's snapshot() keeps its files until the query ends
        if not any(not (self.root / s.file(o).path).exists() for s in self._segments for o in ("payer", "payee")):
            return False
        self.refresh()
        return True

    def refresh(self) -> None:
        """A directory reader: take the trove's newly committed manifest (segments a writer added or
        merged since), keeping this reader's DuckDB connection, whose cache of Parquet footers
        stays valid (trove files never change once written; new ones have new names). A service
        that keeps one reader and refreshes it does not parse every footer again per query.
        Files are checked (``check_file``) once each, when first seen."""
        if self._trove is not None or self.root is None:
            return
        self._segments, self.problems, _ = _committed_segments(
            self.root, deep_check=self._deep_check, checked=self._checked
        )

    def close(self) -> None:
        self._con.close()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    @contextmanager
    def _snapshot(self) -> Iterator[list[Segment]]:
        if self._trove is None:
            yield self._segments
        else:
            with self._trove.snapshot() as segments:
                yield segments

    def _files(self, segments: list[Segment], ordering: str, since: int, until: int) -> list[str]:
        root = self.root
        assert root is not None
        return [
            str(root / s.file(ordering).path)
            for s in segments
            if s.max_timestamp_ns >= since and s.min_timestamp_ns < until
        ]

    def _run(self, sql: str, params: dict[str, Any]) -> pa.Table:
        return self._con.sql(sql, params=params).to_arrow_table()

    # ---- (a) ----------------------------------------------------------------------------------

    @_retry_on_vanished
    def payments(self, account: int, since: int | None = None, until: int | None = None) -> pa.Table:
        """Every payment ``account`` sent or received in [since, until), by time, with a ``direction``.

        Not through DuckDB: its scan weighs every row group's statistics of every file per query
        (61,037 row groups a side at 10^9 rows: 1.5-3.4 s a person). The reader keeps a sparse
        index per file instead (``_LookupIndex``: the account column's min/max per row group as
        numpy arrays, read once from the footer; files never change once written) and, in each
        file, reads the account column alone of the row groups that can hold ``account`` (a few
        KB: sorted and delta-encoded), and whole row groups only where the account is (at 10^9
        rows, one run in ~15 holds a given person at all). Files are read side by side on
        ``lookup_threads`` threads (pyarrow reads and decodes without the GIL, so disk waits
        overlap). The rows and their order are the same as the SQL form (tests compare both with
        the reference model)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            sent, recv = self._files(segs, "payer", lo, hi), self._files(segs, "payee", lo, hi)
            # Files a merge replaced leave the index (and their handles close) once a snapshot no
            # longer lists them: a live trove's and a refreshed directory reader's alike.
            root = self.root
            assert root is not None  # a reader always has its trove's directory (``_files``)
            listed = {str(root / f.path) for s in segs for f in s.files}
            self._row_groups = {k: v for k, v in self._row_groups.items() if k[0] in listed}
            if not sent:
                return _empty(["direction"])
            reads = [("sent", "payer", path) for path in sent] + [("received", "payee", path) for path in recv]
            found = self._map(lambda r: self._rows_of(r[2], r[1], account), reads)
            parts = []
            for (direction, column, _), rows in zip(reads, found, strict=True):
                if rows is None:
                    continue
                keep = pc.and_(
                    pc.and_(pc.equal(rows[column], account), pc.greater_equal(rows["timestamp_ns"], lo)),
                    pc.less(rows["timestamp_ns"], hi),
                )
                if direction == "received":
                    keep = pc.and_(keep, pc.not_equal(rows["payer"], account))
                rows = rows.filter(keep)
                if rows.num_rows:
                    label = pa.array([direction] * rows.num_rows, pa.string())
                    parts.append(rows.add_column(0, "direction", label))
        if not parts:
            return _empty(["direction"])
        table = pa.concat_tables(parts)
        return table.sort_by([(c, "ascending") for c in _ORDER.split(", ")])

    def _map(self, fn: Callable[[Any], _R], items: Sequence[Any]) -> list[_R]:
        """``fn`` over ``items`` on the lookup threads (in order), or here when there is one item or thread."""
        if self.lookup_threads < 2 or len(items) < 2:
            return [fn(item) for item in items]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.lookup_threads, thread_name_prefix="trove-lookup")
        return list(self._pool.map(fn, items))

    def _count(self, what: str, n: int) -> None:
        with self._count_lock:  # the lookup threads count side by side
            self.lookup_counts[what] += n

    def _index(self, path: str, column: str) -> _LookupIndex:
        entry = self._row_groups.get((path, column))
        if entry is None:
            entry = self._row_groups[(path, column)] = _LookupIndex.read(path, column)
        return entry

    def _rows_of(self, path: str, column: str, account: int) -> pa.Table | None:
        """The row groups of ``path`` that hold ``account`` in ``column`` (None: none do)."""
        import numpy as np

        index = self._index(path, column)
        groups = np.flatnonzero((index.mins <= account) & (index.maxs >= account))
        if not len(groups):
            return None
        self._count("account_column_groups", len(groups))
        keys = index.file.read_row_groups(groups.tolist(), columns=[column], use_threads=False)
        hits = keys.column(0).to_numpy() == account
        if not hits.any():
            return None
        # The groups with a hit: the column's rows are the groups' rows laid end to end.
        per_group = np.add.reduceat(hits, np.concatenate([[0], np.cumsum(index.rows[groups])[:-1]]))
        wanted = groups[per_group > 0].tolist()
        self._count("whole_groups", len(wanted))
        return index.file.read_row_groups(wanted, use_threads=False)

    # ---- (b) ----------------------------------------------------------------------------------

    @_retry_on_vanished
    def counterparties(
        self, account: int, *, hops: int = 1, top: int = 50, since: int | None = None, until: int | None = None
    ) -> pa.Table:
        """Counterparties ranked by payments (then amount): hop 1 = paid or paid by ``account``;
        hop 2 = counterparties of the top hop-1 accounts (``via`` = how many of them link to it),
        excluding ``account`` and its hop-1 list. ``top`` rows per hop."""
        if hops not in (1, 2):
            raise ValueError(f"hops must be 1 or 2, got {hops}")
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            sent, recv = self._files(segs, "payer", lo, hi), self._files(segs, "payee", lo, hi)
            if not sent:
                return _empty_counterparties()
            links = """(SELECT payer AS src, payee AS cp, amount_fen FROM read_parquet($sent)
                          WHERE payer IN ({srcs}) AND payer <> payee AND timestamp_ns >= $lo AND timestamp_ns < $hi
                        UNION ALL
                        SELECT payee AS src, payer AS cp, amount_fen FROM read_parquet($recv)
                          WHERE payee IN ({srcs}) AND payer <> payee
                            AND timestamp_ns >= $lo AND timestamp_ns < $hi)"""

            def linked(srcs: list[int]) -> str:
                # Integer literals, not a parameter: DuckDB pushes a constant IN list into the scan.
                return links.format(srcs=", ".join(str(int(a)) for a in srcs))

            params: dict[str, Any] = {"sent": sent, "recv": recv, "lo": lo, "hi": hi, "top": top}
            first = self._run(
                f"""SELECT 1 AS hop, cp AS account, count(*) AS payments,
                           sum(amount_fen)::BIGINT AS amount_fen, 1 AS via
                    FROM {linked([account])} GROUP BY cp ORDER BY payments DESC, amount_fen DESC, account LIMIT $top""",
                params,
            )
            if hops == 1 or first.num_rows == 0:
                return first
            near = first.column("account").to_pylist()
            second = self._run(
                f"""SELECT 2 AS hop, cp AS account, count(*) AS payments, sum(amount_fen)::BIGINT AS amount_fen,
                           count(DISTINCT src) AS via
                    FROM {linked(near)} WHERE cp <> $a AND cp NOT IN ({", ".join(map(str, near))})
                    GROUP BY cp ORDER BY via DESC, payments DESC, amount_fen DESC, account LIMIT $top""",
                {**params, "a": account},
            )
        import pyarrow as pa

        return pa.concat_tables([first, second.cast(first.schema)])

    # ---- (c) ----------------------------------------------------------------------------------

    @_retry_on_vanished
    def co_location(self, cell: int, since: int | None = None, until: int | None = None) -> pa.Table:
        """Accounts that paid in location cell ``cell`` in [since, until): payments, first and last time."""
        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            files = self._files(segs, "payer", lo, hi)
            if not files:
                return _empty_accounts(["first_ns", "last_ns"])
            return self._run(
                """SELECT payer AS account, count(*) AS payments, min(timestamp_ns) AS first_ns,
                          max(timestamp_ns) AS last_ns
                   FROM read_parquet($f) WHERE location_cell = $c AND timestamp_ns >= $lo AND timestamp_ns < $hi
                   GROUP BY payer ORDER BY payments DESC, account""",
                {"f": files, "c": cell, "lo": lo, "hi": hi},
            )

    # ---- (d) ----------------------------------------------------------------------------------

    @_retry_on_vanished
    def same_device(self, account: int, since: int | None = None, until: int | None = None) -> pa.Table:
        """Other accounts that paid from a device ``account`` paid from: payments and devices shared."""
        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            files = self._files(segs, "payer", lo, hi)
            if not files:
                return _empty_accounts(["shared_devices"])
            return self._run(
                """WITH mine AS (SELECT DISTINCT device_id FROM read_parquet($f)
                                 WHERE payer = $a AND timestamp_ns >= $lo AND timestamp_ns < $hi)
                   SELECT payer AS account, count(*) AS payments, count(DISTINCT device_id) AS shared_devices
                   FROM read_parquet($f)
                   WHERE device_id IN (SELECT device_id FROM mine) AND payer <> $a
                     AND timestamp_ns >= $lo AND timestamp_ns < $hi
                   GROUP BY payer ORDER BY shared_devices DESC, payments DESC, account""",
                {"f": files, "a": account, "lo": lo, "hi": hi},
            )

    # ---- (e) ----------------------------------------------------------------------------------

    @_retry_on_vanished
    def aggregate(
        self,
        by: Sequence[str] = ("region", "category"),
        bucket: str = "hour",
        since: int | None = None,
        until: int | None = None,
    ) -> pa.Table:
        """Per time bucket (CST hours or days) and ``by`` dimensions: payments, accepted, accepted amount."""
        unknown = [d for d in by if d not in DIMENSIONS]
        if unknown or not by:
            raise ValueError(f"aggregate by one or more of {', '.join(DIMENSIONS)}; got {list(by)}")
        if bucket not in BUCKETS:
            raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}, got {bucket!r}")
        size = BUCKETS[bucket]
        c = self.config
        exprs = {
            "region": f"least(location_cell // {c.cells_per_region}, {c.regions - 1})",
            "category": "category",
            "operator": "operator",
            "code": "code",
        }
        dims = ", ".join(f"{exprs[d]} AS {d}" for d in by)
        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            files = self._files(segs, "payer", lo, hi)
            if not files:
                return _empty_accounts([])
            return self._run(
                f"""SELECT (timestamp_ns + {CST_OFFSET_NS}) // {size} * {size} - {CST_OFFSET_NS} AS bucket_ns, {dims},
                          count(*) AS payments, count(*) FILTER (WHERE code = 0) AS accepted,
                          coalesce(sum(amount_fen) FILTER (WHERE code = 0), 0)::BIGINT AS accepted_fen
                   FROM read_parquet($f) WHERE timestamp_ns >= $lo AND timestamp_ns < $hi
                   GROUP BY ALL ORDER BY ALL""",
                {"f": files, "lo": lo, "hi": hi},
            )


def _committed_segments(
    path: Path, *, deep_check: bool, checked: set[tuple[int, str]] | None = None
) -> tuple[list[Segment], list[str], TroveConfig]:
    """The committed manifest's segments whose files check out, the problems found, the trove's config.

    ``checked``: files known good already (not checked again); the files found good are added.
    """
    manifest = load_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"{path} is not a trove (no trove.json); give the directory a run wrote with --trove")
    good, problems = [], []
    for s in manifest.segments:
        try:
            for f in s.files:
                if checked is None or (s.id, f.path) not in checked:
                    check_file(path, f, trove_id=manifest.trove_id, segment_id=s.id, rows=s.rows, deep=deep_check)
                    if checked is not None:
                        checked.add((s.id, f.path))
            good.append(s)
        except CorruptSegment as exc:
            problems.append(str(exc))
    return good, problems, TroveConfig(dir=str(path), partition_s=manifest.partition_ns // 10**9)


class _LookupIndex:
    """A file opened for lookups: ``column``'s min and max per row group, and each group's rows.

    A row group without statistics gets the whole int64 range: always read, never wrongly skipped.
    Memory: the open file's parsed footer (pyarrow's, ~5 KB a row group) and 24 bytes a row group here.
    """

    def __init__(self, file: Any, mins: Any, maxs: Any, rows: Any) -> None:
        self.file, self.mins, self.maxs, self.rows = file, mins, maxs, rows

    @classmethod
    def read(cls, path: str, column: str) -> _LookupIndex:
        import numpy as np
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        meta = file.metadata
        index = meta.schema.to_arrow_schema().get_field_index(column)
        mins = np.full(meta.num_row_groups, np.iinfo(np.int64).min, dtype=np.int64)
        maxs = np.full(meta.num_row_groups, np.iinfo(np.int64).max, dtype=np.int64)
        rows = np.zeros(meta.num_row_groups, dtype=np.int64)
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            rows[i] = group.num_rows
            stats = group.column(index).statistics
            if stats is not None and stats.has_min_max:
                mins[i], maxs[i] = stats.min, stats.max
        return cls(file, mins, maxs, rows)


def _window(since: int | None, until: int | None) -> tuple[int, int]:
    lo = _ALL_TIME[0] if since is None else since
    hi = _ALL_TIME[1] if until is None else until
    if lo >= hi:
        raise ValueError(f"the window is empty: since ({lo}) must be before until ({hi})")
    return lo, hi


def _empty(extra: list[str]) -> pa.Table:
    import pyarrow as pa

    schema = arrow_schema()
    for name in extra:
        schema = schema.insert(0, pa.field(name, pa.string()))
    return schema.empty_table()


def _empty_accounts(extra: list[str]) -> pa.Table:
    import pyarrow as pa

    return pa.table({name: pa.array([], pa.int64()) for name in ["account", "payments", *extra]})


def _empty_counterparties() -> pa.Table:
    import pyarrow as pa

    return pa.table({n: pa.array([], pa.int64()) for n in ("hop", "account", "payments", "amount_fen", "via")})
