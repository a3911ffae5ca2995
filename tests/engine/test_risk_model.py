"""The risk model: rolling features, the trained model's quality, and the hook against its twin."""

from __future__ import annotations

import hashlib
import json

import msgspec
import numpy as np
import pytest

from engine.categories import Category
from engine.codes import PRECEDENCE, ResultCode
from engine.hooks.registry import load_hook
from engine.hooks.risk_model import RiskModel
from engine.hooks.social_credit import SocialCredit
from engine.ledger import Ledger
from engine.records import make_batch
from engine.reference_hooks import reference_for
from engine.risk.features import (
    BYTES_PER_ACCOUNT,
    COUNT_ONE,
    FEATURE_NAMES,
    HOUR_HALF_LIFE_MIN,
    Payments,
    RollingFeatures,
    log2_q4,
)
from engine.risk.model import ModelFile, load_model
from engine.server.config import ServerConfig
from loadgen.cli.main import main
from loadgen.generator.workload import Workload, WorkloadConfig

ACCOUNTS = 1_200
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def test_counters_halve_per_half_life_and_sketches_count_devices() -> None:
    f = RollingFeatures(10)
    pay = Payments.of(make_batch([3, 3, 3], [4, 4, 4], [10_000, 20_000, 30_000], device_id=[8, 9, 8], location_cell=5))
    f.record(pay, minute=100)
    one = Payments.of(make_batch([3], [4], [10_000], device_id=[10], location_cell=5))
    args = (np.zeros(10, np.uint8), 2)  # the account bytes (class and flags), the listed bit
    now = f.rows(one, 100, 0, *args)[0]
    later = f.rows(one, 100 + HOUR_HALF_LIFE_MIN, 0, *args)[0]
    assert now[COL["count_hour_q4"]] == 3 * COUNT_ONE and later[COL["count_hour_q4"]] == 3 * COUNT_ONE // 2
    assert now[COL["amount_hour_yuan"]] == 600 and later[COL["amount_hour_yuan"]] == 300
    assert now[COL["devices_week"]] == 2 and now[COL["device_seen"]] == 0  # device 10 is new
    assert now[COL["minutes_since_last"]] == 0 and later[COL["minutes_since_last"]] == HOUR_HALF_LIFE_MIN
    two_weeks = f.rows(one, 100 + 14 * 1_440, 0, *args)[0]
    assert two_weeks[COL["count_day_q4"]] == 0 and two_weeks[COL["devices_week"]] == 0
    assert f.state_bytes() == BYTES_PER_ACCOUNT * 10


def test_log2_q4_is_exact_at_powers_of_two_and_linear_between() -> None:
    x = np.array([0, 1, 2, 3, 1024, 1025, 1536, 2**40])
    assert log2_q4(x).tolist() == [0, 0, 16, 24, 160, 160, 168, 640]


def test_small_model_finds_the_planted_behaviours(risk_model_cache) -> None:
    model = load_model(risk_model_cache)
    q = model.model.quality
    assert q.auc >= 0.9, msgspec.json.encode(q)
    assert q.positives > 50 and 0 < q.false_positive_rate < 0.01
    assert {b.behaviour for b in q.by_behaviour} >= {"gambling", "ring", "blacklist_contact"}
    assert model.trees == 20 and 0 < model.threshold < 1
    assert model.sha256 == hashlib.sha256(risk_model_cache.read_bytes()).hexdigest()


def test_model_train_cli_is_reproducible(tmp_path, capsys) -> None:
    args = ["model", "train", "--accounts", "1000", "--payments", "20000", "--trees", "5", "--json"]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*args, "--out", str(tmp_path / "b.json")]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["sha256"] == second["sha256"] == hashlib.sha256((tmp_path / "a.json").read_bytes()).hexdigest()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert 0.5 < first["auc"] <= 1


def test_model_file_errors_say_what_to_do(tmp_path, risk_model_cache) -> None:
    with pytest.raises(FileNotFoundError, match="cbdc-bench model train"):
        load_model(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match="not a cbdc-bench risk model"):
        load_model(tmp_path / "junk.json")
    model = msgspec.json.decode(risk_model_cache.read_bytes(), type=ModelFile)
    (tmp_path / "old.json").write_bytes(msgspec.json.encode(msgspec.structs.replace(model, feature_version=0)))
    with pytest.raises(ValueError, match="retrain"):
        load_model(tmp_path / "old.json")
    with pytest.raises(ValueError, match="threshold"):
        load_hook("risk_model", {"threshold": 1.5})


