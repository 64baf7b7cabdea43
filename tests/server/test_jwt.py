"""Standard JWTs: HS256 with a shared secret, RS256/ES256 against a JWKS URL on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from nexus_store.server import ServerCore, create_app
from nexus_store.server._jwt import JwtVerifier, issue_jwt
from nexus_store.server._run import make_verifier
from nexus_store.server.storage._memory import MemoryStorage

SECRET = "a-development-secret-of-32-bytes"

pytestmark = pytest.mark.anyio


class Jwks:
    """A JWKS document served on 127.0.0.1 that a test can change, counting fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, public_key: Any, kid: str) -> None:
        algorithm = RSAAlgorithm if isinstance(public_key, rsa.RSAPublicKey) else ECAlgorithm
        self.keys.append({**algorithm.to_jwk(public_key, as_dict=True), "kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    """A local JWKS endpoint."""
    served = Jwks()
    try:
        yield served
    finally:
        served.close()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "tenant-a", "iat": now, "exp": now + 600, **extra}


async def test_hs256_tokens_name_their_tenant() -> None:
    """An HS256 token signed with the secret is accepted; a wrong secret or no exp is not."""
    verifier = JwtVerifier(secret=SECRET)
    assert await verifier.verify(issue_jwt(SECRET, "tenant-a")) == "tenant-a"
    assert await verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256")) == "tenant-a"
    assert await verifier.verify(issue_jwt("another-secret-of-32-bytes-long!", "a")) is None
    no_exp = jwt.encode({"sub": "tenant-a"}, SECRET, algorithm="HS256")
    assert await verifier.verify(no_exp) is None
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert await verifier.verify(unsigned) is None
    assert await verifier.verify("not a token") is None


async def test_time_audience_and_issuer_are_checked() -> None:
    """exp and nbf (with leeway), aud and iss: each refused when wrong."""
    now = int(time.time())
    verifier = JwtVerifier(secret=SECRET, audience="sync", issuer="https://id.example")

    def token(**extra: Any) -> str:
        fields = {"aud": "sync", "iss": "https://id.example", **extra}
        return jwt.encode(claims(**fields), SECRET, algorithm="HS256")

    assert await verifier.verify(token()) == "tenant-a"
    assert await verifier.verify(token(exp=now - 5)) is None
    assert await verifier.verify(token(nbf=now + 60)) is None
    assert await verifier.verify(token(aud="other")) is None
    assert await verifier.verify(token(iss="https://evil.example")) is None
    lenient = JwtVerifier(secret=SECRET, audience="sync", issuer="https://id.example", leeway=30)
    assert await lenient.verify(token(exp=now - 5)) == "tenant-a"
    # Without a configured audience, a token meant for some audience is refused.
    assert await JwtVerifier(secret=SECRET).verify(token()) is None


async def test_the_tenant_comes_from_the_configured_claim() -> None:
    """tenant_claim picks the claim; a missing or unusable one refuses the token."""
    verifier = JwtVerifier(secret=SECRET, tenant_claim="org")
    assert await verifier.verify(issue_jwt(SECRET, "acme", tenant_claim="org")) == "acme"
    assert await verifier.verify(issue_jwt(SECRET, "acme")) is None  # only "sub"
    bad = jwt.encode(claims(org=["not", "a", "name"]), SECRET, algorithm="HS256")
    assert await verifier.verify(bad) is None


async def test_rs256_and_es256_are_verified_against_the_jwks(jwks: Jwks) -> None:
    """Keys come from the JWKS URL; the set is cached, and fetched again for a new key id."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks.add(rsa_key.public_key(), "rsa-1")
    verifier = JwtVerifier(jwks_url=jwks.url, audience="sync", jwks_refetch_interval=0)
    rs = jwt.encode(claims(aud="sync"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert await verifier.verify(rs) == "tenant-a"
    assert await verifier.verify(rs) == "tenant-a"
    assert jwks.fetches == 1  # cached

    # The provider rotates in an EC key: an unknown key id fetches the set again.
    jwks.add(ec_key.public_key(), "ec-1")
    es = jwt.encode(claims(aud="sync"), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert await verifier.verify(es) == "tenant-a"
    assert jwks.fetches == 2

    # Forged key ids do not make the server fetch again and again (at most one a minute).
    guarded = JwtVerifier(jwks_url=jwks.url, audience="sync", jwks_refetch_interval=60)
    assert await guarded.verify(rs) == "tenant-a"
    assert jwks.fetches == 3
    for kid in ("nope-1", "nope-2", "nope-3"):
        headers = {"kid": kid}
        forged = jwt.encode(claims(aud="sync"), rsa_key, algorithm="RS256", headers=headers)
        assert await guarded.verify(forged) is None
    assert jwks.fetches == 3

    # A token signed by another key under a known id, or HS256 with no secret: refused.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    impostor = jwt.encode(claims(aud="sync"), other, algorithm="RS256", headers={"kid": "rsa-1"})
    assert await verifier.verify(impostor) is None
    assert await verifier.verify(issue_jwt(SECRET, "tenant-a", audience="sync")) is None


async def test_a_jwks_url_must_be_https_unless_loopback() -> None:
    """Keys fetched in clear from another host could be swapped: such a URL is refused."""
    with pytest.raises(ValueError, match="https"):
        JwtVerifier(jwks_url="http://id.example/jwks.json")
    JwtVerifier(jwks_url="https://id.example/jwks.json")


async def test_the_server_accepts_jwts_and_still_the_deprecated_tokens() -> None:
    """--secret: HS256 JWTs and (deprecated) nxs1. tokens both map to their tenant."""
    import httpx  # noqa: PLC0415

    from nexus_store.server._auth import SignedTokenVerifier  # noqa: PLC0415

    core = ServerCore(MemoryStorage())
    app = create_app(core, verifier=make_verifier({}, SECRET), close_core=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
        for token, expected in (
            (issue_jwt(SECRET, "tenant-a"), 200),
            (SignedTokenVerifier(SECRET).issue("tenant-a"), 200),
            (issue_jwt("another-secret-of-32-bytes-long!", "tenant-a"), 401),
        ):
            response = await client.get(
                "/v1/pull", params={"cursor": 0}, headers={"authorization": f"Bearer {token}"}
            )
            assert response.status_code == expected
    await core.aclose()
