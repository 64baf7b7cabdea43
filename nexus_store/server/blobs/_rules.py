"""The file endpoints' decisions as pure functions: limits, offsets, byte ranges.

Nothing here reads a request or a storage; :class:`~._service.BlobService` and the routes
ask these functions, so each rule is tested with plain values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BlobLimits", "BlobRefusedError", "check_chunk", "check_creation", "parse_range"]

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class BlobLimits:
    """What the file endpoints accept.

    Attributes:
        max_blob_bytes: the largest blob (``Tus-Max-Size``; HTTP 413 beyond it).
        tenant_quota_bytes: the most bytes of blobs and unfinished uploads one tenant may
            hold (HTTP 413 when a new upload would go beyond it); ``None``: no quota.
        max_chunk_bytes: the largest PATCH body (HTTP 413 beyond it), at most the
            server's body limit.
        upload_ttl: seconds an unfinished upload is kept after it was created (garbage
            collection removes older ones).
    """

    max_blob_bytes: int = 10 * 1024**3
    tenant_quota_bytes: int | None = None
    max_chunk_bytes: int = 16 * 1024**2
    upload_ttl: float = 7 * 86_400.0

    def __post_init__(self) -> None:
        if self.max_blob_bytes < 1 or self.max_chunk_bytes < 1:
            raise ValueError("blob limits must be positive")
        if self.tenant_quota_bytes is not None and self.tenant_quota_bytes < 1:
            raise ValueError("the tenant quota must be positive (or None for no quota)")
        if self.upload_ttl <= 0:
            raise ValueError("upload_ttl must be positive")


class BlobRefusedError(Exception):
    """An answer other than success: the HTTP status, a short code and a message."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


def check_creation(
    length: int, *, limits: BlobLimits, usage: int | None, already_there: bool
) -> None:
    """Whether an upload of ``length`` bytes may be created.

    Args:
        length: the declared ``Upload-Length``.
        limits: the server's limits.
        usage: the tenant's bytes now (``None``: no quota to check).
        already_there: the tenant has the blob already (it costs nothing more).

    Raises:
        BlobRefusedError: 413 for a blob over the size limit or a tenant over its quota.
    """
    if length > limits.max_blob_bytes:
        raise BlobRefusedError(
            413, "blob_too_large", f"a blob may hold at most {limits.max_blob_bytes} bytes"
        )
    quota = limits.tenant_quota_bytes
    if quota is not None and usage is not None and not already_there and usage + length > quota:
        raise BlobRefusedError(
            413,
            "quota_exceeded",
            f"the tenant's files would take {usage + length} bytes, over its quota of {quota}",
        )


def check_chunk(
    *, offset: int, stored: int, length: int, content_length: int | None, limits: BlobLimits
) -> None:
    """Whether a PATCH may write (before its body is read).

    Raises:
        BlobRefusedError: 409 for an offset other than the stored one, 413 for a body longer
            than the upload's rest or the chunk limit.
    """
    if offset != stored:
        raise BlobRefusedError(
            409, "offset_mismatch", f"Upload-Offset {offset} is not the upload's offset {stored}"
        )
    if content_length is not None:
        if content_length > length - stored:
            raise BlobRefusedError(
                413, "beyond_length", f"the chunk runs past the upload's length of {length}"
            )
        if content_length > limits.max_chunk_bytes:
            raise BlobRefusedError(
                413, "chunk_too_large", f"a chunk may hold at most {limits.max_chunk_bytes} bytes"
            )


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte range ``[start, end)`` a ``Range`` header asks of a blob of ``size`` bytes.

    Returns:
        ``None`` for no header (the whole blob).

    Raises:
        BlobRefusedError: 416 for a range that is malformed, asks for several ranges, or
            starts past the end.
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        raise BlobRefusedError(416, "bad_range", "one byte range (bytes=a-b) is supported")
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        count = int(last)
        if count == 0:
            raise BlobRefusedError(416, "bad_range", "an empty suffix range")
        return max(0, size - count), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if start >= size or end <= start:
        raise BlobRefusedError(416, "bad_range", f"the range starts past the blob's {size} bytes")
    return start, end
