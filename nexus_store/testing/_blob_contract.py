"""The blob storage contract suite: the behaviour every server blob storage must have.

Subclass :class:`BlobStorageContract` in a pytest module and provide a ``blob_storage``
fixture that returns a fresh, opened storage (the suite closes nothing it did not open)::

    import pytest
    from nexus_store.testing import BlobStorageContract

    class TestMyStorage(BlobStorageContract):
        @pytest.fixture
        async def blob_storage(self):
            storage = MyStorage(...)
            await storage.open()
            yield storage
            await storage.aclose()

Each test uses tenants of its own, so a shared, non-empty store is fine. The checks cover
the storage itself (chunks kept whole or not at all, nothing visible before commit,
tenants apart, names that are not hashes refused) and the
:class:`~nexus_store.server.blobs.BlobService` rules over it (hash verification before a
blob becomes visible, deduplication, offsets, limits). The tests are anyio tests.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from ..server.blobs import (
    BlobLimits,
    BlobRefusedError,
    BlobService,
    BlobStorage,
    ChunkRejectedError,
    UploadInfo,
)

__all__ = ["BlobStorageContract"]


async def _chunks(data: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


async def _broken(data: bytes) -> AsyncIterator[bytes]:
    yield data
    raise ConnectionError("the client went away")


async def _read_all(pieces: AsyncIterator[bytes]) -> bytes:
    out = bytearray()
    async for piece in pieces:
        out += piece
    return bytes(out)


def _upload(length: int, sha: str | None = None) -> UploadInfo:
    return UploadInfo(uuid.uuid4().hex, length, 0, 0.0, sha)


class BlobStorageContract:
    """Checks every blob storage must pass (see the module docstring)."""

    big = 3 * 1024 * 1024
    """Bytes of the larger blob the suite writes (storages with big parts may raise it)."""

    @pytest.fixture
    def blob_storage(self) -> BlobStorage:
        """Override: a fresh, opened storage."""
        raise NotImplementedError("define a blob_storage fixture in the subclass")

    @pytest.fixture
    def tenant(self) -> str:
        """A tenant name no other test uses."""
        return f"contract-{uuid.uuid4().hex[:12]}"

    @pytest.mark.anyio
    async def test_chunks_add_up_to_a_blob_visible_only_after_commit(
        self, blob_storage: BlobStorage, tenant: str
    ) -> None:
        """Chunks append at the offset; the blob is invisible until commit, then whole."""
        data = os.urandom(self.big + 1234)
        sha = hashlib.sha256(data).hexdigest()
        upload = _upload(len(data), sha)
        await blob_storage.create_upload(tenant, upload)
        cut = len(data) // 3
        offset = await blob_storage.append(
            tenant, upload, _chunks(data[:cut]), lambda b: None, None
        )
        assert offset == cut
        found = await blob_storage.get_upload(tenant, upload.upload_id)
        assert found is not None
        assert found.offset == cut
        assert await blob_storage.stat(tenant, sha) is None, "a partial blob is visible"
        offset = await blob_storage.append(
            tenant, found, _chunks(data[cut:]), lambda b: None, lambda: True
        )
        assert offset == len(data)
        assert await blob_storage.stat(tenant, sha) is None, "a blob is visible before commit"
        done = await blob_storage.commit(tenant, found.moved(offset), sha)
        assert done.blob == sha
        info = await blob_storage.stat(tenant, sha)
        assert info is not None
        assert info.size == len(data)
        assert await _read_all(blob_storage.read(tenant, sha, 0, len(data))) == data
        assert await _read_all(blob_storage.read(tenant, sha, 10, 20)) == data[10:20]
        assert sha in [b.sha256 for b in await blob_storage.list_blobs(tenant)]

    @pytest.mark.anyio
    async def test_a_rejected_chunk_keeps_nothing(
        self, blob_storage: BlobStorage, tenant: str
    ) -> None:
        """A chunk whose verify answers False (or whose stream breaks) leaves the offset."""
        upload = _upload(1000)
        await blob_storage.create_upload(tenant, upload)
        with pytest.raises(ChunkRejectedError):
            await blob_storage.append(
                tenant, upload, _chunks(b"x" * 500), lambda b: None, lambda: False
            )
        found = await blob_storage.get_upload(tenant, upload.upload_id)
        assert found is not None
        assert found.offset == 0
        with pytest.raises(ConnectionError):
            await blob_storage.append(
                tenant, upload, _broken(b"y" * 300), lambda b: None, lambda: True
            )
        found = await blob_storage.get_upload(tenant, upload.upload_id)
        assert found is not None
        assert found.offset == 0

    @pytest.mark.anyio
    async def test_a_broken_chunk_without_checksum_keeps_what_arrived(
        self, blob_storage: BlobStorage, tenant: str
    ) -> None:
        """Without a checksum, the bytes that arrived before the break count (tus)."""
        upload = _upload(1000)
        await blob_storage.create_upload(tenant, upload)
        with pytest.raises(ConnectionError):
            await blob_storage.append(tenant, upload, _broken(b"z" * 300), lambda b: None, None)
        found = await blob_storage.get_upload(tenant, upload.upload_id)
        assert found is not None
        assert found.offset == 300

    @pytest.mark.anyio
    async def test_tenants_share_nothing(self, blob_storage: BlobStorage, tenant: str) -> None:
        """Another tenant sees neither the blob nor the upload."""
        data = b"tenant data"
        sha = hashlib.sha256(data).hexdigest()
        upload = _upload(len(data), sha)
        await blob_storage.create_upload(tenant, upload)
        await blob_storage.append(tenant, upload, _chunks(data), lambda b: None, None)
        await blob_storage.commit(tenant, upload.moved(len(data)), sha)
        other = tenant + "-other"
        assert await blob_storage.stat(other, sha) is None
        assert await blob_storage.get_upload(other, upload.upload_id) is None
        assert await blob_storage.list_blobs(other) == []
        assert tenant in await blob_storage.tenants()

    @pytest.mark.anyio
    async def test_names_that_are_not_hashes_are_refused(
        self, blob_storage: BlobStorage, tenant: str
    ) -> None:
        """Path-like names never reach a file or key: they are refused."""
        for bad in ("../../etc/passwd", "/etc/passwd", "C:\\x", "a\x00b", "A" * 64):
            with pytest.raises(ValueError):  # noqa: PT011 - the storages' one error for it
                await blob_storage.stat(tenant, bad)
        with pytest.raises(ValueError):  # noqa: PT011
            await blob_storage.get_upload(tenant, "../" + "0" * 29)

    @pytest.mark.anyio
    async def test_delete_and_forget(self, blob_storage: BlobStorage, tenant: str) -> None:
        """Uploads and blobs can be deleted; deleting twice says there was nothing."""
        data = b"to delete"
        sha = hashlib.sha256(data).hexdigest()
        upload = _upload(len(data), sha)
        await blob_storage.create_upload(tenant, upload)
        await blob_storage.append(tenant, upload, _chunks(data), lambda b: None, None)
        await blob_storage.commit(tenant, upload.moved(len(data)), sha)
        assert await blob_storage.delete(tenant, sha)
        assert not await blob_storage.delete(tenant, sha)
        assert await blob_storage.stat(tenant, sha) is None
        assert await blob_storage.delete_upload(tenant, upload.upload_id)
        assert not await blob_storage.delete_upload(tenant, upload.upload_id)

    # -- the service's rules over this storage ----------------------------------------------

    @pytest.mark.anyio
    async def test_service_verifies_the_hash_before_the_blob_is_visible(
        self, blob_storage: BlobStorage, tenant: str
    ) -> None:
        """Bytes that do not hash to the declared blob are dropped (460), never visible."""
        service = BlobService(blob_storage)
        data = os.urandom(4096)
        wrong = hashlib.sha256(b"something else").hexdigest()
        upload = await service.create(tenant, len(data), {"sha256": wrong})
        with pytest.raises(BlobRefusedError) as refused:
            await service.patch(
                tenant,
                upload.upload_id,
                offset=0,
                content_length=len(data),
                checksum=None,
                chunks=_chunks(data),
            )
        assert refused.value.status == 460
        assert await blob_storage.stat(tenant, wrong) is None
        assert await blob_storage.get_upload(tenant, upload.upload_id) is None

    @pytest.mark.anyio
    async def test_service_dedupes_and_checks_offsets(
        self, blob_storage: BlobStorage, tenant: str
    ) -> None:
        """A blob already there is complete at creation; a chunk at a wrong offset is 409."""
        service = BlobService(blob_storage, limits=BlobLimits(max_blob_bytes=10_000))
        data = os.urandom(3000)
        sha = hashlib.sha256(data).hexdigest()
        upload = await service.create(tenant, len(data), {"sha256": sha})
        with pytest.raises(BlobRefusedError) as wrong_offset:
            await service.patch(
                tenant,
                upload.upload_id,
                offset=5,
                content_length=10,
                checksum=None,
                chunks=_chunks(data[:10]),
            )
        assert wrong_offset.value.status == 409
        done = await service.patch(
            tenant,
            upload.upload_id,
            offset=0,
            content_length=len(data),
            checksum=None,
            chunks=_chunks(data),
        )
        assert done.blob == sha
        again = await service.create(tenant, len(data), {"sha256": sha})
        assert again.offset == len(data), "a blob the tenant has is not sent again"
        with pytest.raises(BlobRefusedError) as too_big:
            await service.create(tenant, 10_001, {})
        assert too_big.value.status == 413

    @pytest.mark.anyio
    async def test_put_blobs_stores_whole_blobs_and_keeps_those_there(
        self, blob_storage: BlobStorage, tenant: str
    ) -> None:
        """A batch of whole blobs: each readable afterwards, one already there kept (False),
        no upload left behind, another tenant sees none of them."""
        first, second, empty = os.urandom(5000), os.urandom(20 * 1024), b""
        shas = [hashlib.sha256(d).hexdigest() for d in (first, second, empty)]
        assert await blob_storage.put_blobs(tenant, [(shas[0], first)], 1.0) == [True]
        added = await blob_storage.put_blobs(
            tenant, list(zip(shas, (first, second, empty), strict=True)), 2.0
        )
        assert added == [False, True, True]
        for sha, data in zip(shas, (first, second, empty), strict=True):
            info = await blob_storage.stat(tenant, sha)
            assert info is not None
            assert info.size == len(data)
            assert await _read_all(blob_storage.read(tenant, sha, 0, len(data))) == data
        assert [u for u in await blob_storage.list_uploads(tenant) if u.blob is None] == []
        assert await blob_storage.stat(f"{tenant}-other", shas[1]) is None

    @pytest.mark.anyio
    async def test_service_batch_answers_each_blob_on_its_own(
        self, blob_storage: BlobStorage, tenant: str
    ) -> None:
        """A batch: good blobs stored (201, or 200 if there), a wrong hash (460), a bad name
        (400), one over the size limit or the quota (413) refused alone and never visible."""
        from .._blob_api import BatchEntry  # noqa: PLC0415

        service = BlobService(
            blob_storage, limits=BlobLimits(max_blob_bytes=8000, tenant_quota_bytes=9000)
        )
        good, again, wrong, big, over = (os.urandom(n) for n in (3000, 100, 2000, 9000, 7000))
        sha = {d: hashlib.sha256(d).hexdigest() for d in (good, again, wrong, big, over)}
        await service.put_batch(tenant, [BatchEntry(sha[again], 100)], [again])
        liar = hashlib.sha256(b"not these bytes").hexdigest()
        entries = [
            BatchEntry(sha[good], len(good)),
            BatchEntry(sha[again], len(again)),
            BatchEntry(liar, len(wrong)),
            BatchEntry("../../etc/passwd", 3),
            BatchEntry(sha[big], len(big)),
            BatchEntry(sha[over], len(over)),
        ]
        answers = await service.put_batch(tenant, entries, [good, again, wrong, b"abc", big, over])
        got = [(a.status, a.error) for a in answers]
        assert got == [
            (201, None),
            (200, None),
            (460, "blob_hash_mismatch"),
            (400, "bad_hash"),
            (413, "blob_too_large"),
            (413, "quota_exceeded"),
        ]
        assert await blob_storage.stat(tenant, sha[good]) is not None
        for missing in (liar, sha[big], sha[over]):
            assert await blob_storage.stat(tenant, missing) is None
