"""Every server blob storage passes the blob storage contract suite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus_store.server.blobs import FileBlobStorage, MemoryBlobStorage, S3BlobStorage
from nexus_store.testing import BlobStorageContract

from .conftest import MotoServer


class TestFileBlobStorage(BlobStorageContract):
    """Blobs in a folder."""

    @pytest.fixture
    async def blob_storage(self, tmp_path: Path) -> FileBlobStorage:
        """A folder of its own."""
        storage = FileBlobStorage(tmp_path / "blobs")
        await storage.open()
        return storage


class TestMemoryBlobStorage(BlobStorageContract):
    """Blobs in memory."""

    @pytest.fixture
    async def blob_storage(self) -> MemoryBlobStorage:
        """A fresh one."""
        return MemoryBlobStorage()


class TestS3BlobStorage(BlobStorageContract):
    """Blobs on a real S3-compatible server (moto's), parts of 5 MiB."""

    big = 11 * 1024 * 1024  # three parts: two full ones and a tail

    @pytest.fixture
    async def blob_storage(self, moto_server: MotoServer) -> AsyncIterator[S3BlobStorage]:
        """A bucket of its own."""
        storage = S3BlobStorage(
            f"b-{uuid.uuid4().hex[:12]}", client=moto_server.client(), part_size=5 * 1024 * 1024
        )
        await storage.open()
        yield storage
        await storage.aclose()
