"""The queries a surveillance state runs against the trove, over its Parquet files.

The person-centred kinds are lookups with pyarrow through a sparse index per file (``payments``,
``counterparties``) or per-run sidecars (``same_device``, ``co_location``: see ``_keyed``); the
aggregates are a DuckDB scan of the window's files. The DuckDB forms of (b)-(d) are kept as
``*_sql`` (the tests' second oracle, the benchmarks' old side).

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
from engine.trove import rollup
from engine.trove.config import TroveConfig
from engine.trove.files import CorruptSegment, check_file, nullable
from engine.trove.manifest import FileEntry, Segment, load_manifest
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
        #: A trove file's relative path -> its full path (``_path``), for the files listed.
        self._paths: dict[str, str] = {}
        #: Threads ``payments`` reads files on (1: one after another, on the caller's thread).
        self.lookup_threads = lookup_threads
        self._pool: Any = None
        #: Row groups ``payments`` read: the account column alone, and whole (what its cost follows).
        #: (the same for sidecars' key column and the rest; row groups of runs read at sidecar
        #: positions; sidecars built; ``aggregate``'s rollups read and run files scanned.)
        self.lookup_counts = dict.fromkeys(
            ("account_column_groups", "whole_groups", "sidecar_key_groups", "sidecar_groups", "position_groups"), 0
        ) | {"sidecars_built": 0, "rollup_files": 0, "scanned_files": 0}
        self._count_lock = threading.Lock()
        #: (segment id, payer file) -> its usable rollup, None if it has none (``aggregate``).
        self._rollups: dict[tuple[int, str], Path | None] = {}
        #: Sidecars are built one at a time (``_sidecar``).
        self._sidecar_lock = threading.Lock()

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
        return [
            self._path(s.file(ordering).path)
            for s in segments
            if s.max_timestamp_ns >= since and s.min_timestamp_ns < until
        ]

    def _path(self, rel: str) -> str:
        """The full path of a trove file, made once per file (pathlib per file per query was ~5% of
        a person's-day lookup's CPU)."""
        path = self._paths.get(rel)
        if path is None:
            root = self.root
            assert root is not None
            path = self._paths[rel] = str(root / rel)
        return path

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
            sent, received = self._both_ways(segs, [account], lo, hi)
        parts = [t.add_column(0, "direction", pa.array(["sent"] * t.num_rows, pa.string())) for t in sent]
        for t in received:
            t = t.filter(pc.not_equal(t["payer"], account))  # a payment to oneself is listed once, as sent
            if t.num_rows:
                parts.append(t.add_column(0, "direction", pa.array(["received"] * t.num_rows, pa.string())))
        if not parts:
            return _empty(["direction"])
        table = pa.concat_tables(parts)
        return table.sort_by([(c, "ascending") for c in _ORDER.split(", ")])

    def _both_ways(
        self,
        segs: list[Segment],
        accounts: Sequence[int],
        lo: int,
        hi: int,
        columns: Sequence[str] | None = None,
        orderings: Sequence[str] = ("payer", "payee"),
    ) -> tuple[list[pa.Table], list[pa.Table]]:
        """The rows sent by any of ``accounts`` in [lo, hi) (payer-sorted files) and those received
        by any of them (payee-sorted files), as non-empty tables per file: one pass over each file's
        candidate row groups for all the accounts at once (``_lookup``), files side by side."""
        import numpy as np

        keys = np.unique(np.asarray(accounts, dtype=np.int64))
        self._forget_unlisted(segs)
        reads = [(column, path) for column in orderings for path in self._files(segs, column, lo, hi)]
        found = self._map(lambda r: self._lookup(r[1], r[0], keys, columns), reads)
        out: tuple[list[pa.Table], list[pa.Table]] = ([], [])
        for (column, _), rows in zip(reads, found, strict=True):
            if rows is not None:
                rows = _where(rows, column, keys, lo, hi)
                if rows.num_rows:
                    out[column == "payee"].append(rows)
        return out

    def _forget_unlisted(self, segs: list[Segment]) -> None:
        """Drop the sparse index (and close the handles) of files a merge replaced, once a snapshot no
        longer lists them: a live trove's and a refreshed directory reader's alike."""
        listed = {self._path(f.path) for s in segs for f in s.files}
        self._row_groups = {k: v for k, v in self._row_groups.items() if k[0] in listed}
        self._paths = {rel: path for rel, path in self._paths.items() if path in listed}

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

    def _index(self, path: str, column: str, read_from: str = "") -> _LookupIndex:
        """The sparse index of ``column`` in the file ``path`` (or, for a sidecar, in the file
        ``read_from`` derived from ``path``: kept and dropped with ``path``)."""
        entry = self._row_groups.get((path, column))
        if entry is None:
            entry = self._row_groups[(path, column)] = _LookupIndex.read(read_from or path, column)
        return entry

    def _lookup(
        self,
        path: str,
        column: str,
        keys: Any,
        columns: Sequence[str] | None = None,
        read_from: str = "",
        counts: tuple[str, str] = ("account_column_groups", "whole_groups"),
    ) -> pa.Table | None:
        """The row groups of ``path`` (``read_from``) holding any of ``keys`` (sorted, unique) in
        ``column``, with ``columns`` (None: all); None when none do. The key column of the row
        groups whose min/max can hold a key is read first, the other columns only of the groups
        where a key is. ``counts``: the ``lookup_counts`` of the two reads."""
        import numpy as np

        index = self._index(path, column, read_from)
        keys = keys.astype(index.mins.dtype)
        # A row group can hold a key when a key lies in [min, max]: one searchsorted per bound.
        candidates = np.searchsorted(keys, index.maxs, "right") > np.searchsorted(keys, index.mins, "left")
        groups = np.flatnonzero(candidates)
        if not len(groups):
            return None
        self._count(counts[0], len(groups))
        col = index.file.read_row_groups(groups.tolist(), columns=[column], use_threads=False).column(0).to_numpy()
        hits = col == keys[0] if len(keys) == 1 else np.isin(col, keys)
        if not hits.any():
            return None
        # The groups with a hit: the column's rows are the groups' rows laid end to end.
        per_group = np.add.reduceat(hits, np.concatenate([[0], np.cumsum(index.rows[groups])[:-1]]))
        wanted = groups[per_group > 0].tolist()
        self._count(counts[1], len(wanted))
        # Not-null fields (``files.file_schema``) as nullable: tables of old and new files concatenate.
        return nullable(
            index.file.read_row_groups(wanted, columns=None if columns is None else list(columns), use_threads=False)
        )

    # ---- (b) ----------------------------------------------------------------------------------

    @_retry_on_vanished
    def counterparties(
        self, account: int, *, hops: int = 1, top: int = 50, since: int | None = None, until: int | None = None
    ) -> pa.Table:
        """Counterparties ranked by payments (then amount): hop 1 = paid or paid by ``account``;
        hop 2 = counterparties of the top hop-1 accounts (``via`` = how many of them link to it),
        excluding ``account`` and its hop-1 list. ``top`` rows per hop.

        Lookups, not scans: hop 1 from the person's payments both ways (as ``payments``), hop 2
        from one more pass over the files for the ``top`` hop-1 accounts at once (each file's
        candidate row groups' account column read once for all of them, ``_lookup``). Only the
        columns a link needs are read. Same answers as the SQL form (``counterparties_sql``)."""
        _check_hops(hops, top)
        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            first = _ranked_links(self._links(segs, [account], lo, hi), exclude=[account], top=top)
            if hops == 1 or not len(first["account"]):
                return _counterparty_table(first)
            near = first["account"].tolist()
            second = _ranked_links(self._links(segs, near, lo, hi), exclude=[account, *near], top=top)
        return _counterparty_table(first, second)

    def _links(self, segs: list[Segment], accounts: Sequence[int], lo: int, hi: int) -> tuple[Any, Any, Any]:
        """(src, counterparty, amount) of every payment between one of ``accounts`` (src) and
        another account, in [lo, hi), as numpy arrays: sent and received alike."""
        import numpy as np

        sent, received = self._both_ways(segs, accounts, lo, hi, columns=_LINK_COLUMNS)
        src, cp, amount = [], [], []
        for tables, (mine, theirs) in ((sent, ("payer", "payee")), (received, ("payee", "payer"))):
            for t in tables:
                a, b = t[mine].to_numpy().astype(np.int64), t[theirs].to_numpy().astype(np.int64)
                other = a != b
                src.append(a[other])
                cp.append(b[other])
                amount.append(t["amount_fen"].to_numpy()[other])
        if not src:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(src), np.concatenate(cp), np.concatenate(amount).astype(np.int64)

    @_retry_on_vanished
    def counterparties_sql(
        self, account: int, *, hops: int = 1, top: int = 50, since: int | None = None, until: int | None = None
    ) -> pa.Table:
        """``counterparties`` in DuckDB over the window's files (the path before the lookups: the
        oracle of the tests and the old side of the benchmarks' comparison)."""
        _check_hops(hops, top)
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
                f"""SELECT 1::BIGINT AS hop, cp::BIGINT AS account, count(*) AS payments,
                           sum(amount_fen)::BIGINT AS amount_fen, 1::BIGINT AS via
                    FROM {linked([account])} GROUP BY cp ORDER BY payments DESC, amount_fen DESC, account LIMIT $top""",
                params,
            )
            if hops == 1 or first.num_rows == 0:
                return first
            near = first.column("account").to_pylist()
            second = self._run(
                f"""SELECT 2::BIGINT AS hop, cp::BIGINT AS account, count(*) AS payments,
                           sum(amount_fen)::BIGINT AS amount_fen, count(DISTINCT src) AS via
                    FROM {linked(near)} WHERE cp <> $a AND cp NOT IN ({", ".join(map(str, near))})
                    GROUP BY cp ORDER BY via DESC, payments DESC, amount_fen DESC, account LIMIT $top""",
                {**params, "a": account},
            )
        import pyarrow as pa

        return pa.concat_tables([first, second.cast(first.schema)])

    # ---- (c) ----------------------------------------------------------------------------------

    @_retry_on_vanished
    def co_location(self, cell: int, since: int | None = None, until: int | None = None) -> pa.Table:
        """Accounts that paid in location cell ``cell`` in [since, until): payments, first and last time.

        A lookup in each run's by-cell sidecar (``_keyed``), not a scan of the window's rows: the
        runs are sorted by account, so a cell's payments are spread over every row group of every
        run the window touches. Same answers as ``co_location_sql``."""
        import numpy as np

        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            rows = self._keyed(segs, "location_cell", [cell], lo, hi)
        payer, ts = rows["payer"], rows["timestamp_ns"]
        order = np.lexsort((ts, payer))
        payer, ts = payer[order], ts[order]
        starts = _group_starts(payer)
        accounts, payments = payer[starts], np.diff(np.append(starts, len(payer)))
        first = ts[starts] if len(ts) else ts
        last = ts[np.append(starts[1:], len(ts)) - 1] if len(ts) else ts
        rank = np.lexsort((accounts, -payments))
        return _int_table(account=accounts[rank], payments=payments[rank], first_ns=first[rank], last_ns=last[rank])

    @_retry_on_vanished
    def co_location_sql(self, cell: int, since: int | None = None, until: int | None = None) -> pa.Table:
        """``co_location`` in DuckDB, a scan of the window's payer-sorted files (the oracle of the
        tests, the old side of the benchmarks' comparison)."""
        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            files = self._files(segs, "payer", lo, hi)
            if not files:
                return _empty_accounts(["first_ns", "last_ns"])
            return self._run(
                """SELECT payer::BIGINT AS account, count(*) AS payments, min(timestamp_ns) AS first_ns,
                          max(timestamp_ns) AS last_ns
                   FROM read_parquet($f) WHERE location_cell = $c AND timestamp_ns >= $lo AND timestamp_ns < $hi
                   GROUP BY payer ORDER BY payments DESC, account""",
                {"f": files, "c": cell, "lo": lo, "hi": hi},
            )

    # ---- (d) ----------------------------------------------------------------------------------

    @_retry_on_vanished
    def same_device(self, account: int, since: int | None = None, until: int | None = None) -> pa.Table:
        """Other accounts that paid from a device ``account`` paid from: payments and devices shared.

        Two lookups: the person's payments sent (the payer-sorted files) give their devices, then
        each run's by-device sidecar (``_keyed``) gives every payment from those devices. Same
        answers as ``same_device_sql``."""
        import numpy as np

        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            sent, _ = self._both_ways(
                segs, [account], lo, hi, columns=_KEYED_COLUMNS["device_id"], orderings=("payer",)
            )
            if not sent:
                return _empty_accounts(["shared_devices"])
            devices = np.unique(np.concatenate([t["device_id"].to_numpy() for t in sent]))
            rows = self._keyed(segs, "device_id", devices, lo, hi)
        other = rows["payer"] != account
        payer, device = rows["payer"][other], rows["device_id"][other]
        order = np.lexsort((device, payer))
        payer, device = payer[order], device[order]
        starts = _group_starts(payer)
        accounts, payments = payer[starts], np.diff(np.append(starts, len(payer)))
        new_device = np.ones(len(payer), dtype=np.int64)
        new_device[1:] = (payer[1:] != payer[:-1]) | (device[1:] != device[:-1])
        shared = np.add.reduceat(new_device, starts) if len(starts) else new_device
        rank = np.lexsort((accounts, -payments, -shared))
        return _int_table(account=accounts[rank], payments=payments[rank], shared_devices=shared[rank])

    @_retry_on_vanished
    def same_device_sql(self, account: int, since: int | None = None, until: int | None = None) -> pa.Table:
        """``same_device`` in DuckDB, two scans of the window's payer-sorted files (the oracle of
        the tests, the old side of the benchmarks' comparison)."""
        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            files = self._files(segs, "payer", lo, hi)
            if not files:
                return _empty_accounts(["shared_devices"])
            return self._run(
                """WITH mine AS (SELECT DISTINCT device_id FROM read_parquet($f)
                                 WHERE payer = $a AND timestamp_ns >= $lo AND timestamp_ns < $hi)
                   SELECT payer::BIGINT AS account, count(*) AS payments, count(DISTINCT device_id) AS shared_devices
                   FROM read_parquet($f)
                   WHERE device_id IN (SELECT device_id FROM mine) AND payer <> $a
                     AND timestamp_ns >= $lo AND timestamp_ns < $hi
                   GROUP BY payer ORDER BY shared_devices DESC, payments DESC, account""",
                {"f": files, "a": account, "lo": lo, "hi": hi},
            )

    # ---- the sidecars of (c) and (d) ------------------------------------------------------------

    def _keyed(self, segs: list[Segment], key: str, keys: Sequence[int] | Any, lo: int, hi: int) -> dict[str, Any]:
        """Every payment in [lo, hi) whose ``key`` column is one of ``keys``, as numpy columns
        (``key``, payer, timestamp_ns).

        A run (sorted by account) is looked up in its *sidecar*: the run's ``key`` column and each
        row's position in the run, sorted by ``key`` (``build_sidecar``), a derived file kept under
        the trove's ``index/`` directory, built the first time a query needs it (or ahead, by
        ``build_sidecars``) and named by the run file's digest, so it can never describe another
        file. The positions of the wanted keys then select the rows of the run's payer-sorted file
        (``_rows_at``: the row groups holding them, three columns). The writer's arrival-ordered
        segments (recent, small) are read whole."""
        import numpy as np
        import pyarrow.parquet as pq

        root = self.root
        assert root is not None
        wanted = np.unique(np.asarray(keys))
        self._forget_unlisted(segs)
        files = [s for s in segs if s.max_timestamp_ns >= lo and s.min_timestamp_ns < hi]
        columns = _KEYED_COLUMNS[key]

        def one(s: Segment) -> Any:
            entry = s.file("payer")
            source = str(root / entry.path)
            if s.kind == "run":
                side = self._sidecar(root, entry, key)
                sidecar_counts = ("sidecar_key_groups", "sidecar_groups")
                hits = self._lookup(source, key, wanted, (key, "row"), read_from=str(side), counts=sidecar_counts)
                if hits is None:
                    return None
                found = hits["row"].to_numpy()[np.isin(hits[key].to_numpy(), wanted)]
                rows = self._rows_at(source, np.sort(found), columns) if len(found) else None
            else:
                rows = nullable(pq.read_table(source, columns=list(columns), use_threads=False))
            return None if rows is None else _where(rows, key, wanted, lo, hi)

        found = [t for t in self._map(one, files) if t is not None and t.num_rows]
        self._prune_sidecars(root)
        return {
            c: np.concatenate([t[c].to_numpy() for t in found]) if found else np.zeros(0, np.int64) for c in columns
        }

    def _rows_at(self, path: str, positions: Any, columns: Sequence[str]) -> pa.Table:
        """The rows at ``positions`` (sorted) of the payer-sorted file ``path``, with ``columns``:
        only the row groups that hold them are read."""
        import numpy as np

        index = self._index(path, "payer")
        starts = np.concatenate([[0], np.cumsum(index.rows)])
        groups = np.searchsorted(starts, positions, "right") - 1
        wanted = np.unique(groups)
        self._count("position_groups", len(wanted))
        table = index.file.read_row_groups(wanted.tolist(), columns=list(columns), use_threads=False)
        # Where each wanted group begins in ``table``: its rows are the groups' rows end to end.
        begins = np.concatenate([[0], np.cumsum(index.rows[wanted])[:-1]])
        return nullable(table.take(positions - starts[groups] + begins[np.searchsorted(wanted, groups)]))

    def _sidecar(self, root: Path, entry: FileEntry, key: str) -> Path:
        """The sidecar of the run file ``entry`` by ``key``, built now if it is not there (one at a
        time: a build holds the run's key column, its permutation and the sorted copy)."""
        side = sidecar_path(root, entry, key)
        if not side.exists():
            with self._sidecar_lock:
                if not side.exists():
                    build_sidecar(root / entry.path, side, key, self.config.row_group_rows)
                    self._count("sidecars_built", 1)
        return side

    def _prune_sidecars(self, root: Path) -> None:
        """Remove sidecars whose run file is gone from the disk (merged away or expired: no reader
        can ask for them again). Not those of files merely unlisted in this reader's snapshot."""
        for side in (root / SIDECAR_DIR).glob("*/*.parquet"):
            if not (root / sidecar_source(side)).exists():
                side.unlink(missing_ok=True)

    def build_sidecars(self, keys: Sequence[str] | None = None, *, threads: int = 1) -> dict[str, float]:
        """Build every missing sidecar of the committed runs now (what ``co_location`` and
        ``same_device`` would build on first use), ``threads`` at a time, and (``keys`` None) every
        missing rollup (a trove written before them: ``aggregate`` scans such runs): seconds,
        sidecars built, the sidecars' bytes on disk and per row of the runs, rollups built."""
        import time

        t0 = time.perf_counter()
        root = self.root
        assert root is not None
        with self._snapshot() as segs:
            runs = [s for s in segs if s.kind == "run"]
            todo = [
                (root / s.file("payer").path, sidecar_path(root, s.file("payer"), key))
                for key in (SIDECAR_KEYS if keys is None else keys)
                for s in runs
            ]
            todo = [(source, side) for source, side in todo if not side.exists()]

            def one(item: tuple[Path, Path]) -> None:
                build_sidecar(item[0], item[1], item[1].parent.name, self.config.row_group_rows)

            if threads > 1 and len(todo) > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="trove-sidecar") as pool:
                    list(pool.map(one, todo))
            else:
                for item in todo:
                    one(item)
            self._count("sidecars_built", len(todo))
            rows = sum(s.rows for s in runs)
            missing = [s for s in runs if keys is None and rollup.usable(root, s, self.config) is None]
            for s in missing:
                rollup.write_rollup_from_file(root, s, self.config)
                self._rollups.pop((s.id, s.file("payer").path), None)
        size = rollup.derived_bytes(root)["sidecar_bytes"]
        return {
            "seconds": time.perf_counter() - t0,
            "built": float(len(todo)),
            "bytes": float(size),
            "bytes_per_row": size / rows if rows else 0.0,
            "rollups_built": float(len(missing)),
        }

    # ---- (e) ----------------------------------------------------------------------------------

    @_retry_on_vanished
    def aggregate(
        self,
        by: Sequence[str] = ("region", "category"),
        bucket: str = "hour",
        since: int | None = None,
        until: int | None = None,
    ) -> pa.Table:
        """Per time bucket (CST hours or days) and ``by`` dimensions: payments, accepted, accepted amount.

        From the runs' rollups (``engine.trove.rollup``), not a scan: the window's whole hours
        are summed from the rollups of the runs they touch; the rows of a partial hour at either
        edge, and those of a segment without a usable rollup, are read from their runs (DuckDB, as
        ``aggregate_sql``, on those runs only). Exact for any window: the same rows as
        ``aggregate_sql`` (tests compare both and the reference model)."""
        size, exprs = self._aggregate_terms(by, bucket)
        lo, hi = _window(since, until)
        (whole_lo, whole_hi), edges = rollup.split_window(lo, hi)
        root = self.root
        assert root is not None
        with self._snapshot() as segs:
            rollups: list[str] = []
            scans: dict[tuple[int, int], list[str]] = {}
            for s in segs:
                ranges = [(a, b) for a, b in edges if s.max_timestamp_ns >= a and s.min_timestamp_ns < b]
                if whole_lo < whole_hi and s.max_timestamp_ns >= whole_lo and s.min_timestamp_ns < whole_hi:
                    path = self._rollup(root, s)
                    if path is None:
                        ranges.append((whole_lo, whole_hi))
                    else:
                        rollups.append(str(path))
                for r in ranges:
                    scans.setdefault(r, []).append(str(root / s.file("payer").path))
            self._count("rollup_files", len(rollups))
            self._count("scanned_files", sum(len(files) for files in scans.values()))
            parts: list[str] = []
            params: dict[str, Any] = {}
            if rollups:
                parts.append(
                    f"SELECT {', '.join(rollup.KEYS + rollup.COUNTS)} FROM read_parquet($r) "
                    "WHERE hour_ns >= $wlo AND hour_ns < $whi"
                )
                params |= {"r": rollups, "wlo": whole_lo, "whi": whole_hi}
            for i, ((a, b), files) in enumerate(sorted(scans.items())):
                hour = f"(timestamp_ns + {CST_OFFSET_NS}) // {NS_PER_HOUR} * {NS_PER_HOUR} - {CST_OFFSET_NS}"
                parts.append(
                    f"""SELECT {hour} AS hour_ns, {exprs["region"]} AS region, category, operator, code,
                               {_COUNTS_SQL} FROM read_parquet($f{i})
                        WHERE timestamp_ns >= $a{i} AND timestamp_ns < $b{i} GROUP BY ALL"""
                )
                params |= {f"f{i}": files, f"a{i}": a, f"b{i}": b}
            if not parts:
                return _empty_aggregate(by)
            return self._run(
                f"""SELECT (hour_ns + {CST_OFFSET_NS}) // {size} * {size} - {CST_OFFSET_NS} AS bucket_ns,
                          {", ".join(by)}, sum(payments)::BIGINT AS payments, sum(accepted)::BIGINT AS accepted,
                          sum(accepted_fen)::BIGINT AS accepted_fen
                   FROM ({" UNION ALL ".join(parts)}) GROUP BY ALL ORDER BY ALL""",
                params,
            )

    def _rollup(self, root: Path, segment: Segment) -> Path | None:
        """The usable rollup of ``segment`` (``rollup.usable``), checked once per file (files never change)."""
        key = (segment.id, segment.file("payer").path)
        if key not in self._rollups:
            self._rollups[key] = rollup.usable(root, segment, self.config)
        return self._rollups[key]

    def _aggregate_terms(self, by: Sequence[str], bucket: str) -> tuple[int, dict[str, str]]:
        """The bucket's size and each dimension's SQL (region as the privacy hook defines it); checks both."""
        unknown = [d for d in by if d not in DIMENSIONS]
        if unknown or not by:
            raise ValueError(f"aggregate by one or more of {', '.join(DIMENSIONS)}; got {list(by)}")
        if bucket not in BUCKETS:
            raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}, got {bucket!r}")
        c = self.config
        exprs = {
            "region": f"least(location_cell // {c.cells_per_region}, {c.regions - 1})",
            "category": "category",
            "operator": "operator",
            "code": "code",
        }
        return BUCKETS[bucket], exprs

    @_retry_on_vanished
    def aggregate_sql(
        self,
        by: Sequence[str] = ("region", "category"),
        bucket: str = "hour",
        since: int | None = None,
        until: int | None = None,
    ) -> pa.Table:
        """``aggregate`` as a DuckDB scan of the window's rows (the path before the rollups: the
        oracle of the tests and the old side of the benchmarks' comparison)."""
        size, exprs = self._aggregate_terms(by, bucket)
        dims = ", ".join(f"{exprs[d]} AS {d}" for d in by)
        lo, hi = _window(since, until)
        with self._snapshot() as segs:
            files = self._files(segs, "payer", lo, hi)
            if not files:
                return _empty_aggregate(by)
            return self._run(
                f"""SELECT (timestamp_ns + {CST_OFFSET_NS}) // {size} * {size} - {CST_OFFSET_NS} AS bucket_ns, {dims},
                          {_COUNTS_SQL}
                   FROM read_parquet($f) WHERE timestamp_ns >= $lo AND timestamp_ns < $hi
                   GROUP BY ALL ORDER BY ALL""",
                {"f": files, "lo": lo, "hi": hi},
            )


