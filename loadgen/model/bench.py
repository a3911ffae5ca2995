"""Inference cost of the risk model per runtime, model size, batch size and thread count.

What the ``risk_model`` hook's throughput depends on is the predictor, so this measures it
alone, on feature rows of the workload (``loadgen.model.train.collect``), in one process:

* every runtime of ``engine.risk.runtimes`` (LightGBM's own ``Booster.predict``, the trees
  compiled by lleaves and by tl2cgen) and ONNX Runtime on the model converted by onnxmltools,
  for 50, 100 and 300 trees of 31 leaves (the hook's default is 100: the size floor), on batches
  of 1,024, 4,096 and 16,384 rows (the server's batches), with one thread and with two (each
  runtime's own way of splitting a batch: OpenMP, Python threads, intra-op threads);
* the compiled scores against LightGBM's on held-out payments of another seed: the largest
  absolute difference and how many flag decisions at the threshold change (the threshold chosen
  as training chooses it, ``loadgen.model.train.evaluate``, plus the hook's ``SCORE_TIE_MARGIN``;
  without the margin a payment scoring exactly the threshold flips: 1 of 94,061 for lleaves);
* the naive per-payment call (one row per call) at the default size;
* two Python threads each predicting a batch at once against one after the other: a runtime
  that releases the GIL approaches 2x on two idle cores (the hook's model thread relies on it);
* scikit-learn's ``HistGradientBoostingClassifier`` at the default size, for reference.

Every figure is the median of ``REPEATS`` timed repeats after one warm-up call: CPU time of the
process (all its threads) and wall time, per payment. On a shared machine only the ratios
within one run mean something; CPU time is less disturbed by other jobs than wall time, and the
two-thread figures are wall time (they are about parallelism).
"""

from __future__ import annotations

import functools
import hashlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import numpy as np

from engine.risk.model import SCORE_TIE_MARGIN, TrainingSettings
from engine.risk.runtimes import CompilerUnavailable, PredictorName, Runtime, load_runtime
from loadgen.model.train import DEFAULT_SETTINGS, collect, evaluate, fit

BATCH_SIZES = (1_024, 4_096, 16_384)
TREE_COUNTS = (50, 100, 300)
THREADS = (1, 2)
PREDICTORS = ("lightgbm", "lleaves", "tl2cgen", "onnxruntime")
PER_PAYMENT_ROWS = 1_000
REPEATS = 5


class InferenceFigures(msgspec.Struct, frozen=True):
    """One runtime at one model size, batch size and thread count."""

    predictor: str
    trees: int
    batch_rows: int
    threads: int
    #: CPU time of the process (every thread it ran) per payment.
    cpu_ns_per_payment: float
    wall_ns_per_payment: float


class ScoreCheck(msgspec.Struct, frozen=True):
    """A runtime's scores against LightGBM's on the same held-out rows."""

    predictor: str
    trees: int
    rows: int
    max_abs_diff: float
    #: Payments flagged by one and not the other at ``threshold``.
    flag_changes: int
    threshold: float


class BenchResult(msgspec.Struct, frozen=True):
    #: The hook's default size (trees of 31 leaves): the per-payment and two-caller figures use it.
    trees: int
    batch_sizes: list[int]
    tree_counts: list[int]
    figures: list[InferenceFigures]
    checks: list[ScoreCheck]
    #: Seconds to compile (or convert) each runtime's form of each model, "predictor/trees".
    compile_s: dict[str, float]
    #: One call per payment (one row per call), one thread, ``trees``: CPU ns per payment.
    per_payment_call_ns: dict[str, float]
    #: Wall time of two batches predicted one after the other / in two Python threads at once.
    two_callers_speedup: dict[str, float]
    #: The runtime with the least CPU per payment at ``trees``, one thread, the largest batch.
    fastest: str
    sklearn_hgb_ns_per_payment: float | None
    unavailable: dict[str, str]


class _OnnxRuntime:
    """The LightGBM model converted by onnxmltools, run by ONNX Runtime (float32 inputs)."""

    name = "onnxruntime"

    def __init__(self, booster: Any, features: int) -> None:
        import onnxruntime
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        model = convert_lightgbm(booster, initial_types=[("rows", FloatTensorType([None, features]))], zipmap=False)
        self._onnxruntime = onnxruntime
        self._bytes = model.SerializeToString()
        self._sessions: dict[int, Any] = {}

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        session = self._sessions.get(threads)
        if session is None:
            options = self._onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # the converted model declares a label shape of 1: a warning per call
            session = self._onnxruntime.InferenceSession(self._bytes, options, providers=["CPUExecutionProvider"])
            self._sessions[threads] = session
        probabilities = session.run(None, {"rows": x.astype(np.float32)})[1]
        return np.asarray(probabilities, dtype=np.float64)[:, 1]


