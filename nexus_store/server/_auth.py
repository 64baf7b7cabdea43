"""Bearer-token verifiers: who is calling, as a tenant name.

A verifier turns the token of an ``Authorization: Bearer ...`` header into the tenant the
request acts for, or ``None`` to refuse it (HTTP 401). The tenant comes only from the
token, never from a request body, so no request can name another tenant.

- :class:`~nexus_store.server._jwt.JwtVerifier` (in its own module: PyJWT loads only
  where it is used): standard JSON Web Tokens, the production choice.
- :class:`StaticTokenVerifier`: a fixed ``{token: tenant}`` map, for development and tests.
- :class:`SignedTokenVerifier`: **deprecated**, kept so that clients holding them keep
  working: the private ``nxs1.`` format of earlier versions (``nexus-store serve --secret``
  accepts both it and HS256 JWTs). New deployments use JWTs.
- :class:`ChainVerifier`: the first verifier that accepts a token wins.

The deprecated ``nxs1.`` format: ``nxs1.<payload>.<signature>`` where ``payload`` is the
base64url (unpadded) JSON ``{"sub": tenant, "exp": unix_seconds}`` and ``signature`` the
base64url HMAC-SHA256 of ``"nxs1." + payload`` under the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from .._clock import Clock, SystemClock

__all__ = [
    "ChainVerifier",
    "SignedTokenVerifier",
    "StaticTokenVerifier",
    "TokenVerifier",
    "bearer_token",
    "check_tenant_name",
    "usable_tenant",
]

_SIGNED_PREFIX = "nxs1"
_MAX_TOKEN_LENGTH = 4096
_MAX_TENANT_LENGTH = 128
MIN_SECRET_BYTES = 16


@runtime_checkable
class TokenVerifier(Protocol):
    """Maps a bearer token to the tenant it stands for."""

    async def verify(self, token: str) -> str | None:
        """Return the token's tenant, or ``None`` if the token is unknown, bad or expired."""
        ...


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, if well formed."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_LENGTH:
        return None
    return token


def check_tenant_name(tenant: str) -> str:
    """Return ``tenant`` if it can name a tenant.

    Raises:
        ValueError: it cannot.
    """
    if not usable_tenant(tenant):
        raise ValueError(f"a tenant is 1 to {_MAX_TENANT_LENGTH} characters without NUL")
    return tenant


def usable_tenant(tenant: object) -> bool:
    """Whether ``tenant`` is a string that can name a tenant (1 to 128 characters, no NUL)."""
    return (
        isinstance(tenant, str) and 0 < len(tenant) <= _MAX_TENANT_LENGTH and "\x00" not in tenant
    )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class StaticTokenVerifier:
    """A fixed token-to-tenant map (development, tests, a handful of fixed clients).

    Tokens are kept only as SHA-256 digests, so the lookup time does not depend on how
    much of a guessed token is right.

    Args:
        tokens: ``{token: tenant}``.

    Raises:
        ValueError: an empty token or tenant.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tenants: dict[bytes, str] = {}
        for token, tenant in tokens.items():
            if not token or len(token) > _MAX_TOKEN_LENGTH:
                raise ValueError("a token must be a non-empty string")
            self._tenants[_digest(token)] = check_tenant_name(tenant)

    async def verify(self, token: str) -> str | None:
        """The tenant mapped to ``token``, if any."""
        return self._tenants.get(_digest(token))

    def __repr__(self) -> str:
        return f"StaticTokenVerifier(<{len(self._tenants)} tokens>)"


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SignedTokenVerifier:
    """Deprecated: the private ``nxs1.`` signed tokens of earlier versions (use JWTs).

    HMAC-SHA256 signed tokens that carry their tenant and expiry time. Kept as an alias
    so that tokens already issued keep working; ``nexus-store token`` now mints JWTs.

    Args:
        secret: the signing key, at least 16 bytes (32 random bytes recommended); keep it
            out of command lines and logs (``NEXUS_STORE_SECRET``).
        clock: where the current time is read (expiry checks).
        leeway: seconds of clock skew tolerated past a token's expiry.

    Raises:
        ValueError: a secret that is too short.
    """

    def __init__(
        self, secret: str | bytes, *, clock: Clock | None = None, leeway: float = 0.0
    ) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"the signing secret must be at least {MIN_SECRET_BYTES} bytes")
        self._key = key
        self._clock = clock or SystemClock()
        self._leeway = leeway

    def _sign(self, message: str) -> str:
        return _b64encode(hmac.new(self._key, message.encode("ascii"), hashlib.sha256).digest())

    def issue(self, tenant: str, *, ttl: float = 3600.0) -> str:
        """A new token for ``tenant``, valid for ``ttl`` seconds from now."""
        check_tenant_name(tenant)
        claims = {"sub": tenant, "exp": int(self._clock.now() + ttl)}
        payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        message = f"{_SIGNED_PREFIX}.{payload}"
        return f"{message}.{self._sign(message)}"

    def tenant_of(self, token: str) -> str | None:
        """The tenant of a valid, unexpired token; ``None`` otherwise (never raises)."""
        prefix, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        if prefix != _SIGNED_PREFIX or not payload or not signature:
            return None
        try:
            expected = self._sign(f"{prefix}.{payload}")
        except UnicodeEncodeError:
            return None
        if not hmac.compare_digest(expected, signature):
            return None
        try:
            claims = json.loads(_b64decode(payload))
        except (binascii.Error, ValueError):
            return None
        if not isinstance(claims, dict):
            return None
        tenant, expires = claims.get("sub"), claims.get("exp")
        if not isinstance(tenant, str) or not usable_tenant(tenant):
            return None
        if isinstance(expires, bool) or not isinstance(expires, int):
            return None
        if self._clock.now() > expires + self._leeway:
            return None
        return tenant

    async def verify(self, token: str) -> str | None:
        """The tenant of a valid, unexpired token signed with this secret."""
        return self.tenant_of(token)

    def __repr__(self) -> str:
        return "SignedTokenVerifier(<secret>)"


class ChainVerifier:
    """Asks each verifier in turn; the first tenant returned wins.

    Args:
        verifiers: the verifiers, in the order to ask them.
    """

    def __init__(self, verifiers: Sequence[TokenVerifier]) -> None:
        self._verifiers = tuple(verifiers)

    async def verify(self, token: str) -> str | None:
        """The first tenant any verifier maps ``token`` to."""
        for verifier in self._verifiers:
            tenant = await verifier.verify(token)
            if tenant is not None:
                return tenant
        return None

    def __repr__(self) -> str:
        return f"ChainVerifier({list(self._verifiers)!r})"
