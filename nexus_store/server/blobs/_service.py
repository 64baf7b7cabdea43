"""The file endpoints' rules over one blob storage: uploads, verification, reads, quotas, GC.

:class:`BlobService` is what the tus routes (and an in-process client) call. It decides
(with :mod:`._rules`) and the :class:`~._base.BlobStorage` stores:

- **Creation**: the declared length against the blob size limit and the tenant's quota
  (413 before any byte is sent); a blob the tenant already has is not sent again (the
  new upload is complete at once).
- **Chunks**: only at the stored offset (409), never past the length or the chunk limit
  (413, before the body is read), kept whole or not at all when they carry a checksum
  (460 on a mismatch). One chunk at a time per upload.
- **Completion**: the whole blob's SHA-256 is computed as the chunks arrive (or again from
  the stored bytes after a server restart) and checked against the declared hash before
  the storage makes the blob visible; a mismatch drops the upload (460): no partial or
  wrong blob is ever readable.
- **Batches**: many small blobs in one request (:meth:`BlobService.put_batch`), each
  verified against its declared hash, held to the size limit and the quota, and stored
  whole or not at all; each gets its own answer, so one bad blob refuses only itself.
- **Garbage collection**: blobs no record refers to (and older than a grace period, so
  a blob whose record is still on its way stays) and uploads left unfinished longer than
  ``upload_ttl`` are deleted.

Quota bookkeeping is kept per process (computed from the storage once per tenant, then
updated): several server processes on one storage each enforce the quota on their view.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from ..._blob_api import (
    CHECKSUM_ALGORITHMS,
    MAX_BATCH_HEADER,
    TUS_EXTENSIONS,
    TUS_VERSION,
    BatchEntry,
    is_sha256,
    is_upload_id,
    new_checksum,
)
from ..._clock import Clock, SystemClock
from ._base import BlobInfo, BlobStorage, ChunkRejectedError, UploadInfo
from ._batch import BatchAnswer
from ._rules import BlobLimits, BlobRefusedError, check_chunk, check_creation

__all__ = ["BlobService", "GarbageReport"]

_MAX_HASHERS = 10_000
_LOCK_WAIT = 10.0
_LEFTOVER_AGE = 3600.0
"""Seconds after which a crash's temporary file is removed (by its modification time)."""


@dataclass(frozen=True)
class GarbageReport:
    """What one garbage collection of a tenant deleted."""

    blobs: int = 0
    bytes: int = 0
    uploads: int = 0
    leftovers: int = 0
    """Temporary files a crash left behind (a batch's blob before its rename, say)."""


