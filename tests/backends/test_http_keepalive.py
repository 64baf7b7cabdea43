"""A kept-alive connection closed by the server as the next request goes out on it (its idle
timeout and the client pool's crossing, common under load) costs no failed request."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import msgpack
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from nexus_store.backends import HttpBackend

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
    closing = _ClosingServer()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    closing.url = f"http://127.0.0.1:{port}"
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, closing.handle)
        yield closing
        group.cancel_scope.cancel()


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
