"""``HttpBackend``: the sync server over HTTP (httpx), with every failure translated here.

Nothing above this module sees an httpx exception or an unvalidated response:

- transport failures (connect, read, write, timeouts, a broken connection) raise
  :class:`~nexus_store.NetworkError`; a request whose kept-alive connection was closed or
  reset before any answer goes once more, on a new connection, first;
- 401/403 raise :class:`~nexus_store.AuthError` (after one token refresh on 401),
  413 :class:`~nexus_store.PayloadTooLargeError`, 429
  :class:`~nexus_store.RateLimitedError`, 5xx :class:`~nexus_store.ServerUnavailableError`
  (both with ``retry_after`` from ``Retry-After``, seconds or an HTTP date, at most a
  day), other 4xx :class:`~nexus_store.PermanentError`;
- a response that is malformed, truncated, larger than ``max_response_bytes``, of the
  wrong type, with a field out of range (a version beyond 64 bits, a NaN wait...), or
  whose results do not answer the ops sent one for one and in order, raises
  :class:`~nexus_store.ProtocolError`, so no op is acked on a bad answer.

**Pauses.** A 429 or 503 with ``Retry-After`` pauses every request of the backend object
(push, pull, events) until then: a call before the deadline raises the same error type
with the seconds left as ``retry_after`` and sends nothing (:mod:`._pause`).

**Tokens** come from a string, a provider called for every request, or a provider that
can also ``refresh`` (:mod:`._tokens`). After a 401 the provider is asked for a new token
and the request is sent once more. A token the server refused is never sent again by the
backend: if that is all the provider has, the call raises
:class:`~nexus_store.AuthError` without a request. Tokens are never kept by the backend
(only digests of refused ones), written anywhere, or put into messages.

**Clock.** Every answer of ``nexus-store serve`` states the server's clock and its bound
on clock offsets (headers ``Nexus-Clock`` and ``Nexus-Clock-Bound``, milliseconds); the
last reading is :attr:`HttpBackend.server_clock`, and a sync run makes the stores' clocks
observe it (see :mod:`nexus_store._hlc`). A local clock off by more than the bound is
logged (once per change) on the ``nexus_store.backends`` logger.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Literal

import anyio
import httpx

from .._clock import Clock, SystemClock
from .._exceptions import LifecycleError, NetworkError, ProtocolError, RemoteError
from .._gc import collector_paused
from .._hlc import ClockReading
from .._http_api import (
    EVENTS_PATH,
    HEALTH_PATH,
    JSON,
    MSGPACK,
    PULL_PATH,
    PUSH_PATH,
    SKIP_WRITER_PARAM,
    WRITER_HEADER,
    HeadEvent,
    is_loopback_host,
    media_type_of,
)
from .._remote import Changes, OpResult, OpStatus, PushResult, RemoteBackend, RemoteOp
from .._version import __version__
from ._event_stream import EventStreamDecoder
from ._http_wire import (
    _ERROR_BODY_BYTES,
    UnsendableOpsError,
    _decode,
    _OversizedResponseError,
    _validate,
    changes_of,
    check_changes,
    clock_reading,
    encode_ops,
    error_for_status,
    idempotency_key,
    push_result_of,
)
from ._pause import RemotePause, pause_for
from ._tokens import TokenProvider, TokenSource

__all__ = ["HttpBackend"]

logger = logging.getLogger("nexus_store.backends")


class HttpBackend(RemoteBackend):
    """A remote backend speaking to ``nexus-store serve`` (or a compatible server).

    Args:
        base_url: the server's address, e.g. ``"https://sync.example.com"`` (a path prefix
            is kept: ``".../api"`` sends to ``.../api/v1/push``).
        token: a bearer token, a provider (sync or async callable) called before every
            request and once more after a 401, or a
            :class:`~nexus_store.backends.RefreshingTokenProvider` whose ``refresh`` is
            called with the refused token after a 401. A token the server refused is
            never sent again (see the module docstring).
        timeout: seconds for connecting, each read and each write (or an ``httpx.Timeout``).
        verify: verify TLS certificates (the default), or an ``ssl.SSLContext`` to trust.
        transport: an httpx transport to use instead of the network (tests, proxies).
        max_response_bytes: the largest response body accepted.
        wire_format: ``"msgpack"`` (compact, the default) or ``"json"``.
        events_read_timeout: seconds without any byte (events or keep-alives) after which
            :meth:`watch` gives up with a :class:`~nexus_store.NetworkError`.
        allow_insecure_http: send the token over plain ``http://`` to an address that is
            not loopback. Off by default: anyone on the network path could read the
            token and act as the tenant. Use ``https://`` instead wherever possible. (Not
            checked with a custom ``transport``, which decides where bytes go.)
        clock: where time is read: the ``Retry-After`` pause (monotonic), HTTP dates and
            the local side of :attr:`server_clock` (wall); the system clock by default.
        deadline: the most seconds one push or pull may take in all, answer read
            (``timeout`` bounds each read; this bounds a server trickling its answer).
            ``None``: no bound.

    Raises:
        ValueError: a ``base_url`` that is not http(s), or a token sent over plain http to
            a non-loopback address without ``allow_insecure_http=True``.

    Close it with :meth:`close` / ``with`` (synchronous code) or :meth:`aclose` /
    ``async with``; a store closes the backend it was given unless ``owns_backend=False``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | TokenProvider | None = None,
        timeout: float | httpx.Timeout = 30.0,
        verify: bool | ssl.SSLContext = True,
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = 32 * 1024 * 1024,
        wire_format: Literal["msgpack", "json"] = "msgpack",
        events_read_timeout: float = 60.0,
        allow_insecure_http: bool = False,
        clock: Clock | None = None,
        deadline: float | None = 300.0,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"HttpBackend needs an http(s) URL, got {base_url!r}")
        # A transport given by the caller decides where the bytes go (a MockTransport
        # never leaves the process); the check is for httpx's own network transport.
        if (
            token is not None
            and transport is None
            and url.scheme == "http"
            and not allow_insecure_http
            and not is_loopback_host(url.host)
        ):
            raise ValueError(
                f"refusing to send a bearer token over plain http:// to {url.host} (not a "
                "loopback address: anyone on the way could read it): use https://, or pass "
                "allow_insecure_http=True (--allow-insecure-http) on a network you trust"
            )
        self.base_url = str(url)
        self._clock: Clock = clock or SystemClock()
        self._tokens = TokenSource(token)
        self._pause = RemotePause(self._clock)
        self._server_clock: ClockReading | None = None
        self._deadline = deadline
        self._max_response_bytes = max_response_bytes
        self._media_type = MSGPACK if wire_format == "msgpack" else JSON
        self._wire_format = wire_format
        self._events_read_timeout = events_read_timeout
        self._closed = False
        self._client = httpx.AsyncClient(
            base_url=url,
            timeout=timeout,
            verify=verify,
            transport=transport,
            follow_redirects=False,
            headers={"user-agent": f"nexus-store/{__version__}", "accept": self._media_type},
        )

    def __repr__(self) -> str:
        return f"HttpBackend({self.base_url!r})"

    @property
    def server_clock(self) -> ClockReading | None:
        """The server's clock as its last answer stated it (``None``: none stated yet)."""
        return self._server_clock

    @property
    def paused_for(self) -> float:
        """Seconds until requests are sent again after a ``Retry-After`` (``0.0``: now)."""
        return self._pause.remaining

    # -- the seam ----------------------------------------------------------------------

    writer_aware = True

    async def push(self, ops: Sequence[RemoteOp], *, writer: int | None = None) -> PushResult:
        """Send a batch; return one validated result per op, in order.

        Raises:
            RemoteError: the batch failed as a whole (nothing in it may be acked).
        """
        if not ops:
            return PushResult(results=[])
        try:
            content = encode_ops(ops, self._wire_format)
        except UnsendableOpsError as exc:
            return await self._push_sendable(ops, exc.refused, writer)
        headers = {"content-type": self._media_type, "idempotency-key": idempotency_key(ops)}
        if writer is not None:
            headers[WRITER_HEADER] = str(writer)
        response_headers, payload = await self._call(
            "POST", PUSH_PATH, content=content, headers=headers
        )
        with collector_paused(message=True):
            return push_result_of(ops, _decode(payload, response_headers.get("content-type")))

    async def _push_sendable(
        self, ops: Sequence[RemoteOp], refused: Mapping[int, str], writer: int | None
    ) -> PushResult:
        """Push the ops the wire can carry; answer the others as rejected, with the reason,
        without sending them (the queue dead-letters them; the rest go on)."""
        rest = [op for position, op in enumerate(ops) if position not in refused]
        answers = iter((await self.push(rest, writer=writer)).results)
        return PushResult(
            results=[
                OpResult(op_id=op.op_id, status=OpStatus.REJECTED, reason=refused[position])
                if position in refused
                else next(answers)
                for position, op in enumerate(ops)
            ]
        )

    async def pull(
        self,
        cursor: int = 0,
        limit: int = 500,
        *,
        collections: Sequence[str] | None = None,
        skip_writer: int | None = None,
    ) -> Changes:
        """Fetch the changes after ``cursor`` (validated against what was asked).

        A page larger than ``max_response_bytes`` is asked for again with half the
        ``limit`` (down to one change), so big items slow a pull down but never stall it.

        Raises:
            RemoteError: the pull failed; the cursor must not move.
        """
        if cursor < 0 or limit < 1:
            raise ValueError("cursor must be >= 0 and limit >= 1")
        if collections is not None and not collections:
            return Changes(changes=[], cursor=cursor, has_more=False)
        while True:
            pairs: list[tuple[str, str | int | float | bool | None]] = [
                ("cursor", cursor),
                ("limit", limit),
            ]
            pairs += [("collections", name) for name in collections or ()]
            if skip_writer is not None:
                pairs.append((SKIP_WRITER_PARAM, skip_writer))
            params = httpx.QueryParams(pairs)
            try:
                response_headers, payload = await self._call("GET", PULL_PATH, params=params)
            except _OversizedResponseError:
                # A page of big items: ask for fewer rather than fail on every retry
                # (at most log2(limit) times; a single change too big still raises).
                if limit == 1:
                    raise
                limit //= 2
                continue
            with collector_paused(message=True):  # a page may hold thousands of changes
                content_type = response_headers.get("content-type")
                changes = changes_of(
                    _decode(payload, content_type),
                    from_msgpack=media_type_of(content_type) == "msgpack",
                )
            return check_changes(changes, cursor=cursor, limit=limit, collections=collections)

    async def probe(self) -> None:
        """Ask the server whether it answers at all: ``GET /health``, one small request.

        Sync runs probe a remote that could not be reached (or was down) before sending it
        anything else. No token is sent (the endpoint needs none, and a refused token must
        not make a reachable server look down). Any ``200`` counts.

        Raises:
            RemoteError: no answer, or an error status (a ``Retry-After`` pause in force
                raises without sending).
            LifecycleError: the backend is closed.
        """
        if self._closed:
            raise LifecycleError("the HttpBackend is closed")
        self._pause.check()
        request = self._client.build_request("GET", HEALTH_PATH, headers={"accept": JSON})
        sent = self._clock.now()
        response = await self._send(request)
        self._note_clock(response.headers, sent)
        payload = await self._read(response, _ERROR_BODY_BYTES, truncate=True)
        error = error_for_status(
            response.status_code, response.headers, payload, now=self._clock.now()
        )
        if error is not None:
            seconds = pause_for(response.status_code, error.retry_after)
            if seconds is not None:
                self._pause.start(seconds, error)
            raise error

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent.

        Raises:
            LifecycleError: the event loop the connections belong to has ended without
                closing them (close the backend inside that loop, before it ends).
        """
        self._closed = True
        self._unbind()
        try:
            await self._client.aclose()
        except RuntimeError as exc:  # asyncio: "Event loop is closed"
            raise LifecycleError(
                "HttpBackend: the event loop its connections belong to has ended; close it "
                "inside that loop (`async with`, or `await aclose()`) before the loop ends"
            ) from exc

    # -- server-sent events ------------------------------------------------------------

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[int]]:
        """Listen for news: yields the tenant's head on connect and each time it grows.

        Use ``async with backend.watch() as heads: async for head in heads: ...`` and
        pull when a head is beyond your cursor. Errors (on connect or later) are raised
        as :class:`~nexus_store.RemoteError` subclasses.
        """
        response = await self._open_stream()

        async def heads() -> AsyncIterator[int]:
            decoder = EventStreamDecoder()
            try:
                async for chunk in response.aiter_bytes():
                    for event in decoder.feed(chunk):
                        if event["event"] == "head":
                            yield _validate(HeadEvent, _decode(event["data"].encode(), JSON)).head
            except httpx.HTTPError as exc:
                raise _transport_error(exc, "GET", EVENTS_PATH) from exc
            raise NetworkError("the server closed the event stream")

        try:
            yield heads()
        finally:
            await response.aclose()

    async def _open_stream(self) -> httpx.Response:
        timeout = httpx.Timeout(self._client.timeout.connect, read=self._events_read_timeout)
        response = await self._exchange(
            "GET", EVENTS_PATH, headers={"accept": "text/event-stream"}, timeouts=timeout
        )
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise ProtocolError("the events endpoint did not answer an event stream")
        return response

    # -- plumbing ----------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: httpx.QueryParams | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[httpx.Headers, bytes]:
        """One request (see :meth:`_exchange`); a 200's headers and body, read.

        Raises:
            NetworkError: no complete answer within the backend's ``deadline``.
        """
        try:
            with anyio.fail_after(self._deadline):
                response = await self._exchange(
                    method, path, content=content, params=params, headers=headers
                )
                return response.headers, await self._read(response, self._max_response_bytes)
        except TimeoutError as exc:
            raise NetworkError(
                f"{method} {path}: no complete answer within {self._deadline:g} s"
            ) from exc

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: httpx.QueryParams | None = None,
        headers: Mapping[str, str] | None = None,
        timeouts: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """Send one request; return its 200 response, body not yet read.

        Nothing is sent while a ``Retry-After`` pause lasts, nor with a token the server
        refused. A 401 marks the token refused and the request goes once more with a new
        one; a 429/503 with ``Retry-After`` starts a pause.

        Raises:
            RemoteError: a non-200 answer (typed by :func:`error_for_status`), a pause, a
                refused token, or a transport failure.
            LifecycleError: the backend is closed.
        """
        if self._closed:
            raise LifecycleError("the HttpBackend is closed")
        self._pause.check()
        token = await self._tokens.for_request()
        for attempt in range(2):
            all_headers = dict(headers or {})
            if token is not None:
                all_headers["authorization"] = f"Bearer {token}"
            request = self._client.build_request(
                method,
                path,
                content=content,
                params=params,
                headers=all_headers,
                timeout=timeouts if timeouts is not None else httpx.USE_CLIENT_DEFAULT,
            )
            sent = self._clock.now()
            response = await self._send(request)
            self._note_clock(response.headers, sent)
            status = response.status_code
            if status == 200:
                return response
            payload = await self._read(response, _ERROR_BODY_BYTES, truncate=True)
            if status == 401 and token is not None:
                self._tokens.refuse(token)
                if attempt == 0 and self._tokens.can_change:
                    # The token may have expired: ask for a new one and try once more
                    # (raises without sending if the provider has only refused ones).
                    token = await self._tokens.replacement(token)
                    continue
            error = error_for_status(status, response.headers, payload, now=self._clock.now())
            assert error is not None
            seconds = pause_for(status, error.retry_after)
            if seconds is not None:
                self._pause.start(seconds, error)
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def _note_clock(self, headers: httpx.Headers, sent: float) -> None:
        reading = clock_reading(headers, sent=sent, received=self._clock.now())
        if reading is None:
            return
        before = self._server_clock
        self._server_clock = reading
        if reading.beyond_bound and (before is None or not before.beyond_bound):
            logger.warning(
                "this device's clock is %.1f s %s the clock of %s (bound %.1f s): writes are "
                "stamped with the server's time until it is set right",
                abs(reading.skew),
                "ahead of" if reading.skew > 0 else "behind",
                self.base_url,
                reading.max_offset,
            )
        elif before is not None and before.beyond_bound and not reading.beyond_bound:
            logger.info("this device's clock agrees with %s again", self.base_url)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise LifecycleError("the HttpBackend is closed")
        self._bind_loop()
        try:
            try:
                return await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                if not _resendable(exc, request):
                    raise
                # The server (or a proxy) closed or reset a kept-alive connection as this
                # request went out on it (its idle timeout and the pool's crossed): no
                # answer was read, so the request goes once more (httpcore has closed the
                # failed connection: a new one, or a pooled one that still looks open).
                # Every request of the protocol may be replayed (pushes are idempotent by
                # op id). A second failure raises.
                logger.debug("%s %s: a kept-alive connection was closed (%s); sending again",
                             request.method, request.url.path, type(exc).__name__)  # fmt: skip
                return await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, request.method, request.url.path) from exc
        except RuntimeError as exc:  # httpx: "the client has been closed"
            raise LifecycleError("the HttpBackend is closed") from exc

    async def _read(self, response: httpx.Response, cap: int, *, truncate: bool = False) -> bytes:
        """Read a body of at most ``cap`` bytes (``truncate``: keep the first ``cap`` bytes).

        Raises:
            ProtocolError: a body over the cap (unless truncating), or cut short.
            NetworkError: the connection failed while reading.
        """
        try:
            declared = response.headers.get("content-length", "")
            if not truncate and declared.isdigit() and int(declared) > cap:
                raise _OversizedResponseError(
                    f"the response ({declared} bytes) exceeds the limit of {cap}"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > cap:
                    if truncate:
                        break
                    raise _OversizedResponseError(f"the response exceeds the limit of {cap} bytes")
            return b"".join(chunks)[:cap]
        except httpx.RemoteProtocolError as exc:
            raise ProtocolError(f"the response was cut short or malformed: {exc}") from exc
        except httpx.DecodingError as exc:
            raise ProtocolError(f"the response's content encoding is broken: {exc}") from exc
        except httpx.HTTPError as exc:
            raise _transport_error(exc, response.request.method, response.request.url.path) from exc
        finally:
            await response.aclose()


def _stale_connection(exc: httpx.RemoteProtocolError) -> bool:
    """Whether the server closed the connection before answering a byte (httpcore's words
    for a kept-alive connection closed under a request)."""
    return "without sending a response" in str(exc)


def _resendable(exc: httpx.HTTPError, request: httpx.Request) -> bool:
    """Whether ``request``, whose send failed with ``exc`` before a response head was read,
    may go once more on a new connection: a kept-alive connection closed (stale) or reset
    (``ReadError``, ``WriteError``: ECONNRESET, EPIPE) under it, and a body that can be
    sent again. Not a connect error or a timeout: those are no stale connection.

    httpx does not say whether the connection was a reused one, so a reset of a new one
    goes again too (the request is replayable either way; the caller resends only once).
    """
    if not isinstance(request.stream, httpx.ByteStream):
        return False
    if isinstance(exc, httpx.RemoteProtocolError):
        return _stale_connection(exc)
    return isinstance(exc, (httpx.ReadError, httpx.WriteError))


def _transport_error(exc: httpx.HTTPError, method: str, path: str) -> RemoteError:
    where = f"{method} {path}"
    if isinstance(exc, httpx.TimeoutException):
        return NetworkError(f"{where}: timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.DecodingError):
        return ProtocolError(f"{where}: the response's content encoding is broken")
    return NetworkError(f"{where}: {type(exc).__name__}: {exc}")
