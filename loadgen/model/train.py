"""Training the risk model on the workload's planted behaviours, and judging it on another seed.

The training data is what the ``risk_model`` hook itself would see: the workload's payments go
through a ledger with the ``full`` profile's policy hooks (caps, blacklist, freezes, scores), and
a recorder hook computes each applied payment's feature row as of its batch's start, exactly as
the hook does, then records the batch. Labels come from ``engine.behaviours.labels`` (the planted
truth, never sent to a server). Planted behaviours are made ``behaviour_scale`` times as common
(slots shrink by the same factor, so episodes keep their shape) to get enough positives from a
short simulated history; held-out payments of another seed are scored with the same scaling.

Reproducible: LightGBM is pinned (``engine.risk.model.LIGHTGBM_VERSION``), single-threaded and
in deterministic mode with fixed seeds, and the data is a function of the settings, so the same
settings give a byte-identical model file (a test checks it at small size).

The flag threshold is the (1 - ``flag_fpr``) quantile of the model's scores on ordinary payments
of the first half of the held-out data; precision, recall and the false-positive rate at that
threshold, and the ROC AUC overall and per behaviour, are measured on the second half.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np

from engine.accounts import FLAG_BLACKLISTED
from engine.behaviours import Behaviour, BehaviourConfig, labels
from engine.clock import SequencerClock
from engine.codes import ResultCode
from engine.hooks.base import Hook, LedgerView
from engine.hooks.registry import load_hook
from engine.hooks.risk_model import batch_minute
from engine.ledger import Ledger
from engine.profiles import risk_model_paths
from engine.risk.features import FEATURE_NAMES, FEATURE_VERSION, FeatureConfig, Payments, RollingFeatures
from engine.risk.model import (
    LIGHTGBM_VERSION,
    MODEL_FORMAT,
    BehaviourQuality,
    ModelFile,
    ModelQuality,
    TrainingSettings,
    default_model_path,
)
from loadgen.generator.workload import Workload, WorkloadConfig

#: The default model: at least 100 trees of 31 leaves (the size floor of issue 18).
DEFAULT_SETTINGS = TrainingSettings(
    accounts=20_000,
    payments=600_000,
    batch_size=1_024,
    train_seed=20_261_801,
    eval_seed=20_261_802,
    trees=100,
    leaves=31,
    learning_rate=0.1,
    threads=1,
    flag_fpr=0.001,
    behaviour_scale=4,
)
#: The policy hooks payments pass before they are recorded (the ``full`` profile's, no logs).
_POLICY_HOOKS = ("wallet_limits", "blacklist", "freeze", "social_credit")

Progress = Callable[[str], None]


class _Recorder(Hook):
    """Feature rows of applied payments as of their batch's start (as ``risk_model`` computes them)."""

    name = "risk_features"

    def __init__(self, features: FeatureConfig, behaviours: BehaviourConfig, seed: int) -> None:
        self.feature_config, self.behaviours, self.seed = features, behaviours, seed
        self.rows: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self._minute = self._batch_ns = 0

    def attach(self, ledger: LedgerView) -> None:
        self.ledger = ledger
        self.features = RollingFeatures(ledger.accounts, self.feature_config)

    def begin_batch(self, batch: np.ndarray) -> None:
        self._batch_ns = self.ledger.clock.now_ns()
        self._minute = batch_minute(self._batch_ns, self.ledger.clock.start_ns)

    def observe(self, batch: np.ndarray, codes: np.ndarray) -> None:
        applied = batch[codes == ResultCode.OK]
        p = Payments.of(applied)
        ledger = self.ledger
        self.rows.append(
            self.features.rows_then_record(p, self._minute, self._batch_ns, ledger.flags, int(FLAG_BLACKLISTED))
        )
        self.labels.append(labels(self.behaviours, self.seed, applied["transfer_id"]))