def test_risk_veto_is_appended_after_the_policy_vetoes() -> None:
    assert ResultCode.RISK_VETO == 20
    assert PRECEDENCE.index(ResultCode.RISK_VETO) == PRECEDENCE.index(ResultCode.CREDIT_RESTRICTED) + 1
    assert PRECEDENCE.index(ResultCode.RISK_VETO) < PRECEDENCE.index(ResultCode.WALLET_SINGLE_LIMIT)


def _ledgers(mode: str, threshold: float, inference: str = "batched", seed: int = 7, **more: object):
    wl = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=seed))
    balance, classes = wl.initial_state()
    hooks = [load_hook(n) for n in ("wallet_limits", "blacklist", "social_credit")]
    params = {"mode": mode, "threshold": threshold, "inference": inference, "lag_batches": 2, "penalty": 200}
    risk = load_hook("risk_model", params | more)
    ledger = Ledger(ACCOUNTS, balance_fen=balance, wallet_class=classes, hooks=[*hooks, risk])
    return wl, ledger, reference_for(ledger), risk


def _hostile(rng: np.random.Generator, first_id: int) -> np.ndarray:
    """Few payers paying many times in one batch, from new devices, far away, in restricted categories."""
    n = 300
    payer = rng.integers(0, 40, n)
    payee = (payer + 1 + rng.integers(0, ACCOUNTS - 2, n)) % ACCOUNTS
    category = rng.choice([int(Category.AIR_TRAVEL), int(Category.GAMBLING), int(Category.GROCERIES)], n)
    return make_batch(
        payer,
        payee,
        rng.integers(1, 900_000, n),
        transfer_id=np.arange(first_id, first_id + n),
        category=category,
        device_id=rng.integers(0, 2**63, n).astype(np.uint64),
        location_cell=rng.integers(0, 2**20, n),
    )


def _apply_alongside(wl, ledger, ref, rng, batches: int):
    """``batches`` batches (every third hostile) through the ledger, its deferred observers run
    after each as the server runs them after the replies, and through the reference: the same
    codes, balances and social-credit scores after every batch. Returns both social-credit hooks."""
    social = next(h for h in ledger.hooks if isinstance(h, SocialCredit))
    ref_social = next(h for h in ref.hooks if h.name == "social_credit")
    first = 0
    for i in range(batches):
        batch = wl.batch(400, first_id=first) if i % 3 else _hostile(rng, first)
        first += len(batch)
        codes = ledger.apply(batch)
        ledger.run_deferred()
        assert codes.tolist() == ref.apply(batch)
        assert ledger.balance.tolist() == ref.balance
        assert social.score.tolist() == ref_social.scores
    return social, ref_social


@pytest.mark.parametrize(
    ("mode", "inference", "more"),
    [
        ("observe", "batched", {}),
        ("observe", "batched", {"deferred": False, "model_thread_nice": 5}),
        ("observe", "batched", {"model_thread": False, "predictor": "lightgbm"}),
        ("observe", "batched", {"predictor": "tl2cgen"}),
        ("authorize", "batched", {}),
        ("authorize", "per_payment", {}),
    ],
)
def test_batch_equals_one_at_a_time(mode, inference, more, rng, request) -> None:
    # A low threshold makes the model flag (or veto) often, so the feed into scores is exercised.
    wl, ledger, ref, risk = _ledgers(mode, 0.02, inference, **more)
    request.addfinalizer(risk.close)
    social, ref_social = _apply_alongside(wl, ledger, ref, rng, 12)
    assert isinstance(risk, RiskModel)
    twin = next(h for h in ref.hooks if h.name == "risk_model")
    risk.flush()
    twin.flush()
    assert social.score.tolist() == ref_social.scores
    if mode == "authorize":
        # A payment the model vetoes may also be vetoed by a check of higher precedence.
        assert risk.vetoed == twin.vetoed >= ledger.stats.codes[ResultCode.RISK_VETO] > 0
    else:
        assert risk.flagged == twin.flagged > 0
        assert (risk.background_ns() > 0) == more.get("model_thread", True)
    stats = risk.stats()
    assert stats["scored"] > 0 and stats["features_ns"] > 0 and stats["model_sha256"] == risk.predictor.sha256
    assert stats["predictor"] == more.get("predictor", "lleaves") and stats["inference_ns"] > 0
    assert stats["model_thread"] == (mode == "observe" and more.get("model_thread", True))


