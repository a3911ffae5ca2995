"""Where the risk model runs: LightGBM's own predictor, or the trees compiled to native code.

The same trees give the same scores in every runtime (checked by ``cbdc-bench model bench``:
largest difference 4e-16 for lleaves, 0 for tl2cgen, no flag decision changed on held-out data),
so the runtime is a speed choice, not a model choice; the model's sha256 stays the identity
that journals and results record, and ``name`` says which runtime scored.

Measured per payment, batches of 1k-16k rows, one thread, 100 trees of 31 leaves (shared
2-core EPYC, so ratios only, README "Risk model"): LightGBM ~3.4 us, tl2cgen ~1.2 us, lleaves
~0.4 us, ONNX Runtime ~3 us. So ``auto`` (the default) is lleaves, and falls back to LightGBM,
saying so, when lleaves cannot be imported or cannot compile.

* ``lleaves`` compiles the LightGBM model text with LLVM (llvmlite) to a function over float64
  rows; the object code is cached next to the model file, keyed by the model's sha256, the
  lleaves and llvmlite versions and the host CPU (the code is tuned for it), so only the first
  load of a model on a machine compiles (a few seconds for 100 trees; a progress line says so).
  lleaves 1.3 uses llvmlite's legacy pass manager, removed in llvmlite 0.45: pyproject pins
  ``llvmlite<0.45``.
* ``tl2cgen`` (with treelite) generates C and builds a shared library with gcc; cached the same
  way. Slower than lleaves here and ~4x its compile time, so it is a choice, not the default.
* ``lightgbm``: ``Booster.predict``, no compilation.

All three run in C through ctypes, which releases the GIL: the observe-mode thread of
``engine.hooks.risk_model`` scores on the second core while the sequencer goes on.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

#: The scenario's ``[hooks.risk_model] predictor``: ``auto`` = the fastest installed (lleaves),
#: else LightGBM.
PredictorName = Literal["auto", "lleaves", "tl2cgen", "lightgbm"]
#: Compiled runtimes ``auto`` tries, fastest first (measured, see the module docstring).
AUTO_ORDER: tuple[str, ...] = ("lleaves",)

Log = Callable[[str], None]


class CompilerUnavailable(RuntimeError):
    """A compiled runtime cannot be used here (not installed, or its compiler failed)."""


class Runtime(Protocol):
    """Scores float64 feature rows: the probability of each (float64)."""

    name: str

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray: ...


class LightGBMRuntime:
    """LightGBM's own ``Booster.predict`` (OpenMP threads inside one call)."""

    name = "lightgbm"

    def __init__(self, model_text: str) -> None:
        import lightgbm

        self.booster = lightgbm.Booster(model_str=model_text)

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_threads=threads), dtype=np.float64)


class LleavesRuntime:
    """The model compiled by lleaves (LLVM); ``threads`` > 1 splits a batch over Python threads."""

    name = "lleaves"

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        return np.asarray(self.model.predict(x, n_jobs=threads), dtype=np.float64)


class Tl2cgenRuntime:
    """The model compiled to a shared library by tl2cgen (gcc); its OpenMP threads split a batch."""

    name = "tl2cgen"

    def __init__(self, libpath: Path) -> None:
        import tl2cgen

        self._tl2cgen = tl2cgen
        self._predictors: dict[int, Any] = {}
        self._libpath = libpath
        # tl2cgen's Predictor.predict "may be called by only one thread at a time"; the hook's
        # model thread and a reference twin on the caller's thread can overlap.
        self._lock = threading.Lock()

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        with self._lock:
            predictor = self._predictors.get(threads)
            if predictor is None:
                predictor = self._tl2cgen.Predictor(self._libpath, nthread=threads)
                self._predictors[threads] = predictor
            out = predictor.predict(self._tl2cgen.DMatrix(x))
        return np.asarray(out, dtype=np.float64).reshape(len(x))


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def artefact_path(model_path: Path, sha256: str, tag: str) -> Path:
    """Where a compiled form of the model at ``model_path`` is cached: next to it, named by what made it.

    The name carries the model's sha256 (first 16 hex digits) and ``tag`` (the compiler's versions,
    and the host CPU where the code is tuned for it), so a changed model, compiler or machine
    compiles afresh instead of loading stale code (lleaves loads a cache file without any check of
    its own). ``engine.risk.model`` passes a path in its cache folder when the model's is read-only.
    """
    return model_path.with_name(f"{model_path.stem}.{sha256[:16]}.{tag}")


