"""Operator and admin authentication: per-operator secrets, HMAC challenge-response.

The authorised operators (the commercial banks of e-CNY's two-tier design) each hold a secret;
so does the central bank's administrator. On connect the server sends a random nonce; the client
answers ``HMAC-SHA256(secret, nonce || role || operator)``; the server compares in constant time
(``hmac.compare_digest``). Secrets never travel, and a captured answer is useless for another
nonce.

Secrets come from a TOML file or from environment variables, never from the code::

    # secrets.toml (keep it mode 0600)
    admin = "hex-or-any-string, at least 16 characters"
    [operators]
    0 = "..."
    1 = "..."

or ``CBDC_ADMIN_SECRET`` and ``CBDC_OPERATOR_SECRET_<n>`` environment variables.
``generate_secrets`` writes a fresh file for a given number of operators.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import msgspec

MIN_SECRET_CHARS = 16
NONCE_BYTES = 32
ROLE_OPERATOR = b"operator"
ROLE_ADMIN = b"admin"


class SecretsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    admin: str = ""
    operators: dict[str, str] = {}


class Secrets:
    """The admin secret and the operators' secrets, validated."""

    def __init__(self, admin: str, operators: Mapping[int, str]) -> None:
        for who, value in [("admin", admin), *((f"operator {k}", v) for k, v in operators.items())]:
            if len(value) < MIN_SECRET_CHARS:
                raise ValueError(f"the {who} secret is shorter than {MIN_SECRET_CHARS} characters")
        self._admin = admin.encode()
        self._operators = {int(k): v.encode() for k, v in operators.items()}

    @property
    def operators(self) -> frozenset[int]:
        return frozenset(self._operators)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Secrets:
        """Read a secrets TOML file; errors name the file and the problem."""
        p = Path(path)
        try:
            data = msgspec.toml.decode(p.read_bytes(), type=SecretsFile)
        except msgspec.ValidationError as exc:
            raise ValueError(f"{p}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ValueError(f"{p}: not valid TOML: {exc}") from None
        if not data.admin:
            raise ValueError(f'{p}: no admin secret (add `admin = "..."`)')
        try:
            operators = {int(k): v for k, v in data.operators.items()}
        except ValueError:
            raise ValueError(f"{p}: [operators] keys must be operator numbers, got {sorted(data.operators)}") from None
        return cls(data.admin, operators)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Secrets:
        env = os.environ if environ is None else environ
        admin = env.get("CBDC_ADMIN_SECRET", "")
        if not admin:
            raise ValueError("CBDC_ADMIN_SECRET is not set")
        prefix = "CBDC_OPERATOR_SECRET_"
        operators = {int(k.removeprefix(prefix)): v for k, v in env.items() if k.startswith(prefix)}
        return cls(admin, operators)

    def secret(self, role: bytes, operator: int) -> bytes | None:
        return self._admin if role == ROLE_ADMIN else self._operators.get(operator)

    def verify(self, role: bytes, operator: int, nonce: bytes, answer: bytes) -> bool:
        """Constant-time check of a challenge answer; False for an unknown operator."""
        key = self.secret(role, operator)
        # An unknown operator still costs one HMAC, so timing does not reveal who is enrolled.
        expected = respond(key if key is not None else b"\0" * 32, nonce, role, operator)
        return hmac.compare_digest(expected, answer) and key is not None


def load_secrets(spec: str) -> Secrets | None:
    """A secrets spec as the command line takes it: "" none, "env" the environment, else a file."""
    if not spec:
        return None
    return Secrets.from_env() if spec == "env" else Secrets.load(spec)


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def respond(secret: str | bytes, nonce: bytes, role: bytes, operator: int) -> bytes:
    """The answer to a challenge: HMAC-SHA256(secret, nonce || role || operator)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, nonce + role + operator.to_bytes(4, "little"), hashlib.sha256).digest()


def generate_secrets(path: str | os.PathLike[str], operators: int) -> None:
    """Write a fresh secrets file (mode 0600) for operators 0..operators-1."""
    lines = [f'admin = "{secrets.token_hex(32)}"', "", "[operators]"]
    lines += [f'{k} = "{secrets.token_hex(32)}"' for k in range(operators)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
