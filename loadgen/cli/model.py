"""``cbdc-bench model``: train the risk model, or measure its inference speed.

``model train [--out FILE] [--json]`` trains the ``risk_model`` hook's LightGBM model on the
workload's planted behaviours (``loadgen.model.train``), prints its held-out quality (ROC AUC
overall and per behaviour, precision and recall at the flag threshold) and writes the model file:
to ``--out``, else to the default model's cache (``engine.risk.model.default_model_path``), which
is what a profile with ``risk_model`` and no ``model_path`` loads. Training is deterministic: the
same options give the same file, byte for byte (its sha256 is printed).

``model bench`` measures inference cost per payment for every runtime (LightGBM, the trees
compiled by lleaves and by tl2cgen, ONNX Runtime) at 50/100/300 trees, batches of 1k-16k rows,
one and two threads; checks the compiled scores against LightGBM's on held-out payments; and
times the naive per-payment call, two callers at once (the GIL) and scikit-learn's
HistGradientBoosting (``loadgen.model.bench``). About 4 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec

from engine.risk.model import ModelFile, default_model_path
from loadgen.cli.common_args import add_json, add_model_training, add_out
from loadgen.model.train import DEFAULT_SETTINGS, train, write_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="train the risk model or measure its inference speed", description=__doc__)
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    t = msub.add_parser("train", help="train, evaluate and write the risk model")
    add_out(t, default=None, when_unset="the cached default model", what="model file to write", metavar="FILE")
    add_model_training(
        t, trees=DEFAULT_SETTINGS.trees, payments=DEFAULT_SETTINGS.payments, accounts=DEFAULT_SETTINGS.accounts
    )
    add_json(t)
    t.set_defaults(func=_train)
    b = msub.add_parser("bench", help="inference cost per runtime, model size, batch size and thread count")
    add_model_training(b, trees=100, payments=200_000, accounts=DEFAULT_SETTINGS.accounts)
    add_json(b)
    b.set_defaults(func=_bench)


def train_model(out: Path, *, trees: int, payments: int, accounts: int, quiet: bool = False) -> tuple[ModelFile, str]:
    """Train with the default settings resized; write ``out``; the model and its sha256."""
    if trees < 1 or payments < 10_000 or accounts < 100:
        raise ValueError("need --trees >= 1, --payments >= 10000 and --accounts >= 100 to train a model")
    settings = msgspec.structs.replace(DEFAULT_SETTINGS, trees=trees, payments=payments, accounts=accounts)
    data = train(settings, None if quiet else lambda msg: print(msg, file=sys.stderr, flush=True))
    return msgspec.json.decode(data, type=ModelFile), write_model(data, out)


def _train(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_model_path()
    model, sha256 = train_model(out, trees=args.trees, payments=args.payments, accounts=args.accounts)
    q = model.quality
    if args.json:
        summary = {"path": str(out), "sha256": sha256, "threshold": model.threshold, **msgspec.to_builtins(q)}
        print(json.dumps(summary))
        return 0
    print(f"model: {out}\nsha256: {sha256}")
    print(
        f"held-out: {q.payments:,} payments, {q.positives:,} planted; AUC {q.auc:.4f}; at threshold "
        f"{model.threshold:.4f}: precision {q.precision_at_threshold:.3f}, recall {q.recall_at_threshold:.3f}, "
        f"false positives {q.false_positive_rate:.3%} of ordinary payments"
    )
    for b in q.by_behaviour:
        print(f"  {b.behaviour:<18} {b.payments:>6} payments  AUC {b.auc:.4f}  recall {b.recall_at_threshold:.3f}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from loadgen.model.bench import format_bench, run_bench

    result = run_bench(
        trees=args.trees,
        payments=args.payments,
        accounts=args.accounts,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(json.dumps(msgspec.to_builtins(result)) if args.json else format_bench(result))
    return 0
