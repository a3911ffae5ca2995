"""Hook profiles: named, ordered lists of policy hooks, read from a TOML scenario file.

The package ships ``engine/scenarios/default.toml`` with the profiles ``baseline``, ``limits``,
``compliance``, ``enforcement``, ``surveillance``, ``full`` and ``privacy`` and every built-in
hook's parameters; users copy it and pass their copy as ``scenario_path``. The file is decoded
into the typed, frozen Structs below; unknown fields and bad values are errors that name the file,
the field (``$.hooks.blacklist.listed_fraction``) and the problem.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from engine.behaviours import BehaviourConfig
from engine.hooks.base import Hook
from engine.hooks.registry import BUILTIN, BUILTIN_HOOKS, check_spec, load_hook
from engine.hooks.risk_model import RiskModelConfig
from engine.hooks.surveillance_log import SurveillanceLogConfig
from engine.persons import PersonsConfig
from engine.risk.model import resolve_model_path


class _HookSettingsBase(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Parameters of every built-in hook (all optional), and of users' hooks under ``custom``."""

    #: Keyword arguments for ``module:attribute`` hooks, keyed by that spec.
    custom: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    def params(self, spec: str) -> Any:
        """The parameters for hook ``spec``: its config Struct, or a user's hook's keyword arguments."""
        return getattr(self, spec) if spec in BUILTIN else self.custom.get(spec, {})


if TYPE_CHECKING:

    class HookSettings(_HookSettingsBase, frozen=True, forbid_unknown_fields=True):
        def __getattr__(self, name: str) -> Any: ...

else:
    #: One field per built-in hook (``engine.hooks.registry.BUILTIN_HOOKS``), named as the hook and
    #: typed by its config Struct, defaulting to that Struct's defaults.
    HookSettings = msgspec.defstruct(
        "HookSettings",
        [(row.name, row.config, row.config()) for row in BUILTIN_HOOKS],
        bases=(_HookSettingsBase,),
        module=__name__,
        frozen=True,
        forbid_unknown_fields=True,
    )


class WorkloadSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The people behind the generated payments (the scenario's ``[workload]`` table)."""

    persons: PersonsConfig = PersonsConfig()
    behaviours: BehaviourConfig = BehaviourConfig()


class CompareSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How ``cbdc-bench compare`` judges and searches (the scenario's ``[compare]`` table).

    A rate is sustained when achieved >= ``min_achieved_ratio`` of offered and p99 latency (from
    each payment's scheduled time) <= ``slo_p99_ms``. Every profile is also run at
    ``common_rates_tps`` (plus the lowest maximum any profile sustained) to compare at equal load.
    """

    slo_p99_ms: float = 20.0
    min_achieved_ratio: float = 0.99
    common_rates_tps: tuple[float, ...] = (100_000.0, 300_000.0)
    start_tps: float = 300_000.0  # where the first search of each profile starts
    min_tps: float = 10_000.0
    max_tps: float = 16_000_000.0  # above what client + server on one machine reach (engine alone: ~6-8M/s)
    precision: float = 0.05  # relative width at which bisection stops (full mode)

    def __post_init__(self) -> None:
        if self.slo_p99_ms <= 0:
            raise ValueError(f"compare.slo_p99_ms must be > 0, got {self.slo_p99_ms}")
        if not 0 < self.min_achieved_ratio <= 1:
            raise ValueError(f"compare.min_achieved_ratio must be in (0, 1], got {self.min_achieved_ratio}")
        if not 0 < self.min_tps <= self.start_tps <= self.max_tps:
            raise ValueError(
                "compare: need 0 < min_tps <= start_tps <= max_tps, got "
                f"{self.min_tps}, {self.start_tps}, {self.max_tps}"
            )
        if not 0 < self.precision < 1:
            raise ValueError(f"compare.precision must be in (0, 1), got {self.precision}")
        if any(r <= 0 for r in self.common_rates_tps):
            raise ValueError(f"compare.common_rates_tps must be > 0, got {list(self.common_rates_tps)}")


class Scenario(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    profiles: dict[str, tuple[str, ...]]
    hooks: HookSettings = HookSettings()
    workload: WorkloadSettings = WorkloadSettings()
    compare: CompareSettings = CompareSettings()

    def __post_init__(self) -> None:
        if not self.profiles:
            raise ValueError("profiles: define at least one profile")
        for name, specs in self.profiles.items():
            for spec in specs:
                try:
                    check_spec(spec)
                except ValueError as exc:
                    raise ValueError(f"profile {name!r}: {exc}") from None
            if len(set(specs)) != len(specs):
                raise ValueError(f"profile {name!r} lists a hook twice: {list(specs)}")


def default_scenario_text() -> bytes:
    """The shipped default scenario file, for users to copy."""
    return importlib.resources.files("engine.scenarios").joinpath("default.toml").read_bytes()


def load_scenario(scenario_path: str | Path | None = None) -> Scenario:
    """Decode and validate a scenario file (the shipped default when ``scenario_path`` is None)."""
    if scenario_path is None:
        name, data = "default scenario (engine/scenarios/default.toml)", default_scenario_text()
    else:
        name = str(scenario_path)
        try:
            data = Path(scenario_path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read scenario file {name}: {exc.strerror or exc}") from exc
    try:
        return msgspec.toml.decode(data, type=Scenario)
    except msgspec.ValidationError as exc:
        raise ValueError(f"scenario {name}: invalid: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ValueError(f"scenario {name}: not valid TOML: {exc}") from exc


def profile_names(scenario_path: str | Path | None = None) -> tuple[str, ...]:
    """The profiles a scenario defines, in file order."""
    return tuple(load_scenario(scenario_path).profiles)


def profile_hooks(profile: str, scenario: Scenario) -> tuple[str, ...]:
    """The hook specs of ``profile``; ValueError listing the profiles if there is none such."""
    try:
        return scenario.profiles[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(scenario.profiles)}") from None


def build_hooks(profile: str, scenario_path: str | Path | None = None, *, trove_dir: str = "") -> list[Hook]:
    """Fresh hook instances for ``profile`` of the scenario at ``scenario_path`` (default: shipped).

    ``trove_dir`` (the ``--trove`` option) is where a trove-mode ``surveillance_log`` keeps its
    trove, overriding the scenario's ``trove.dir``: the one path by which the option reaches it.
    """
    scenario = load_scenario(scenario_path)
    return [
        load_hook(spec, _with_trove(scenario.hooks.params(spec), trove_dir))
        for spec in profile_hooks(profile, scenario)
    ]


def _with_trove(params: Any, trove_dir: str) -> Any:
    if not trove_dir or not isinstance(params, SurveillanceLogConfig) or params.mode != "trove":
        return params
    return msgspec.structs.replace(params, trove=msgspec.structs.replace(params.trove, dir=trove_dir))


def trove_needed(profile: str, scenario_path: str | Path | None = None) -> bool:
    """Whether ``profile`` runs a trove-mode ``surveillance_log`` whose scenario names no trove dir
    (the ``serve`` command then refuses to start without ``--trove``: the trove is the point)."""
    scenario = load_scenario(scenario_path)
    for spec in profile_hooks(profile, scenario):
        params = scenario.hooks.params(spec)
        if isinstance(params, SurveillanceLogConfig) and params.mode == "trove" and not params.trove.dir:
            return True
    return False


def risk_model_paths(profile: str, scenario_path: str | Path | None = None) -> list[Path]:
    """The model files ``profile``'s risk_model hooks load (the cached default one for an empty path)."""
    scenario = load_scenario(scenario_path)
    params = [scenario.hooks.params(spec) for spec in profile_hooks(profile, scenario)]
    return [resolve_model_path(p.model_path) for p in params if isinstance(p, RiskModelConfig)]


def risk_model_sha256(profile: str, scenario_path: str | Path | None = None) -> str:
    """sha256 of the risk model ``profile`` loads ("" when it has none): journals record it."""
    paths = risk_model_paths(profile, scenario_path)
    if not paths:
        return ""
    try:
        return hashlib.sha256(paths[0].read_bytes()).hexdigest()
    except OSError as exc:
        raise ValueError(f"profile {profile!r}: cannot read its risk model {paths[0]}: {exc.strerror or exc}") from exc
