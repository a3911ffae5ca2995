"""Where does `realistic`'s p99 tail come from? End-to-end runs, variants interleaved, per-thread CPU.

`cbdc-bench run --profile realistic` at ``--rate`` for ``--seconds``, once per variant per round,
the variants interleaved (so a noisy minute hits all of them alike). A variant is the shipped
scenario with settings changed (``VARIANTS``: the risk model's feature deferral and model-thread
niceness, the trove child's niceness). While a run goes, every thread of the processes it started
(server, trove child, generator) is sampled from /proc every 0.2 s: CPU time and the time it was
runnable but waiting for a CPU (``schedstat``). That says who competed for the two cores: the
sequencer's (the server's main thread's) wait for a CPU is the tail's direct cause when it grows.

One JSON line per run, then a table of medians per variant. On a quiet 2-core machine, three
rounds of the default variants at 150,000/s take about 5 minutes:

    python benchmarks/risk_realistic_tail.py --rate 150000 --seconds 20 --rounds 3

``--journal`` runs them durable (``--journal DIR --fsync batch``); ``--variants a,b`` picks some.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from engine.profiles import default_scenario_text

#: Variant name -> {(scenario section, key): TOML value}; "shipped" is the scenario as it is.
#: ``TMPFS_TROVE`` variants also write the trove to a fresh directory in /dev/shm (removed after).
VARIANTS: dict[str, dict[tuple[str, str], str]] = {
    "shipped": {},
    "features-inline": {("hooks.risk_model", "deferred"): "false"},
    "model-nice-10": {("hooks.risk_model", "model_thread_nice"): "10"},
    "trove-nice-19": {("hooks.surveillance_log.trove", "process_nice"): "19"},
    "trove-nice-0": {("hooks.surveillance_log.trove", "process_nice"): "0"},
    # The trove on tmpfs: with --journal, does the trove's disk writing slow the journal's fsync
    # (one ext4 file system: an fsync commits the trove's dirty data too)?
    "trove-tmpfs": {},
    "lag-32": {("hooks.risk_model", "lag_batches"): "32"},
    "nice-10-lag-32": {("hooks.risk_model", "model_thread_nice"): "10", ("hooks.risk_model", "lag_batches"): "32"},
}


TMPFS_TROVE = ("trove-tmpfs",)


def set_key(text: str, section: str, key: str, value: str) -> str:
    """``text`` (TOML) with ``key`` of ``[section]`` set to ``value`` (the key must be there)."""
    lines = text.splitlines()
    start = lines.index(f"[{section}]")
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("["):
            break
        if lines[i].split("=")[0].strip() == key:
            lines[i] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    raise KeyError(f"[{section}] has no {key} in the shipped scenario")


def scenario(folder: Path, name: str) -> Path:
    text = default_scenario_text().decode()
    for (section, key), value in VARIANTS[name].items():
        text = set_key(text, section, key, value)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "child_entry" in cmd:
        return "trove"
    if " serve" in cmd:
        return "server"
    return "generator"


class ThreadSampler:
    """Per-thread CPU and run-queue wait (ns) of every process under ``root``, the last value seen."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.last: dict[tuple[int, int], tuple[str, str, int, int]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        roles: dict[int, str] = {}
        while not self.stop.wait(0.2):
            for pid in [self.root, *_descendants(self.root)]:
                role = roles.setdefault(pid, "run" if pid == self.root else _role(pid))
                for task in Path(f"/proc/{pid}/task").glob("*"):
                    try:
                        comm = (task / "comm").read_text().strip()
                        cpu_ns, wait_ns, _ = (int(v) for v in (task / "schedstat").read_text().split())
                    except (OSError, ValueError):
                        continue
                    main = "main" if int(task.name) == pid else comm
                    self.last[pid, int(task.name)] = (role, main, cpu_ns, wait_ns)

    def totals(self) -> dict[str, dict[str, float]]:
        """{role/thread: {cpu_s, wait_s}} summed over threads of the same name."""
        out: dict[str, dict[str, float]] = {}
        for role, name, cpu, wait in self.last.values():
            slot = out.setdefault(f"{role}/{name}", {"cpu_s": 0.0, "wait_s": 0.0})
            slot["cpu_s"] += cpu / 1e9
            slot["wait_s"] += wait / 1e9
        return out