def _model_text_file(model_text: str, folder: str) -> str:
    path = os.path.join(folder, "model.txt")
    Path(path).write_text(model_text)
    return path


def _compile_lleaves(model_text: str, sha256: str, model_path: Path, log: Log) -> LleavesRuntime:
    try:
        import lleaves
        import llvmlite.binding as llvm
    except ImportError as exc:
        raise CompilerUnavailable(
            f"lleaves is not installed ({exc}): pip install 'lleaves>=1.3' 'llvmlite<0.45'"
        ) from exc
    tag = f"lleaves{_version('lleaves')}-llvmlite{_version('llvmlite')}-{llvm.get_host_cpu_name()}.o"
    cached = artefact_path(model_path, sha256, tag)
    with tempfile.TemporaryDirectory(prefix="cbdc-risk-") as tmp:
        model = lleaves.Model(model_file=_model_text_file(model_text, tmp))
        if cached.exists():
            try:
                model.compile(cache=str(cached))
                return LleavesRuntime(model)
            except Exception as exc:  # a damaged cache file: compile afresh below
                log(f"risk model: cached lleaves code {cached} did not load ({exc}): compiling again")
                cached.unlink(missing_ok=True)
        log(f"risk model: compiling {model.num_trees()} trees with lleaves (LLVM), once per model and machine ...")
        cached.parent.mkdir(parents=True, exist_ok=True)
        # Compiled to a temporary name and renamed: a concurrent process never loads half a file.
        tmp_object = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        try:
            model.compile(cache=str(tmp_object))
        except Exception as exc:
            raise CompilerUnavailable(f"lleaves could not compile the model: {type(exc).__name__}: {exc}") from exc
        tmp_object.replace(cached)
        log(f"risk model: lleaves code cached at {cached}")
        return LleavesRuntime(model)


def _compile_tl2cgen(model_text: str, sha256: str, model_path: Path, log: Log) -> Tl2cgenRuntime:
    try:
        import tl2cgen
        import treelite
    except ImportError as exc:
        raise CompilerUnavailable(f"tl2cgen is not installed ({exc}): pip install 'cbdc-bench[compilers]'") from exc
    cached = artefact_path(model_path, sha256, f"tl2cgen{_version('tl2cgen')}-treelite{_version('treelite')}.so")
    if not cached.exists():
        with tempfile.TemporaryDirectory(prefix="cbdc-risk-") as tmp:
            trees = treelite.frontend.load_lightgbm_model(_model_text_file(model_text, tmp))
            log(f"risk model: compiling {trees.num_tree} trees with tl2cgen (gcc), once per model and machine ...")
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp_lib = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.so")
            try:
                tl2cgen.export_lib(trees, toolchain="gcc", libpath=tmp_lib, params={"parallel_comp": 4}, nthread=1)
            except Exception as exc:
                raise CompilerUnavailable(f"tl2cgen could not build the model: {type(exc).__name__}: {exc}") from exc
            tmp_lib.replace(cached)
            log(f"risk model: tl2cgen library cached at {cached}")
    return Tl2cgenRuntime(cached)


def load_runtime(name: PredictorName, model_text: str, sha256: str, model_path: Path, log: Log) -> tuple[Runtime, str]:
    """The runtime to score with, and why it is not the one asked for ("" when it is).

    Compiled forms are cached next to ``model_path`` (``artefact_path``).

    ``auto`` tries ``AUTO_ORDER`` and falls back to LightGBM, returning the reason; a runtime named
    explicitly must work (``CompilerUnavailable`` otherwise: asked for, so not silently replaced).
    """
    compilers: dict[str, Callable[[str, str, Path, Log], Runtime]] = {
        "lleaves": _compile_lleaves,
        "tl2cgen": _compile_tl2cgen,
    }
    if name == "lightgbm":
        return LightGBMRuntime(model_text), ""
    if name != "auto":
        return compilers[name](model_text, sha256, model_path, log), ""
    reasons = []
    for candidate in AUTO_ORDER:
        try:
            return compilers[candidate](model_text, sha256, model_path, log), ""
        except (CompilerUnavailable, ImportError, OSError) as exc:
            reasons.append(f"{candidate}: {exc}")
    why = "; ".join(reasons)
    log(
        f"risk model: no compiled predictor ({why}); scoring with LightGBM's own predictor instead "
        "(several times the CPU per payment: README, 'Risk model')"
    )
    return LightGBMRuntime(model_text), why
