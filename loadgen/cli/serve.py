"""``cbdc-bench serve``: run the payment server until SIGINT or SIGTERM.

Prints ``listening on HOST:PORT`` on stdout once it accepts connections (with ``--port 0`` the port
is the one the system picked), so a parent process can wait for that line and parse it. Then
stderr says whether a journal is kept (and what recovery replayed) and whether
authentication is on.
"""

from __future__ import annotations

import argparse

from engine.profiles import profile_names
from engine.server import DEFAULT_PORT, ServerConfig, serve
from engine.wire import DEFAULT_MAX_FRAME_BYTES
from loadgen.generator.workload import DEFAULT_SEED


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = ServerConfig()
    p = sub.add_parser("serve", help="run the payment server (uvloop TCP, micro-batched ledger)", description=__doc__)
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}: loopback only)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port; 0 picks a free one (default {DEFAULT_PORT})"
    )
    p.add_argument(
        "--profile", default=d.profile, help=f"hook profile (default {d.profile}; {', '.join(profile_names())})"
    )
    p.add_argument("--scenario", default=None, help="TOML scenario file with profile definitions")
    p.add_argument("--accounts", type=int, default=d.accounts, help=f"number of accounts (default {d.accounts:,})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="workload seed of the initial balances")
    p.add_argument(
        "--operators", type=int, default=d.operators, help=f"operator numbers accepted (default {d.operators})"
    )
    p.add_argument(
        "--max-batch", type=int, default=d.max_batch, help=f"transfers per engine batch (default {d.max_batch:,})"
    )
    p.add_argument(
        "--max-wait-us",
        type=int,
        default=d.max_wait_us,
        help="longest a transfer waits for its batch to fill, in µs, rounded up to whole ms "
        "(default 0: cut each batch at the end of the I/O round that filled it)",
    )
    p.add_argument(
        "--queue-limit",
        type=int,
        default=d.queue_limit,
        help=f"transfers queued before answering OVERLOADED (default {d.queue_limit:,})",
    )
    p.add_argument(
        "--max-frame-bytes",
        type=int,
        default=DEFAULT_MAX_FRAME_BYTES,
        help=f"largest accepted frame (default {DEFAULT_MAX_FRAME_BYTES:,})",
    )
    p.add_argument(
        "--write-buffer-bytes",
        type=int,
        default=d.write_buffer_bytes,
        help=f"per-connection write buffer high-water mark (default {d.write_buffer_bytes:,})",
    )
    p.add_argument(
        "--slow-consumer-ms",
        type=int,
        default=d.slow_consumer_ms,
        help=f"cut off a client whose write buffer stays above the mark this long (default {d.slow_consumer_ms:,})",
    )
    p.add_argument("--max-connections", type=int, default=d.max_connections, help=f"default {d.max_connections}")
    p.add_argument("--echo", action="store_true", help="calibration mode: acknowledge every transfer OK, no ledger")
    p.add_argument(
        "--journal",
        default="",
        metavar="PATH",
        help="append every engine batch and admin change to this journal before acknowledging it; "
        "on start, replay it (default: no journal, nothing survives a restart)",
    )
    p.add_argument(
        "--fsync",
        default=d.fsync,
        metavar="POLICY",
        help="journal fsync policy: batch (before every acknowledgement), interval:MS, or off (default batch)",
    )
    p.add_argument(
        "--secrets",
        default="",
        metavar="FILE",
        help="operator and admin secrets (TOML, see engine.auth) or 'env' for CBDC_ADMIN_SECRET and "
        "CBDC_OPERATOR_SECRET_<n>: turns on authentication and account ownership (default off)",
    )
    p.add_argument(
        "--handshake-timeout-ms",
        type=int,
        default=d.handshake_timeout_ms,
        help="close connections that do not complete Hello/authentication in time "
        f"(default {d.handshake_timeout_ms:,})",
    )
    p.add_argument(
        "--frame-timeout-ms",
        type=int,
        default=d.frame_timeout_ms,
        help=f"close connections that leave a frame incomplete this long (default {d.frame_timeout_ms:,})",
    )
    p.set_defaults(func=_main)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        profile=args.profile,
        scenario=args.scenario,
        accounts=args.accounts,
        seed=args.seed,
        operators=args.operators,
        max_batch=args.max_batch,
        max_wait_us=args.max_wait_us,
        queue_limit=args.queue_limit,
        max_frame_bytes=args.max_frame_bytes,
        write_buffer_bytes=args.write_buffer_bytes,
        slow_consumer_ms=args.slow_consumer_ms,
        max_connections=args.max_connections,
        echo=args.echo,
        journal=args.journal,
        fsync=args.fsync,
        secrets=args.secrets,
        handshake_timeout_ms=args.handshake_timeout_ms,
        frame_timeout_ms=args.frame_timeout_ms,
    )


def _main(args: argparse.Namespace) -> int:
    return serve(config_from_args(args))
