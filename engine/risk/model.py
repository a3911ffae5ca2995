"""The risk model's file and its predictor: a LightGBM booster plus what it was trained on.

One JSON file (a ``ModelFile``) holds the LightGBM model text, the feature version and names it
expects, the flag threshold, how it was trained and how it scored on held-out data. Its sha256
identifies the model in journal headers (``JournalHeader.risk_model_sha256``) and result files:
a journal replays only under the model that wrote it, since authorize-mode vetoes depend on it.

The default model is trained by ``cbdc-bench model train`` (``loadgen.model``), deterministically,
and cached under ``default_model_path()``; the engine never trains (training needs the workload
generator, which lives in ``loadgen``) and names the command when the file is missing.

The runtime (LightGBM, or the trees compiled by lleaves or tl2cgen: ``engine.risk.runtimes``) is
imported when a model is loaded, not at import time. Each predicts in C through ctypes, which
releases the GIL: a background thread scoring one batch runs on the second core while the
sequencer works on the next.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import msgspec
import numpy as np

from engine.risk.features import FEATURE_NAMES, FEATURE_VERSION
from engine.risk.runtimes import Log, PredictorName, load_runtime

#: Version of the model file format. History: 1 = first version (issue 18).
MODEL_FORMAT = 1
#: Scores within this of the flag threshold count as below it (``engine.hooks.risk_model``). Trees
#: give a finite set of scores and the model's threshold is one of them (a quantile of held-out
#: scores), while runtimes add the same leaf values in another order (lleaves differs from LightGBM
#: by up to ~1e-15): without the margin a payment scoring exactly the threshold could be flagged by
#: one runtime and not by another (`cbdc-bench model bench` saw 1 of 94,061 held-out payments), and
#: a journal would replay differently where another runtime scores.
SCORE_TIE_MARGIN = 1e-9
#: The LightGBM version the default model is trained with (pinned in pyproject.toml): the model
#: text, hence its sha256, depends on it.
LIGHTGBM_VERSION = "4.7.0"


class BehaviourQuality(msgspec.Struct, frozen=True):
    """Held-out quality for one planted behaviour (against ordinary payments)."""

    behaviour: str
    payments: int
    auc: float
    recall_at_threshold: float


class ModelQuality(msgspec.Struct, frozen=True):
    """How the model scored on held-out payments of another seed."""

    payments: int
    positives: int
    auc: float
    #: Of the payments flagged at the threshold, the share that were planted behaviours.
    precision_at_threshold: float
    recall_at_threshold: float
    #: Share of ordinary payments flagged at the threshold.
    false_positive_rate: float
    by_behaviour: list[BehaviourQuality]


class TrainingSettings(msgspec.Struct, frozen=True):
    """Everything the training was a function of (so the same settings give the same bytes)."""

    accounts: int
    payments: int
    batch_size: int
    train_seed: int
    eval_seed: int
    trees: int
    leaves: int
    learning_rate: float
    threads: int
    #: Share of ordinary held-out payments flagged: the threshold is their (1 - this) quantile.
    flag_fpr: float
    behaviour_scale: int


class ModelFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A trained risk model as stored on disk (JSON)."""

    format: int
    feature_version: int
    feature_names: list[str]
    lightgbm_version: str
    #: Payments scoring above this probability are flagged (observe) or vetoed (authorize).
    threshold: float
    training: TrainingSettings
    quality: ModelQuality
    model_text: str


def cache_dir() -> Path:
    """The cache: $CBDC_BENCH_CACHE, else $XDG_CACHE_HOME/cbdc-bench, else ~/.cache/cbdc-bench."""
    explicit = os.environ.get("CBDC_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cbdc-bench"


def default_model_path() -> Path:
    """The default model's cache file; its name carries the feature version and LightGBM version."""
    return cache_dir() / f"risk-model-f{FEATURE_VERSION}-lgbm{LIGHTGBM_VERSION}.json"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Predictor:
    """A loaded model: ``predict(rows)`` gives the probability of each feature row (float64).

    ``runtime`` scores (``engine.risk.runtimes``: the trees compiled by lleaves by default, else
    LightGBM's own predictor); ``runtime_name`` says which, ``fallback_reason`` why not the one
    asked for ("" when it is). ``trees`` and the sha256 come from the model file either way.
    """

    def __init__(
        self,
        model: ModelFile,
        sha256: str,
        path: Path | None = None,
        *,
        runtime: PredictorName = "auto",
        log: Log = _stderr,
    ) -> None:
        if model.feature_version != FEATURE_VERSION or tuple(model.feature_names) != FEATURE_NAMES:
            raise ValueError(
                f"risk model {path or ''} was trained on features version {model.feature_version}, this engine "
                f"computes version {FEATURE_VERSION}: retrain it with `cbdc-bench model train`"
            )
        self.model = model
        self.sha256 = sha256
        self.path = path
        self.threshold = model.threshold
        self.trees = model.model_text.count("\nTree=")
        # Compiled forms are cached next to the model file, or in the cache when that folder is read-only.
        artefacts = path if path is not None and os.access(path.parent, os.W_OK) else cache_dir() / "risk-model.json"
        self.runtime, self.fallback_reason = load_runtime(runtime, model.model_text, sha256, artefacts, log)
        self.runtime_name = self.runtime.name

    def predict(self, rows: np.ndarray, *, threads: int = 1) -> np.ndarray:
        """Probabilities for int64 feature rows (converted to float64, exact below 2**53)."""
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.runtime.predict(np.ascontiguousarray(rows, dtype=np.float64), threads)


def load_model(path: str | Path, *, runtime: PredictorName = "auto", log: Log = _stderr) -> Predictor:
    """Read a model file and load it into ``runtime``; specific errors for a missing, unreadable or foreign file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"risk model {path} does not exist: train it with `cbdc-bench model train --out {path}` "
            "(or leave model_path empty for the default model)"
        ) from None
    except OSError as exc:
        raise ValueError(f"cannot read risk model {path}: {exc.strerror or exc}") from exc
    try:
        model = msgspec.json.decode(data, type=ModelFile)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"{path} is not a cbdc-bench risk model file: {exc}") from exc
    if model.format != MODEL_FORMAT:
        raise ValueError(f"risk model {path} has format {model.format}; this version reads {MODEL_FORMAT}: retrain it")
    return Predictor(model, hashlib.sha256(data).hexdigest(), path, runtime=runtime, log=log)


def resolve_model_path(model_path: str) -> Path:
    """The file a hook's ``model_path`` names ("" = the cached default model)."""
    return Path(model_path) if model_path else default_model_path()
