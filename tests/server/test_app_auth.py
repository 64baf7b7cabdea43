"""Bearer-token verifiers: static maps, HMAC-signed tokens with expiry, and chains."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_store.server._auth import (
    ChainVerifier,
    SignedTokenVerifier,
    StaticTokenVerifier,
    TokenVerifier,
    bearer_token,
)
from nexus_store.testing import FakeClock

pytestmark = pytest.mark.anyio

SECRET = "s" * 32


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
        ("Bearer " + "x" * 5000, None),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str | None) -> None:
    """Only a well-formed Bearer header yields a token."""
    assert bearer_token(header) == token


async def test_static_verifier_maps_known_tokens_only() -> None:
    """Known tokens map to their tenant; anything else is refused; repr hides tokens."""
    verifier = StaticTokenVerifier({"tok-a": "alpha", "tok-b": "beta"})
    assert isinstance(verifier, TokenVerifier)
    assert await verifier.verify("tok-a") == "alpha"
    assert await verifier.verify("tok-b") == "beta"
    assert await verifier.verify("tok-c") is None
    assert await verifier.verify("tok-a ") is None
    assert "tok-a" not in repr(verifier)
    with pytest.raises(ValueError, match="tenant"):
        StaticTokenVerifier({"t": ""})
    with pytest.raises(ValueError, match="token"):
        StaticTokenVerifier({"": "alpha"})


async def test_signed_tokens_carry_tenant_and_expire() -> None:
    """An issued token verifies to its tenant until its expiry (plus leeway), then never."""
    clock = FakeClock(start=1_000_000.0)
    verifier = SignedTokenVerifier(SECRET, clock=clock, leeway=5)
    token = verifier.issue("shop-1", ttl=60)
    assert await verifier.verify(token) == "shop-1"
    clock.advance(64)
    assert await verifier.verify(token) == "shop-1"
    clock.advance(2)
    assert await verifier.verify(token) is None
    assert SECRET not in repr(verifier)


async def test_signed_tokens_refuse_tampering_and_other_secrets() -> None:
    """A changed payload, a changed signature, or another secret's token is refused."""
    verifier = SignedTokenVerifier(SECRET, clock=FakeClock())
    other = SignedTokenVerifier("o" * 32, clock=FakeClock())
    token = verifier.issue("alpha")
    prefix, payload, signature = token.split(".")
    forged_payload = other.issue("beta").split(".")[1]
    assert await verifier.verify(f"{prefix}.{forged_payload}.{signature}") is None
    flipped = signature[:-1] + ("B" if signature[-1] == "A" else "A")
    assert await verifier.verify(f"{prefix}.{payload}.{flipped}") is None
    assert await verifier.verify(other.issue("alpha")) is None
    with pytest.raises(ValueError, match="secret"):
        SignedTokenVerifier("short")


@settings(max_examples=60)
@given(st.text(max_size=200))
def test_signed_verifier_never_raises_on_garbage(token: str) -> None:
    """Any string is either a valid token or refused: verification never raises."""
    assert SignedTokenVerifier(SECRET).tenant_of(token) is None


@given(st.text(min_size=1, max_size=64).filter(lambda t: "\x00" not in t))
def test_signed_tokens_round_trip_any_tenant(tenant: str) -> None:
    """Every usable tenant name survives issue/verify."""
    verifier = SignedTokenVerifier(SECRET)
    assert verifier.tenant_of(verifier.issue(tenant)) == tenant


async def test_chain_asks_in_order() -> None:
    """A chain returns the first verifier's tenant that accepts the token."""
    signed = SignedTokenVerifier(SECRET)
    chain = ChainVerifier([StaticTokenVerifier({"dev": "dev-tenant"}), signed])
    assert await chain.verify("dev") == "dev-tenant"
    assert await chain.verify(signed.issue("prod")) == "prod"
    assert await chain.verify("nope") is None