def run(path: Path, rate: int, seconds: float, journal: Path | None, out: Path, tmpfs: bool) -> dict[str, object]:
    command = [sys.executable, "-m", "loadgen", "run", "--profile", "realistic", "--rate", str(rate)]
    command += ["--seconds", f"{seconds}s", "--scenario", str(path), "--out", str(out)]
    if journal is not None:
        command += ["--journal", str(journal), "--fsync", "batch"]
    with tempfile.TemporaryDirectory(prefix="risk-tail-trove-", dir="/dev/shm" if tmpfs else out.parent) as trove:
        if tmpfs:
            command += ["--trove", str(Path(trove) / "trove")]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sampler = ThreadSampler(proc.pid)
        sampler.thread.start()
        proc.wait()
    sampler.stop.set()
    sampler.thread.join()
    result = json.loads(max(out.glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())
    stats = result["server"]["stats_end"]
    threads = sampler.totals()
    return {
        "verdict": result["summary"]["verdict"].removeprefix("verdict: ").split(" (")[0],
        "p99_ms": result["latency"]["p99_ms"],
        "p999_ms": result["latency"]["p999_ms"],
        "max_ms": result["latency"]["max_ms"],
        "settled": result["summary"].get("achieved_ratio"),
        "send_lag_p99_ms": result["generator"]["send_lag"]["p99_ms"],
        "model_wait_ms": stats["risk_model"]["wait_ns"] / 1e6,
        "scored_on_sequencer": stats["risk_model"].get("scored_on_sequencer", 0)
        / max(stats["risk_model"]["scored"], 1),
        "trove_append_wait_ms": stats["trove"]["append_wait_ns"] / 1e6,
        "fsync_ms_per_s": result["server"]["durability"]["fsync_ms_per_s"],
        "fsync_ms_each": result["server"]["durability"]["fsync_ms_per_s"]
        / max(result["server"]["durability"]["fsyncs_per_s"], 1e-9),
        "sequencer_wait_s": threads.get("server/main", {}).get("wait_s", 0.0),
        "threads": {k: {m: round(v, 3) for m, v in t.items()} for k, t in sorted(threads.items()) if t["cpu_s"] > 0.05},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=150_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--journal", action="store_true", help="durable: --journal DIR --fsync batch")
    parser.add_argument("--variants", default="shipped,features-inline,model-nice-10,trove-nice-19")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    figures: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="risk-tail-") as tmp:
        folder = Path(tmp)
        paths = {n: scenario(folder, n) for n in names}
        for round_ in range(args.rounds):
            for name in names:
                out = folder / f"out-{name}-{round_}"
                journal = folder / f"journal-{name}-{round_}" if args.journal else None
                t0 = time.monotonic()
                line = run(paths[name], args.rate, args.seconds, journal, out, name in TMPFS_TROVE)
                figures[name].append(line)
                print(json.dumps({"round": round_, "variant": name, "wall_s": round(time.monotonic() - t0, 1), **line}))
                sys.stdout.flush()
    print(f"{'variant':<16}{'p99 ms':>10}{'p99.9 ms':>10}{'sustained':>11}{'seq. CPU wait s':>17}")
    for name in names:
        runs = figures[name]
        p99 = statistics.median(float(r["p99_ms"]) for r in runs)  # type: ignore[arg-type]
        p999 = statistics.median(float(r["p999_ms"]) for r in runs)  # type: ignore[arg-type]
        wait = statistics.median(float(r["sequencer_wait_s"]) for r in runs)  # type: ignore[arg-type]
        ok = sum(r["verdict"] == "sustained" for r in runs)
        print(f"{name:<16}{p99:>10.2f}{p999:>10.2f}{f'{ok}/{len(runs)}':>11}{wait:>17.2f}")


if __name__ == "__main__":
    main()
