"""The persistent surveillance trove: every payment that reached the ledger, on disk, by person.

One concern per module:

* ``config``: ``TroveConfig`` (directory, partitioning, segment and row-group sizes,
  compaction, retention, disk reserve).
* ``schema``: the row (transfer + result code + batch_seq/batch_index), its Arrow schema, the
  one place the timestamp column is chosen, and time partitions (``engine.simtime``).
* ``manifest``: ``trove.json``, the commit point (segments, their files, sizes and digests, the
  journal sequence number the trove is durable through, what is to be rebuilt).
* ``files``: atomic Parquet writes (pyarrow, zstd, page checksums) and file checks.
* ``store``: ``Trove``: the writer thread, the compactor thread, retention, integrity at open,
  ``rebuild_from`` journal entries, stats.
* ``compaction``: size-tiered merges of runs sorted by payer and by payee (a k-way merge in numpy).
* ``retention``: partitions to expire (runs and their derived files counted), the disk-space
  check, everything the trove keeps on disk (``disk_bytes``).
* ``rollup``: per-run rollups (payments per CST hour, region, category, operator, code) that
  ``aggregate`` sums; the derived files' naming, bytes and deletion.
* ``query``: ``TroveReader``: the five surveillance queries in DuckDB.
* ``bench``: bulk-load a seeded trove and time the queries (``cbdc-bench trove bench``).

Layout on disk: ``trove.json``, ``runs/p<partition>/r<id>.{payer,payee}.parquet`` (sorted) and
``segments/p<partition>/s<id>.parquet`` (arrival order, until merged; written by earlier versions);
``index/<kind>/<digest>.v<format>-<run file>``: files derived from a run (its rollup, its sidecars).
It is plain Parquet: any engine can read the files the manifest lists
(``pyarrow.dataset.dataset(paths)``).
"""