#: The counts of ``aggregate`` (and of a rollup) over rows, in SQL.
_COUNTS_SQL = """count(*) AS payments, count(*) FILTER (WHERE code = 0) AS accepted,
                 coalesce(sum(amount_fen) FILTER (WHERE code = 0), 0)::BIGINT AS accepted_fen"""


#: The derived per-run files ``co_location`` and ``same_device`` look up (``_keyed``), under the
#: trove (beside the rollups ``aggregate`` reads).
SIDECAR_DIR = rollup.DERIVED_DIR
#: Sidecar key -> the columns ``_keyed`` returns (the key first).
_KEYED_COLUMNS = {
    "location_cell": ("location_cell", "payer", "timestamp_ns"),
    "device_id": ("device_id", "payer", "timestamp_ns"),
}
SIDECAR_KEYS = tuple(_KEYED_COLUMNS)
#: In the sidecar's name: a sidecar of another layout (1: key, payer, time) is never read, and is
#: pruned once its run is gone.
SIDECAR_FORMAT = 2
#: What a counterparty link needs from a row.
_LINK_COLUMNS = ("payer", "payee", "amount_fen", "timestamp_ns")


def sidecar_path(root: Path, entry: FileEntry, key: str) -> Path:
    """Where the sidecar of run file ``entry`` by ``key`` lives: named by the file's digest and
    path (``sidecar_source`` reads the path back), so a sidecar never outlives or mislabels its file."""
    return rollup.derived_path(root, entry, key, SIDECAR_FORMAT)


