"""``full`` end to end with the persistent trove against ``full`` without it, same machine, same run.

For each rate, runs ``cbdc-bench run --profile full`` twice, alternately: with the trove (the
default scenario: ``surveillance_log`` writes the Parquet trove from its child process) and with
``surveillance_log`` in ``buffer`` mode (the default scenario with that one line changed: the
bounded memory ring, no trove). Prints one JSON object: per rate and variant, the achieved rate,
p99 and verdict; for the trove its ingest backlog at the end of the run (rows handed over and not
yet durable) and compaction backlog (merge debt: rows the merges the size-tiered policy calls
for would rewrite, following the merges those make due) as the result file records them at the
end of the run, the same once the server has stopped, its CPU per transfer as charged to the
hook; and the ratio of achieved rates (trove / no trove).

Quiet-machine command (issue 17's target: >= 500,000/s with the trove, compaction keeping up,
and the backlog at 1,000,000/s), about 3 minutes:

    python -m benchmarks.trove_ingest_ratio --rates 500000,1000000 --seconds 20

While a run with the trove goes on, its manifest is read every ``--sample-s`` seconds (5) from
the disk, as any reader of the trove could, and the merge debt at each sample is kept
(``debt_series``: seconds since the run started, rows in the trove, runs, merge debt in rows and
merges, and the CPU seconds of the server's child processes: the trove's writer and compactor),
with ``debt_trend``: the largest debt (rows, merges), the debt at the end, each stretch of
samples with debt (``owed_spans``: from, to, seconds, most rows and merges owed), and the debt's
least-squares slope over the ingest's second half (until the rows stop growing), in rows per
second and as a fraction of the offered rate. A compactor that keeps up owes at most one merge
at a time (a 2^26-row final merge is ~67M rows) and pays it off before the next falls due; one
that falls behind owes more merges as the run goes on. The slope says little over a run of a few
merges (each adds a step of a whole merge's rows): read the spans.

``--memtable 1048576,1`` adds, per rate, a third run: the trove with that memtable (earlier
versions' 1-second runs) in the same session, so the default's and the old flushes' ratios to
``full`` without a trove come from one session.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import engine.scenarios
from engine.options import parse_count
from engine.trove import compaction
from engine.trove.config import TroveConfig
from engine.trove.manifest import load_manifest
from engine.trove.store import manifest_stats

_TROVE_LINE = 'mode = "trove"'


def buffer_scenario(directory: Path) -> Path:
    """The default scenario with ``surveillance_log`` in buffer mode (everything else unchanged)."""
    text = (Path(engine.scenarios.__file__).parent / "default.toml").read_text()
    if text.count(_TROVE_LINE) != 1:
        raise RuntimeError(f"the default scenario no longer has exactly one {_TROVE_LINE!r} line: update this script")
    path = directory / "full-no-trove.toml"
    path.write_text(text.replace(_TROVE_LINE, 'mode = "buffer"'))
    return path


def memtable_scenario(directory: Path, segment_rows: int, flush_interval_s: float) -> Path:
    """The default scenario with the trove's memtable (``segment_rows``, ``flush_interval_s``)
    changed, e.g. 1048576 and 1.0 for the 1-second runs of earlier versions (an A/B in one session)."""
    text = (Path(engine.scenarios.__file__).parent / "default.toml").read_text()
    lines = text.splitlines(keepends=True)
    keys = {"segment_rows": str(segment_rows), "flush_interval_s": repr(float(flush_interval_s))}
    found = 0
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if key in keys:
            lines[i] = f"{key} = {keys[key]}\n"
            found += 1
    if found != len(keys):
        raise RuntimeError("the default scenario no longer sets segment_rows and flush_interval_s: update this script")
    path = directory / f"full-memtable-{segment_rows}.toml"
    path.write_text("".join(lines))
    return path


def compaction_backlog(trove: Path) -> dict[str, Any]:
    """What the trove's compactor still had to do when the server stopped (from its manifest)."""
    manifest = load_manifest(trove)
    if manifest is None:
        return {}
    stats = manifest_stats(manifest, manifest.segments)
    due = compaction.plan(manifest, TroveConfig())
    debt_rows, debt_merges = compaction.merge_debt(manifest, TroveConfig())
    return {
        "merge_debt_rows": debt_rows,
        "merge_debt_merges": debt_merges,
        "rows": stats["rows"],
        "runs": stats["runs"],
        "ingest_segments": stats["ingest_segments"],
        "rows_not_in_runs": stats["rows"] - stats["compacted_rows"],
        "rows_in_next_due_merge": sum(s.rows for s in due),
        "bytes_on_disk": stats["bytes_on_disk"],
    }


