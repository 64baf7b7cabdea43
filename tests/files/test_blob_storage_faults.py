"""The server's blob storage under concurrency and failure: uploads of a new tenant arriving
at once, and a storage that fails (the client is told to come back, never a 500)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
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