#: The run file (relative to the trove) a sidecar was built from.
sidecar_source = rollup.derived_source


def build_sidecar(source: Path, side: Path, key: str, row_group_rows: int) -> None:
    """Write the sidecar of the payer-sorted run file ``source``: its ``key`` column and each row's
    position in the run (``row``, uint32), sorted by ``key`` and then position, delta encoded
    (both columns are ascending or nearly: ~1 byte a row for the key, 1-3 for the position) and
    zstd, in row groups of ``row_group_rows``; written to a temporary name and renamed (readers
    never see half a file, and two readers building it at once both leave a whole one)."""
    import os
    import threading

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = pq.read_table(source, columns=[key])[key].to_numpy()
    order = np.argsort(values, kind="stable")
    table = pa.table({key: values[order], "row": order.astype(np.uint32)})
    del values, order
    side.parent.mkdir(parents=True, exist_ok=True)
    tmp = side.with_name(f"{side.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        encodings = dict.fromkeys(table.column_names, "DELTA_BINARY_PACKED")
        pq.write_table(
            table,
            tmp,
            row_group_size=row_group_rows,
            compression="zstd",
            use_dictionary=False,
            column_encoding=encodings,
        )
        os.replace(tmp, side)
    finally:
        tmp.unlink(missing_ok=True)


def _where(rows: pa.Table, column: str, keys: Any, lo: int, hi: int) -> pa.Table:
    """The rows whose ``column`` is one of ``keys`` (sorted numpy) and whose time is in [lo, hi)."""
    import numpy as np
    import pyarrow as pa

    values = rows[column].to_numpy()
    ts = rows["timestamp_ns"].to_numpy()
    hit = values == keys[0] if len(keys) == 1 else np.isin(values, keys)
    return rows.filter(pa.array(hit & (ts >= lo) & (ts < hi)))


def _group_starts(sorted_keys: Any) -> Any:
    """Where each run of equal values begins in a sorted array."""
    import numpy as np

    if not len(sorted_keys):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))


