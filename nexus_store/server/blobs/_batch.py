"""A batch of small blobs in one request (``POST /v1/blobs``): reading its body, its answers.

:func:`read_batch` splits a body into its manifest and each blob's bytes (see
:mod:`nexus_store._blob_api`), refusing a body that cannot be read as a batch as a whole
(nothing of it is stored); :meth:`~._service.BlobService.put_batch` then decides and stores
blob by blob and answers each with a :class:`BatchAnswer`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..._blob_api import MAX_MANIFEST, BatchEntry, decode_manifest
from ._rules import BlobRefusedError

__all__ = ["BatchAnswer", "check_batch_length", "read_batch"]


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    """What became of one blob of a batch: ``201`` stored, ``200`` already there, or a
    refusal (the status and code a single upload would get)."""

    sha256: str
    status: int
    error: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, object]:
        """The answer as it goes on the wire."""
        return {
            "sha256": self.sha256,
            "status": self.status,
            "error": self.error,
            "detail": self.detail,
        }


def check_batch_length(
    content_length: int | None, manifest_length: int | None, max_batch_bytes: int
) -> tuple[int, int]:
    """Whether a batch may be read (before its body is): its body's and manifest's lengths.

    Raises:
        BlobRefusedError: 411 without a length, 413 over the batch limit, 400 for a missing
            or impossible manifest length.
    """
    if content_length is None:
        raise BlobRefusedError(411, "length_required", "a batch needs a Content-Length")
    if content_length > max_batch_bytes:
        raise BlobRefusedError(
            413, "batch_too_large", f"a batch body may hold at most {max_batch_bytes} bytes"
        )
    if manifest_length is None or not 0 < manifest_length <= min(content_length, MAX_MANIFEST):
        raise BlobRefusedError(
            400, "bad_manifest", "Nexus-Manifest-Length must give the manifest's length"
        )
    return content_length, manifest_length


async def read_batch(
    chunks: AsyncIterator[bytes], *, content_length: int, manifest_length: int
) -> tuple[list[BatchEntry], list[bytes]]:
    """The manifest's entries and each blob's bytes, in order.

    Raises:
        BlobRefusedError: 400 for a manifest that does not parse or whose sizes do not add
            up to the body's length, or a body shorter or longer than it said.
    """
    body = bytearray()
    entries: list[BatchEntry] | None = None
    async for piece in chunks:
        body += piece
        if len(body) > content_length:
            raise BlobRefusedError(400, "bad_length", "the body is longer than its length")
        if entries is None and len(body) >= manifest_length:
            entries = _entries(bytes(body[:manifest_length]), content_length - manifest_length)
    if len(body) != content_length or entries is None:
        raise BlobRefusedError(400, "short_body", "the body is shorter than its length")
    view = memoryview(body)
    blobs, at = [], manifest_length
    for entry in entries:
        blobs.append(bytes(view[at : at + entry.size]))
        at += entry.size
    return entries, blobs


def _entries(manifest: bytes, room: int) -> list[BatchEntry]:
    try:
        entries = decode_manifest(manifest)
    except ValueError as exc:
        raise BlobRefusedError(400, "bad_manifest", str(exc)) from exc
    if sum(entry.size for entry in entries) != room:
        raise BlobRefusedError(
            400, "bad_manifest", "the blobs' sizes do not add up to the body's length"
        )
    return entries
