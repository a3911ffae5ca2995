"""risk_model: a trained gradient-boosted model scores payments from rolling per-person features.

Real payment-surveillance and fraud systems keep features per person and score every payment
with a trained model; that cost, not a table lookup (``social_credit``'s deltas), is what this
hook measures. Features are ``engine.risk.features`` (24 bytes per account), the model a LightGBM
booster (``engine.risk.model``; ``cbdc-bench model train``) scored by the runtime ``predictor``
names (``engine.risk.runtimes``; default: its trees compiled by lleaves, same scores, ~8x less
CPU per payment than LightGBM's own predictor).

Two modes (the scenario's ``[hooks.risk_model] mode``):

* ``observe`` (default): after a batch commits and its replies are out (``deferred``), the
  applied payments' feature rows (as of the batch's start) are computed on the sequencer's
  thread, the features are updated, and the rows go to a background thread that runs the model
  (every runtime releases the GIL: the second core; ``model_thread = false`` scores on the
  sequencer's thread instead, for comparison). Flagged payments lower their payer's
  ``social_credit`` score by ``penalty`` points. Flags of batch k reach the scores at the start
  of batch k + ``lag_batches``; a batch the model thread has not finished by then (not started,
  or running for over ~3x its expected time) is scored on the sequencer's thread (never a dropped
  score, and no long wait on a thread that may not get a core), so the outcome does not depend on
  thread timing and the one-at-a-time twin reproduces it exactly.
* ``authorize``: the payments that passed the ledger's own checks are scored before money moves
  (like every authorize hook, before caps and funds) and those above the threshold are vetoed
  with RISK_VETO. The model runs on the sequencer's thread: that is the latency a veto costs.

The flag threshold is the model's own unless ``threshold`` overrides it: at training it is set so
that ``flag_fpr`` (0.1%) of ordinary held-out payments are flagged, the knob a state would tune
(how many innocent payments per thousand it accepts to flag); the precision and recall it gives
are stored with the model and printed by ``cbdc-bench model train``.

``inference = "per_payment"`` calls the model once per payment (the naive per-payment callback)
instead of once per batch, so that difference is itself measured. The hook's cost per payment
is its time on the sequencer's thread plus the CPU of its background thread (``background_ns``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

import msgspec
import numpy as np

from engine.accounts import FLAG_BLACKLISTED
from engine.categories import RESTRICTED_DEFAULT
from engine.codes import CODE_DTYPE, ResultCode
from engine.hooks.base import Hook, LedgerView, Transfers
from engine.hooks.social_credit import SocialCredit
from engine.risk.features import (
    BYTES_PER_ACCOUNT,
    N_FEATURES,
    NS_PER_MINUTE,
    FeatureConfig,
    Payments,
    RollingFeatures,
)
from engine.risk.model import SCORE_TIE_MARGIN, Predictor, load_model, resolve_model_path
from engine.risk.runtimes import PredictorName


class RiskModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mode: Literal["observe", "authorize"] = "observe"
    #: A model file from ``cbdc-bench model train --out``; "" = the default model (cached).
    model_path: str = ""
    #: Flag/veto above this probability; 0 = the model's own threshold (see the module docstring).
    threshold: float = 0.0
    inference: Literal["batched", "per_payment"] = "batched"
    #: Which runtime scores (``engine.risk.runtimes``): "auto" = the trees compiled by lleaves,
    #: else LightGBM's own predictor with a message; a named one must work.
    predictor: PredictorName = "auto"
    #: Observe mode: score on the model's own thread (the second core); false = on the sequencer's
    #: thread after the batch commits (same flags, same lag: the comparison that shows the thread's worth).
    model_thread: bool = True
    #: Social-credit points a flagged payment costs its payer (observe mode, with social_credit).
    penalty: int = 30
    #: Observe mode: flags of batch k lower scores at the start of batch k + lag_batches.
    lag_batches: int = 4
    #: Read the feature rows and update the features after the batch's replies are sent (the
    #: server runs deferred observers then, before the next batch: same features, same results),
    #: not before them: ~0.8 us per payment off every reply's latency. A ledger driven directly
    #: must call ``run_deferred()`` between batches (the hook refuses a batch otherwise).
    deferred: bool = True
    #: Observe mode, on the model's thread: added to that thread's niceness (0-19; Linux threads
    #: are tasks with their own). The thread is background work: the sequencer and the generator
    #: get a core first, and lag_batches of slack absorbs the model's wait for one.
    model_thread_nice: int = 0
    #: The workload's grid and the restricted categories, for the features.
    grid_side_cells: int = 1_024
    restricted: tuple[str, ...] = RESTRICTED_DEFAULT

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0, 1) (0 = the model's own), got {self.threshold}")
        if not 0 <= self.penalty <= 600:
            raise ValueError(f"penalty must be in 0..600 social-credit points, got {self.penalty}")
        if not 1 <= self.lag_batches <= 1_024:
            raise ValueError(f"lag_batches must be in 1..1024, got {self.lag_batches}")
        if not 0 <= self.model_thread_nice <= 19:
            raise ValueError(
                f"model_thread_nice must be in 0..19 (added to the server's niceness), got {self.model_thread_nice}"
            )
        FeatureConfig(self.grid_side_cells, self.restricted)  # validates both


def batch_minute(now_ns: int, start_ns: int) -> int:
    """The features' clock: minutes since the sequencer clock's start, + 1 (0 means "never")."""
    return (now_ns - start_ns) // NS_PER_MINUTE + 1


#: The rolling features' per-account columns (``RollingFeatures``), as snapshot state.
FEATURE_COLUMNS = (
    "last_minute",
    "count_hour",
    "count_day",
    "restricted_day",
    "amount_hour",
    "amount_day",
    "device_bits",
    "block_bits",
    "last_device",
    "last_cell",
)


class RiskModel(Hook):
    """See the module docstring. Snapshot state (``engine.snapshot``): the feature columns (per
    account: copy-on-update saves them at the batch's payers), the counters, and the batches whose
    flags are not applied yet (observe mode, up to ``lag_batches``), kept as their feature rows and
    payers: a restored server scores them again and applies their flags at the same batch as the
    server that took the snapshot, so the state equals a whole-journal replay's and the capture
    does not wait for the model (see ``state_arrays``).
    """

    name = "risk_model"
    state_bytes_per_account = BYTES_PER_ACCOUNT  # the rolling features (``engine.risk.features``)
    snapshot_arrays: ClassVar[tuple[str, ...] | None] = (
        *(f"features.{c}" for c in FEATURE_COLUMNS),
        "pending.rows",
        "pending.payers",
    )
    snapshot_per_account: ClassVar[tuple[str, ...]] = tuple(f"features.{c}" for c in FEATURE_COLUMNS)
    snapshot_scalars: ClassVar[tuple[str, ...]] = ("scored", "flagged", "vetoed", "errors")

    def __init__(self, config: RiskModelConfig | None = None) -> None:
        self.config = config or RiskModelConfig()
        self.deferred = self.config.deferred
        self.features = RollingFeatures(0, self._feature_config())
        self.predictor: Predictor | None = None
        self.threshold = self.config.threshold
        self._ledger: LedgerView | None = None
        self._social: SocialCredit | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: collections.deque[Future[np.ndarray]] = collections.deque()
        #: The feature rows and payers of each batch in ``_pending``, for snapshots.
        self._pending_inputs: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        #: After a restore: the snapshot's pending batches (buffers read in place, their entries).
        self._restored: tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]] | None = None
        self._batch_ns = 0
        self._minute = 0
        self.scored = 0
        self.flagged = 0
        self.vetoed = 0
        #: CPU time (this thread's, not wall time: on a shared machine a descheduled thread or a
        #: GIL wait would count) of feature reads and updates, and of the model on the
        #: sequencer's thread (authorize mode; observe mode's is ``background_ns``).
        self.features_ns = 0
        self.inference_ns = 0
        #: Observe mode: the sequencer's wall time blocked waiting for a batch the model thread is
        #: running (bounded by ``_patience_s``, except at ``flush``). Counted in begin_ns while the
        #: model's own CPU is in background_ns: the two overlap.
        self.wait_ns = 0
        #: Batches whose scoring failed on the model thread (their flags are lost, and counted).
        self.errors = 0
        self.last_error = ""
        #: Observe mode: payments the sequencer scored itself because the model thread had not
        #: finished their batch when its flags were due (``_settle``).
        self.scored_on_sequencer = 0
        self._background_ns = 0  # written by the worker thread only
        self._thread_rows = 0  # rows the worker thread scored (ditto)
        self._thread_late = False  # the last wait for the thread timed out (``_settle``)
        #: The model thread's Linux thread id and niceness, set by the thread as it starts.
        self.model_thread_tid = 0
        self.model_thread_niceness: int | None = None
        #: The sequencer clock after the last batch this hook observed (None: not known since
        #: attach or a restore): a deferred observer that was never run shows as a mismatch.
        self._observed_clock: int | None = None

    def _feature_config(self) -> FeatureConfig:
        return FeatureConfig(self.config.grid_side_cells, self.config.restricted)

    @property
    def authorizes(self) -> bool:
        return self.config.mode == "authorize"

    def attach(self, ledger: LedgerView) -> None:
        self._ledger = ledger
        self._observed_clock = ledger.clock.payments
        self.features = RollingFeatures(ledger.accounts, self._feature_config())
        self.predictor = load_model(resolve_model_path(self.config.model_path), runtime=self.config.predictor)
        # Flag above the threshold by more than the runtimes' rounding (SCORE_TIE_MARGIN).
        self.threshold = (self.config.threshold or self.predictor.threshold) + SCORE_TIE_MARGIN
        self._social = next((h for h in ledger.hooks if isinstance(h, SocialCredit)), None)
        if self.config.mode == "observe" and self.config.model_thread:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="risk-model", initializer=self._start_model_thread
            )

    def _start_model_thread(self) -> None:
        """Runs first on the model's thread: lower its priority by ``model_thread_nice``."""
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):  # the name top -H, ps -L and schedstat readers show
            Path("/proc/thread-self/comm").write_text("risk-model")
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        if self.config.model_thread_nice:
            nice = min(nice + self.config.model_thread_nice, 19)
            os.setpriority(os.PRIO_PROCESS, tid, nice)  # lowering a priority needs no privilege
        self.model_thread_niceness = nice
        self.model_thread_tid = tid

    # ---- the batch phases ------------------------------------------------------------------

    def begin_batch(self, batch: np.ndarray) -> None:
        assert self._ledger is not None, "attach() first"
        clock = self._ledger.clock
        self._batch_ns = clock.now_ns()
        self._minute = batch_minute(self._batch_ns, clock.start_ns)
        if self._observed_clock is not None and clock.payments != self._observed_clock:
            # The ledger refuses this batch (HOOK_ERROR) rather than score it from stale features.
            raise RuntimeError(
                "risk_model has not observed the previous batch (deferred = true): call "
                "Ledger.run_deferred() after each apply(), as the server does, or set deferred = false"
            )
        self._settle(self.config.lag_batches)

    def _rows(self, p: Payments) -> np.ndarray:
        assert self._ledger is not None
        ledger = self._ledger
        return self.features.rows(p, self._minute, self._batch_ns, ledger.flags, int(FLAG_BLACKLISTED))

    def _predict(self, rows: np.ndarray) -> np.ndarray:
        assert self.predictor is not None
        if self.config.inference == "per_payment":
            predict = self.predictor.predict
            return np.array([predict(rows[i : i + 1])[0] for i in range(len(rows))], dtype=np.float64)
        return self.predictor.predict(rows)

    def authorize(self, transfers: Transfers, ledger: LedgerView) -> np.ndarray | None:
        t0 = time.thread_time_ns()
        p = Payments(
            transfers.payer.astype(np.int64),
            transfers.payee.astype(np.int64),
            transfers.amount_fen.astype(np.int64),
            transfers.category.astype(np.int64),
            transfers.column("device_id"),
            transfers.column("location_cell").astype(np.int64),
        )
        rows = self._rows(p)
        t1 = time.thread_time_ns()
        veto = self._predict(rows) > self.threshold
        self.features_ns += t1 - t0
        self.inference_ns += time.thread_time_ns() - t1
        self.scored += len(rows)
        vetoed = int(np.count_nonzero(veto))
        if vetoed == 0:
            return None
        self.vetoed += vetoed
        codes = np.zeros(len(transfers), dtype=CODE_DTYPE)
        codes[veto] = ResultCode.RISK_VETO
        return codes

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        t0 = time.thread_time_ns()
        assert self._ledger is not None
        self._observed_clock = self._ledger.clock.payments  # advanced past this batch by apply
        p = Payments.of(batch[codes == ResultCode.OK])
        if self.config.mode != "observe":
            self.features.record(p, self._minute)
            self.features_ns += time.thread_time_ns() - t0
            return
        # Rows as of the batch's start, then this batch recorded: the payers grouped once.
        assert self._ledger is not None
        ledger = self._ledger
        rows = self.features.rows_then_record(p, self._minute, self._batch_ns, ledger.flags, int(FLAG_BLACKLISTED))
        self.scored += len(rows)
        t1 = time.thread_time_ns()
        self.features_ns += t1 - t0
        self._pending_inputs.append((rows, p.payer))  # with the future appended below, in both paths
        if self._executor is not None:
            self._pending.append(self._executor.submit(self._score, rows, p.payer))
            return
        # model_thread = false: the same scores on this thread, applied with the same lag (and a
        # failure counted by _settle, as on the thread).
        done: Future[np.ndarray] = Future()
        try:
            done.set_result(p.payer[self._predict(rows) > self.threshold])
        except Exception as exc:
            done.set_exception(exc)
        self._pending.append(done)
        self.inference_ns += time.thread_time_ns() - t1

    def _score(self, rows: np.ndarray, payers: np.ndarray) -> np.ndarray:
        """Runs on the worker thread: the flagged payments' payers (with repeats)."""
        t0 = time.thread_time_ns()
        flagged = payers[self._predict(rows) > self.threshold]
        self._background_ns += time.thread_time_ns() - t0
        self._thread_rows += len(rows)
        return flagged

    def _settle(self, keep: int, *, wait: bool = False) -> None:
        """Apply the flags of all but the ``keep`` most recent observed batches, oldest first.

        A due batch the model thread has not started (it is behind) is scored here; one it is
        running gets its expected time (``_patience_s``; none while the thread has overrun it and
        not yet delivered a batch on time since) and is then scored here too: a thread
        descheduled mid-batch on a busy machine would otherwise stall the sequencer for as long
        as it waits for a core (seconds at nice 10), while a slow but running model (LightGBM)
        keeps the pipeline. Same rows, same predictor, same flags; a batch scored twice is
        charged twice (here as inference, there in background_ns); ``scored_on_sequencer`` says
        how much. ``wait`` (the end of a run) waits for a running batch however long it takes.
        """
        while len(self._pending) > max(keep - 1, 0):
            future = self._pending.popleft()
            rows, payers = self._pending_inputs.popleft()
            try:
                if future.done():
                    self._thread_late = False
                    flagged = future.result()
                elif future.cancel() or (self._thread_late and not wait):
                    # Not started (the thread skips it), or running on a thread that overran last time.
                    flagged = self._score_here(rows, payers)
                else:
                    t0 = time.perf_counter_ns()
                    try:
                        flagged = future.result(None if wait else self._patience_s(len(rows)))
                    except TimeoutError:
                        self._thread_late = True
                        flagged = self._score_here(rows, payers)
                    finally:
                        self.wait_ns += time.perf_counter_ns() - t0
            except Exception as exc:  # the batch committed long ago: count it, never stop the sequencer
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            self.flagged += len(flagged)
            if self._social is not None and len(flagged) and self.config.penalty:
                self._social.lower_scores(flagged, self.config.penalty)

    def _patience_s(self, rows: int) -> float:
        """How long to wait for a batch the model thread is running: 3x the CPU it should take
        (the thread's own ns per row so far; 5 us before it has any), at least 2 ms."""
        ns_per_row = self._background_ns / self._thread_rows if self._thread_rows else 5_000
        return max(3 * rows * ns_per_row / 1e9, 0.002)

    def _score_here(self, rows: np.ndarray, payers: np.ndarray) -> np.ndarray:
        """``_score`` on the sequencer's thread, its CPU counted as inference there."""
        t0 = time.thread_time_ns()
        try:
            return payers[self._predict(rows) > self.threshold]
        finally:
            self.inference_ns += time.thread_time_ns() - t0
            self.scored_on_sequencer += len(rows)

    def flush(self) -> None:
        """Wait for every pending score and apply its flags now (end of a run)."""
        self._settle(0, wait=True)

    # ---- snapshot state (``engine.snapshot``) ----------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The feature columns (live) and the pending batches' rows and payers, concatenated.

        The pending batches are captured as the model's *input*, not its output: waiting at the
        snapshot for up to ``lag_batches`` batches of inference (~25 ms each at 8,192 payments and
        3 us per payment) would stall the sequencer, while copying their rows costs ~1 ms. Draining
        them (applying their flags early) is not an option: the scores would then depend on when
        snapshots were taken, and a replay of the journal would not reproduce the result codes.
        """
        features = {f"features.{c}": getattr(self.features, c) for c in FEATURE_COLUMNS}
        inputs = list(self._pending_inputs)
        restored = self._restored
        if restored is not None and [id(e) for e in restored[2]] == [id(e) for e in inputs]:
            # Just restored (no batch since): the buffers ``load_into`` reads the snapshot into.
            return features | {"pending.rows": restored[0], "pending.payers": restored[1]}
        # The rows are transposed views (``RollingFeatures.rows``): copied row-major, once.
        rows = np.empty((sum(len(p) for _, p in inputs), N_FEATURES), dtype=np.int64)
        payers = np.empty(len(rows), dtype=np.int64)
        if inputs:
            np.concatenate([r for r, _ in inputs], out=rows)
            np.concatenate([p for _, p in inputs], out=payers)
        return features | {"pending.rows": rows, "pending.payers": payers}

    def state_scalars(self) -> dict[str, Any]:
        return super().state_scalars() | {"pending.batches": [len(p) for _, p in self._pending_inputs]}

    def restore_scalars(self, scalars: dict[str, Any]) -> None:
        """The counters; and room for the pending batches, queued to be scored when due (their rows
        are read into that room next, in place, before any batch)."""
        super().restore_scalars(scalars)
        self._observed_clock = None  # the ledger's clock is restored too
        sizes: list[int] = scalars["pending.batches"]
        if sizes and self.config.mode != "observe":
            raise ValueError(
                f"snapshot holds {len(sizes)} batches awaiting risk_model scores (observe mode), "
                f"this server's risk_model runs in {self.config.mode} mode: restart with the mode that took it"
            )
        rows = np.zeros((sum(sizes), N_FEATURES), dtype=np.int64)
        payers = np.zeros(sum(sizes), dtype=np.int64)
        entries = []
        start = 0
        for n in sizes:
            entry = (rows[start : start + n], payers[start : start + n])
            entries.append(entry)
            start += n
        self._pending.clear()
        self._pending_inputs.clear()
        for entry in entries:
            self._pending.append(Future())  # never started: ``_settle`` scores it here when due
            self._pending_inputs.append(entry)
        self._restored = (rows, payers, entries)

    def snapshot_touches_others(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Flags applied at this batch's start lower the scores of earlier batches' payers."""
        if self._social is None or not self.config.penalty or not self._pending_inputs:
            return {}
        return {self._social.name: np.concatenate([p for _, p in self._pending_inputs])}

    # ---- reporting -------------------------------------------------------------------------

    def state_bytes(self) -> int:
        return self.features.state_bytes()

    def background_ns(self) -> int:
        return self._background_ns

    def stats(self) -> dict[str, Any]:
        p = self.predictor
        scored = max(self.scored, 1)
        return {
            "mode": self.config.mode,
            "inference": self.config.inference,
            "scored": self.scored,
            "flagged": self.flagged,
            "vetoed": self.vetoed,
            "features_ns": self.features_ns,
            "inference_ns": self.inference_ns + self._background_ns,
            # Feature reads and updates on the sequencer's thread; the model's CPU wherever it ran.
            "features_ns_per_payment": self.features_ns / scored,
            "wait_ns": self.wait_ns,
            "scored_on_sequencer": self.scored_on_sequencer,
            "scoring_errors": self.errors,
            "last_scoring_error": self.last_error,
            "inference_ns_per_payment": (self.inference_ns + self._background_ns) / scored,
            "threshold": self.threshold,
            "trees": 0 if p is None else p.trees,
            "model_sha256": "" if p is None else p.sha256,
            # Which runtime scored (lleaves, tl2cgen, lightgbm) and why not the one asked for.
            "predictor": "" if p is None else p.runtime_name,
            "predictor_fallback": "" if p is None else p.fallback_reason,
            "model_thread": self.config.mode == "observe" and self.config.model_thread,
            "model_thread_nice": self.model_thread_niceness,
            "deferred": self.deferred,
        }

    def close(self) -> None:
        self.flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