def _ranked_links(links: tuple[Any, Any, Any], *, exclude: Sequence[int], top: int) -> dict[str, Any]:
    """Counterparties from (src, counterparty, amount) links, those in ``exclude`` left out: payments,
    amount and distinct srcs (``via``) per counterparty, ranked by via, payments, amount (desc),
    account; the first ``top``. (Hop 1 has one src: via is 1 throughout, as in the SQL form.)"""
    import numpy as np

    src, cp, amount = links
    keep = ~np.isin(cp, np.asarray(exclude, dtype=np.int64))
    src, cp, amount = src[keep], cp[keep], amount[keep]
    order = np.lexsort((src, cp))
    src, cp, amount = src[order], cp[order], amount[order]
    starts = _group_starts(cp)
    new_src = np.ones(len(cp), dtype=np.int64)
    new_src[1:] = (cp[1:] != cp[:-1]) | (src[1:] != src[:-1])
    empty = not len(starts)
    accounts = cp[starts]
    payments = np.diff(np.append(starts, len(cp)))
    amounts = amount[:0] if empty else np.add.reduceat(amount, starts)
    via = new_src[:0] if empty else np.add.reduceat(new_src, starts)
    rank = np.lexsort((accounts, -amounts, -payments, -via))[:top]
    return {"account": accounts[rank], "payments": payments[rank], "amount_fen": amounts[rank], "via": via[rank]}


