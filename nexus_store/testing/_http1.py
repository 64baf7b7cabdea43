"""Just enough HTTP/1.1 for the test kit's servers: messages read, framed, relayed, refused.

A request or response head (start line and headers, bounded), its body by
``Content-Length``, chunked encoding or the connection's end, keep-alive, and canned
answers. Shared by :class:`~nexus_store.testing.FaultProxy` and
:class:`~nexus_store.testing.ScriptedServer`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__: list[str] = []

_MAX_HEAD = 64 * 1024
_MAX_LINE = 8 * 1024
_IO_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
    OSError,
)


@dataclass
class _Message:
    head: bytes
    """Start line and headers, ending with the blank line."""
    body: bytes = b""
    start_line: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def raw(self) -> bytes:
        return self.head + self.body


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def _read_head(reader: BufferedByteReceiveStream) -> tuple[bytes, str, dict[str, str]]:
    head = await reader.receive_until(b"\r\n\r\n", _MAX_HEAD) + b"\r\n\r\n"
    start, headers = _parse_head(head)
    return head, start, headers


async def _read_chunked(reader: BufferedByteReceiveStream) -> bytes:
    """Read a chunked body, returned raw (framing included) so it is relayed as is."""
    parts: list[bytes] = []
    while True:
        line = await reader.receive_until(b"\r\n", _MAX_LINE)
        parts.append(line + b"\r\n")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, up to the blank line
                trailer = await reader.receive_until(b"\r\n", _MAX_LINE)
                parts.append(trailer + b"\r\n")
                if not trailer:
                    return b"".join(parts)
        parts.append(await reader.receive_exactly(size + 2))


async def _read_to_close(reader: BufferedByteReceiveStream) -> bytes:
    parts: list[bytes] = []
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
        while True:
            parts.append(await reader.receive())
    return b"".join(parts)


def _body_framing(headers: dict[str, str]) -> tuple[str, int]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked", 0
    if "content-length" in headers:
        return "length", int(headers["content-length"])
    return "none", 0


async def _read_request(reader: BufferedByteReceiveStream) -> _Message:
    head, start, headers = await _read_head(reader)
    framing, length = _body_framing(headers)
    if framing == "chunked":
        body = await _read_chunked(reader)
    elif framing == "length" and length:
        body = await reader.receive_exactly(length)
    else:
        body = b""
    return _Message(head, body, start, headers)


def _response_has_body(request_method: str, status: int) -> bool:
    return not (request_method == "HEAD" or 100 <= status < 200 or status in (204, 304))


def _status_of(start_line: str) -> int:
    parts = start_line.split(" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _wants_close(message: _Message) -> bool:
    return "close" in message.headers.get("connection", "").lower()


def _canned(status: int, reason: str, extra: dict[str, str] | None = None) -> bytes:
    body = f'{{"detail": "{reason} (fault proxy)"}}'.encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


async def _relay_chunked(reader: BufferedByteReceiveStream, client: anyio.abc.SocketStream) -> None:
    while True:
        line = await reader.receive_until(b"\r\n", _MAX_LINE)
        await client.send(line + b"\r\n")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:
                trailer = await reader.receive_until(b"\r\n", _MAX_LINE)
                await client.send(trailer + b"\r\n")
                if not trailer:
                    return
        await client.send(await reader.receive_exactly(size + 2))


def _abort(client: anyio.abc.SocketStream) -> None:
    """Make the coming close send a TCP RST instead of a FIN."""
    raw = client.extra(anyio.abc.SocketAttribute.raw_socket)  # noqa: S610 - anyio, not Django
    with contextlib.suppress(OSError):
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
