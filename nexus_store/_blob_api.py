"""The shape of file transfers on the wire, shared by the files client and the server.

Kept free of Starlette and httpx (like :mod:`._http_api`), so both sides agree on one
definition of paths, headers, metadata and blob references.

Uploads speak the `tus 1.0 resumable upload protocol <https://tus.io/protocols/resumable-upload>`_
with the creation, checksum and termination extensions:

- ``OPTIONS /v1/files``: what the server supports (``Tus-Version``, ``Tus-Extension``,
  ``Tus-Max-Size``, ``Tus-Checksum-Algorithm``; ``Nexus-Max-Chunk``: the largest PATCH body).
- ``POST /v1/files`` with ``Upload-Length`` and ``Upload-Metadata`` (``sha256``: the blob's
  hash as hex, optional; ``filename``; ``content_type``): ``201`` with ``Location``. A blob
  the tenant already has is not sent again: the answer's ``Upload-Offset`` is the length.
- ``HEAD /v1/files/{id}``: ``Upload-Offset`` (the bytes the server holds) and ``Upload-Length``.
- ``PATCH /v1/files/{id}`` (``application/offset+octet-stream``, ``Upload-Offset``, optional
  ``Upload-Checksum``, ``crc32c`` by choice, see :data:`CHUNK_CHECKSUMS`): ``204`` with
  the new offset; ``409`` for a wrong offset, ``460`` for
  a checksum mismatch (nothing of the chunk is kept). The PATCH that completes the upload
  answers only after the whole blob's SHA-256 was verified and the blob made visible
  (``Nexus-Blob-Sha256``); a blob whose hash does not match is dropped (``460``).
- ``DELETE /v1/files/{id}``: termination.

Many small blobs go in one request: ``POST /v1/blobs`` (``Content-Type:``
:data:`BATCH_TYPE`; ``Nexus-Manifest-Length``: the byte length of the manifest that opens
the body). The body is the manifest, a JSON list of ``{"sha256": hex, "size": n}`` (at most
:data:`MAX_BATCH_BLOBS`), then each blob's bytes back to back in its order; the whole body is
at most ``Nexus-Max-Batch`` bytes (an ``OPTIONS`` answer header; ``413`` before the body
beyond it). The answer (``200``) is ``{"blobs": [{"sha256", "status", "error", "detail"}]}``
in manifest order: ``201`` stored, ``200`` already there, or a refusal of that blob alone
(``400 bad_hash``, ``413 blob_too_large`` / ``quota_exceeded``, ``460 blob_hash_mismatch``).
Each blob is verified and stored whole (durably) or not at all; a body that cannot be read
as a batch is refused whole (``400``) and stores nothing.

Blobs are read by hash: ``GET /v1/blobs/{sha256}`` (``Range`` requests answer ``206``) and
``HEAD /v1/blobs/{sha256}``. Every route but ``OPTIONS`` needs the bearer token; tenants
share nothing (not even the knowledge that a blob exists).

A reference to a blob inside a record's data is a JSON object holding ``"sha256"`` (64
lowercase hex digits) and ``"size"`` (an integer): :func:`blob_refs` finds them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import google_crc32c

__all__ = [
    "BATCH_TYPE",
    "BLOBS_PATH",
    "CHECKSUM_ALGORITHMS",
    "CHECKSUM_MISMATCH",
    "CHUNK_CHECKSUMS",
    "FILES_PATH",
    "MAX_BATCH_BLOBS",
    "OFFSET_STREAM",
    "TUS_EXTENSIONS",
    "TUS_VERSION",
    "BatchEntry",
    "Checksum",
    "blob_refs",
    "chunk_checksum",
    "decode_manifest",
    "decode_metadata",
    "encode_manifest",
    "encode_metadata",
    "fast_crc32c",
    "is_sha256",
    "is_upload_id",
    "new_checksum",
    "parse_checksum",
]

FILES_PATH = "/v1/files"
BLOBS_PATH = "/v1/blobs"
TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,checksum,termination"
OFFSET_STREAM = "application/offset+octet-stream"
CHECKSUM_MISMATCH = 460
"""The status tus gives a chunk (or here, a whole blob) whose checksum does not match."""

TUS_RESUMABLE = "tus-resumable"
UPLOAD_OFFSET = "upload-offset"
UPLOAD_LENGTH = "upload-length"
UPLOAD_METADATA = "upload-metadata"
UPLOAD_CHECKSUM = "upload-checksum"
BLOB_HEADER = "nexus-blob-sha256"
"""Answer header: the hash of the blob an upload became (once complete)."""
MAX_CHUNK_HEADER = "nexus-max-chunk"
"""OPTIONS answer header: the largest PATCH body the server accepts, in bytes."""

BATCH_TYPE = "application/vnd.nexus-store.blob-batch"
"""The content type of a ``POST /v1/blobs`` body (a manifest, then the blobs' bytes)."""
MANIFEST_LENGTH = "nexus-manifest-length"
"""Request header of a batch: the byte length of its manifest."""
MAX_BATCH_HEADER = "nexus-max-batch"
"""OPTIONS answer header: the largest batch body the server accepts (absent: no batches)."""
MAX_BATCH_BLOBS = 1000
"""The most blobs one batch may carry."""
MAX_MANIFEST = 256 * 1024
"""The longest manifest (bytes)."""

CHECKSUM_ALGORITHMS = ("crc32c", "sha1", "sha256", "md5", "crc32")
"""Checksums a chunk may carry (``Upload-Checksum: <algorithm> <base64 digest>``)."""

CHUNK_CHECKSUMS = ("crc32c", "crc32", "sha1")
"""What a client sends its chunks with, first choice first, among what the server offers.

CRC-32C (hardware, about 12 GB/s) and CRC-32 (zlib, about 2.4 GB/s) catch a damaged chunk
at a fraction of a cryptographic hash's cost; SHA-1 is the checksum every tus server must
take. A chunk's identity is not at stake: the server checks the whole blob's SHA-256."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_MAX_METADATA = 4096
_MAX_REF_DEPTH = 32


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a SHA-256 digest as 64 lowercase hex digits (a blob's name)."""
    return isinstance(value, str) and _SHA256.match(value) is not None


def is_upload_id(value: object) -> bool:
    """Whether ``value`` is an upload id as the server makes them (32 lowercase hex digits)."""
    return isinstance(value, str) and _UPLOAD_ID.match(value) is not None


def encode_metadata(values: Mapping[str, str]) -> str:
    """``Upload-Metadata``: ``key base64(value)`` pairs, comma-separated.

    Raises:
        ValueError: a key that is not 1 to 64 letters, digits, ``_``, ``.`` or ``-``.
    """
    parts = []
    for key, value in values.items():
        if not _METADATA_KEY.match(key):
            raise ValueError(f"not a metadata key: {key!r}")
        parts.append(f"{key} {base64.b64encode(value.encode()).decode('ascii')}")
    return ",".join(parts)


def decode_metadata(header: str | None) -> dict[str, str]:
    """The pairs of an ``Upload-Metadata`` header (values decoded as UTF-8 text).

    Raises:
        ValueError: a malformed header (a bad key, bad base64, text that is not UTF-8, a
            repeated key, or more than 4 KiB).
    """
    if not header:
        return {}
    if len(header) > _MAX_METADATA:
        raise ValueError("Upload-Metadata is longer than 4 KiB")
    out: dict[str, str] = {}
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        if not _METADATA_KEY.match(key) or key in out:
            raise ValueError(f"bad Upload-Metadata key: {key[:64]!r}")
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"bad Upload-Metadata value for {key!r}") from exc
    return out