def _counterparty_table(*hops: dict[str, Any]) -> pa.Table:
    """hop, account, payments, amount_fen, via: hop 1's rows, then hop 2's."""
    import numpy as np

    cols = {"hop": np.concatenate([np.full(len(h["account"]), i + 1) for i, h in enumerate(hops)])}
    for name in ("account", "payments", "amount_fen", "via"):
        cols[name] = np.concatenate([h[name] for h in hops])
    return _int_table(**cols)


def _int_table(**columns: Any) -> pa.Table:
    """A table of int64 columns (what the SQL forms return, and the CLI prints)."""
    import pyarrow as pa

    return pa.table({name: pa.array(values, pa.int64()) for name, values in columns.items()})


def _check_hops(hops: int, top: int) -> None:
    if hops not in (1, 2):
        raise ValueError(f"hops must be 1 or 2, got {hops}")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")


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
    Memory: the open file's parsed footer (pyarrow's, ~11 KB a row group of 12 columns: measured
    RSS) and 24 bytes a row group here.
    """

    def __init__(self, file: Any, mins: Any, maxs: Any, rows: Any) -> None:
        self.file, self.mins, self.maxs, self.rows = file, mins, maxs, rows

    @classmethod
    def read(cls, path: str, column: str) -> _LookupIndex:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        # No pre-buffering: a lookup reads a few KB of one row group per file, where pre_buffer's
        # read cache and I/O-thread hand-off cost more than the read. Measured (shared machine,
        # 10^8 rows, 38 files a lookup, page cache emptied per round): 18.0 -> 16.0 ms CPU per
        # lookup, p90 49 -> 40 ms; memory-mapped files did no better (18.5 ms, p90 47).
        file = pq.ParquetFile(path, pre_buffer=False)
        meta = file.metadata
        schema = meta.schema.to_arrow_schema()
        index = schema.get_field_index(column)
        # uint64 keys (device ids) keep their own type; every narrower integer fits int64.
        dtype = np.dtype(np.uint64) if schema.field(index).type == pa.uint64() else np.dtype(np.int64)
        mins = np.full(meta.num_row_groups, np.iinfo(dtype).min, dtype=dtype)
        maxs = np.full(meta.num_row_groups, np.iinfo(dtype).max, dtype=dtype)
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


def _empty_aggregate(by: Sequence[str]) -> pa.Table:
    import pyarrow as pa

    return pa.table({name: pa.array([], pa.int64()) for name in ["bucket_ns", *by, *rollup.COUNTS]})


def _empty_accounts(extra: list[str]) -> pa.Table:
    import pyarrow as pa

    return pa.table({name: pa.array([], pa.int64()) for name in ["account", "payments", *extra]})


def _empty_counterparties() -> pa.Table:
    import pyarrow as pa

    return pa.table({n: pa.array([], pa.int64()) for n in ("hop", "account", "payments", "amount_fen", "via")})
