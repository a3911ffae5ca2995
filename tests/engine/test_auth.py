"""Operator and admin authentication."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.auth import ROLE_ADMIN, ROLE_OPERATOR, Secrets, generate_secrets, new_nonce, respond


def test_generated_file_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    generate_secrets(path, 3)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    s = Secrets.load(path)
    assert s.operators == {0, 1, 2}


def test_right_answer_passes_and_everything_else_fails(tmp_path: Path) -> None:
    s = Secrets("a" * 20, {0: "zero-secret-0000000", 1: "one-secret-11111111"})
    nonce = new_nonce()
    good = respond("zero-secret-0000000", nonce, ROLE_OPERATOR, 0)
    assert s.verify(ROLE_OPERATOR, 0, nonce, good)
    assert not s.verify(ROLE_OPERATOR, 1, nonce, good)  # another operator's identity
    assert not s.verify(ROLE_OPERATOR, 0, new_nonce(), good)  # replay against a new nonce
    assert not s.verify(ROLE_ADMIN, 0, nonce, good)  # operator secret is not the admin's
    assert not s.verify(ROLE_OPERATOR, 7, nonce, respond(b"\0" * 32, nonce, ROLE_OPERATOR, 7))  # not enrolled
    assert s.verify(ROLE_ADMIN, 0, nonce, respond("a" * 20, nonce, ROLE_ADMIN, 0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('admin = "short"\n', "shorter than 16"),
        ("[operators]\n0 = 'abcdefghijklmnopq'\n", "no admin secret"),
        ('admin = "abcdefghijklmnopq"\n[operators]\nbank = "abcdefghijklmnopq"\n', "operator numbers"),
        ('admin = "abcdefghijklmnopq"\nextra = 1\n', "extra"),
        ("admin = \n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        Secrets.load(path)


def test_secrets_from_environment() -> None:
    env = {"CBDC_ADMIN_SECRET": "x" * 16, "CBDC_OPERATOR_SECRET_4": "y" * 16, "PATH": "/bin"}
    assert Secrets.from_env(env).operators == {4}
    with pytest.raises(ValueError, match="CBDC_ADMIN_SECRET"):
        Secrets.from_env({})
