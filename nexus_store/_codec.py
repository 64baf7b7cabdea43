"""The one module that knows the byte encoding of queued payloads and wire bodies.

Storage (the queue) and transport (the HTTP backend) deal in ``bytes``; this module
turns plain Python values (what ``pydantic.BaseModel.model_dump(mode="json")``
produces, plus ``bytes``) into msgpack and back.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

from ._exceptions import CodecError

__all__ = ["decode", "encode", "encode_array", "encode_map_pairs", "with_entry"]

_local = threading.local()


def _packer() -> msgpack.Packer:
    # A Packer is not thread-safe, and building one per call costs more than packing a
    # small item; so each thread keeps its own.
    packer: msgpack.Packer | None = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, datetime=False)
    return packer


def encode(value: Any) -> bytes:
    """Encode a plain value (dicts, lists, str, int, float, bool, None, bytes) as msgpack.

    Raises:
        CodecError: if the value holds something msgpack cannot represent.
    """
    try:
        return _packer().pack(value)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        _local.packer = None  # a failed pack may leave the packer's buffer dirty
        raise CodecError(f"cannot encode value: {exc}") from exc


def encode_map_pairs(pairs: list[tuple[Any, Any]]) -> bytes:
    """Encode a map given as ``(key, value)`` pairs, in the order given (e.g. sorted).

    Raises:
        CodecError: if a key or value is something msgpack cannot represent.
    """
    try:
        return _packer().pack_map_pairs(pairs)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        _local.packer = None
        raise CodecError(f"cannot encode value: {exc}") from exc


def decode(data: bytes, *, max_size: int | None = None) -> Any:
    """Decode msgpack ``data`` produced by :func:`encode`.

    Args:
        data: the encoded bytes.
        max_size: refuse inputs longer than this many bytes.

    Raises:
        CodecError: if the bytes are not one complete, valid msgpack value.
    """
    if max_size is not None and len(data) > max_size:
        raise CodecError(f"encoded value of {len(data)} bytes exceeds the limit of {max_size}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"cannot decode payload: {exc}") from exc
    except Exception as exc:  # msgpack raises bare exceptions on some truncated inputs
        raise CodecError(f"cannot decode payload: {exc!r}") from exc


def encode_array(encoded: list[bytes]) -> bytes:
    """A msgpack array of values that are already encoded (joined, not re-encoded)."""
    packer = _packer()
    return packer.pack_array_header(len(encoded)) + b"".join(encoded)  # type: ignore[no-any-return]


def with_entry(encoded_map: bytes, key: str, encoded_value: bytes) -> bytes:
    """An encoded map with one more entry whose value is already encoded.

    This lets stored msgpack (an item's data) be sent as it is, without decoding and
    encoding it again. ``encoded_map`` must come from :func:`encode` of a ``dict`` without
    ``key``.

    Raises:
        CodecError: ``encoded_map`` is not an encoded map.
    """
    head = encoded_map[0] if encoded_map else 0
    if 0x80 <= head < 0x8F:  # fixmap with room for one more entry
        key_bytes: bytes = _packer().pack(key)
        return bytes((head + 1,)) + encoded_map[1:] + key_bytes + encoded_value
    if head in (0x8F, 0xDE, 0xDF):  # a fixmap that is full, map 16, map 32
        reader = msgpack.Unpacker(max_buffer_size=len(encoded_map))
        reader.feed(encoded_map)
        size = reader.read_map_header()
        rest = encoded_map[reader.tell() :]
        packer = _packer()
        return packer.pack_map_header(size + 1) + rest + packer.pack(key) + encoded_value  # type: ignore[no-any-return]
    raise CodecError("not an encoded map")
