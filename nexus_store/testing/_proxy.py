"""A small HTTP/1.1 fault proxy on 127.0.0.1, for testing what a flaky network does.

:class:`FaultProxy` listens on a free port of 127.0.0.1 and forwards each request to a
target server. Its fault mode is switchable while it runs; each request is hit by the
fault with probability ``rate`` (seeded, so a run is repeatable):

- ``PASS``: forward the request and stream the response back.
- ``DROP_RESPONSE``: forward the request, read the whole response (the server has done
  the work), then close the client's connection without answering.
- ``RESET``: reset the client's connection (TCP RST) before anything is forwarded.
- ``STALL``: forward the request, read the response, then answer nothing until the
  client gives up (or ``stall_for`` seconds pass), and close.
- ``TRUNCATE``: forward, then send the response headers and half the body, and close.
- ``UNAVAILABLE``: answer ``503`` without forwarding.
- ``RATE_LIMITED``: answer ``429`` with ``Retry-After`` without forwarding.
- ``SERVER_ERROR``: answer ``500`` without forwarding (with ``body_contains``: a server
  that fails on one op, a poison op).

It understands just enough HTTP/1.1 (request line, headers, ``Content-Length`` and
chunked bodies, keep-alive) to act per request; every decision and what it did is
counted in :attr:`FaultProxy.stats`.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ._http1 import (
    _IO_ERRORS,
    _abort,
    _body_framing,
    _canned,
    _Message,
    _read_chunked,
    _read_head,
    _read_request,
    _read_to_close,
    _relay_chunked,
    _response_has_body,
    _status_of,
    _wants_close,
)

__all__ = ["FaultMode", "FaultProxy", "ProxyRecord", "ProxyStats"]


class FaultMode(StrEnum):
    """What the proxy does to a request hit by the fault."""

    PASS = "pass"  # noqa: S105 - a fault mode, not a password
    DROP_RESPONSE = "drop_response"
    RESET = "reset"
    STALL = "stall"
    TRUNCATE = "truncate"
    UNAVAILABLE = "unavailable"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"


@dataclass
class ProxyStats:
    """Counts of what the proxy saw and did."""

    connections: int = 0
    requests: int = 0
    """Complete requests received from clients."""
    forwarded: int = 0
    """Requests sent on to the target (the server saw them)."""
    passed: int = 0
    dropped: int = 0
    reset: int = 0
    stalled: int = 0
    truncated: int = 0
    unavailable: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    upstream_errors: int = 0
    """Requests whose forwarding failed (target down, connection broken)."""


@dataclass(frozen=True)
class ProxyRecord:
    """One request as the proxy handled it."""

    at: float
    """``time.monotonic()`` when the request was fully received."""
    method: str
    path: str
    action: FaultMode


@dataclass
class _Fault:
    mode: FaultMode = FaultMode.PASS
    rate: float = 1.0
    path_prefix: str | None = None
    retry_after: float = 1.0
    stall_for: float | None = None
    body_contains: bytes | None = None


class _Upstream:
    """The proxy's connection to the target for one client connection (reopened as needed)."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self.stream: anyio.abc.SocketStream | None = None
        self.reader: BufferedByteReceiveStream | None = None

    async def connect(self) -> tuple[anyio.abc.SocketStream, BufferedByteReceiveStream]:
        if self.stream is None or self.reader is None:
            self.stream = await anyio.connect_tcp(self._host, self._port)
            self.reader = BufferedByteReceiveStream(self.stream)
        return self.stream, self.reader

    async def aclose(self) -> None:
        stream, self.stream, self.reader = self.stream, None, None
        if stream is not None:
            with contextlib.suppress(*_IO_ERRORS):
                await stream.aclose()


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 that injects network faults on demand.

    Use it as an async context manager; point the client at :attr:`url`::

        async with FaultProxy("http://127.0.0.1:8000", seed=1) as proxy:
            proxy.set_fault(FaultMode.DROP_RESPONSE, rate=0.2, path_prefix="/v1/push")
            backend = HttpBackend(proxy.url, token="t")

    Args:
        target: the server's base URL (``http://host:port``) or ``"host:port"``.
        seed: seed of the randomness that picks which requests a fault hits.
    """

    def __init__(self, target: str, *, seed: int = 0) -> None:
        parsed = urlsplit(target if "://" in target else f"http://{target}")
        if parsed.hostname is None or parsed.port is None:
            raise ValueError(f"target needs a host and a port: {target!r}")
        self.target_host: str = parsed.hostname
        self.target_port: int = parsed.port
        self._random = random.Random(seed)  # noqa: S311 - repeatable fault choice, not crypto
        self._fault = _Fault()
        self.stats = ProxyStats()
        self.log: list[ProxyRecord] = []
        """Every complete request, in arrival order."""
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._port = 0
        self._fault_changed = anyio.Event()
        self._activity = anyio.Event()

    # -- control ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (127.0.0.1)."""
        return self._port

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def mode(self) -> FaultMode:
        """The current fault mode."""
        return self._fault.mode

    def set_fault(
        self,
        mode: FaultMode,
        rate: float = 1.0,
        *,
        path_prefix: str | None = None,
        retry_after: float = 1.0,
        stall_for: float | None = None,
        body_contains: bytes | None = None,
    ) -> None:
        """Switch the fault injected from the next request on.

        Args:
            mode: what to do to a request the fault hits.
            rate: probability (0..1) that a request is hit.
            path_prefix: only requests whose path starts with this are candidates.
            retry_after: the ``Retry-After`` seconds of ``RATE_LIMITED`` answers.
            stall_for: most seconds a ``STALL`` holds a request (default: until the client
                gives up or the fault changes).
            body_contains: only requests whose body holds these bytes are candidates.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        self._fault = _Fault(mode, rate, path_prefix, retry_after, stall_for, body_contains)
        # Wake stalled requests so they notice the change.
        self._fault_changed.set()
        self._fault_changed = anyio.Event()

    def clear(self) -> None:
        """Stop injecting faults (``PASS``)."""
        self.set_fault(FaultMode.PASS)

    async def wait_until(self, predicate: Callable[[ProxyStats], bool]) -> None:
        """Wait until ``predicate(stats)`` holds (checked whenever the proxy acts).

        Bound it with a timeout (``anyio.fail_after``): it waits for as long as it takes.
        """
        while not predicate(self.stats):
            await self._activity.wait()

    def _acted(self) -> None:
        self._activity.set()
        self._activity = anyio.Event()

    def count(self, *, path_prefix: str = "", action: FaultMode | None = None) -> int:
        """Requests logged whose path starts with ``path_prefix`` (and with ``action``)."""
        return sum(
            1
            for r in self.log
            if r.path.startswith(path_prefix) and (action is None or r.action is action)
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self._listener = listener
        self._port = int(listener.extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(listener.serve, self._handle)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
        if self._listener is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(*_IO_ERRORS):
                await self._listener.aclose()
            self._listener = None

    # -- per connection ------------------------------------------------------------------------

    def _decide(self, path: str, body: bytes) -> FaultMode:
        fault = self._fault
        if fault.mode is FaultMode.PASS:
            return FaultMode.PASS
        if fault.path_prefix is not None and not path.startswith(fault.path_prefix):
            return FaultMode.PASS
        if fault.body_contains is not None and fault.body_contains not in body:
            return FaultMode.PASS
        if fault.rate < 1.0 and self._random.random() >= fault.rate:
            return FaultMode.PASS
        return fault.mode

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.stats.connections += 1
        reader = BufferedByteReceiveStream(client)
        upstream = _Upstream(self.target_host, self.target_port)
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except _IO_ERRORS:
                    return
                try:
                    keep_open = await self._serve_one(client, reader, upstream, request)
                finally:
                    self._acted()
                if not keep_open:
                    return
        finally:
            # Shielded: the proxy shutting down cancels this task, and the sockets must
            # still be closed.
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
                with contextlib.suppress(*_IO_ERRORS):
                    await client.aclose()

    async def _serve_one(
        self,
        client: anyio.abc.SocketStream,
        reader: BufferedByteReceiveStream,
        upstream: _Upstream,
        request: _Message,
    ) -> bool:
        """Handle one request; return whether the client connection stays open."""
        method, _, rest = request.start_line.partition(" ")
        path = rest.split(" ", 1)[0]
        self.stats.requests += 1
        action = self._decide(path, request.body)
        self.log.append(ProxyRecord(time.monotonic(), method, path, action))
        fault = self._fault
        if action is FaultMode.RESET:
            self.stats.reset += 1
            _abort(client)
            return False
        if action is FaultMode.UNAVAILABLE:
            self.stats.unavailable += 1
            await client.send(_canned(503, "Service Unavailable"))
            return not _wants_close(request)
        if action is FaultMode.SERVER_ERROR:
            self.stats.server_errors += 1
            await client.send(_canned(500, "Internal Server Error"))
            return not _wants_close(request)
        if action is FaultMode.RATE_LIMITED:
            self.stats.rate_limited += 1
            retry = f"{fault.retry_after:g}"
            await client.send(_canned(429, "Too Many Requests", {"retry-after": retry}))
            return not _wants_close(request)
        if action is FaultMode.PASS:
            return await self._pass(client, upstream, request, method)
        try:
            response = await self._exchange(upstream, request, method)
        except _IO_ERRORS:
            self.stats.upstream_errors += 1
            return False
        if action is FaultMode.DROP_RESPONSE:
            self.stats.dropped += 1
            return False
        if action is FaultMode.TRUNCATE:
            self.stats.truncated += 1
            with contextlib.suppress(*_IO_ERRORS):
                await client.send(response.head + response.body[: len(response.body) // 2])
            return False
        # STALL: answer nothing until the client gives up, the fault changes or time is up.
        self.stats.stalled += 1
        self._acted()
        changed = self._fault_changed
        with anyio.move_on_after(fault.stall_for if fault.stall_for is not None else 3600):
            async with anyio.create_task_group() as group:

                async def until_changed() -> None:
                    await changed.wait()
                    group.cancel_scope.cancel()

                async def until_client_gone() -> None:
                    with contextlib.suppress(*_IO_ERRORS):
                        await reader.receive()
                    group.cancel_scope.cancel()

                group.start_soon(until_changed)
                group.start_soon(until_client_gone)
        return False

    async def _exchange(self, upstream: _Upstream, request: _Message, method: str) -> _Message:
        """Forward ``request`` and read the whole response."""
        stream, up_reader = await self._send_upstream(upstream, request)
        del stream
        head, start, headers = await _read_head(up_reader)
        framing, length = _body_framing(headers)
        if not _response_has_body(method, _status_of(start)):
            body = b""
        elif framing == "chunked":
            body = await _read_chunked(up_reader)
        elif framing == "length":
            body = await up_reader.receive_exactly(length) if length else b""
        else:
            body = await _read_to_close(up_reader)
            await upstream.aclose()
        response = _Message(head, body, start, headers)
        if _wants_close(response):
            await upstream.aclose()
        return response

    async def _send_upstream(
        self, upstream: _Upstream, request: _Message
    ) -> tuple[anyio.abc.SocketStream, BufferedByteReceiveStream]:
        stream, up_reader = await upstream.connect()
        try:
            await stream.send(request.raw)
        except _IO_ERRORS:
            # A kept-alive connection the server closed meanwhile: reconnect once.
            await upstream.aclose()
            stream, up_reader = await upstream.connect()
            await stream.send(request.raw)
        self.stats.forwarded += 1
        return stream, up_reader

    async def _pass(
        self,
        client: anyio.abc.SocketStream,
        upstream: _Upstream,
        request: _Message,
        method: str,
    ) -> bool:
        """Forward and stream the response back as it arrives (server-sent events too)."""
        try:
            _, up_reader = await self._send_upstream(upstream, request)
            head, start, headers = await _read_head(up_reader)
        except _IO_ERRORS:
            self.stats.upstream_errors += 1
            await upstream.aclose()
            with contextlib.suppress(*_IO_ERRORS):
                await client.send(_canned(502, "Bad Gateway", {"connection": "close"}))
            return False
        self.stats.passed += 1
        framing, length = _body_framing(headers)
        try:
            await client.send(head)
            if not _response_has_body(method, _status_of(start)):
                pass
            elif framing == "length":
                remaining = length
                while remaining > 0:
                    chunk = await up_reader.receive(min(remaining, 65536))
                    remaining -= len(chunk)
                    await client.send(chunk)
            elif framing == "chunked":
                await _relay_chunked(up_reader, client)
            else:
                with contextlib.suppress(anyio.EndOfStream):
                    while True:
                        await client.send(await up_reader.receive())
                await upstream.aclose()
                return False
        except _IO_ERRORS:
            await upstream.aclose()
            return False
        if "close" in headers.get("connection", "").lower():
            await upstream.aclose()
            return False
        return not _wants_close(request)
