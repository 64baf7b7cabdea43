"""Server-sent events, decoded: the stream ``HttpBackend.watch`` reads for change pokes.

:class:`EventStreamDecoder` takes chunks as they arrive (a CRLF split over two chunks
stays whole) and returns complete events; an event larger than its bound is a
:class:`~nexus_store.ProtocolError`.
"""

from __future__ import annotations

from .._exceptions import ProtocolError

__all__ = ["EventStreamDecoder"]

_MAX_EVENT_BYTES = 64 * 1024


class EventStreamDecoder:
    """Splits a ``text/event-stream`` byte stream into events (``{"event", "data", "id"}``).

    Args:
        max_event_bytes: the largest event accepted.
    """

    def __init__(self, max_event_bytes: int = _MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._max = max_event_bytes
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[dict[str, str]]:
        """Add bytes; return the events they complete.

        Line ends may be CRLF, LF or CR, and a CRLF may arrive split over two chunks (a
        CR that ends one chunk ends its line at once; an LF that then starts the next
        chunk is the rest of that line end, not an empty line of its own).

        Raises:
            ProtocolError: an event larger than the limit, or not UTF-8.
        """
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        self._buffer += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = []
        while (end := self._buffer.find(b"\n\n")) >= 0:
            raw, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            event = self._parse(raw)
            if event is not None:
                events.append(event)
        if len(self._buffer) > self._max:
            raise ProtocolError("an event-stream event exceeds the size limit")
        return events

    @staticmethod
    def _parse(raw: bytes) -> dict[str, str] | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("an event-stream event is not UTF-8") from exc
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in text.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name in ("event", "id", "retry"):
                fields[name] = value
        if not data:
            return None
        fields["data"] = "\n".join(data)
        fields.setdefault("event", "message")
        return fields
