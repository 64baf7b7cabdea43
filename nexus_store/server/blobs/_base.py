"""The blob storage seam under the server's file endpoints: what every storage implements.

A storage keeps, per tenant, finished blobs named by their SHA-256 and unfinished uploads
named by a random id. It does no deciding (limits, offsets, checksums and hashes are the
:class:`~nexus_store.server.blobs.BlobService`'s); it only guarantees:

- **No partial blob is ever visible**: :meth:`BlobStorage.commit` makes a blob readable
  under its hash in one atomic step, after its bytes are complete and durable.
- **A chunk is kept whole or not at all** when asked: :meth:`BlobStorage.append` calls
  ``verify`` after the last byte and keeps the chunk only if it answers ``True``.
- **A batch of whole blobs** (:meth:`BlobStorage.put_blobs`, bytes already verified by the
  service) leaves each blob visible and durable, or absent: never a part of one.
- **Tenants share nothing**: every key includes the tenant; a name from a request is
  never used as a path (hashes and upload ids are checked before they reach a storage,
  tenant names are hashed).

Implementations: :class:`~nexus_store.server.blobs.FileBlobStorage` (a root folder),
:class:`~nexus_store.server.blobs.MemoryBlobStorage`, and
:class:`~nexus_store.server.blobs.S3BlobStorage` (any S3-compatible object store;
``nexus-store[s3]``).
"""

from __future__ import annotations

import abc
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

__all__ = ["BlobInfo", "BlobStorage", "ChunkRejectedError", "UploadInfo", "tenant_key"]


def tenant_key(tenant: str) -> str:
    """The name a tenant's blobs are kept under: a digest, never the tenant name itself."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A finished blob."""

    sha256: str
    size: int
    created_at: float


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """An upload in progress (or just finished), as a storage keeps it."""

    upload_id: str
    length: int
    offset: int
    created_at: float
    sha256: str | None = None
    """The hash the client declared (the blob is verified against it), if any."""
    metadata: dict[str, str] = field(default_factory=dict)
    blob: str | None = None
    """Set once the upload became a blob (its hash)."""

    def moved(self, offset: int) -> UploadInfo:
        """This upload at another offset."""
        return replace(self, offset=offset)


class ChunkRejectedError(Exception):
    """A chunk's ``verify`` answered ``False``: nothing of it was kept."""


class BlobStorage(abc.ABC):
    """Where a server keeps its tenants' blobs and unfinished uploads.

    Every method may be called concurrently, for different uploads. Failures of the
    underlying store raise ``OSError`` (the service answers 503).
    """

    async def open(self) -> None:  # noqa: B027 - most storages are ready once constructed
        """Connect (create buckets, folders) if needed. Idempotent."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections. Idempotent."""

    # -- uploads ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_upload(self, tenant: str, info: UploadInfo) -> None:
        """Record a new upload (offset 0, or complete when ``info.blob`` is set)."""

    @abc.abstractmethod
    async def get_upload(self, tenant: str, upload_id: str) -> UploadInfo | None:
        """The upload's state (its offset is the bytes durably kept), or ``None``."""

    @abc.abstractmethod
    async def append(
        self,
        tenant: str,
        upload: UploadInfo,
        chunks: AsyncIterator[bytes],
        observe: Callable[[bytes], None],
        verify: Callable[[], bool] | None,
    ) -> int:
        """Write ``chunks`` at ``upload.offset``; return the new offset.

        ``observe`` sees every byte, in order, in blocks (in a worker thread where the
        storage writes from one, so hashing runs beside the event loop).

        With ``verify``, the chunk is kept only if ``verify()`` (called after the last
        byte) answers ``True``; otherwise nothing of it is kept and
        :class:`ChunkRejectedError` is raised; if ``chunks`` raises (the client went away),
        nothing of it is kept either. Without ``verify``, what arrived before an error is
        kept (tus lets a client resume after a broken PATCH) and the error propagates.
        """

    @abc.abstractmethod
    def read_upload(self, tenant: str, upload: UploadInfo) -> AsyncIterator[bytes]:
        """The bytes of an upload so far (to hash them again after a restart)."""

    @abc.abstractmethod
    async def commit(self, tenant: str, upload: UploadInfo, sha256: str) -> UploadInfo:
        """Make a complete upload readable as blob ``sha256`` (atomically, durably) and
        mark the upload finished; a blob already there is kept. Returns the upload's new
        state."""

    @abc.abstractmethod
    async def delete_upload(self, tenant: str, upload_id: str) -> bool:
        """Forget an upload and its bytes; whether there was one."""

    @abc.abstractmethod
    async def list_uploads(self, tenant: str) -> list[UploadInfo]:
        """The tenant's uploads (unfinished and recently finished)."""

    async def remove_leftovers(self, tenant: str, older_than: float) -> int:
        """Delete temporary files a crash left behind (last changed before ``older_than``,
        a Unix time); how many. A storage that writes none has nothing to do."""
        return 0

    async def put_blobs(
        self, tenant: str, blobs: Sequence[tuple[str, bytes]], now: float
    ) -> list[bool]:
        """Store whole blobs whose bytes hash to their names (the caller verified them);
        for each, whether it is new (``False``: the blob was there already, it is kept).

        Each blob becomes readable atomically and durably before this returns. This
        default goes through an upload per blob (any storage can); a storage with a
        cheaper way for many small blobs overrides it (one folder sync for all, say).
        """
        added = []
        for sha256, data in blobs:
            if await self.stat(tenant, sha256) is not None:
                added.append(False)
                continue
            info = UploadInfo(uuid.uuid4().hex, len(data), 0, now, sha256)
            await self.create_upload(tenant, info)
            try:
                if data:
                    await self.append(tenant, info, _once(data), _ignore, None)
                await self.commit(tenant, info.moved(len(data)), sha256)
            finally:
                await self.delete_upload(tenant, info.upload_id)
            added.append(True)
        return added

    # -- blobs -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def stat(self, tenant: str, sha256: str) -> BlobInfo | None:
        """The blob, or ``None``."""

    @abc.abstractmethod
    def read(self, tenant: str, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of a blob, in pieces (the blob must exist)."""

    @abc.abstractmethod
    async def delete(self, tenant: str, sha256: str) -> bool:
        """Delete a blob; whether there was one."""

    @abc.abstractmethod
    async def list_blobs(self, tenant: str) -> list[BlobInfo]:
        """The tenant's blobs."""

    @abc.abstractmethod
    async def tenants(self) -> list[str]:
        """The tenants that have blobs or uploads (their names)."""


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _ignore(block: bytes) -> None:
    pass
