"""Finding hooks by name: the built-in hooks, or a user's hook as ``module:attribute``.

A built-in hook is built from its config Struct (or a dict of its fields, validated into one).
``module:attribute`` names either a Hook subclass or a factory returning a Hook; its parameters
are passed as keyword arguments.

``BUILTIN_HOOKS`` has one row per built-in hook: its class, its config Struct and its reference
twin. The scenario file's ``[hooks.*]`` tables (``engine.profiles.HookSettings``) and the
reference mirror (``engine.reference_hooks``) are derived from it, so adding a built-in hook is
its module, one row here, and its defaults in ``engine/scenarios/default.toml`` if it has any.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from engine import reference_twins as twins
from engine.hooks.audit_chain import AuditChain, AuditChainConfig
from engine.hooks.base import Hook
from engine.hooks.blacklist import Blacklist, BlacklistConfig
from engine.hooks.freeze import Freeze, FreezeConfig
from engine.hooks.privacy import Privacy, PrivacyConfig
from engine.hooks.risk_model import RiskModel, RiskModelConfig
from engine.hooks.social_credit import SocialCredit, SocialCreditConfig
from engine.hooks.surveillance_log import SurveillanceLog, SurveillanceLogConfig
from engine.hooks.wallet_limits import WalletLimits, WalletLimitsConfig
from engine.reference import ReferenceHook


@dataclass(frozen=True, slots=True)
class BuiltinHook:
    """A built-in hook: its class (built from one ``config``) and its reference twin."""

    name: str
    hook: type[Hook]
    config: type[msgspec.Struct]
    #: Builds the one-at-a-time twin of an attached hook (``engine.reference_twins``); None when
    #: the reference ledger models the hook itself (wallet limits are part of its settle step).
    twin: Callable[[Any], ReferenceHook] | None


#: Every built-in hook, in the order the scenario file lists their parameters.
BUILTIN_HOOKS: tuple[BuiltinHook, ...] = (
    BuiltinHook("wallet_limits", WalletLimits, WalletLimitsConfig, None),
    BuiltinHook("blacklist", Blacklist, BlacklistConfig, twins.RefBlacklist.mirror),
    BuiltinHook("freeze", Freeze, FreezeConfig, twins.RefFreeze.mirror),
    BuiltinHook("social_credit", SocialCredit, SocialCreditConfig, twins.RefSocialCredit.mirror),
    BuiltinHook("surveillance_log", SurveillanceLog, SurveillanceLogConfig, twins.RefSurveillanceLog.mirror),
    BuiltinHook("audit_chain", AuditChain, AuditChainConfig, twins.RefAuditChain.mirror),
    BuiltinHook("privacy", Privacy, PrivacyConfig, twins.RefPrivacy.mirror),
    BuiltinHook("risk_model", RiskModel, RiskModelConfig, twins.RefRiskModel.mirror),
)
#: Built-in hooks by name.
BUILTIN: Mapping[str, BuiltinHook] = {row.name: row for row in BUILTIN_HOOKS}


def check_spec(spec: str) -> None:
    """Raise ValueError unless ``spec`` is a built-in name or has the ``module:attribute`` form."""
    if spec in BUILTIN:
        return
    module, sep, attribute = spec.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(
            f"unknown hook {spec!r}: use a built-in hook ({', '.join(BUILTIN)}) or 'module:attribute' "
            "naming a Hook subclass or a factory returning a Hook"
        )


def load_hook(spec: str, params: msgspec.Struct | Mapping[str, Any] | None = None) -> Hook:
    """A new hook for ``spec`` (built-in name or ``module:attribute``) with ``params``."""
    check_spec(spec)
    if spec in BUILTIN:
        row = BUILTIN[spec]
        config_type = row.config
        if params is None or isinstance(params, config_type):
            config = params
        else:
            try:
                config = msgspec.convert(params, config_type)
            except msgspec.ValidationError as exc:
                raise ValueError(f"hook {spec}: {exc}") from exc
        return row.hook(config)  # type: ignore[call-arg]

    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"hook {spec}: cannot import module {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"hook {spec}: module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"hook {spec}: {attribute!r} is a {type(target).__name__}, not a Hook class or factory")
    kwargs = dict(params or {}) if not isinstance(params, msgspec.Struct) else msgspec.structs.asdict(params)
    try:
        hook = target(**kwargs)
    except TypeError as exc:
        raise ValueError(f"hook {spec}: cannot build it with parameters {sorted(kwargs)}: {exc}") from exc
    if not isinstance(hook, Hook):
        raise ValueError(f"hook {spec}: {attribute!r} returned a {type(hook).__name__}, not an engine Hook")
    return hook
