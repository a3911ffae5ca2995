"""Inference speed of the risk model: model size, batched vs per payment, other runtimes, two threads.

What the ``risk_model`` hook's throughput depends on is the predictor, so this measures it
alone, on feature rows of the workload (``loadgen.model.train.collect``), in one process:

* LightGBM's ``Booster.predict`` on batches of ``BATCH_ROWS`` rows, single-threaded, for 50, 100
  and 300 trees of 31 leaves (the hook's default is 100), and called once per payment (the
  ``per_payment`` inference mode: the naive per-payment model call);
* scikit-learn's ``HistGradientBoostingClassifier`` (same data, same size, one thread);
* ONNX Runtime on the LightGBM model converted by onnxmltools (one intra-op thread), a compiled
  form that was installable here; lleaves and treelite/tl2cgen were not in this machine's
  package index (they are listed under ``unavailable``);
* two threads each predicting a batch at once against one after the other: LightGBM releases
  the GIL, so on two idle cores the ratio approaches 2 (the hook's background thread relies on it).

Every figure is the median of ``REPEATS`` timed repeats after one warm-up call, in CPU time of
the calling thread (each predictor runs single-threaded on it), so another job descheduling us
does not count; caches shared with other jobs still do: compare the ratios within one run. The
two-thread ratio is wall time (it is about parallelism).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from engine.risk.model import TrainingSettings
from loadgen.model.train import DEFAULT_SETTINGS, collect, fit

BATCH_ROWS = 8_192
PER_PAYMENT_ROWS = 1_000
REPEATS = 5
TREE_COUNTS = (50, 100, 300)


class SizeFigures(msgspec.Struct, frozen=True):
    trees: int
    batched_ns_per_payment: float
    per_payment_ns_per_payment: float


class BenchResult(msgspec.Struct, frozen=True):
    rows_per_batch: int
    lightgbm: list[SizeFigures]
    #: Same size as the hook's default model (``trees`` of 31 leaves).
    trees: int
    sklearn_hgb_ns_per_payment: float | None
    onnxruntime_ns_per_payment: float | None
    #: Wall time of two batches predicted one after the other / in two threads at once.
    two_threads_speedup: float
    unavailable: dict[str, str]


def _median_ns(fn: Callable[[], Any], per: int) -> float:
    """Median CPU time of this thread per item (every predictor here runs on the calling thread)."""
    fn()
    times = []
    for _ in range(REPEATS):
        t0 = time.thread_time_ns()
        fn()
        times.append(time.thread_time_ns() - t0)
    return statistics.median(times) / per


def _two_threads_speedup(predict: Callable[[np.ndarray], Any], x: np.ndarray) -> float:
    predict(x)
    t0 = time.perf_counter_ns()
    predict(x)
    predict(x)
    serial = time.perf_counter_ns() - t0
    threads = [threading.Thread(target=predict, args=(x,)) for _ in range(2)]
    t0 = time.perf_counter_ns()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return serial / max(time.perf_counter_ns() - t0, 1)


def run_bench(
    *,
    trees: int = 100,
    payments: int = 200_000,
    accounts: int = DEFAULT_SETTINGS.accounts,
    tree_counts: tuple[int, ...] = TREE_COUNTS,
) -> BenchResult:
    """Train the models and time them (see the module docstring)."""
    import lightgbm

    settings: TrainingSettings = msgspec.structs.replace(DEFAULT_SETTINGS, accounts=accounts, payments=payments)
    rows, label = collect(settings, settings.train_seed, payments)
    y = label != 0
    x64 = rows.astype(np.float64)
    batch = np.resize(x64, (BATCH_ROWS, x64.shape[1]))
    one_rows = [batch[i : i + 1] for i in range(PER_PAYMENT_ROWS)]
    boosters = {
        n: lightgbm.Booster(model_str=fit(msgspec.structs.replace(settings, trees=n), rows, y))
        for n in sorted({*tree_counts, trees})
    }
    figures = [_size_figures(n, booster, batch, one_rows) for n, booster in boosters.items()]
    main = boosters[trees]
    speedup = _two_threads_speedup(lambda x: main.predict(x, num_threads=1), np.resize(batch, (4 * BATCH_ROWS, 20)))
    unavailable = {
        "lleaves": "not in this machine's package index",
        "treelite/tl2cgen": "not in this machine's package index",
    }
    return BenchResult(
        rows_per_batch=BATCH_ROWS,
        lightgbm=figures,
        trees=trees,
        sklearn_hgb_ns_per_payment=_sklearn(x64, y, batch, trees, unavailable),
        onnxruntime_ns_per_payment=_onnx(main, batch, unavailable),
        two_threads_speedup=round(speedup, 2),
        unavailable=unavailable,
    )


def _size_figures(trees: int, booster: Any, batch: np.ndarray, one_rows: list[np.ndarray]) -> SizeFigures:
    def batched() -> None:
        booster.predict(batch, num_threads=1)

    def per_payment() -> None:
        for row in one_rows:
            booster.predict(row, num_threads=1)

    return SizeFigures(trees, _median_ns(batched, len(batch)), _median_ns(per_payment, len(one_rows)))


def _sklearn(x: np.ndarray, y: np.ndarray, batch: np.ndarray, trees: int, unavailable: dict[str, str]) -> float | None:
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        unavailable["scikit-learn"] = f"not installed ({exc}): pip install 'cbdc-bench[model-bench]'"
        return None
    with threadpool_limits(1):
        model = HistGradientBoostingClassifier(max_iter=trees, max_leaf_nodes=31, early_stopping=False, random_state=0)
        model.fit(x, y)
        return _median_ns(lambda: model.predict_proba(batch), len(batch))


def _onnx(booster: Any, batch: np.ndarray, unavailable: dict[str, str]) -> float | None:
    try:
        import onnxruntime
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError as exc:
        unavailable["onnxruntime"] = f"not installed ({exc}): pip install 'cbdc-bench[model-bench]'"
        return None
    onnx_model = convert_lightgbm(
        booster, initial_types=[("rows", FloatTensorType([None, batch.shape[1]]))], zipmap=False
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the converted model declares a label shape of 1: a harmless warning per call
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x32 = batch.astype(np.float32)
    return _median_ns(lambda: session.run(None, {"rows": x32}), len(batch))


def format_bench(r: BenchResult) -> str:
    """The figures as text, one line per runtime and size."""
    lines = [f"risk model inference, batches of {r.rows_per_batch:,} rows, one thread, CPU time (median of {REPEATS}):"]
    lines.extend(
        f"  LightGBM {f.trees:>3} trees x 31 leaves: batched {f.batched_ns_per_payment / 1000:6.2f} us/payment "
        f"({1e9 / f.batched_ns_per_payment:>10,.0f}/s); per-payment call {f.per_payment_ns_per_payment / 1000:7.1f} us"
        for f in r.lightgbm
    )
    if r.sklearn_hgb_ns_per_payment is not None:
        ns = r.sklearn_hgb_ns_per_payment
        lines.append(
            f"  scikit-learn HistGradientBoosting, {r.trees} trees: {ns / 1000:6.2f} us/payment ({1e9 / ns:,.0f}/s)"
        )
    if r.onnxruntime_ns_per_payment is not None:
        ns = r.onnxruntime_ns_per_payment
        lines.append(f"  ONNX Runtime (LightGBM {r.trees} trees): {ns / 1000:6.2f} us/payment ({1e9 / ns:,.0f}/s)")
    lines.append(f"  two threads at once vs one after the other: {r.two_threads_speedup:.2f}x (GIL released)")
    lines.extend(f"  not measured: {name}: {why}" for name, why in r.unavailable.items())
    return "\n".join(lines)
