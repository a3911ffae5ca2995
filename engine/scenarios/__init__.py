"""Scenario files shipped with the package (TOML); copy one and pass it with --scenario."""