class Checksum(Protocol):
    """A running checksum (hashlib's interface)."""

    def update(self, data: bytes, /) -> None:
        """Add bytes."""

    def digest(self) -> bytes:
        """The checksum of the bytes so far."""


class _Crc32:
    """CRC-32 with hashlib's interface (``digest`` is 4 bytes, big-endian)."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


class _Crc32c:
    """CRC-32C (Castagnoli) with hashlib's interface (``digest`` is 4 bytes, big-endian)."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        # The compiled extension takes bytes only (not a view or a bytearray).
        self._value = google_crc32c.extend(
            self._value, data if type(data) is bytes else bytes(data)
        )

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def fast_crc32c() -> bool:
    """Whether CRC-32C runs in compiled code here (else it is a slow pure-Python one)."""
    return str(getattr(google_crc32c, "implementation", "")) == "c"


def chunk_checksum(offered: Iterable[str]) -> str | None:
    """The checksum a client sends its chunks with: the first of :data:`CHUNK_CHECKSUMS`
    the server ``offered`` (its ``Tus-Checksum-Algorithm``), CRC-32C only where it is
    compiled; ``None`` when the server offers none of them."""
    wanted = {a.strip().lower() for a in offered}
    for algorithm in CHUNK_CHECKSUMS:
        if algorithm in wanted and (algorithm != "crc32c" or fast_crc32c()):
            return algorithm
    return None


