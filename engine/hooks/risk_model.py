"""risk_model: a trained gradient-boosted model scores payments from rolling per-person features.

Real payment-surveillance and fraud systems keep features per person and score every payment
with a trained model; that cost, not a table lookup (``social_credit``'s deltas), is what this
hook measures. Features are ``engine.risk.features`` (24 bytes per account), the model a LightGBM
booster (``engine.risk.model``; ``cbdc-bench model train``) scored by the runtime ``predictor``
names (``engine.risk.runtimes``; default: its trees compiled by lleaves, same scores, ~8x less
CPU per payment than LightGBM's own predictor).

Two modes (the scenario's ``[hooks.risk_model] mode``):

* ``observe`` (default): after a batch commits, the applied payments' feature rows (as of the
  batch's start) are computed on the sequencer's thread, the features are updated, and the rows
  go to a background thread that runs the model (every runtime releases the GIL: the second
  core; ``model_thread = false`` scores on the sequencer's thread instead, for comparison).
  Flagged payments lower their payer's ``social_credit`` score by ``penalty`` points. Flags of
  batch k reach the scores at the start of batch k + ``lag_batches`` (waiting for the model if it
  is that far behind: backpressure, never a dropped score), so the outcome does not depend on
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
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import msgspec
import numpy as np

from engine.accounts import FLAG_BLACKLISTED
from engine.categories import RESTRICTED_DEFAULT
from engine.codes import CODE_DTYPE, ResultCode
from engine.hooks.base import Hook, LedgerView, Transfers
from engine.hooks.social_credit import SocialCredit
from engine.risk.features import BYTES_PER_ACCOUNT, NS_PER_MINUTE, FeatureConfig, Payments, RollingFeatures
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
        FeatureConfig(self.grid_side_cells, self.restricted)  # validates both


def batch_minute(now_ns: int, start_ns: int) -> int:
    """The features' clock: minutes since the sequencer clock's start, + 1 (0 means "never")."""
    return (now_ns - start_ns) // NS_PER_MINUTE + 1


class RiskModel(Hook):
    name = "risk_model"
    state_bytes_per_account = BYTES_PER_ACCOUNT  # the rolling features (``engine.risk.features``)

    def __init__(self, config: RiskModelConfig | None = None) -> None:
        self.config = config or RiskModelConfig()
        self.deferred = False  # features must be updated before the next batch reads them
        self.features = RollingFeatures(0, self._feature_config())
        self.predictor: Predictor | None = None
        self.threshold = self.config.threshold
        self._ledger: LedgerView | None = None
        self._social: SocialCredit | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: collections.deque[Future[np.ndarray]] = collections.deque()
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
        #: Observe mode: the sequencer's wall time blocked waiting for the model (lag_batches
        #: behind). Counted in begin_ns (the sequencer could not go on) while the model's own CPU
        #: is in background_ns: the two overlap, so subtract this for CPU per payment.
        self.wait_ns = 0
        #: Batches whose scoring failed on the model thread (their flags are lost, and counted).
        self.errors = 0
        self.last_error = ""
        self._background_ns = 0  # written by the worker thread only

    def _feature_config(self) -> FeatureConfig:
        return FeatureConfig(self.config.grid_side_cells, self.config.restricted)

    @property
    def authorizes(self) -> bool:
        return self.config.mode == "authorize"

    def attach(self, ledger: LedgerView) -> None:
        self._ledger = ledger
        self.features = RollingFeatures(ledger.accounts, self._feature_config())
        self.predictor = load_model(resolve_model_path(self.config.model_path), runtime=self.config.predictor)
        # Flag above the threshold by more than the runtimes' rounding (SCORE_TIE_MARGIN).
        self.threshold = (self.config.threshold or self.predictor.threshold) + SCORE_TIE_MARGIN
        self._social = next((h for h in ledger.hooks if isinstance(h, SocialCredit)), None)
        if self.config.mode == "observe" and self.config.model_thread:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="risk-model")

    # ---- the batch phases ------------------------------------------------------------------

    def begin_batch(self, batch: np.ndarray) -> None:
        assert self._ledger is not None, "attach() first"
        clock = self._ledger.clock
        self._batch_ns = clock.now_ns()
        self._minute = batch_minute(self._batch_ns, clock.start_ns)
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
        return flagged

    def _settle(self, keep: int) -> None:
        """Apply the flags of all but the ``keep`` most recent observed batches, oldest first."""
        while len(self._pending) > max(keep - 1, 0):
            future = self._pending.popleft()
            t0 = time.perf_counter_ns()
            try:
                flagged = future.result()
            except Exception as exc:  # the batch committed long ago: count it, never stop the sequencer
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            finally:
                self.wait_ns += time.perf_counter_ns() - t0
            self.flagged += len(flagged)
            if self._social is not None and len(flagged) and self.config.penalty:
                self._social.lower_scores(flagged, self.config.penalty)

    def flush(self) -> None:
        """Wait for every pending score and apply its flags now (end of a run)."""
        self._settle(0)

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
        }

    def close(self) -> None:
        self.flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
