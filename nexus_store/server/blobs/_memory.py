"""Blobs in memory: for ``memory://`` servers, in-process backends and tests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

from ..._blob_api import is_sha256, is_upload_id
from ._base import BlobInfo, BlobStorage, ChunkRejectedError, UploadInfo

__all__ = ["MemoryBlobStorage"]

_PIECE = 1024 * 1024


@dataclass
class _Tenant:
    blobs: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    uploads: dict[str, tuple[UploadInfo, bytearray]] = field(default_factory=dict)


def _sha(sha256: str) -> str:
    if not is_sha256(sha256):
        raise ValueError(f"not a blob name: {sha256[:80]!r}")
    return sha256


def _id(upload_id: str) -> str:
    if not is_upload_id(upload_id):
        raise ValueError(f"not an upload id: {upload_id[:80]!r}")
    return upload_id


class MemoryBlobStorage(BlobStorage):
    """Every tenant's blobs and uploads in dictionaries of this process."""

    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant] = {}

    def __repr__(self) -> str:
        return "MemoryBlobStorage()"

    def _of(self, tenant: str) -> _Tenant:
        return self._tenants.setdefault(tenant, _Tenant())

    async def create_upload(self, tenant: str, info: UploadInfo) -> None:
        self._of(tenant).uploads[_id(info.upload_id)] = (info, bytearray())

    async def get_upload(self, tenant: str, upload_id: str) -> UploadInfo | None:
        found = self._of(tenant).uploads.get(_id(upload_id))
        if found is None:
            return None
        info, data = found
        return info.moved(info.length if info.blob is not None else len(data))

    async def append(
        self,
        tenant: str,
        upload: UploadInfo,
        chunks: AsyncIterator[bytes],
        observe: Callable[[bytes], None],
        verify: Callable[[], bool] | None,
    ) -> int:
        found = self._of(tenant).uploads.get(upload.upload_id)
        if found is None:
            raise OSError("the upload is gone")
        data = found[1]
        del data[upload.offset :]
        try:
            async for piece in chunks:
                observe(piece)
                data += piece
            if verify is not None and not verify():
                raise ChunkRejectedError
        except BaseException:
            if verify is not None:
                del data[upload.offset :]
            raise
        return len(data)

    async def read_upload(self, tenant: str, upload: UploadInfo) -> AsyncIterator[bytes]:
        found = self._of(tenant).uploads.get(upload.upload_id)
        data = bytes(found[1][: upload.offset]) if found is not None else b""
        for start in range(0, len(data), _PIECE):
            yield data[start : start + _PIECE]

    async def commit(self, tenant: str, upload: UploadInfo, sha256: str) -> UploadInfo:
        state = self._of(tenant)
        _sha(sha256)
        info, data = state.uploads[upload.upload_id]
        if sha256 not in state.blobs:
            state.blobs[sha256] = (bytes(data), time.time())
        done = replace(info, offset=info.length, sha256=sha256, blob=sha256)
        state.uploads[upload.upload_id] = (done, bytearray())
        return done

    async def put_blobs(
        self, tenant: str, blobs: Sequence[tuple[str, bytes]], now: float
    ) -> list[bool]:
        state = self._of(tenant)
        added = []
        for sha256, data in blobs:
            new = _sha(sha256) not in state.blobs
            if new:
                state.blobs[sha256] = (bytes(data), now)
            added.append(new)
        return added

    async def delete_upload(self, tenant: str, upload_id: str) -> bool:
        return self._of(tenant).uploads.pop(_id(upload_id), None) is not None

    async def list_uploads(self, tenant: str) -> list[UploadInfo]:
        state = self._tenants.get(tenant)
        if state is None:
            return []
        return [
            info.moved(info.length if info.blob is not None else len(data))
            for info, data in state.uploads.values()
        ]

    async def stat(self, tenant: str, sha256: str) -> BlobInfo | None:
        _sha(sha256)
        state = self._tenants.get(tenant)
        found = state.blobs.get(sha256) if state is not None else None
        return None if found is None else BlobInfo(sha256, len(found[0]), found[1])

    async def read(self, tenant: str, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        data = self._of(tenant).blobs[_sha(sha256)][0]
        for offset in range(start, end, _PIECE):
            yield data[offset : min(end, offset + _PIECE)]

    async def delete(self, tenant: str, sha256: str) -> bool:
        state = self._tenants.get(tenant)
        return state is not None and state.blobs.pop(_sha(sha256), None) is not None

    async def list_blobs(self, tenant: str) -> list[BlobInfo]:
        state = self._tenants.get(tenant)
        if state is None:
            return []
        return [BlobInfo(sha, len(data), at) for sha, (data, at) in sorted(state.blobs.items())]

    async def tenants(self) -> list[str]:
        return sorted(name for name, state in self._tenants.items() if state.blobs or state.uploads)
