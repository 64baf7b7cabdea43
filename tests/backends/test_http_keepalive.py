"""A kept-alive connection closed or reset by the server as the next request goes out on it
(its idle timeout and the client pool's crossing, common under load) costs no failed
request: the request goes once more, on a new connection, and only once."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import TypeVar

import anyio
import anyio.abc
import httpx
import msgpack
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from nexus_store import NetworkError
from nexus_store.backends import HttpBackend, OpStatus
from nexus_store.backends._http import _resendable
from nexus_store.testing import OpWriter

pytestmark = pytest.mark.anyio

_PAGE = msgpack.packb({"changes": [], "cursor": 0, "has_more": False})
_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/msgpack\r\n"
    + f"content-length: {len(_PAGE)}\r\n\r\n".encode()
    + _PAGE
)


class _ClosingServer:
    """Answers the first request of each connection and keeps it alive, then closes it,
    unanswered, when a second request arrives on it."""

    def __init__(self) -> None:
        self.connections = 0
        self.answered = 0
        self.url = ""

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        reader = BufferedByteReceiveStream(stream)
        with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead, OSError):
            for served in range(2):
                await reader.receive_until(b"\r\n\r\n", 65_536)  # GET: no body
                if served == 1:
                    break  # the idle timeout fired: closed without an answer
                await stream.send(_ANSWER)
                self.answered += 1
        await stream.aclose()


@pytest.fixture
async def server() -> AsyncIterator[_ClosingServer]:
    async with _serving(_ClosingServer()) as closing:
        yield closing


async def test_a_request_on_a_connection_closed_under_it_goes_again(
    server: _ClosingServer,
) -> None:
    """Three pulls in a row each succeed; the second and third found their kept-alive
    connection closed and went again on a new one."""
    async with HttpBackend(server.url, token="t") as backend:
        with anyio.fail_after(10):
            for _ in range(3):
                page = await backend.pull(0)
                assert page.cursor == 0
    assert server.answered == 3
    assert server.connections == 3


# -- a kept-alive connection reset under a request (ECONNRESET) -------------------------


class _ResettingServer:
    """Answers pushes (each op accepted, ``version`` the number of the answer), except the
    request at index ``reset_at`` of each connection (0: the first one): that one is read in
    full, then the connection is reset (``SO_LINGER`` 0 and close: ECONNRESET), unanswered.
    A connection serves at most two requests."""

    def __init__(self, reset_at: int) -> None:
        self.reset_at = reset_at
        self.connections = 0
        self.answered: list[tuple[int, int]] = []  # (connection, request on it)
        self.reset: list[tuple[int, int]] = []
        self.url = ""

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        connection = self.connections
        reader = BufferedByteReceiveStream(stream)
        # Closed even when cancelled (a kept-alive connection waits for a next request).
        # Closing aborts the transport: after SO_LINGER 0 the peer gets a bare RST.
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead, OSError):
                for index in range(2):
                    head = await reader.receive_until(b"\r\n\r\n", 65_536)
                    length = _content_length(head)
                    body = await reader.receive_exactly(length) if length else b""
                    if index == self.reset_at:
                        self.reset.append((connection, index))
                        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                        linger = struct.pack("ii", 1, 0)
                        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                        return
                    self.answered.append((connection, index))
                    await stream.send(_push_answer(body, version=len(self.answered)))


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
            assert 0 <= length <= 1_000_000
            return length
    return 0


def _push_answer(body: bytes, *, version: int) -> bytes:
    ops = msgpack.unpackb(body)["ops"]
    results = [{"op_id": op["op_id"], "status": "accepted", "version": version} for op in ops]
    payload: bytes = msgpack.packb({"results": results})
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/msgpack\r\n"
        + f"content-length: {len(payload)}\r\n\r\n".encode()
        + payload
    )


_S = TypeVar("_S", _ClosingServer, _ResettingServer)


@contextlib.asynccontextmanager
async def _serving(server: _S) -> AsyncIterator[_S]:
    """Serve ``server.handle`` on a free port of 127.0.0.1 (its ``url``) while the block runs."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server.url = f"http://127.0.0.1:{port}"
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, server.handle)
        yield server
        group.cancel_scope.cancel()


async def test_a_request_on_a_reused_connection_reset_under_it_goes_again() -> None:
    """The second push finds its kept-alive connection reset as it goes out (ECONNRESET,
    ``ReadError``): it goes once more, on a new connection, and gets that answer."""
    ops = OpWriter("n")
    first, second = ops.upsert(1, {"v": 1}), ops.upsert(2, {"v": 2})
    async with (
        _serving(_ResettingServer(reset_at=1)) as server,
        HttpBackend(server.url, token="t") as backend,
    ):
        with anyio.fail_after(10):
            one = await backend.push([first])
            two = await backend.push([second])
    assert [(r.op_id, r.status, r.version) for r in one.results] == [
        (first.op_id, OpStatus.ACCEPTED, 1)
    ]
    assert [(r.op_id, r.status, r.version) for r in two.results] == [
        (second.op_id, OpStatus.ACCEPTED, 2)
    ]
    assert server.reset == [(1, 1)]  # the second request, on the reused connection
    assert server.answered == [(1, 0), (2, 0)]  # then the first one on a new connection
    assert server.connections == 2


async def test_a_request_reset_twice_raises_network_error_after_two_attempts() -> None:
    """A server that resets every request: the push goes twice, no more, and fails with a
    typed NetworkError (no httpx exception escapes)."""
    async with (
        _serving(_ResettingServer(reset_at=0)) as server,
        HttpBackend(server.url, token="t") as backend,
    ):
        with anyio.fail_after(10), pytest.raises(NetworkError) as caught:
            await backend.push([OpWriter("n").upsert(1, {})])
    assert not isinstance(caught.value, httpx.HTTPError)
    assert "ReadError" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ReadError)
    assert server.reset == [(1, 0), (2, 0)]
    assert server.answered == []
    assert server.connections == 2


# -- which failures go once more (the pure decision) ------------------------------------


def _request(content: bytes | AsyncIterator[bytes]) -> httpx.Request:
    return httpx.Request("POST", "http://127.0.0.1/v1/push", content=content)


async def _chunks() -> AsyncIterator[bytes]:
    yield b"{}"  # pragma: no cover - never read


_STALE = "Server disconnected without sending a response."


@pytest.mark.parametrize(
    ("error", "resend"),
    [
        (httpx.ReadError, True),
        (httpx.WriteError, True),
        (httpx.ConnectError, False),  # never reached the server: not a stale connection
        (httpx.ReadTimeout, False),
        (httpx.WriteTimeout, False),
        (httpx.PoolTimeout, False),
        (httpx.CloseError, False),
        (httpx.RemoteProtocolError, False),  # a malformed answer: something was read
    ],
)
def test_which_failures_of_a_replayable_request_go_once_more(
    error: type[httpx.TransportError], resend: bool
) -> None:
    request = _request(b"{}")
    assert _resendable(error("boom", request=request), request) is resend
    stale = httpx.RemoteProtocolError(_STALE, request=request)
    assert _resendable(stale, request) is True


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadError("reset", request=_request(b"")),
        httpx.WriteError("broken pipe", request=_request(b"")),
        httpx.RemoteProtocolError(_STALE, request=_request(b"")),
    ],
)
def test_a_request_whose_body_cannot_be_replayed_never_goes_again(
    error: httpx.HTTPError,
) -> None:
    """A streamed body was consumed by the first attempt: it is not sent again."""
    request = _request(_chunks())
    assert not isinstance(request.stream, httpx.ByteStream)
    assert _resendable(error, request) is False