def _children_cpu_s(run: psutil.Process) -> float | None:
    """CPU seconds of the server's child processes (the trove's), the server being the ``serve``
    process under ``run``; None before it exists."""
    try:
        for proc in run.children(recursive=True):
            if "serve" in proc.cmdline():
                total = 0.0
                for child in proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        t = child.cpu_times()
                        total += t.user + t.system
                return total
    except psutil.Error:
        pass
    return None


def debt_sample(trove: Path, started: float, run: psutil.Process) -> dict[str, Any] | None:
    """The trove's merge debt now, read from its manifest on disk (None: no manifest yet)."""
    try:
        manifest = load_manifest(trove)
    except (OSError, ValueError):
        return None
    if manifest is None:
        return None
    rows, merges = compaction.merge_debt(manifest, TroveConfig())
    return {
        "t_s": round(time.monotonic() - started, 2),
        "rows": sum(s.rows for s in manifest.segments),
        "runs": len(manifest.segments),
        "merge_debt_rows": rows,
        "merge_debt_merges": merges,
        "children_cpu_s": _children_cpu_s(run),
    }


def debt_trend(series: list[dict[str, Any]], rate: int, from_s: float) -> dict[str, Any]:
    """The largest debt, the last, and the slope (least squares) of the ingest's samples from
    ``from_s`` (``ingest_second_half_s``) to the last that saw rows arrive."""
    if not series:
        return {}
    last_rows = series[-1]["rows"]
    end = next(x["t_s"] for x in series if x["rows"] == last_rows)
    late = [x for x in series if from_s <= x["t_s"] <= end]
    slope = None
    if len(late) >= 3:
        t = [x["t_s"] for x in late]
        d = [x["merge_debt_rows"] for x in late]
        mt, md = sum(t) / len(t), sum(d) / len(d)
        var = sum((a - mt) ** 2 for a in t)
        slope = sum((a - mt) * (b - md) for a, b in zip(t, d, strict=True)) / var if var else None
    return {
        "debt_max_rows": max(x["merge_debt_rows"] for x in series),
        "debt_max_merges": max(x["merge_debt_merges"] for x in series),
        "debt_end_rows": series[-1]["merge_debt_rows"],
        "debt_end_merges": series[-1]["merge_debt_merges"],
        "owed_spans": owed_spans(series),
        "slope_rows_per_s": None if slope is None else round(slope),
        "slope_fraction_of_rate": None if slope is None else round(slope / rate, 4),
        "samples": len(series),
        "slope_samples": len(late),
    }


def ingest_second_half_s(series: list[dict[str, Any]]) -> float:
    """Where the second half of the ingest begins, in the samples' clock: the ingest runs from the
    first sample with rows to the first that holds the final row count (the drain, the final
    flush wait and the audit follow it, with no rows coming: their falling debt is left out)."""
    with_rows = [x for x in series if x["rows"] > 0]
    if not with_rows:
        return 0.0
    last = max(x["rows"] for x in with_rows)
    end = next(x["t_s"] for x in with_rows if x["rows"] == last)
    return (with_rows[0]["t_s"] + end) / 2


