"""Request limits: body size (413), ops per batch, and a per-tenant rate limit (429).

The decisions are pure: :func:`take_token` is a token bucket over plain numbers,
:func:`parse_size` and :func:`parse_rate` read the command line's forms. The I/O parts are
:class:`RateLimiter` (one bucket per tenant in this process, reading a clock), the
:class:`RateLimit` seam it implements (so does
:class:`~nexus_store.server._limits_postgres.PostgresRateLimiter`, whose buckets live in
the PostgreSQL database that several server processes share), and
:class:`BodyLimitMiddleware`, an ASGI middleware that answers 413 *before the body is read
in full*: at once when ``Content-Length`` is over the limit, and otherwise as soon as the
streamed byte count (chunked bodies) goes over it. The rest of an oversized body is then
discarded by the HTTP server, never buffered.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._clock import Clock, SystemClock

__all__ = [
    "BodyLimitMiddleware",
    "Bucket",
    "Limits",
    "RateLimit",
    "RateLimiter",
    "parse_rate",
    "parse_size",
    "retry_after_header",
    "take_token",
]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")
_PER = {None: 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_PER |= {"h": 3600.0, "hour": 3600.0}
_MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class Limits:
    """What the server accepts; every limit is configurable.

    Attributes:
        max_body_bytes: the largest request body (HTTP 413 beyond it).
        max_batch_ops: the most ops in one push (HTTP 413 beyond it).
        max_pull_limit: the most changes one pull returns (a larger ``limit`` is capped).
        rate: requests per second allowed per tenant (``None``: no rate limit).
        burst: requests a tenant may make at once before ``rate`` applies (default:
            ``max(1, rate)``, one second's worth).
    """

    max_body_bytes: int = 16 * 1024**2
    max_batch_ops: int = 1000
    max_pull_limit: int = 5000
    rate: float | None = None
    burst: float | None = None

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_batch_ops < 1 or self.max_pull_limit < 1:
            raise ValueError("limits must be positive")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("the rate must be positive (or None for no rate limit)")
        if self.burst is not None and self.burst < 1:
            raise ValueError("the burst must be at least 1")

    @property
    def effective_burst(self) -> float:
        """The bucket size actually used."""
        if self.burst is not None:
            return self.burst
        return max(1.0, self.rate or 1.0)


def parse_size(text: str) -> int:
    """Read a byte size: ``"1048576"``, ``"512k"``, ``"8MiB"``, ``"1.5MB"``.

    Raises:
        ValueError: not a size, or not positive.
    """
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 1048576, 512k, 8MiB)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"a size must be positive: {text!r}")
    return size


def parse_rate(text: str) -> float:
    """Read a rate as requests per second: ``"20"``, ``"20/s"``, ``"600/min"``, ``"1000/h"``.

    Raises:
        ValueError: not a rate, or not positive.
    """
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"not a rate: {text!r} (examples: 20, 20/s, 600/min)")
    rate = float(match.group(1)) / _PER[match.group(2)]
    if rate <= 0:
        raise ValueError(f"a rate must be positive: {text!r}")
    return rate


@dataclass(frozen=True)
class Bucket:
    """A token bucket's state: ``tokens`` available at monotonic time ``at``."""

    tokens: float
    at: float


def take_token(
    bucket: Bucket | None, now: float, *, rate: float, burst: float, cost: float = 1.0
) -> tuple[Bucket, float]:
    """Try to spend ``cost`` tokens at ``now``.

    Args:
        bucket: the state after the previous call (``None``: a new, full bucket).
        now: monotonic seconds.
        rate: tokens added per second.
        burst: the bucket's capacity.
        cost: tokens one request costs.

    Returns:
        The new state and the seconds to wait: ``0.0`` if the request is admitted (tokens
        spent), otherwise how long until enough tokens exist (nothing spent).
    """
    if bucket is None:
        tokens = burst
    else:
        tokens = min(burst, bucket.tokens + max(0.0, now - bucket.at) * rate)
    if tokens >= cost:
        return Bucket(tokens - cost, now), 0.0
    return Bucket(tokens, now), (cost - tokens) / rate


def retry_after_header(wait: float) -> str:
    """The ``Retry-After`` value (whole seconds, at least 1) for a wait in seconds."""
    return str(max(1, math.ceil(wait)))


@runtime_checkable
class RateLimit(Protocol):
    """Decides whether a tenant's request may proceed now."""

    async def acquire(self, tenant: str) -> float:
        """Spend one request for ``tenant``: ``0.0`` if admitted, else seconds to wait."""
        ...


class RateLimiter:
    """One token bucket per tenant, in this process.

    Several server processes each keep their own buckets, so together they admit up to
    N times the rate: behind a load balancer, use the PostgreSQL storage, whose limiter
    keeps the buckets in the database every process shares.

    Args:
        rate: requests per second per tenant.
        burst: bucket capacity.
        clock: where monotonic time is read.
    """

    def __init__(self, rate: float, burst: float, *, clock: Clock | None = None) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock or SystemClock()
        self._buckets: dict[str, Bucket] = {}

    def check(self, tenant: str) -> float:
        """Spend one request for ``tenant``; ``0.0`` if admitted, else seconds to wait."""
        now = self._clock.monotonic()
        bucket, wait = take_token(
            self._buckets.get(tenant), now, rate=self._rate, burst=self._burst
        )
        self._buckets[tenant] = bucket
        if len(self._buckets) > _MAX_BUCKETS:
            self._prune(now)
        return wait

    async def acquire(self, tenant: str) -> float:
        """:meth:`check`, as the :class:`RateLimit` seam asks."""
        return self.check(tenant)

    def _prune(self, now: float) -> None:
        # A bucket that has refilled completely is the same as no bucket at all.
        full_after = self._burst / self._rate
        self._buckets = {t: b for t, b in self._buckets.items() if now - b.at < full_after}


class _BodyTooLargeError(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"error": "payload_too_large", "detail": f"the request body exceeds {limit} bytes"},
        status_code=413,
    )


class BodyLimitMiddleware:
    """Answers 413 for request bodies over ``max_body_bytes``, before reading them in full.

    Args:
        app: the ASGI app to protect.
        max_body_bytes: the largest body accepted.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check ``Content-Length`` up front and count streamed bytes as they arrive."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    response = JSONResponse(
                        {"error": "bad_request", "detail": "invalid Content-Length"},
                        status_code=400,
                    )
                    await response(scope, receive, send)
                    return
                if int(value) > limit:
                    await _too_large(limit)(scope, receive, send)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLargeError
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _BodyTooLargeError:
            if started:
                raise
            await _too_large(limit)(scope, receive, send)
