"""The per-operator id window: exact within and across batches, bounded memory."""

from __future__ import annotations

import numpy as np

from engine.codes import ResultCode
from engine.idempotency import IdWindow

R = ResultCode


def run(window: IdWindow, ids: list[int], operator: int | list[int] = 0) -> list[int]:
    op = np.broadcast_to(np.asarray(operator, dtype=np.uint16), (len(ids),)).copy()
    codes, plan = window.check(op, np.asarray(ids, dtype=np.int64), np.ones(len(ids), dtype=bool))
    window.commit(plan)
    return codes.tolist()


def reference(window: int, batches: list[list[int]]) -> list[list[int]]:
    high, seen, out = -1, set(), []
    for ids in batches:
        codes = []
        for i in ids:
            if i <= high - window:
                codes.append(R.STALE_ID)
            elif i in seen:
                codes.append(R.DUPLICATE)
            else:
                seen.add(i)
                high = max(high, i)
                codes.append(R.OK)
        out.append(codes)
    return out


def test_random_id_streams_match_the_set_model(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for w in (1, 2, 7, 64):
        window = IdWindow(1, w)
        batches = []
        base = 0
        for _ in range(30):
            n = int(rng.integers(1, 50))
            ids = (base + rng.integers(-3 * w, 3 * w, n)).clip(0).tolist()
            base += int(rng.integers(0, 2 * w))
            batches.append(ids)
        assert [run(window, ids) for ids in batches] == reference(w, batches), f"window {w}"


def test_jump_beyond_the_window_clears_it() -> None:
    window = IdWindow(1, 4)
    assert run(window, [0, 1, 2, 3]) == [R.OK] * 4
    assert run(window, [100]) == [R.OK]
    assert run(window, [97, 96, 100]) == [R.OK, R.STALE_ID, R.DUPLICATE]


def test_operators_are_independent() -> None:
    window = IdWindow(3, 8)
    assert run(window, [5, 5, 5], [0, 1, 2]) == [R.OK, R.OK, R.OK]
    assert run(window, [5, 6], [1, 1]) == [R.DUPLICATE, R.OK]


def test_memory_is_bounded_by_window_per_active_operator() -> None:
    window = IdWindow(64, 1 << 10)
    for k in range(200):
        run(window, list(range(k * 5_000, k * 5_000 + 5_000)), k % 3)
    assert window.nbytes == 3 * (1 << 10) + 64 * 8


def test_total_window_memory_is_bounded_across_operators() -> None:
    """1 MiB per operator up to 65,536 operators was 64 GiB (issue 13): the rings of all operators
    together stay within the total, by shrinking each operator's window."""
    total = 1 << 16
    operators = 64
    w = IdWindow(operators, window=1 << 20, total_window_bytes=total)
    assert w.window == total // operators
    for op in range(operators):
        assert run(w, [op * 10, op * 10 + 1], operator=op) == [R.OK, R.OK]
    assert w.nbytes - w.high.nbytes <= total
    assert run(w, [w.window + 5, 0], operator=0) == [R.OK, R.STALE_ID]  # judged by the smaller window
    assert IdWindow(4, window=1 << 20).window == 1 << 20  # few operators keep the full window
    assert IdWindow(65_536).window * 65_536 <= 256 << 20  # the default total: 4,096 ids each