class BlobService:
    """Uploads and reads of blobs, per tenant, over one :class:`BlobStorage`.

    Args:
        storage: where blobs live.
        limits: sizes, quota, chunk limit, upload lifetime.
        clock: the server's clock (creation times, garbage collection).
    """

    def __init__(
        self, storage: BlobStorage, *, limits: BlobLimits | None = None, clock: Clock | None = None
    ) -> None:
        self.storage = storage
        self.limits = limits or BlobLimits()
        self.clock: Clock = clock or SystemClock()
        self._hashers: OrderedDict[tuple[str, str], tuple[int, Any]] = OrderedDict()
        self._hashers_lock = threading.Lock()
        self._busy: dict[tuple[str, str], anyio.Lock] = {}
        self._usage: dict[str, int] = {}
        self._opened = False

    async def open(self) -> None:
        """Open the storage. Idempotent."""
        if not self._opened:
            await self.storage.open()
            self._opened = True

    async def aclose(self) -> None:
        """Close the storage. Idempotent."""
        await self.storage.aclose()

    def options(self) -> dict[str, str]:
        """The headers of an ``OPTIONS`` answer (what this server supports)."""
        return {
            "tus-resumable": TUS_VERSION,
            "tus-version": TUS_VERSION,
            "tus-extension": TUS_EXTENSIONS,
            "tus-max-size": str(self.limits.max_blob_bytes),
            "tus-checksum-algorithm": ",".join(CHECKSUM_ALGORITHMS),
            "nexus-max-chunk": str(self.limits.max_chunk_bytes),
            MAX_BATCH_HEADER: str(self.limits.max_chunk_bytes),
        }

    # -- batches -----------------------------------------------------------------------------

    async def put_batch(
        self, tenant: str, entries: Sequence[BatchEntry], blobs: Sequence[bytes]
    ) -> list[BatchAnswer]:
        """Verify and store the blobs of a batch (read by :func:`~._batch.read_batch`).

        Returns:
            One answer per entry, in order (see :class:`~._batch.BatchAnswer`).
        """
        await self.open()
        digests = await anyio.to_thread.run_sync(_digests, blobs)
        answers: list[BatchAnswer | None] = []
        chosen: list[tuple[int, str, bytes]] = []
        seen: set[str] = set()
        for n, (entry, data, digest) in enumerate(zip(entries, blobs, digests, strict=True)):
            refusal = _refusal_of(entry, digest, self.limits)
            if refusal is None and entry.sha256 in seen:
                refusal = BatchAnswer(entry.sha256, 200)  # twice in one batch: stored once
            answers.append(refusal)
            if refusal is None:
                seen.add(entry.sha256)
                chosen.append((n, entry.sha256, data))
        if self.limits.tenant_quota_bytes is not None:
            chosen = await self._within_quota(tenant, chosen, answers)
        added = await self.storage.put_blobs(
            tenant, [(sha, data) for _, sha, data in chosen], self.clock.now()
        )
        for (n, sha, data), new in zip(chosen, added, strict=True):
            answers[n] = BatchAnswer(sha, 201 if new else 200)
            if not new:
                self._add_usage(tenant, -len(data))
        return [answer for answer in answers if answer is not None]

    async def _within_quota(
        self,
        tenant: str,
        chosen: list[tuple[int, str, bytes]],
        answers: list[BatchAnswer | None],
    ) -> list[tuple[int, str, bytes]]:
        """The blobs the tenant's quota has room for (charged now; the others refused)."""
        kept = []
        for n, sha, data in chosen:
            usage = await self._usage_of(tenant)
            there = False
            if self.limits.tenant_quota_bytes is not None and (
                usage + len(data) > self.limits.tenant_quota_bytes
            ):
                there = await self.storage.stat(tenant, sha) is not None
            try:
                check_creation(len(data), limits=self.limits, usage=usage, already_there=there)
            except BlobRefusedError as exc:
                answers[n] = BatchAnswer(sha, exc.status, exc.code, exc.detail)
                continue
            if there:
                answers[n] = BatchAnswer(sha, 200)
                continue
            self._add_usage(tenant, len(data))
            kept.append((n, sha, data))
        return kept

    # -- uploads -----------------------------------------------------------------------------

    async def create(self, tenant: str, length: int, metadata: dict[str, str]) -> UploadInfo:
        """Start an upload of ``length`` bytes (complete at once if the blob is there).

        Raises:
            BlobRefusedError: 400 for a bad declared hash, 413 over the size limit or quota.
        """
        await self.open()
        if length < 0:
            raise BlobRefusedError(
                400, "bad_length", "Upload-Length must be a non-negative integer"
            )
        sha = metadata.get("sha256")
        if sha is not None and not is_sha256(sha):
            raise BlobRefusedError(
                400, "bad_hash", "the sha256 metadata is not 64 lowercase hex digits"
            )
        existing = await self.storage.stat(tenant, sha) if sha is not None else None
        if existing is not None and existing.size != length:
            raise BlobRefusedError(
                400, "length_mismatch", "the blob with this hash has another length"
            )
        usage = await self._usage_of(tenant) if self.limits.tenant_quota_bytes else None
        check_creation(length, limits=self.limits, usage=usage, already_there=existing is not None)
        info = UploadInfo(
            uuid.uuid4().hex,
            length,
            0,
            self.clock.now(),
            sha,
            dict(metadata),
            blob=sha if existing is not None else None,
        )
        await self.storage.create_upload(tenant, info)
        if existing is not None:
            return info.moved(length)
        self._add_usage(tenant, length)
        if length == 0:
            return await self._finish(tenant, info)
        return info

    async def head(self, tenant: str, upload_id: str) -> UploadInfo:
        """The upload's state (its offset: the bytes the server holds).

        Raises:
            BlobRefusedError: 404 for an unknown upload.
        """
        await self.open()
        return await self._upload(tenant, upload_id)

    async def patch(
        self,
        tenant: str,
        upload_id: str,
        *,
        offset: int,
        content_length: int | None,
        checksum: tuple[str, bytes] | None,
        chunks: AsyncIterator[bytes],
    ) -> UploadInfo:
        """Append a chunk at ``offset``; finish the upload when it is complete.

        Raises:
            BlobRefusedError: 404 unknown upload, 409 wrong offset, 413 too long, 423 another
                chunk of the upload is being written, 460 checksum (or blob hash) mismatch.
        """
        await self.open()
        key = (tenant, upload_id)
        lock = self._busy.setdefault(key, anyio.Lock())
        with anyio.move_on_after(_LOCK_WAIT) as waited:
            await lock.acquire()
        if waited.cancelled_caught:
            raise BlobRefusedError(
                423, "upload_busy", "another chunk of this upload is being written"
            )
        try:
            upload = await self._upload(tenant, upload_id)
            check_chunk(
                offset=offset,
                stored=upload.offset,
                length=upload.length,
                content_length=content_length,
                limits=self.limits,
            )
            if upload.blob is not None or upload.offset == upload.length:
                return await self._finish(tenant, upload)
            stored = await self._append(tenant, upload, content_length, checksum, chunks)
            upload = upload.moved(stored)
            if stored == upload.length:
                return await self._finish(tenant, upload)
            return upload
        finally:
            lock.release()
            if not lock.statistics().tasks_waiting:
                self._busy.pop(key, None)

    async def _append(
        self,
        tenant: str,
        upload: UploadInfo,
        content_length: int | None,
        checksum: tuple[str, bytes] | None,
        chunks: AsyncIterator[bytes],
    ) -> int:
        running = self._hasher(tenant, upload)
        sha = running.copy() if running is not None else None
        chunk_sum = new_checksum(checksum[0]) if checksum is not None else None
        room = upload.length - upload.offset
        received = 0

        async def limited() -> AsyncIterator[bytes]:
            nonlocal received
            async for piece in chunks:
                received += len(piece)
                if received > room:
                    raise BlobRefusedError(
                        413,
                        "beyond_length",
                        f"the chunk runs past the upload's length of {upload.length}",
                    )
                yield piece

        def observe(block: bytes) -> None:
            if sha is not None:
                sha.update(block)
            if chunk_sum is not None:
                chunk_sum.update(block)

        def verify() -> bool:
            if content_length is not None and received != content_length:
                return False
            return checksum is None or chunk_sum is None or chunk_sum.digest() == checksum[1]

        try:
            stored = await self.storage.append(
                tenant, upload, limited(), observe, verify if checksum is not None else None
            )
        except ChunkRejectedError:
            raise BlobRefusedError(
                460, "checksum_mismatch", "the chunk does not match its Upload-Checksum"
            ) from None
        except BlobRefusedError:
            self._forget_hasher(tenant, upload.upload_id)
            raise
        except BaseException:
            # Part of a chunk may have been kept: the running hash no longer matches.
            self._forget_hasher(tenant, upload.upload_id)
            raise
        if sha is not None and stored == upload.offset + received:
            self._keep_hasher(tenant, upload.upload_id, stored, sha)
        else:
            self._forget_hasher(tenant, upload.upload_id)
        return stored

    async def _finish(self, tenant: str, upload: UploadInfo) -> UploadInfo:
        """Verify the complete upload's hash and make it visible (or drop it)."""
        if upload.blob is not None:
            return upload.moved(upload.length)
        digest = self._digest(tenant, upload)
        if digest is None:
            sha = hashlib.sha256()
            async for piece in self.storage.read_upload(tenant, upload):
                await anyio.to_thread.run_sync(sha.update, piece)
            digest = sha.hexdigest()
        self._forget_hasher(tenant, upload.upload_id)
        if upload.sha256 is not None and digest != upload.sha256:
            await self.storage.delete_upload(tenant, upload.upload_id)
            self._add_usage(tenant, -upload.length)
            raise BlobRefusedError(
                460,
                "blob_hash_mismatch",
                f"the uploaded bytes hash to {digest}, not the declared {upload.sha256}; "
                "the upload was dropped",
            )
        existed = await self.storage.stat(tenant, digest) is not None
        done = await self.storage.commit(tenant, upload, digest)
        if existed:
            self._add_usage(tenant, -upload.length)
        return done

    async def terminate(self, tenant: str, upload_id: str) -> None:
        """Drop an upload (tus termination).

        Raises:
            BlobRefusedError: 404 for an unknown upload.
        """
        await self.open()
        upload = await self._upload(tenant, upload_id)
        await self.storage.delete_upload(tenant, upload_id)
        self._forget_hasher(tenant, upload_id)
        if upload.blob is None:
            self._add_usage(tenant, -upload.length)

    async def _upload(self, tenant: str, upload_id: str) -> UploadInfo:
        if not is_upload_id(upload_id):
            raise BlobRefusedError(404, "not_found", "no such upload")
        upload = await self.storage.get_upload(tenant, upload_id)
        if upload is None:
            raise BlobRefusedError(404, "not_found", "no such upload")
        return upload

    # -- running hashes --------------------------------------------------------------------

    def _hasher(self, tenant: str, upload: UploadInfo) -> Any:
        if upload.offset == 0:
            return hashlib.sha256()
        with self._hashers_lock:
            found = self._hashers.get((tenant, upload.upload_id))
        if found is None or found[0] != upload.offset:
            return None  # after a restart: hashed again from the stored bytes at the end
        return found[1]

    def _keep_hasher(self, tenant: str, upload_id: str, offset: int, sha: Any) -> None:
        with self._hashers_lock:
            self._hashers[(tenant, upload_id)] = (offset, sha)
            self._hashers.move_to_end((tenant, upload_id))
            while len(self._hashers) > _MAX_HASHERS:
                self._hashers.popitem(last=False)

    def _forget_hasher(self, tenant: str, upload_id: str) -> None:
        with self._hashers_lock:
            self._hashers.pop((tenant, upload_id), None)

    def _digest(self, tenant: str, upload: UploadInfo) -> str | None:
        if upload.length == 0:
            return hashlib.sha256().hexdigest()
        with self._hashers_lock:
            found = self._hashers.get((tenant, upload.upload_id))
        if found is None or found[0] != upload.length:
            return None
        return str(found[1].hexdigest())

    # -- blobs -------------------------------------------------------------------------------

    async def stat(self, tenant: str, sha256: str) -> BlobInfo:
        """The blob.

        Raises:
            BlobRefusedError: 404 when the tenant has no such blob (or the name is not a hash).
        """
        await self.open()
        if not is_sha256(sha256):
            raise BlobRefusedError(404, "not_found", "no such blob")
        info = await self.storage.stat(tenant, sha256)
        if info is None:
            raise BlobRefusedError(404, "not_found", "no such blob")
        return info

    def read(self, tenant: str, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of a blob (call :meth:`stat` first)."""
        return self.storage.read(tenant, sha256, start, end)

    # -- quota -------------------------------------------------------------------------------

    async def usage(self, tenant: str) -> int:
        """Bytes the tenant's blobs and unfinished uploads take."""
        await self.open()
        blobs = await self.storage.list_blobs(tenant)
        uploads = await self.storage.list_uploads(tenant)
        return sum(b.size for b in blobs) + sum(u.length for u in uploads if u.blob is None)

    async def _usage_of(self, tenant: str) -> int:
        if tenant not in self._usage:
            self._usage[tenant] = await self.usage(tenant)
        return self._usage[tenant]

    def _add_usage(self, tenant: str, delta: int) -> None:
        if tenant in self._usage:
            self._usage[tenant] = max(0, self._usage[tenant] + delta)

    # -- garbage collection ----------------------------------------------------------------

    async def collect_garbage(
        self, tenant: str, referenced: Iterable[str], *, grace: float = 86_400.0
    ) -> GarbageReport:
        """Delete the tenant's blobs nothing refers to, its abandoned uploads, and the
        temporary files a crash left behind (an hour old by their modification time).

        Args:
            tenant: whose blobs.
            referenced: the hashes the tenant's records refer to (they are kept).
            grace: seconds a blob is kept after it was stored even if nothing refers to it
                yet (its record may still be on its way).
        """
        await self.open()
        keep = set(referenced)
        now = self.clock.now()
        blobs = deleted = uploads = 0
        for blob in await self.storage.list_blobs(tenant):
            if blob.sha256 in keep or now - blob.created_at < grace:
                continue
            if await self.storage.delete(tenant, blob.sha256):
                blobs += 1
                deleted += blob.size
                self._add_usage(tenant, -blob.size)
        for upload in await self.storage.list_uploads(tenant):
            age = now - upload.created_at
            finished = upload.blob is not None
            if age > (min(grace, self.limits.upload_ttl) if finished else self.limits.upload_ttl):
                with contextlib.suppress(OSError):
                    if await self.storage.delete_upload(tenant, upload.upload_id):
                        uploads += 1
                        if not finished:
                            self._add_usage(tenant, -upload.length)
        # Older than any request could take: nothing still writes them.
        leftovers = await self.storage.remove_leftovers(tenant, time.time() - _LEFTOVER_AGE)
        return GarbageReport(blobs=blobs, bytes=deleted, uploads=uploads, leftovers=leftovers)

    def __repr__(self) -> str:
        return f"BlobService({self.storage!r})"


def _digests(blobs: Sequence[bytes]) -> list[str]:
    return [hashlib.sha256(data).hexdigest() for data in blobs]


def _refusal_of(entry: BatchEntry, digest: str, limits: BlobLimits) -> BatchAnswer | None:
    """A batch's blob refused on its own (``None``: it may be stored)."""
    if not is_sha256(entry.sha256):
        return BatchAnswer(
            entry.sha256, 400, "bad_hash", "the sha256 is not 64 lowercase hex digits"
        )
    if entry.size > limits.max_blob_bytes:
        return BatchAnswer(
            entry.sha256,
            413,
            "blob_too_large",
            f"a blob may hold at most {limits.max_blob_bytes} bytes",
        )
    if digest != entry.sha256:
        return BatchAnswer(
            entry.sha256,
            460,
            "blob_hash_mismatch",
            f"the bytes hash to {digest}, not the declared {entry.sha256}; not stored",
        )
    return None
