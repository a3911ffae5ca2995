"""Finding hooks by name: the built-in hooks, or a user's hook as ``module:attribute``.

A built-in hook is built from its config Struct (or a dict of its fields, validated into one).
``module:attribute`` names either a Hook subclass or a factory returning a Hook; its parameters
are passed as keyword arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import msgspec

from engine.hooks.audit_chain import AuditChain, AuditChainConfig
from engine.hooks.base import Hook
from engine.hooks.blacklist import Blacklist, BlacklistConfig
from engine.hooks.freeze import Freeze, FreezeConfig
from engine.hooks.privacy import Privacy, PrivacyConfig
from engine.hooks.social_credit import SocialCredit, SocialCreditConfig
from engine.hooks.surveillance_log import SurveillanceLog, SurveillanceLogConfig
from engine.hooks.wallet_limits import WalletLimits, WalletLimitsConfig

#: Built-in hooks by name: the hook class and its config Struct (the class takes one config).
BUILTIN: Mapping[str, tuple[type[Hook], type[msgspec.Struct]]] = {
    "wallet_limits": (WalletLimits, WalletLimitsConfig),
    "blacklist": (Blacklist, BlacklistConfig),
    "freeze": (Freeze, FreezeConfig),
    "social_credit": (SocialCredit, SocialCreditConfig),
    "surveillance_log": (SurveillanceLog, SurveillanceLogConfig),
    "audit_chain": (AuditChain, AuditChainConfig),
    "privacy": (Privacy, PrivacyConfig),
}


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
        cls, config_type = BUILTIN[spec]
        if params is None or isinstance(params, config_type):
            config = params
        else:
            try:
                config = msgspec.convert(params, config_type)
            except msgspec.ValidationError as exc:
                raise ValueError(f"hook {spec}: {exc}") from exc
        return cls(config)  # type: ignore[call-arg]

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
