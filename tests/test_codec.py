"""The codec: msgpack in one place, typed errors for bad bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_store import CodecError
from nexus_store._codec import decode, encode

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@given(json_values)
def test_round_trip(value: object) -> None:
    """Every plain value decodes to what was encoded."""
    assert decode(encode(value)) == value


def test_unencodable_value_raises_codec_error() -> None:
    """An object msgpack cannot represent gives CodecError."""
    with pytest.raises(CodecError):
        encode(object())


@pytest.mark.parametrize("data", [b"\x92\x01", b"\xc1", encode({"a": 1})[:-1], encode(1) + b"x"])
def test_bad_bytes_raise_codec_error(data: bytes) -> None:
    """Truncated, reserved or trailing bytes give CodecError, never a foreign exception."""
    with pytest.raises(CodecError):
        decode(data)


def test_size_limit() -> None:
    """decode refuses input over max_size."""
    with pytest.raises(CodecError, match="exceeds"):
        decode(encode("x" * 100), max_size=10)


@given(st.binary(max_size=64))
def test_random_bytes_never_escape_the_tree(data: bytes) -> None:
    """Any byte string either decodes or raises CodecError."""
    with contextlib.suppress(CodecError):
        decode(data)
