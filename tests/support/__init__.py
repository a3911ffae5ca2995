"""Helpers shared by the tests, one module per kind of test (see ``tests/conftest.py`` for which)."""
