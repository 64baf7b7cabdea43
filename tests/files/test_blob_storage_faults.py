"""The server's blob storage under concurrency and failure: uploads of a new tenant arriving
at once, and a storage that fails (the client is told to come back, never a 500)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from nexus_store._blob_api import FILES_PATH, TUS_RESUMABLE, TUS_VERSION, UPLOAD_LENGTH
from nexus_store.server.blobs import (
    BlobService,
    FileBlobStorage,
    MemoryBlobStorage,
    UploadInfo,
    blob_routes,
)

pytestmark = pytest.mark.anyio


async def test_uploads_of_a_new_tenant_created_at_once_all_succeed(tmp_path: Path) -> None:
    """The first uploads of a tenant, in parallel (an app sends several files at once), each
    get their record: none trips over another creating the tenant's folder."""
    for attempt in range(3):  # three fresh folders: the race is at a tenant's first upload
        storage = FileBlobStorage(tmp_path / f"blobs-{attempt}")
        ids = [uuid.uuid4().hex for _ in range(16)]
        async with anyio.create_task_group() as group:
            for upload_id in ids:
                group.start_soon(
                    storage.create_upload, "tenant-a", UploadInfo(upload_id, 10, 0, 0.0)
                )
        assert all([await storage.get_upload("tenant-a", i) is not None for i in ids])


class _BrokenStorage(MemoryBlobStorage):
    """A storage whose disk (or object store) fails on every new upload."""

    async def create_upload(self, tenant: str, info: UploadInfo) -> None:
        raise OSError(28, "No space left on device")


async def _tenant(_request: Request) -> str:
    return "tenant-a"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    service = BlobService(_BrokenStorage())
    await service.open()
    app = Starlette(routes=blob_routes(service, _tenant))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


async def test_a_failing_storage_answers_503_with_retry_after(client: httpx.AsyncClient) -> None:
    """A storage failure is the server's trouble, not the request's: 503 with Retry-After and
    the tus header (a client keeps its file and comes back), not an unhandled 500."""
    answer = await client.post(
        FILES_PATH, headers={TUS_RESUMABLE: TUS_VERSION, UPLOAD_LENGTH: "10"}
    )
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["tus-resumable"] == TUS_VERSION
    assert answer.json()["error"] == "storage_unavailable"


# -- chunks written while the next ones arrive -------------------------------------------------

_PIECE = 64 * 1024


async def _pieces(data: bytes, fail_at: int | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), _PIECE):
        if fail_at is not None and start >= fail_at:
            raise OSError("the client went away")
        yield data[start : start + _PIECE]
        await anyio.lowlevel.checkpoint()


async def _new_upload(storage: FileBlobStorage, length: int) -> UploadInfo:
    info = UploadInfo(uuid.uuid4().hex, length, 0, 0.0)
    await storage.create_upload("tenant-a", info)
    found = await storage.get_upload("tenant-a", info.upload_id)
    assert found is not None
    return found


async def test_a_chunk_of_many_blocks_is_written_and_seen_in_order(tmp_path: Path) -> None:
    """Blocks are hashed and written beside the receiving: every byte lands, in order, and
    reads back (from the disk: the closed chunk's pages were handed to writeback)."""
    storage = FileBlobStorage(tmp_path / "blobs")
    data = uuid.uuid4().bytes * (5 * 65536 + 1000)  # several blocks, and a tail
    upload = await _new_upload(storage, len(data))
    seen = bytearray()
    offset = await storage.append("tenant-a", upload, _pieces(data), seen.extend, None)
    assert offset == len(data)
    assert bytes(seen) == data
    stored = await storage.get_upload("tenant-a", upload.upload_id)
    assert stored is not None
    assert stored.offset == len(data)
    assert b"".join([p async for p in storage.read_upload("tenant-a", stored)]) == data


async def test_a_cut_chunk_without_checksum_keeps_what_arrived(tmp_path: Path) -> None:
    """tus: a client resumes after the bytes the server kept of a broken PATCH (all of
    them, also the blocks still waiting for the writer when the stream broke)."""
    storage = FileBlobStorage(tmp_path / "blobs")
    data = uuid.uuid4().bytes * (200 * 1024)
    upload = await _new_upload(storage, len(data))
    cut = 40 * _PIECE
    with pytest.raises(OSError, match="went away"):
        await storage.append("tenant-a", upload, _pieces(data, cut), lambda _: None, None)
    stored = await storage.get_upload("tenant-a", upload.upload_id)
    assert stored is not None
    assert stored.offset == cut
    assert b"".join([p async for p in storage.read_upload("tenant-a", stored)]) == data[:cut]


async def test_a_cut_chunk_with_checksum_keeps_nothing(tmp_path: Path) -> None:
    storage = FileBlobStorage(tmp_path / "blobs")
    data = uuid.uuid4().bytes * (200 * 1024)
    upload = await _new_upload(storage, len(data))
    with pytest.raises(OSError, match="went away"):
        await storage.append(
            "tenant-a", upload, _pieces(data, 40 * _PIECE), lambda _: None, lambda: True
        )
    stored = await storage.get_upload("tenant-a", upload.upload_id)
    assert stored is not None
    assert stored.offset == 0


