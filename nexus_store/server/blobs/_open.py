"""Which blob storage a URL names, and the blob service an in-process server core uses."""

from __future__ import annotations

import weakref
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ._base import BlobStorage
from ._fs import FileBlobStorage
from ._memory import MemoryBlobStorage
from ._service import BlobService

__all__ = ["default_blob_url", "in_process_blobs", "open_blob_storage"]

_IN_PROCESS: weakref.WeakKeyDictionary[object, BlobService] = weakref.WeakKeyDictionary()


def open_blob_storage(url: str) -> BlobStorage:
    """The blob storage ``url`` names.

    - ``file:///absolute/folder`` or a plain folder path: :class:`FileBlobStorage`;
    - ``memory://``: :class:`MemoryBlobStorage`;
    - ``s3://bucket/prefix?endpoint_url=http://host:port&region=...``:
      :class:`~nexus_store.server.blobs.S3BlobStorage` (credentials from the usual AWS
      environment variables or files; needs ``nexus-store[s3]``).

    Raises:
        ValueError: a URL that names no blob storage.
    """
    if url == "memory://":
        return MemoryBlobStorage()
    parts = urlsplit(url)
    if parts.scheme == "s3":
        from ._s3 import S3BlobStorage  # noqa: PLC0415 - boto3 loads only for S3

        if not parts.netloc:
            raise ValueError(f"an S3 blob URL names a bucket: s3://bucket/prefix, not {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise ValueError(f"unknown S3 blob options: {', '.join(sorted(unknown))}")
        return S3BlobStorage(
            parts.netloc,
            prefix=parts.path.lstrip("/"),
            endpoint_url=query.get("endpoint_url"),
            region=query.get("region"),
        )
    if parts.scheme == "file":
        return FileBlobStorage(Path(parts.path))
    if parts.scheme == "" and url:
        return FileBlobStorage(Path(url))
    raise ValueError(f"not a blob storage URL: {url!r} (file:///folder, s3://bucket or memory://)")


def default_blob_url(database: str) -> str | None:
    """Where a server on ``database`` keeps blobs unless told: beside an SQLite file
    (``<file>-blobs``), in memory for ``memory://``; ``None`` for PostgreSQL (give one)."""
    if database.startswith("memory://"):
        return "memory://"
    if database.startswith("sqlite:///"):
        path = database[len("sqlite:///") :].split("?", 1)[0]
        return str(Path(path).with_name(Path(path).name + "-blobs"))
    return None


def in_process_blobs(core: object) -> BlobService:
    """The blob service of an in-process server (one per core, in memory): what a
    :class:`~nexus_store.backends.MemoryBackend`'s files go to."""
    service = _IN_PROCESS.get(core)
    if service is None:
        service = _IN_PROCESS[core] = BlobService(MemoryBlobStorage())
    return service