def test_realistic_profile_journals_its_model(risk_model_cache) -> None:
    header = ServerConfig(profile="realistic").journal_header()
    assert header.risk_model_sha256 == hashlib.sha256(risk_model_cache.read_bytes()).hexdigest()
    assert ServerConfig(profile="full").journal_header().risk_model_sha256 == ""


def test_inference_bench_measures_every_runtime_it_names() -> None:
    from loadgen.model.bench import PREDICTORS, THREADS, format_bench, run_bench

    r = run_bench(trees=4, payments=12_000, accounts=1_000, tree_counts=(2, 4), batch_sizes=(256, 1_024))
    assert not r.unavailable, r.unavailable  # every runtime is installed with the dev extra
    cells = {(f.predictor, f.trees, f.batch_rows, f.threads) for f in r.figures}
    assert cells == {(p, n, b, t) for p in PREDICTORS for n in (2, 4) for b in (256, 1_024) for t in THREADS}
    assert all(f.cpu_ns_per_payment > 0 and f.wall_ns_per_payment > 0 for f in r.figures)
    checks = {(c.predictor, c.trees): c for c in r.checks}
    # The compiled trees score as LightGBM does (float64 throughout); ONNX Runtime scores in float32.
    for predictor in ("lleaves", "tl2cgen"):
        assert checks[predictor, 4].max_abs_diff < 1e-9 and checks[predictor, 4].flag_changes == 0
    assert checks["onnxruntime", 4].max_abs_diff < 1e-5 and checks["lightgbm", 4].max_abs_diff == 0
    assert set(r.per_payment_call_ns) == set(r.two_callers_speedup) == set(PREDICTORS)
    assert r.fastest in PREDICTORS and r.sklearn_hgb_ns_per_payment
    text = format_bench(r)
    assert all(p in text for p in PREDICTORS) and "flag decisions changed" in text