def new_checksum(algorithm: str) -> Checksum:
    """A running checksum of one of :data:`CHECKSUM_ALGORITHMS`.

    Raises:
        ValueError: an algorithm not in the list.
    """
    if algorithm == "crc32":
        return _Crc32()
    if algorithm == "crc32c":
        return _Crc32c()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"unsupported checksum algorithm: {algorithm[:20]!r}")
    return hashlib.new(algorithm)


def parse_checksum(header: str) -> tuple[str, bytes]:
    """``Upload-Checksum: <algorithm> <base64 digest>`` as ``(algorithm, digest)``.

    Raises:
        ValueError: malformed, or an algorithm not in :data:`CHECKSUM_ALGORITHMS`.
    """
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"unsupported checksum algorithm: {algorithm[:20]!r}")
    try:
        return algorithm, base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as exc:
        raise ValueError("the checksum is not base64") from exc


def checksum_header(algorithm: str, digest: bytes) -> str:
    """The ``Upload-Checksum`` value for a digest."""
    return f"{algorithm} {base64.b64encode(digest).decode('ascii')}"


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One blob of a batch as its manifest declares it (the hash is checked by the server:
    a malformed one is that blob's refusal, not the batch's)."""

    sha256: str
    size: int


def encode_manifest(entries: Sequence[BatchEntry]) -> bytes:
    """A batch's manifest (compact JSON)."""
    return json.dumps(
        [{"sha256": e.sha256, "size": e.size} for e in entries], separators=(",", ":")
    ).encode()


def decode_manifest(data: bytes) -> list[BatchEntry]:
    """The entries of a batch's manifest.

    Raises:
        ValueError: not a JSON list of ``{"sha256": str, "size": int >= 0}`` objects, or
            more than :data:`MAX_BATCH_BLOBS` of them (the body cannot be read as a batch).
    """
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("the manifest is not JSON") from exc
    if not isinstance(value, list):
        raise ValueError("the manifest is not a list")  # noqa: TRY004 - bad input, not a bug
    if len(value) > MAX_BATCH_BLOBS:
        raise ValueError(f"a batch may carry at most {MAX_BATCH_BLOBS} blobs")
    entries = []
    for item in value:
        if not isinstance(item, dict):
            raise ValueError("a manifest entry is not an object")  # noqa: TRY004 - bad input
        sha, size = item.get("sha256"), item.get("size")
        if not isinstance(sha, str) or type(size) is not int or size < 0:
            raise ValueError("a manifest entry needs a sha256 string and a size >= 0")
        entries.append(BatchEntry(sha[:128], size))
    return entries


def blob_refs(data: Any) -> set[str]:
    """The blob hashes a record's data refers to: every object holding a ``"sha256"`` of
    64 lowercase hex digits and an integer ``"size"``, at any depth (up to 32 levels)."""
    return set(_walk(data, 0))


def _walk(value: Any, depth: int) -> Iterator[str]:
    if depth > _MAX_REF_DEPTH:
        return
    if isinstance(value, dict):
        sha = value.get("sha256")
        size = value.get("size")
        if isinstance(sha, str) and is_sha256(sha) and type(size) is int:
            yield sha
        for inner in value.values():
            if isinstance(inner, dict | list):
                yield from _walk(inner, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            if isinstance(inner, dict | list):
                yield from _walk(inner, depth + 1)