def _median_ns(fn: Callable[[], Any], per: int) -> tuple[float, float]:
    """(CPU, wall) ns per item: medians of ``REPEATS`` calls after a warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(REPEATS):
        c0, w0 = time.process_time_ns(), time.perf_counter_ns()
        fn()
        cpu.append(time.process_time_ns() - c0)
        wall.append(time.perf_counter_ns() - w0)
    return statistics.median(cpu) / per, statistics.median(wall) / per


def _same(scores: np.ndarray, _rows: np.ndarray) -> np.ndarray:
    return scores


def _each(runtime: Runtime, rows: list[np.ndarray]) -> None:
    for row in rows:
        runtime.predict(row, 1)


def _two_callers_speedup(runtime: Runtime, x: np.ndarray) -> float:
    runtime.predict(x, 1)
    t0 = time.perf_counter_ns()
    runtime.predict(x, 1)
    runtime.predict(x, 1)
    serial = time.perf_counter_ns() - t0
    threads = [threading.Thread(target=runtime.predict, args=(x, 1)) for _ in range(2)]
    t0 = time.perf_counter_ns()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return round(serial / max(time.perf_counter_ns() - t0, 1), 2)


def _build(predictor: str, text: str, booster: Any, folder: Path, features: int) -> Runtime:
    if predictor == "onnxruntime":
        return _OnnxRuntime(booster, features)
    sha256 = hashlib.sha256(text.encode()).hexdigest()
    runtime, _ = load_runtime(cast(PredictorName, predictor), text, sha256, folder / "bench.json", lambda _msg: None)
    return runtime


def run_bench(
    *,
    trees: int = DEFAULT_SETTINGS.trees,
    payments: int = 200_000,
    accounts: int = DEFAULT_SETTINGS.accounts,
    tree_counts: tuple[int, ...] = TREE_COUNTS,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    predictors: tuple[str, ...] = PREDICTORS,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Train the models, build every runtime's form of them, check their scores and time them."""
    import lightgbm

    say = progress or (lambda _msg: None)
    settings: TrainingSettings = msgspec.structs.replace(DEFAULT_SETTINGS, accounts=accounts, payments=payments)
    say(f"model bench: simulating {payments:,} payments for training, {payments // 2:,} held out")
    rows, label = collect(settings, settings.train_seed, payments)
    held_out, held_label = collect(settings, settings.eval_seed, payments // 2)
    y = label != 0
    x64 = rows.astype(np.float64)
    held64 = held_out.astype(np.float64)
    largest = np.resize(x64, (max(batch_sizes), x64.shape[1]))
    sizes = sorted({*tree_counts, trees})
    figures: list[InferenceFigures] = []
    checks: list[ScoreCheck] = []
    compile_s: dict[str, float] = {}
    per_payment: dict[str, float] = {}
    two_callers: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cbdc-model-bench-") as tmp:
        for n in sizes:
            say(f"model bench: training {n} trees of {settings.leaves} leaves")
            text = fit(msgspec.structs.replace(settings, trees=n), rows, y)
            booster = lightgbm.Booster(model_str=text)
            reference = np.asarray(booster.predict(held64, num_threads=1))
            threshold, _ = evaluate(functools.partial(_same, reference), held64, held_label, settings.flag_fpr)
            threshold += SCORE_TIE_MARGIN  # as the hook compares
            for predictor in predictors:
                if predictor in unavailable:
                    continue
                say(f"model bench: {predictor}, {n} trees")
                t0 = time.perf_counter()
                try:
                    runtime = _build(predictor, text, booster, Path(tmp), x64.shape[1])
                except (CompilerUnavailable, ImportError) as exc:
                    unavailable[predictor] = f"{exc}"
                    continue
                compile_s[f"{predictor}/{n}"] = round(time.perf_counter() - t0, 2)
                scores = runtime.predict(held64, 1)
                checks.append(
                    ScoreCheck(
                        predictor=predictor,
                        trees=n,
                        rows=len(held64),
                        max_abs_diff=float(np.abs(scores - reference).max()),
                        flag_changes=int(np.count_nonzero((scores > threshold) != (reference > threshold))),
                        threshold=threshold,
                    )
                )
                figures.extend(_time_runtime(runtime, predictor, n, largest, batch_sizes))
                if n == trees:
                    one_rows = [largest[i : i + 1] for i in range(min(PER_PAYMENT_ROWS, len(largest)))]
                    per_payment[predictor] = _median_ns(functools.partial(_each, runtime, one_rows), len(one_rows))[0]
                    two_callers[predictor] = _two_callers_speedup(runtime, largest)
    at_default = [f for f in figures if f.trees == trees and f.threads == 1 and f.batch_rows == max(batch_sizes)]
    return BenchResult(
        trees=trees,
        batch_sizes=list(batch_sizes),
        tree_counts=sizes,
        figures=figures,
        checks=checks,
        compile_s=compile_s,
        per_payment_call_ns=per_payment,
        two_callers_speedup=two_callers,
        fastest=min(at_default, key=lambda f: f.cpu_ns_per_payment).predictor if at_default else "",
        sklearn_hgb_ns_per_payment=_sklearn(x64, y, largest, trees, unavailable),
        unavailable=unavailable,
    )


def _time_runtime(
    runtime: Runtime, predictor: str, trees: int, largest: np.ndarray, batch_sizes: tuple[int, ...]
) -> list[InferenceFigures]:
    out = []
    for rows in batch_sizes:
        batch = np.ascontiguousarray(largest[:rows])
        for threads in THREADS:
            cpu, wall = _median_ns(functools.partial(runtime.predict, batch, threads), rows)
            out.append(InferenceFigures(predictor, trees, rows, threads, round(cpu, 1), round(wall, 1)))
    return out


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
        return _median_ns(lambda: model.predict_proba(batch), len(batch))[0]


def format_bench(r: BenchResult) -> str:
    """The figures as text: one line per runtime and size, then the checks and the other figures."""
    cells = {(f.predictor, f.trees, f.batch_rows, f.threads): f for f in r.figures}
    big = r.batch_sizes[-1]
    head = "".join(f"{n:>9,}" for n in r.batch_sizes)
    lines = [
        f"risk model inference, ns per payment, median of {REPEATS} (on a shared machine compare within one run)",
        f"{'':18}1 thread, CPU ns per payment, batch rows | 2 threads, wall ns (wall speedup over 1 thread)",
        f"{'predictor':<12}{'trees':>6}{head}   {head.replace(' ' * 5, ' ' * 10)}   CPU vs LightGBM, {big:,} rows",
    ]
    for n in r.tree_counts:
        for predictor in dict.fromkeys(f.predictor for f in r.figures):
            if (predictor, n, big, 1) not in cells:
                continue
            one = "".join(f"{cells[(predictor, n, b, 1)].cpu_ns_per_payment:>9,.0f}" for b in r.batch_sizes)
            walls = [(cells[(predictor, n, b, 1)], cells[(predictor, n, b, 2)]) for b in r.batch_sizes]
            two = "".join(
                f"{t.wall_ns_per_payment:>9,.0f} ({o.wall_ns_per_payment / t.wall_ns_per_payment:.1f})"
                for o, t in walls
            )
            ref = cells.get(("lightgbm", n, big, 1))
            ratio = f"{ref.cpu_ns_per_payment / cells[(predictor, n, big, 1)].cpu_ns_per_payment:5.1f}x" if ref else ""
            lines.append(f"{predictor:<12}{n:>6}{one}   {two}   {ratio}")
    lines.append("scores against LightGBM's on held-out payments of another seed (threshold chosen as in training):")
    lines.extend(
        f"  {c.predictor:<12}{c.trees:>4} trees: max |diff| {c.max_abs_diff:.1e}, flag decisions changed "
        f"{c.flag_changes} of {c.rows:,} at threshold {c.threshold:.4f}"
        for c in r.checks
        if c.predictor != "lightgbm"
    )
    calls = ", ".join(f"{p} {ns / 1000:.1f} us" for p, ns in r.per_payment_call_ns.items())
    lines.append(f"one call per payment, {r.trees} trees, 1 thread, CPU: {calls}")
    callers = ", ".join(f"{p} {s:.2f}x" for p, s in r.two_callers_speedup.items())
    lines.append(
        f"two Python threads predicting at once vs one after the other (GIL released: ~2x when idle): {callers}"
    )
    lines.append("build (compile/convert) seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r.compile_s.items()))
    if r.sklearn_hgb_ns_per_payment is not None:
        lines.append(
            f"scikit-learn HistGradientBoosting, {r.trees} trees, 1 thread, {big:,} rows: "
            f"{r.sklearn_hgb_ns_per_payment:,.0f} CPU ns per payment"
        )
    lines.append(f"fastest at {r.trees} trees (1 thread, {big:,} rows, CPU): {r.fastest}")
    lines.extend(f"  not measured: {name}: {why}" for name, why in r.unavailable.items())
    return "\n".join(lines)
