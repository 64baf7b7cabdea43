"""Standard JSON Web Tokens (PyJWT), as an identity provider mints them.

:class:`JwtVerifier` accepts HS256 tokens signed with a shared secret, and RS256/ES256
tokens checked against the provider's JWKS URL (keys cached, fetched again for an
unknown key id, at most every few seconds so forged key ids cannot make the server
hammer the provider). ``exp`` is required; ``nbf``, ``aud`` and ``iss`` are checked; the
tenant comes from a configurable claim (``sub`` by default). :func:`issue_jwt` mints
HS256 tokens for development (``nexus-store token``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import httpx

try:
    import jwt
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("JWT support needs PyJWT: pip install 'nexus-store[server]'") from exc

from .._http_api import is_loopback_host
from ._auth import MIN_SECRET_BYTES, check_tenant_name, usable_tenant

__all__ = ["JwtVerifier", "issue_jwt"]

_log = logging.getLogger("nexus_store.server")


_HMAC_ALGORITHMS = ("HS256",)
_KEY_ALGORITHMS = ("RS256", "ES256")


def issue_jwt(
    secret: str | bytes,
    tenant: str,
    *,
    ttl: float = 3600.0,
    tenant_claim: str = "sub",
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 JWT for ``tenant`` (development: production tokens come from an identity
    provider).

    Raises:
        ValueError: a bad tenant, a secret under 16 bytes, or a non-positive ``ttl``.
    """
    check_tenant_name(tenant)
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the signing secret must be at least {MIN_SECRET_BYTES} bytes")
    if ttl <= 0:
        raise ValueError("the token's lifetime must be positive")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {tenant_claim: tenant, "iat": issued, "exp": int(issued + ttl)}
    if tenant_claim != "sub":
        claims.setdefault("sub", tenant)
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, key, algorithm="HS256")


class _KeySet:
    """A JWKS URL's keys by id: cached, fetched again for an unknown id (not too often)."""

    def __init__(
        self, url: str, *, cache_seconds: float, refetch_interval: float, timeout: float
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme != "https" and not (
            parsed.scheme == "http" and is_loopback_host(parsed.host)
        ):
            raise ValueError(f"a JWKS URL must be https:// (or http:// on loopback): {url!r}")
        self.url = url
        self._cache_seconds = cache_seconds
        self._refetch_interval = refetch_interval
        self._timeout = timeout
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -float("inf")
        self._lock = anyio.Lock()
        self.fetches = 0
        """How many times the key set was fetched (for tests and diagnostics)."""

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self._fetched_at > self._cache_seconds
        if kid is not None and kid in self._keys and not stale:
            return self._keys[kid]
        async with self._lock:
            now = time.monotonic()
            recent = now - self._fetched_at < self._refetch_interval
            if stale or (kid not in self._keys and not recent):
                await self._fetch()
        if kid is None:  # a token without a key id: only a set of one key can verify it
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client:
                response = await client.get(self.url)
                response.raise_for_status()
                data = response.json()
            keys = jwt.PyJWKSet.from_dict(data).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
            # Keep the keys we had: the provider may be down for a moment.
            _log.warning("fetching the JWKS from %s failed: %s", self.url, exc)
            return
        self._keys = {key.key_id: key for key in keys if key.key_id is not None}
        if not self._keys and len(keys) == 1:
            self._keys = {"": keys[0]}


class JwtVerifier:
    """Standard JSON Web Tokens: HS256 with a shared secret, RS256/ES256 against a JWKS URL.

    A token is accepted when its signature verifies, it has not expired (``exp`` is
    required), ``nbf`` has passed, ``aud`` and ``iss`` are the configured ones (when
    configured; a token with an ``aud`` is refused if no audience is configured), and the
    tenant claim holds a usable tenant name.

    Args:
        secret: the HS256 shared secret (at least 16 bytes).
        jwks_url: the identity provider's JSON Web Key Set (``https://``, or ``http://`` on
            loopback); its keys verify RS256 and ES256 tokens.
        audience: the required ``aud``.
        issuer: the required ``iss``.
        tenant_claim: the claim that names the tenant.
        leeway: seconds of clock skew tolerated for ``exp`` and ``nbf``.
        jwks_cache_seconds: how long fetched keys are used before fetching again.
        jwks_refetch_interval: the least seconds between fetches for an unknown key id
            (a rotated-in key is found within this; forged key ids cannot make the server
            fetch more often).
        jwks_timeout: seconds for fetching the key set.

    Raises:
        ValueError: neither a secret nor a JWKS URL, a short secret, or a bad JWKS URL.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        tenant_claim: str = "sub",
        leeway: float = 0.0,
        jwks_cache_seconds: float = 300.0,
        jwks_refetch_interval: float = 10.0,
        jwks_timeout: float = 5.0,
    ) -> None:
        if secret is None and jwks_url is None:
            raise ValueError("a JwtVerifier needs a secret (HS256) or a JWKS URL (RS256/ES256)")
        self._secret: bytes | None = None
        if secret is not None:
            key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
            if len(key) < MIN_SECRET_BYTES:
                raise ValueError(f"the signing secret must be at least {MIN_SECRET_BYTES} bytes")
            self._secret = key
        self._keys = (
            _KeySet(
                jwks_url,
                cache_seconds=jwks_cache_seconds,
                refetch_interval=jwks_refetch_interval,
                timeout=jwks_timeout,
            )
            if jwks_url is not None
            else None
        )
        if not tenant_claim:
            raise ValueError("the tenant claim must be named")
        self._audience = audience
        self._issuer = issuer
        self._tenant_claim = tenant_claim
        self._leeway = leeway

    @property
    def jwks_fetches(self) -> int:
        """How many times the key set was fetched (0 without a JWKS URL)."""
        return self._keys.fetches if self._keys is not None else 0

    async def verify(self, token: str) -> str | None:
        """The tenant of a valid token, or ``None`` (never raises for a bad token)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            return None
        algorithm = header.get("alg")
        key: Any
        if algorithm in _HMAC_ALGORITHMS and self._secret is not None:
            key = self._secret
        elif algorithm in _KEY_ALGORITHMS and self._keys is not None:
            kid = header.get("kid")
            found = await self._keys.key(kid if isinstance(kid, str) else None)
            if found is None:
                return None
            key = found
        else:
            return None  # "none", an algorithm we do not take, or no key for it
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp"]},
            )
        except jwt.InvalidTokenError:
            return None
        tenant = claims.get(self._tenant_claim)
        return tenant if usable_tenant(tenant) else None

    def __repr__(self) -> str:
        kinds = [k for k, on in (("HS256", self._secret), ("JWKS", self._keys)) if on]
        return f"JwtVerifier({'+'.join(kinds)}, tenant_claim={self._tenant_claim!r})"
