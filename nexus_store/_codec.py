"""The one module that knows the byte encoding of queued payloads and wire bodies.

Storage (the queue) and transport (the HTTP backend) deal in ``bytes``; this module
turns plain Python values (what ``pydantic.BaseModel.model_dump(mode="json")``
produces, plus ``bytes``) into msgpack and back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgpack

from ._exceptions import CodecError

__all__ = [
    "decode",
    "encode",
    "encode_array_header",
    "encode_map_pairs",
    "scalar_encoder",
]

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


def scalar_encoder() -> Callable[[Any], bytes]:
    """This thread's encoding function, for loops that encode many small values one by one
    and join the bytes (skipping :func:`encode`'s call and checks per value).

    Use it on the thread that asked for it only. It raises ``TypeError``, ``ValueError``
    or ``OverflowError`` (not :class:`CodecError`) for a value msgpack cannot represent;
    the encoder stays usable after such an error.
    """
    return _packer().pack  # type: ignore[no-any-return]


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


def encode_array_header(length: int) -> bytes:
    """The header of a msgpack array of ``length`` values (the values follow it)."""
    return _packer().pack_array_header(length)  # type: ignore[no-any-return]
