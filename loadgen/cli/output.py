"""How ``run`` and ``load`` show a run: the summary text (or one JSON line), the result file's path.

Both end with the run's verdict (``loadgen.results.verdict``) and exit with its status: 0 only
when sustained.
"""

from __future__ import annotations

import json

import msgspec

from loadgen.results.drift import DRIFT_FROM_S
from loadgen.results.export import drift_line
from loadgen.results.run import RunResult, figures_of, save


def save_and_print(result: RunResult, *, as_json: bool, out: str | None) -> int:
    """Save (if ``out``), print, and give the verdict's exit status: 0 only when sustained.

    The verdict is the one the result file stores (judged when the result was built, against the
    scenario's targets).
    """
    path = save(result, out) if out is not None else None
    line, status = result.summary.verdict, result.summary.exit_status
    if as_json:
        summary = msgspec.to_builtins(result.summary)
        if path is not None:
            summary["result_file"] = str(path)
        print(json.dumps(summary))
    else:
        print(format_summary(result))
        if path is not None:
            print(f"result file: {path}")
        print(line)
    return status


def format_summary(r: RunResult) -> str:
    s, c, g = r.summary, r.counts, r.generator
    f = figures_of(r)
    lat = r.latency
    latency = (
        f"latency from schedule (ms): p50 {lat.p50_ms:.2f}  p90 {lat.p90_ms:.2f}  p99 {lat.p99_ms:.2f}  "
        f"p99.9 {lat.p999_ms:.2f}  p99.99 {lat.p9999_ms:.2f}  max {lat.max_ms:.2f}  ({lat.count:,} transfers"
        + (f", of which {f.unanswered + f.unsent:,} unanswered: a lower bound)" if f.unanswered + f.unsent else ")")
        if f.answered
        else f"latency: none of the {f.scheduled:,} measured transfers was answered"
    )
    lines = [
        f"profile {s.profile}{' (echo: no ledger)' if s.echo else ''}: offered {s.offered_tps:,.0f}/s, "
        f"achieved {s.achieved_tps:,.0f}/s ({f.achieved_ratio:.1%} of {f.scheduled:,} scheduled settled; "
        f"shed {f.shed:,}, unanswered {f.unanswered:,}), goodput {s.goodput_tps:,.0f}/s "
        f"over {s.seconds:g} s measured, {s.accounts:,} accounts",
        latency,
        f"generator: {g.processes} process(es), {g.operators} operator gateways, tick {g.tick_us / 1000:g} ms; "
        f"send lag p99 {g.send_lag.p99_ms:.2f} ms, max {g.send_lag.max_ms:.2f} ms; late {c.late:,}, "
        f"unsent {c.unsent:,}; {'kept its schedule' if g.kept_schedule else 'DID NOT keep its schedule'}",
        f"sent {c.sent:,} in {c.frames_sent:,} frames, results {c.results:,}, unanswered {c.unanswered:,}, "
        f"frame errors {c.error_transfers:,}",
        "results: " + ", ".join(f"{k} {v:,}" for k, v in sorted(r.codes.items(), key=lambda kv: -kv[1])),
    ]
    cpu = f"generator CPU {g.cpu_s:.2f} s"
    if r.server.cpu_s is not None:
        cpu += f", server CPU {r.server.cpu_s:.2f} s"
        if r.server.external and r.server.pid is None:
            cpu += " (from its stats)"
    elif r.server.external:
        cpu += ", server CPU not measured (external server without a pid or a CPU figure in its stats)"
    lines.append(f"{cpu} over the {s.seconds:g} s measured window")
    if r.load.seconds >= DRIFT_FROM_S:
        drift = drift_line(r)
        if drift is not None:
            lines.append(drift)
    if r.load.ramp:
        lines.append(f"ramp: {r.load.ramp} from the start (the offered rate above is its peak; per second: the series)")
    if r.server.external:
        lines.append(
            f"server: external ({r.load.host}:{r.load.port}), started elsewhere: its configuration, journal and "
            "audit were not under this run's control"
        )
    hooks = {k: v.get("ns_per_transfer") for k, v in r.server.hooks.items() if isinstance(v, dict)}
    if any(v is not None for v in hooks.values()):
        lines.append(
            "hook cost (ns/transfer): " + ", ".join(f"{k} {v:,.0f}" for k, v in hooks.items() if v is not None)
        )
    if r.cpu_ns_per_payment:
        split = ", ".join(f"{k} {v:,.0f}" for k, v in r.cpu_ns_per_payment.items())
        lines.append(f"CPU per payment (ns, by tier): {split}; total {sum(r.cpu_ns_per_payment.values()):,.0f}")
    d = r.server.durability
    if not s.echo:
        lines.append(
            "durability: no journal (acknowledged in memory only)"
            if d.fsync == "none"
            else f"durability: journal, fsync {d.fsync}: {d.fsyncs_per_s:,.0f} fsyncs/s taking "
            f"{d.fsync_ms_per_s:,.1f} ms/s, {d.journal_mb_per_s:,.1f} MB/s written"
        )
    if r.traffic is not None:
        t = r.traffic
        journal = "" if t.journal_per_payment is None else f"; journal {t.journal_per_payment:,.1f} bytes/payment"
        lines.append(
            f"bytes per payment: wire {t.wire_sent_per_payment:,.1f} sent, {t.wire_received_per_payment:,.1f} "
            f"received{journal}"
        )
    cal = r.environment.calibration
    if cal is not None:
        lines.append(
            f"CPU calibration: engine {cal.engine_tps:,.0f} transfers/s on one core ({r.environment.cpu_model}); "
            f"this run achieved {s.achieved_tps / cal.engine_tps:.3f} of it"
        )
    if s.audit_ok is not None and r.audit is not None:
        lines.append(
            f"audit: {'ok' if s.audit_ok else 'FAILED'} (total {r.audit.total_fen:,} fen, expected "
            f"{r.audit.expected_fen:,}, negative accounts {r.audit.negative_accounts})"
        )
    lines += [f"problem: {f}" for f in r.failures]
    return "\n".join(lines)
