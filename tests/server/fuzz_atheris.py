"""Coverage-guided fuzzing of the server's request handling with atheris (optional).

    pip install atheris      # builds against libFuzzer; if it does not build, rely on tests/server/test_fuzz.py
    python -m tests.server.fuzz_atheris -atheris_runs=200000 tests/server/fuzz_corpus_work/

Each input is a raw byte stream one client sends (its first byte says whether it says Hello
first); ``tests.support.fuzz.check`` asserts the shared invariants, so any exception or broken
invariant is a crash that libFuzzer saves as ``crash-*``. Copy such a file into tests/server/fuzz_corpus/
(with a name that says what it was) and fix the server: ``test_corpus_replays_cleanly`` then keeps
it fixed.
"""

from __future__ import annotations

import sys


def main() -> None:
    import atheris

    with atheris.instrument_imports():
        import engine.server
        import engine.wire  # noqa: F401
        from tests.support.fuzz import check, fuzz_server

    server = fuzz_server()
    runs = 0

    def one(data: bytes) -> None:
        nonlocal runs
        runs += 1
        if len(data) < 1:
            return
        check(server, data[1:], hello=bool(data[0] & 1))
        if server.ledger is not None and server.ledger.stats.transfers > 5_000_000:  # keep memory flat
            raise SystemExit(0)

    atheris.Setup(sys.argv, one)
    try:
        atheris.Fuzz()
    finally:
        print(f"atheris: {runs} inputs checked", file=sys.stderr)


if __name__ == "__main__":
    main()
