"""Hook profiles: named, ordered lists of policy hooks.

The policy-hooks work replaces this minimal registry with profiles read from a TOML scenario file.
"""

from __future__ import annotations

from engine.hooks.base import Hook
from engine.hooks.wallet_limits import WalletLimits

PROFILES = ("baseline", "limits")


def build_hooks(profile: str, scenario_path: str | None = None) -> list[Hook]:
    """Fresh hook instances for ``profile``."""
    if scenario_path is not None:
        raise ValueError("scenario files are not supported yet")
    if profile == "baseline":
        return []
    if profile == "limits":
        return [WalletLimits()]
    raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
