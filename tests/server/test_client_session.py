"""The client handshake as pure message steps, without a server: what each server message is
answered with, and when the handshake is done or refused."""

from __future__ import annotations

import pytest

from engine.auth import ROLE_ADMIN, Secrets, respond
from engine.client_session import ClientHandshake, HandshakeRefused, MissingSecret
from engine.wire import Authenticate, Challenge, Error, Hello, Welcome

WELCOME = Welcome(
    server="s", protocol=1, accounts=10, profile="baseline", max_batch=8, max_frame_bytes=1 << 20, queue_limit=8,
    max_wait_us=0, echo=False, next_transfer_id=0,
)  # fmt: skip


def test_hello_then_welcome_without_authentication() -> None:
    hs = ClientHandshake(3, "test")
    assert hs.hello() == Hello(3, "test")
    assert hs.step(WELCOME) is None and hs.welcome is WELCOME


def test_challenge_is_answered_with_the_hmac_the_server_verifies() -> None:
    secret = "k" * 32
    hs = ClientHandshake(2, "test", role="admin", secret=secret)
    reply = hs.step(Challenge(b"n" * 16))
    assert type(reply) is Authenticate and reply.role == "admin"
    assert reply.answer == respond(secret, b"n" * 16, ROLE_ADMIN, 2)
    assert Secrets(admin=secret, operators={}).verify(ROLE_ADMIN, 2, b"n" * 16, reply.answer)
    assert not Secrets(admin="x" * 32, operators={}).verify(ROLE_ADMIN, 2, b"n" * 16, reply.answer)
    assert hs.welcome is None


def test_refusal_and_missing_secret_are_distinct_errors() -> None:
    with pytest.raises(MissingSecret):
        ClientHandshake(0, "test").step(Challenge(b"n" * 16))
    with pytest.raises(HandshakeRefused) as refused:
        ClientHandshake(0, "test").step(Error("bad_field", "operator out of range"))
    assert refused.value.error.code == "bad_field"