def scaled_behaviours(config: BehaviourConfig, scale: int) -> BehaviourConfig:
    """Behaviours ``scale`` times as common, in slots ``scale`` times shorter (the same slot load)."""
    rates = {b.name.lower(): msgspec.structs.replace(p, rate=p.rate * scale) for b, p in config.planted()}
    return msgspec.structs.replace(config, slot_payments=config.slot_payments // scale, **rates)


def collect(settings: TrainingSettings, seed: int, payments: int) -> tuple[np.ndarray, np.ndarray]:
    """(feature rows int64, behaviour labels uint8) of the applied payments of ``payments`` sent."""
    base = WorkloadConfig()
    behaviours = scaled_behaviours(base.behaviours, settings.behaviour_scale)
    wl = Workload(WorkloadConfig(accounts=settings.accounts, seed=seed, behaviours=behaviours))
    balance, wallet_class = wl.initial_state()
    recorder = _Recorder(FeatureConfig(base.persons.grid_side_cells), behaviours, seed)
    hooks = [load_hook(name) for name in _POLICY_HOOKS]
    ledger = Ledger(
        settings.accounts,
        balance_fen=balance,
        wallet_class=wallet_class,
        hooks=[*hooks, recorder],
        clock=SequencerClock.for_accounts(settings.accounts, base.payments_per_account_per_day),
    )
    for first in range(0, payments, settings.batch_size):
        ledger.apply(wl.batch(min(settings.batch_size, payments - first), first_id=first))
    return np.concatenate(recorder.rows), np.concatenate(recorder.labels)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC (the Mann-Whitney U statistic over positives x negatives); 0.5 when a class is empty."""
    from scipy.stats import mannwhitneyu

    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    return float(mannwhitneyu(pos, neg).statistic) / (len(pos) * len(neg))


def lightgbm_params(settings: TrainingSettings) -> dict[str, object]:
    """Parameters for a reproducible LightGBM binary model."""
    return {
        "objective": "binary",
        "num_leaves": settings.leaves,
        "learning_rate": settings.learning_rate,
        "num_threads": settings.threads,
        "deterministic": True,
        "force_row_wise": True,
        "seed": settings.train_seed,
        "bagging_seed": 1,
        "feature_fraction_seed": 2,
        "data_random_seed": 3,
        "min_data_in_leaf": 20,
        "verbose": -1,
    }


def fit(settings: TrainingSettings, rows: np.ndarray, y: np.ndarray) -> str:
    """Train on ``rows`` (int64) and binary labels; the LightGBM model text."""
    import lightgbm

    if lightgbm.__version__ != LIGHTGBM_VERSION:
        raise ValueError(
            f"LightGBM {lightgbm.__version__} is installed; the risk model is trained with {LIGHTGBM_VERSION} "
            f"(pinned so that the model's sha256 is reproducible): pip install lightgbm=={LIGHTGBM_VERSION}"
        )
    data = lightgbm.Dataset(
        rows.astype(np.float64),
        label=y.astype(np.float64),
        feature_name=list(FEATURE_NAMES),
        categorical_feature=["category"],
        params={"verbose": -1, "max_bin": 255},
        free_raw_data=True,
    )
    booster = lightgbm.train(lightgbm_params(settings), data, num_boost_round=settings.trees)
    return str(booster.model_to_string())


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, label: np.ndarray, flag_fpr: float
) -> tuple[float, ModelQuality]:
    """(threshold, quality): calibrate on the first half of held-out rows, judge on the second."""
    half = len(rows) // 2
    scores = predict(rows)
    calib, judge = scores[:half], scores[half:]
    calib_neg = calib[label[:half] == 0]
    threshold = float(np.quantile(calib_neg, 1 - flag_fpr, method="higher")) if len(calib_neg) else 0.5
    lab = label[half:]
    positive = lab != 0
    flagged = judge > threshold
    tp = int(np.count_nonzero(flagged & positive))
    by_behaviour = []
    for b in Behaviour:
        if b is Behaviour.NONE:
            continue
        mine = lab == b
        keep = mine | ~positive
        by_behaviour.append(
            BehaviourQuality(
                behaviour=b.name.lower(),
                payments=int(mine.sum()),
                auc=round(auc(judge[keep], mine[keep]), 4),
                recall_at_threshold=round(float(flagged[mine].mean()) if mine.any() else 0.0, 4),
            )
        )
    quality = ModelQuality(
        payments=len(judge),
        positives=int(positive.sum()),
        auc=round(auc(judge, positive), 4),
        precision_at_threshold=round(tp / max(int(flagged.sum()), 1), 4),
        recall_at_threshold=round(tp / max(int(positive.sum()), 1), 4),
        false_positive_rate=round(float(flagged[~positive].mean()) if (~positive).any() else 0.0, 5),
        by_behaviour=by_behaviour,
    )
    return threshold, quality


def train(settings: TrainingSettings = DEFAULT_SETTINGS, progress: Progress | None = None) -> bytes:
    """Train and evaluate a model; the model file's bytes (JSON, ``engine.risk.model.ModelFile``)."""
    import lightgbm

    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    people = f"{settings.accounts:,} people"
    say(f"risk model: simulating {settings.payments:,} payments of {people} (seed {settings.train_seed})")
    rows, label = collect(settings, settings.train_seed, settings.payments)
    say(f"risk model: training {settings.trees} trees of {settings.leaves} leaves on {len(rows):,} applied payments")
    text = fit(settings, rows, label != 0)
    say(f"risk model: evaluating on {settings.payments // 2:,} payments of seed {settings.eval_seed}")
    eval_rows, eval_label = collect(settings, settings.eval_seed, settings.payments // 2)
    booster = lightgbm.Booster(model_str=text)
    threshold, quality = evaluate(
        lambda r: np.asarray(booster.predict(r.astype(np.float64), num_threads=1)),
        eval_rows,
        eval_label,
        settings.flag_fpr,
    )
    say(f"risk model: AUC {quality.auc:.4f} on held-out payments ({time.perf_counter() - t0:.0f} s)")
    model = ModelFile(
        format=MODEL_FORMAT,
        feature_version=FEATURE_VERSION,
        feature_names=list(FEATURE_NAMES),
        lightgbm_version=LIGHTGBM_VERSION,
        threshold=threshold,
        training=settings,
        quality=quality,
        model_text=text,
    )
    return msgspec.json.encode(model)


def write_model(data: bytes, path: Path) -> str:
    """Write a model file atomically (temp file + rename); its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def ensure_default_model(progress: Progress | None = None) -> Path:
    """The default model's path, training and caching it first if it is not there yet."""
    path = default_model_path()
    if not path.exists():
        say = progress or (lambda msg: None)
        say(f"risk model: no cached default model at {path}: training it once (deterministic; about a minute)")
        write_model(train(DEFAULT_SETTINGS, progress), path)
    return path


def ensure_profile_model(profile: str, scenario: str | Path | None) -> None:
    """Train and cache the default model first when ``profile`` needs it and it is not cached.

    The engine only loads models (training needs this package's workload), so every command that
    builds a profile's hooks calls this first; progress goes to stderr.
    """
    if any(path == default_model_path() and not path.exists() for path in risk_model_paths(profile, scenario)):
        ensure_default_model(lambda msg: print(msg, file=sys.stderr, flush=True))
