"""The client's text/event-stream decoder gives the same events however bytes are chunked."""

from __future__ import annotations

import pytest

from nexus_store.backends._event_stream import EventStreamDecoder

STREAM = {
    "crlf": b': keep-alive\r\n\r\nid: 1\r\nevent: head\r\ndata: {"head": 1}\r\n\r\n'
    b'data: two\r\ndata: lines\r\n\r\nid: 3\r\nevent: head\r\ndata: {"head": 3}\r\n\r\n',
    "lf": b': keep-alive\n\nid: 1\nevent: head\ndata: {"head": 1}\n\n'
    b'data: two\ndata: lines\n\nid: 3\nevent: head\ndata: {"head": 3}\n\n',
    "cr": b': keep-alive\r\rid: 1\revent: head\rdata: {"head": 1}\r\r'
    b'data: two\rdata: lines\r\rid: 3\revent: head\rdata: {"head": 3}\r\r',
}
EXPECTED = [
    {"id": "1", "event": "head", "data": '{"head": 1}'},
    {"data": "two\nlines", "event": "message"},
    {"id": "3", "event": "head", "data": '{"head": 3}'},
]


def decode(chunks: list[bytes]) -> list[dict[str, str]]:
    decoder = EventStreamDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


@pytest.mark.parametrize("ending", sorted(STREAM))
def test_every_split_point_gives_the_same_events(ending: str) -> None:
    """Cut in two at every byte (a CRLF split between chunks too), the events are the same."""
    raw = STREAM[ending]
    assert decode([raw]) == EXPECTED
    for cut in range(len(raw) + 1):
        assert decode([raw[:cut], raw[cut:]]) == EXPECTED, f"split at byte {cut}"


@pytest.mark.parametrize("ending", sorted(STREAM))
def test_byte_by_byte_and_empty_chunks_give_the_same_events(ending: str) -> None:
    """One byte at a time, with empty chunks between them, changes nothing."""
    raw = STREAM[ending]
    chunks = [piece for byte in raw for piece in (bytes([byte]), b"")]
    assert decode(chunks) == EXPECTED


def test_an_event_ending_in_a_cr_is_delivered_without_waiting_for_more() -> None:
    """A chunk ending in CR completes its event at once (the next byte is not awaited)."""
    decoder = EventStreamDecoder()
    assert decoder.feed(b"data: now\r\r") == [{"data": "now", "event": "message"}]
    assert decoder.feed(b"\ndata: next\n\n") == [{"data": "next", "event": "message"}]