def test_engine_trains_the_default_model_on_first_use_with_a_progress_line(tmp_path, monkeypatch, capsys) -> None:
    import loadgen.model.train as training
    from engine.risk.model import default_model_path

    monkeypatch.setenv("CBDC_BENCH_CACHE", str(tmp_path / "cache"))
    tiny = msgspec.structs.replace(training.DEFAULT_SETTINGS, accounts=1_000, payments=20_000, trees=5)
    monkeypatch.setattr(training, "DEFAULT_SETTINGS", tiny)
    args = ["engine", "--profile", "realistic", "--accounts", "5000", "--seconds", "0.3", "--warmup", "0", "--json"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "no cached default model" in err and "AUC" in err and default_model_path().exists()
    stats = json.loads(out)["hook_stats"]["risk_model"]
    assert stats["scored"] > 0 and stats["trees"] == 5 and stats["features_ns_per_payment"] > 0
    assert json.loads(out)["bytes_per_account"] == 11 + BYTES_PER_ACCOUNT  # full (issue 14: 11 bytes) + the features
    assert main(args) == 0 and "no cached default model" not in capsys.readouterr().err  # cached now


def test_compiled_predictor_is_cached_next_to_the_model_and_scores_as_lightgbm(tmp_path, risk_model_cache) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(risk_model_cache.read_bytes())
    lines: list[str] = []
    compiled = load_model(path, runtime="lleaves", log=lines.append)
    assert compiled.runtime_name == "lleaves" and compiled.fallback_reason == ""
    assert any("compiling 20 trees" in line for line in lines)
    cached = [p.name for p in tmp_path.iterdir() if p.name != "model.json"]
    assert cached == [f"model.{compiled.sha256[:16]}.{cached[0].split('.', 2)[2]}"] and "lleaves" in cached[0]
    lines.clear()
    again = load_model(path, runtime="lleaves", log=lines.append)
    assert not any("compiling" in line for line in lines)  # loaded from the cache
    batch = Workload(WorkloadConfig(accounts=ACCOUNTS, seed=3)).batch(2_000, first_id=0)
    n = int(max(batch["payer"].max(), batch["payee"].max())) + 1
    rows = RollingFeatures(n).rows(Payments.of(batch), 1, 0, np.zeros(n, np.uint8), 2)
    reference = load_model(path, runtime="lightgbm").predict(rows)
    assert np.abs(again.predict(rows) - reference).max() < 1e-12
    assert np.abs(again.predict(rows, threads=2) - reference).max() < 1e-12


def test_auto_falls_back_to_lightgbm_and_says_why(tmp_path, risk_model_cache, monkeypatch) -> None:
    import sys

    from engine.risk.runtimes import CompilerUnavailable

    monkeypatch.setitem(sys.modules, "lleaves", None)  # import lleaves now raises ImportError
    lines: list[str] = []
    model = load_model(risk_model_cache, log=lines.append)
    assert model.runtime_name == "lightgbm" and "lleaves is not installed" in model.fallback_reason
    assert any("scoring with LightGBM" in line and "pip install" in line for line in lines)
    with pytest.raises(CompilerUnavailable, match="pip install"):
        load_model(risk_model_cache, runtime="lleaves", log=lines.append)


@pytest.mark.parametrize("model_thread", [True, False])
def test_a_failing_model_thread_is_counted_and_the_ledger_goes_on(model_thread, request) -> None:
    wl, ledger, _, risk = _ledgers("observe", 0.02, model_thread=model_thread)
    request.addfinalizer(risk.close)
    assert isinstance(risk, RiskModel) and risk.predictor is not None

    def broken(rows, *, threads=1):
        raise RuntimeError("model crashed")

    risk.predictor.predict = broken  # type: ignore[method-assign]
    for i in range(6):
        codes = ledger.apply(wl.batch(300, first_id=i * 300))
        ledger.run_deferred()
        assert ResultCode.HOOK_ERROR not in codes
    risk.flush()
    assert risk.stats()["scoring_errors"] == 6 and "model crashed" in risk.stats()["last_scoring_error"]
    assert ledger.audit().ok


def test_deferred_features_refuse_a_batch_until_the_last_one_is_observed(request) -> None:
    wl, ledger, _, risk = _ledgers("observe", 0.02)
    request.addfinalizer(risk.close)
    assert risk.deferred
    assert ResultCode.HOOK_ERROR not in ledger.apply(wl.batch(300, first_id=0))
    # run_deferred() not called: the features are a batch behind, so the next batch is refused.
    refused = ledger.apply(wl.batch(300, first_id=300))
    assert (refused == ResultCode.HOOK_ERROR).all()
    assert "run_deferred" in ledger.hook_timing["risk_model"].last_error
    ledger.run_deferred()
    assert ResultCode.HOOK_ERROR not in ledger.apply(wl.batch(300, first_id=300))
    ledger.run_deferred()
    assert risk.scored == int(ledger.stats.codes[ResultCode.OK])


def test_model_thread_runs_at_the_niceness_asked_for(request) -> None:
    import os

    wl, ledger, _, risk = _ledgers("observe", 0.02, model_thread_nice=7)
    request.addfinalizer(risk.close)
    assert isinstance(risk, RiskModel)
    ledger.apply(wl.batch(300, first_id=0))
    ledger.run_deferred()
    assert risk._executor is not None
    risk._executor.submit(lambda: None).result()  # the thread has started (its initializer ran first)
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert risk.model_thread_tid not in (0, os.getpid())
    assert risk.stats()["model_thread_nice"] == min(own + 7, 19)
    assert os.getpriority(os.PRIO_PROCESS, risk.model_thread_tid) == min(own + 7, 19)
    assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the caller's thread keeps its own
    with pytest.raises(ValueError, match="model_thread_nice"):
        load_hook("risk_model", {"model_thread_nice": 20})


def test_a_model_thread_behind_is_relieved_by_the_sequencer_with_the_same_flags(rng, request) -> None:
    """A model thread that gets no core (here: stuck behind a job) never stalls the sequencer: a
    batch it has not finished when its flags are due is scored on the sequencer's thread."""
    import threading

    wl, ledger, ref, risk = _ledgers("observe", 0.02)
    assert isinstance(risk, RiskModel) and risk.predictor is not None
    stuck = threading.Event()
    request.addfinalizer(risk.close)
    request.addfinalizer(stuck.set)
    predict = risk.predictor.predict

    def stalls_on_the_model_thread(rows, *, threads=1):
        if threading.current_thread() is not threading.main_thread():
            stuck.wait()  # descheduled mid-batch: the first batch runs, the rest queue behind it
        return predict(rows, threads=threads)

    risk.predictor.predict = stalls_on_the_model_thread  # type: ignore[method-assign]
    social, ref_social = _apply_alongside(wl, ledger, ref, rng, 10)
    stats = risk.stats()
    # The stuck batch after its patience, the ones queued behind it at once: the ledger went on.
    assert stats["scored_on_sequencer"] > 0
    assert risk.flagged > 0 and stats["scoring_errors"] == 0
    stuck.set()
    risk.flush()
    twin = next(h for h in ref.hooks if h.name == "risk_model")
    twin.flush()
    assert risk.flagged == twin.flagged and social.score.tolist() == ref_social.scores
