"""``cbdc-bench verify-chain FILE``: check an audit chain file written by the audit_chain hook.

Recomputes every batch's Merkle root from the stored records and codes, checks each batch links
to the previous root, and names the first batch that was modified. Exit status 0 if the chain is
intact, 1 if not.
"""

from __future__ import annotations

import argparse

from engine.hooks.audit_chain import verify_chain


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify-chain", help="verify an audit chain file", description=__doc__)
    p.add_argument("file", help="chain file written by the audit_chain hook (its path parameter)")
    p.add_argument(
        "--expect-head",
        default=None,
        help="the head root (hex) the engine reported; detects a rewritten chain (default: not checked)",
    )
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    report = verify_chain(args.file, args.expect_head)
    print(report)
    return 0 if report.ok else 1