async def test_a_failing_write_is_raised_as_itself_and_keeps_nothing_of_the_chunk(
    tmp_path: Path,
) -> None:
    """A disk error in the writer stops the receiving and comes out as the error itself
    (the routes turn it into 503), not wrapped in a group; the chunk is not kept."""
    storage = FileBlobStorage(tmp_path / "blobs")
    data = uuid.uuid4().bytes * (200 * 1024)
    upload = await _new_upload(storage, len(data))
    seen = 0

    def observe(block: bytes) -> None:
        nonlocal seen
        seen += len(block)
        if seen > 2 * 1024 * 1024:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        await storage.append("tenant-a", upload, _pieces(data), observe, lambda: True)
    stored = await storage.get_upload("tenant-a", upload.upload_id)
    assert stored is not None
    assert stored.offset == 0


async def test_a_cancelled_chunk_without_checksum_keeps_the_blocks_written(
    tmp_path: Path,
) -> None:
    """A PATCH cancelled mid-way (the server shutting down) keeps the blocks written whole,
    as a cut one does; the offset names exactly what the part file holds."""
    storage = FileBlobStorage(tmp_path / "blobs")
    data = uuid.uuid4().bytes * (200 * 1024)
    upload = await _new_upload(storage, len(data))

    async def slow(data: bytes) -> AsyncIterator[bytes]:
        async for piece in _pieces(data):
            yield piece
            await anyio.sleep(0.01)

    with anyio.move_on_after(0.35):
        await storage.append("tenant-a", upload, slow(data), lambda _: None, None)
    stored = await storage.get_upload("tenant-a", upload.upload_id)
    assert stored is not None
    assert 0 < stored.offset < len(data)
    assert stored.offset % (1024 * 1024) == 0  # whole blocks only
    kept = b"".join([p async for p in storage.read_upload("tenant-a", stored)])
    assert kept == data[: stored.offset]


async def test_garbage_collection_removes_what_a_crash_left_in_the_uploads_folder(
    tmp_path: Path,
) -> None:
    """A server killed between writing a batch's blob and renaming it into place leaves a
    ``.batch`` file (and one killed while replacing an upload record, a ``.tmp``): GC
    removes them once they are an hour old, and keeps younger ones (a request may still be
    writing them), the blobs and the live uploads."""
    storage = FileBlobStorage(tmp_path / "blobs")
    service = BlobService(storage)
    data = b"kept blob"
    sha = hashlib.sha256(data).hexdigest()
    assert await storage.put_blobs("tenant-a", [(sha, data)], time.time()) == [True]
    live = uuid.uuid4().hex
    await storage.create_upload("tenant-a", UploadInfo(live, 10, 0, time.time()))
    (uploads,) = storage.root.joinpath("t").glob("*/uploads")
    old = [uploads / f"{uuid.uuid4().hex}.batch", uploads / f"{live}.json.123.456.tmp"]
    young = uploads / f"{uuid.uuid4().hex}.batch"
    for path in [*old, young]:
        path.write_bytes(b"half a blob")
    two_hours_ago = time.time() - 7200
    for path in old:
        os.utime(path, (two_hours_ago, two_hours_ago))

    report = await service.collect_garbage("tenant-a", {sha})
    assert report.leftovers == 2
    assert not any(p.exists() for p in old)
    assert young.exists()
    assert await storage.stat("tenant-a", sha) is not None
    assert await storage.get_upload("tenant-a", live) is not None
    assert (await service.collect_garbage("tenant-a", {sha})).leftovers == 0


async def test_a_chunk_is_hashed_once_per_block_and_written_in_small_pieces() -> None:
    """The writer thread joins what arrived into one block, sums it in one call (each call
    lets go of the GIL and takes it back), and writes it in pieces of at most 64 KiB (large
    writes cost far more system time on some virtual machines); the bytes arrive whole and
    in order."""
    from nexus_store.server.blobs._fs import _BLOCK, _WRITE, _Pipe  # noqa: PLC0415

    class Handle:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: memoryview) -> int:
            self.writes.append(bytes(data))
            return len(data)

    received = [os.urandom(48 * 1024) for _ in range(50)]  # about 2.3 blocks

    async def chunks() -> AsyncIterator[bytes]:
        for piece in received:
            yield piece

    observed: list[int] = []
    handle = Handle()
    pipe = _Pipe(handle, lambda block: observed.append(len(block)), whole=False)
    await pipe.run(chunks())
    total = sum(map(len, received))
    assert b"".join(handle.writes) == b"".join(received)
    assert pipe.written == total
    assert max(map(len, handle.writes)) <= _WRITE
    assert sum(observed) == total
    assert len(observed) == -(-total // _BLOCK), "one sum per block"
