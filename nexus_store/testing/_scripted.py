"""A real HTTP server on 127.0.0.1 whose every answer is bytes a test chooses.

:class:`ScriptedServer` reads each request (request line, headers and body, sized or
chunked) and hands it to a function that returns a :class:`RawAnswer`: the exact bytes to
write back, status line and headers included, so anything a broken server or a meddling
middlebox could send can be sent: truncated bodies, wrong framing, garbage instead of a
status line, answers trickled byte by byte, or headers followed by silence. After an
answer the connection is closed (or, with ``then="hang"``, held open until the client
gives up or the server stops).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ._http1 import _IO_ERRORS, _read_request

__all__ = ["RawAnswer", "ScriptedRequest", "ScriptedServer", "http_answer"]


@dataclass(frozen=True)
class ScriptedRequest:
    """A request as the scripted server received it."""

    method: str
    target: str
    """The request target: path and query string."""
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes

    @property
    def path(self) -> str:
        """The path, without the query string."""
        return self.target.split("?", 1)[0]


@dataclass(frozen=True)
class RawAnswer:
    """What to write back for one request.

    Attributes:
        data: the bytes, written as they are (build a well-formed answer with
            :func:`http_answer`).
        then: ``"close"`` the connection after writing, or ``"hang"``: keep it open and
            silent until the client closes it or the server stops.
        trickle: seconds between single bytes (``0``: write everything at once).
    """

    data: bytes
    then: Literal["close", "hang"] = "close"
    trickle: float = 0.0


def http_answer(
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: int | None = None,
) -> bytes:
    """A plain HTTP/1.1 answer: status line, headers, ``Content-Length``, body.

    Args:
        status: the status code.
        body: the body bytes.
        headers: more headers (e.g. ``content-type``).
        content_length: the ``Content-Length`` to declare (default: the body's length; a
            different one makes a truncated or overlong answer).
    """
    length = len(body) if content_length is None else content_length
    lines = [f"HTTP/1.1 {status} Scripted", f"content-length: {length}", "connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


Script = Callable[[ScriptedRequest], RawAnswer | Awaitable[RawAnswer]]


class ScriptedServer:
    """An HTTP/1.1 server on 127.0.0.1 that answers each request as ``script`` says.

    Use it as an async context manager; point the client at :attr:`url`::

        async with ScriptedServer(lambda request: RawAnswer(http_answer(503))) as server:
            backend = HttpBackend(server.url, token="t")

    Args:
        script: called with each request; returns the answer (may be async).
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        """The function answering requests (may be replaced between requests)."""
        self._requests: list[ScriptedRequest] = []
        self._listener: anyio.abc.SocketListener | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._port = 0

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def requests(self) -> list[ScriptedRequest]:
        """Every complete request received, in order."""
        return self._requests

    async def __aenter__(self) -> Self:
        multi = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        [listener] = multi.listeners  # one address: 127.0.0.1
        assert isinstance(listener, anyio.abc.SocketListener)
        self._listener = listener
        self._port = int(listener.extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._accept, listener, self._task_group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The listener closes first, so the accept loop ends between two connections (a
        # cancellation inside an accept could lose a connection already taken).
        if self._listener is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(*_IO_ERRORS):
                await self._listener.aclose()
            self._listener = None
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()  # connections held open by "hang" answers
            await task_group.__aexit__(None, None, None)

    async def _accept(self, listener: anyio.abc.SocketListener, group: anyio.abc.TaskGroup) -> None:
        with contextlib.suppress(anyio.ClosedResourceError):
            while True:
                client = await listener.accept()
                group.start_soon(self._handle, client)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        reader = BufferedByteReceiveStream(client)
        try:
            try:
                message = await _read_request(reader)
            except _IO_ERRORS:
                return
            method, _, rest = message.start_line.partition(" ")
            request = ScriptedRequest(
                method, rest.split(" ", 1)[0], dict(message.headers), message.body
            )
            self._requests.append(request)
            answer = self.script(request)
            if inspect.isawaitable(answer):
                answer = await answer
            with contextlib.suppress(*_IO_ERRORS):
                if answer.trickle > 0:
                    for byte in answer.data:
                        await client.send(bytes((byte,)))
                        await anyio.sleep(answer.trickle)
                else:
                    await client.send(answer.data)
                while answer.then == "hang":  # until the client closes (or we are cancelled)
                    await reader.receive()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(*_IO_ERRORS):
                await client.aclose()
