"""Bearer tokens for :class:`~nexus_store.backends.HttpBackend`: providers and refusals.

A token comes from one of three sources:

- a plain string (fixed for the backend's life);
- a plain callable, sync or async, called before every request (and once more after a
  401, which is how it learns nothing: it is simply asked again);
- a :class:`RefreshingTokenProvider`: a callable that also has ``refresh(refused)``. It is
  called before every request; ``refresh`` is called with the refused token when the
  server answered 401, or when the token it hands out is one the server already refused.
  A caching provider should drop its cache there and fetch a new token.

:class:`TokenSource` remembers which tokens the server refused (as SHA-256 digests, never
the tokens themselves) and never sends one of them again: when the source can only offer
a refused token, the request is not sent and :class:`~nexus_store.AuthError` is raised at
once. So a client whose token is dead sends one request per token it is given, not one
per sync run.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeAlias, runtime_checkable

import anyio

from .._exceptions import AuthError, NexusStoreError

__all__ = ["RefreshingTokenProvider", "TokenProvider", "TokenSource"]

TokenProvider: TypeAlias = Callable[[], str | Awaitable[str]]
"""A callable (sync or async) returning the current bearer token."""

_REMEMBERED = 32
"""How many refused tokens are remembered (the oldest is forgotten first)."""


@runtime_checkable
class RefreshingTokenProvider(Protocol):
    """A token provider that can be told its token was refused.

    Example::

        class CachedToken:
            def __init__(self) -> None:
                self._token: str | None = None

            async def __call__(self) -> str:
                if self._token is None:
                    self._token = await fetch_token()
                return self._token

            async def refresh(self, refused: str) -> str:
                self._token = await fetch_token(force=True)
                return self._token
    """

    def __call__(self) -> str | Awaitable[str]:
        """The current token (may be cached)."""
        ...

    def refresh(self, refused: str) -> str | Awaitable[str]:
        """A new token: the server refused ``refused`` (HTTP 401)."""
        ...


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenSource:
    """Where a backend's bearer tokens come from, and which ones the server refused.

    Args:
        token: a fixed token, a :data:`TokenProvider`, a :class:`RefreshingTokenProvider`,
            or ``None`` (send no ``Authorization`` header).
    """

    def __init__(self, token: str | TokenProvider | None) -> None:
        self._fixed = token if isinstance(token, str) else None
        self._provider = None if isinstance(token, str) else token
        refresh = getattr(token, "refresh", None)
        self._refresh: Callable[[str], str | Awaitable[str]] | None = (
            refresh if callable(refresh) else None
        )
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        kind = "none" if self._provider is None and self._fixed is None else "set"
        return f"TokenSource({kind}, refused={len(self._refused)})"

    @property
    def can_change(self) -> bool:
        """Whether asking again may give another token (a provider, not a fixed string)."""
        return self._provider is not None

    def is_refused(self, token: str) -> bool:
        """Whether the server refused ``token`` before."""
        return _digest(token) in self._refused

    def refuse(self, token: str) -> None:
        """Remember that the server refused ``token`` (HTTP 401)."""
        self._refused[_digest(token)] = None
        self._refused.move_to_end(_digest(token))
        while len(self._refused) > _REMEMBERED:
            self._refused.popitem(last=False)

    async def for_request(self) -> str | None:
        """The token for the next request (``None``: send none).

        A provider handing out a token the server refused before is asked to refresh it
        (a :class:`RefreshingTokenProvider`); a plain callable is not called twice.

        Raises:
            AuthError: the provider failed, gave a malformed token, or only a refused one
                (nothing must be sent).
        """
        if self._provider is None:
            if self._fixed is not None and self.is_refused(self._fixed):
                raise AuthError(_REFUSED_FIXED)
            return self._fixed
        token = await self._ask(self._provider, "call")
        if not self.is_refused(token):
            return token
        if self._refresh is None:
            raise AuthError(_REFUSED_AGAIN)
        return await self.replacement(token)

    async def replacement(self, refused: str) -> str:
        """A new token after the server refused ``refused``.

        A :class:`RefreshingTokenProvider` is asked to ``refresh``; a plain callable is
        called again. Concurrent callers share one refresh.

        Raises:
            AuthError: a fixed token or none (nothing to refresh), a failing provider, or
                a token the server refused before (nothing must be sent).
        """
        provider, refresh = self._provider, self._refresh
        if provider is None:
            raise AuthError(_REFUSED_FIXED)
        async with self._lock:
            if refresh is not None:
                # Another request may have refreshed while this one waited for the lock.
                current = await self._ask(provider, "call")
                if not self.is_refused(current):
                    return current
                token = await self._ask(functools.partial(refresh, current), "refresh")
            else:
                token = await self._ask(provider, "refresh")
        if self.is_refused(token):
            raise AuthError(_REFUSED_AGAIN)
        return token

    @staticmethod
    async def _ask(provider: Callable[[], str | Awaitable[str]], what: str) -> str:
        try:
            value = provider()
            token = await value if inspect.isawaitable(value) else value
        except NexusStoreError:
            raise
        except Exception as exc:
            raise AuthError(f"the token provider failed ({what}): {type(exc).__name__}") from exc
        if not isinstance(token, str) or not token or not token.isprintable() or " " in token:
            raise AuthError("the token provider returned an empty or malformed token")
        return token


_REFUSED_FIXED = (
    "the server refused this backend's token before; give the backend a new one "
    "(or a token provider) to send requests again"
)
_REFUSED_AGAIN = (
    "the token provider gave a token the server refused before; nothing was sent "
    "(a provider with refresh() is told when its token is refused)"
)