def owed_spans(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each stretch of samples with merge debt: when it began and ended (None: still owed at the
    last sample), its seconds, and its most rows and merges owed. A compactor that keeps up pays
    each merge off before the next falls due (one merge owed at a time, stretches apart); one
    that falls behind owes more merges as the run goes on."""
    spans: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for x in series:
        if x["merge_debt_rows"] > 0:
            if current is None:
                current = {"from_s": x["t_s"], "to_s": None, "max_rows": 0, "max_merges": 0}
                spans.append(current)
            current["max_rows"] = max(current["max_rows"], x["merge_debt_rows"])
            current["max_merges"] = max(current["max_merges"], x["merge_debt_merges"])
        elif current is not None:
            current["to_s"] = x["t_s"]
            current = None
    for span in spans:
        end = span["to_s"] if span["to_s"] is not None else series[-1]["t_s"]
        span["seconds"] = round(end - span["from_s"], 2)
    return spans


def one_run(
    args: argparse.Namespace, rate: int, scenario: Path | None, out: Path, *, trove: bool = True
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "loadgen", "run", "--profile", "full", "--rate", str(rate)]
    cmd += ["--seconds", str(args.seconds), "--accounts", str(int(args.accounts)), "--out", str(out / "results")]
    trove_dir = out / "trove"
    cmd += ["--scenario", str(scenario)] if scenario else []
    cmd += ["--trove", str(trove_dir)] if trove else []
    series: list[dict[str, Any]] = []
    started = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL) as proc:
        run = psutil.Process(proc.pid)
        while proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=args.sample_s)
            if trove and proc.poll() is None and (sample := debt_sample(trove_dir, started, run)) is not None:
                series.append(sample)
    files = sorted((out / "results").glob("*.json"))
    row: dict[str, Any] = {"command": " ".join(cmd), "exit_status": proc.returncode}
    if files:
        result = json.loads(files[-1].read_bytes())
        s = result["summary"]
        row.update({k: s[k] for k in ("achieved_tps", "achieved_ratio", "p50_ms", "p99_ms", "verdict")})
        row["server_cpu_s"] = result["server"].get("cpu_s")
        row["steal_s"] = (result.get("machine_cpu") or {}).get("steal_s")
        hook = result["server"].get("hooks", {}).get("surveillance_log", {})
        row["surveillance_log_ns_per_transfer"] = hook.get("ns_per_transfer")
        if trove:
            row["trove"] = result["server"].get("trove")
            # The sequencer's waits for the trove (ring and queue full: back-pressure) in the window.
            trove_end = (result["server"].get("stats_end") or {}).get("trove") or {}
            row["append_waits"] = trove_end.get("append_waits")
            row["append_wait_s"] = trove_end.get("append_wait_ns", 0) / 1e9
            row["compaction_backlog"] = compaction_backlog(trove_dir)
            row["debt_series"] = series
            row["debt_trend"] = debt_trend(series, rate, ingest_second_half_s(series))
    shutil.rmtree(out, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="500000,1000000", help="comma-separated offered rates (default 500000,1000000)")
    p.add_argument("--seconds", type=float, default=20.0, help="each run's measured window (default 20)")
    p.add_argument("--accounts", type=parse_count, default=1_000_000, help="ledger accounts (default 1e6)")
    p.add_argument(
        "--trove-only",
        action="store_true",
        help="only the runs with the trove (no ratio): a long run of the compaction's debt in half the time",
    )
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between merge-debt samples (default 5)")
    p.add_argument("--dir", default="", help="scratch directory on the disk to measure (default: temporary)")
    p.add_argument(
        "--memtable",
        default="",
        metavar="ROWS,SECONDS",
        help="also run the trove with this segment_rows and flush_interval_s (e.g. 1048576,1: earlier "
        "versions' 1-second runs), alternated with the default's, for an A/B in one session",
    )
    args = p.parse_args(argv)
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="cbdc-trove-ratio-"))
    scratch.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    try:
        no_trove = buffer_scenario(scratch)
        other = None
        if args.memtable:
            rows, seconds = args.memtable.split(",")
            other = memtable_scenario(scratch, int(parse_count(rows)), float(seconds))
        for rate in (parse_count(r) for r in args.rates.split(",")):
            with_trove = one_run(args, int(rate), None, scratch / f"trove-{rate}")
            if args.trove_only:
                report[str(rate)] = {"with_trove": with_trove}
                print(json.dumps({str(rate): report[str(rate)]}), file=sys.stderr, flush=True)
                continue
            without = one_run(args, int(rate), no_trove, scratch / f"buffer-{rate}", trove=False)
            ratio = (with_trove.get("achieved_tps") or 0) / (without.get("achieved_tps") or float("nan"))
            report[str(rate)] = {
                "with_trove": with_trove,
                "without_trove": without,
                "achieved_ratio_trove_to_none": ratio,
            }
            if other is not None:
                alt = one_run(args, int(rate), other, scratch / f"memtable-{rate}")
                report[str(rate)]["with_trove_memtable"] = alt
                report[str(rate)]["achieved_ratio_memtable_to_none"] = (alt.get("achieved_tps") or 0) / (
                    without.get("achieved_tps") or float("nan")
                )
            print(json.dumps({str(rate): report[str(rate)]}), file=sys.stderr, flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
