"""Blobs in a folder: files named by hash, never by anything a client sent.

Layout under the root (``tenant`` is a digest of the tenant name, see
:func:`~._base.tenant_key`)::

    t/<tenant>/tenant                the tenant's name (for listing tenants)
    t/<tenant>/blobs/<aa>/<sha256>   finished blobs (aa: the hash's first two digits)
    t/<tenant>/uploads/<id>.json     an upload's length, declared hash, metadata
    t/<tenant>/uploads/<id>.part     its bytes so far (the offset is this file's size)

A batch of whole blobs (:meth:`FileBlobStorage.put_blobs`) writes each to a temporary file
in ``uploads/`` (``<random>.batch``), syncs it, renames it into place, then syncs each
folder it renamed into once. Such a file, or an upload record's ``.tmp`` being replaced,
is left only by a crash in that step; garbage collection removes it an hour later.

A blob becomes visible by one ``rename`` of its complete, fsynced part file (then the
folder is fsynced): a reader sees the whole blob or none. Chunks are hashed and written
by a worker thread in blocks of about 1 MiB (one hashing and one write call per block)
while the next block arrives (at most one
block waits, so memory stays flat whatever the upload's size), and not fsynced one by
one (the kernel is asked to start writing each chunk out as it closes, so the fsync of
the finished blob has little left to do): after a crash of the server process the kernel
still has them; after a power loss a part file may have lost its tail (the offset says
so) or, rarely, hold damaged bytes, which the SHA-256 check before the blob becomes
visible refuses.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from ..._blob_api import is_sha256, is_upload_id
from ._base import BlobInfo, BlobStorage, ChunkRejectedError, UploadInfo, tenant_key

__all__ = ["FileBlobStorage"]

_BLOCK = 1024 * 1024
_AHEAD = 1
"""Blocks received and waiting for the writer (beside the one being written)."""
_READ = 1024 * 1024
_WRITE = 64 * 1024
"""Bytes per ``write`` call. Larger writes let the kernel cache the file in large pages
(folios), and on a virtual machine whose free memory goes back to the host, the first
touch of such a page faults on the host: 1 MiB writes cost the server three times the
system time of 64 KiB ones (measured: 1 GiB upload, 3.3 s against 1.3 s)."""


def _check_sha(sha256: str) -> str:
    if not is_sha256(sha256):
        raise ValueError(f"not a blob name: {sha256[:80]!r}")
    return sha256


def _check_id(upload_id: str) -> str:
    if not is_upload_id(upload_id):
        raise ValueError(f"not an upload id: {upload_id[:80]!r}")
    return upload_id


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStorage(BlobStorage):
    """Blobs in files under ``root`` (created if missing).

    Several server processes may share one root on one machine (or a shared file system
    with atomic ``rename``): every step that makes something visible is a rename.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FileBlobStorage({str(self.root)!r})"

    async def open(self) -> None:
        await anyio.to_thread.run_sync(lambda: (self.root / "t").mkdir(parents=True, exist_ok=True))

    # -- paths -------------------------------------------------------------------------------

    def _tenant_dir(self, tenant: str) -> Path:
        return self.root / "t" / tenant_key(tenant)

    def _blob_path(self, tenant: str, sha256: str) -> Path:
        _check_sha(sha256)
        return self._tenant_dir(tenant) / "blobs" / sha256[:2] / sha256

    def _upload_paths(self, tenant: str, upload_id: str) -> tuple[Path, Path]:
        _check_id(upload_id)
        base = self._tenant_dir(tenant) / "uploads"
        return base / f"{upload_id}.json", base / f"{upload_id}.part"

    def _ensure_tenant(self, tenant: str) -> Path:
        folder = self._tenant_dir(tenant)
        (folder / "uploads").mkdir(parents=True, exist_ok=True)
        name = folder / "tenant"
        if not name.exists():
            # Several uploads of a new tenant may get here at once: each writes its own
            # temporary file, and the renames all leave the same name in place.
            temp = (
                folder / f"tenant.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}.tmp"
            )
            temp.write_text(tenant, encoding="utf-8")
            os.replace(temp, name)
        return folder

    # -- uploads -----------------------------------------------------------------------------

    async def create_upload(self, tenant: str, info: UploadInfo) -> None:
        def create() -> None:
            self._ensure_tenant(tenant)
            meta, part = self._upload_paths(tenant, info.upload_id)
            if info.blob is None:
                part.touch(exist_ok=False)
            _write_json(meta, _meta_of(info))

        await anyio.to_thread.run_sync(create)

    async def get_upload(self, tenant: str, upload_id: str) -> UploadInfo | None:
        return await anyio.to_thread.run_sync(self._get_upload, tenant, upload_id)

    def _get_upload(self, tenant: str, upload_id: str) -> UploadInfo | None:
        meta, part = self._upload_paths(tenant, upload_id)
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:  # a damaged record: the upload cannot go on
            raise OSError(f"upload record {meta.name} is damaged") from exc
        info = _info_of(upload_id, data)
        if info.blob is not None:
            return info.moved(info.length)
        try:
            size = part.stat().st_size
        except FileNotFoundError:
            return None
        return info.moved(min(size, info.length))

    async def append(
        self,
        tenant: str,
        upload: UploadInfo,
        chunks: AsyncIterator[bytes],
        observe: Callable[[bytes], None],
        verify: Callable[[], bool] | None,
    ) -> int:
        _, part = self._upload_paths(tenant, upload.upload_id)
        handle = await anyio.to_thread.run_sync(_open_at, part, upload.offset)
        pipe = _Pipe(handle, observe, whole=verify is not None)
        keep = False
        try:
            try:
                await pipe.run(chunks)
            except BaseException:
                keep = verify is None  # cancelled: the blocks written whole are kept
                raise
            failure = pipe.write_failure or pipe.failure
            if failure is not None:
                # Without a checksum, what arrived is kept: the client resumes after it.
                keep = verify is None
                raise failure
            if verify is not None and not verify():
                raise ChunkRejectedError
            keep = True
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    _close_at,
                    handle,
                    upload.offset + pipe.written if keep else upload.offset,
                    upload.offset,
                )
        return upload.offset + pipe.written

    async def read_upload(self, tenant: str, upload: UploadInfo) -> AsyncIterator[bytes]:
        _, part = self._upload_paths(tenant, upload.upload_id)
        async for piece in _read_file(part, 0, upload.offset):
            yield piece

    async def commit(self, tenant: str, upload: UploadInfo, sha256: str) -> UploadInfo:
        def commit() -> UploadInfo:
            meta, part = self._upload_paths(tenant, upload.upload_id)
            target = self._blob_path(tenant, sha256)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                part.unlink(missing_ok=True)
            else:
                with part.open("rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(part, target)
                _fsync_dir(target.parent)
            done = UploadInfo(
                upload.upload_id,
                upload.length,
                upload.length,
                upload.created_at,
                sha256,
                upload.metadata,
                blob=sha256,
            )
            _write_json(meta, _meta_of(done))
            return done

        return await anyio.to_thread.run_sync(commit)

    async def put_blobs(
        self, tenant: str, blobs: Sequence[tuple[str, bytes]], now: float
    ) -> list[bool]:
        if not blobs:
            return []
        return await anyio.to_thread.run_sync(self._put_blobs, tenant, blobs)

    def _put_blobs(self, tenant: str, blobs: Sequence[tuple[str, bytes]]) -> list[bool]:
        uploads = self._ensure_tenant(tenant) / "uploads"
        added: list[bool] = []
        placed: list[tuple[Path, Path]] = []
        try:
            for sha256, data in blobs:
                target = self._blob_path(tenant, sha256)
                if target.exists() or any(t == target for _, t in placed):
                    added.append(False)
                    continue
                temp = uploads / f"{uuid.uuid4().hex}.batch"
                placed.append((temp, target))
                with temp.open("xb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                added.append(True)
            folders: set[Path] = set()
            for temp, target in placed:
                if not target.parent.is_dir():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    folders.add(target.parent.parent)
                os.replace(temp, target)
                folders.add(target.parent)
            for folder in sorted(folders):
                _fsync_dir(folder)
        finally:
            for temp, _ in placed:
                temp.unlink(missing_ok=True)  # renamed already, or left by a failure
        return added

    async def delete_upload(self, tenant: str, upload_id: str) -> bool:
        def delete() -> bool:
            meta, part = self._upload_paths(tenant, upload_id)
            found = meta.exists()
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return found

        return await anyio.to_thread.run_sync(delete)

    async def remove_leftovers(self, tenant: str, older_than: float) -> int:
        def remove() -> int:
            folder = self._tenant_dir(tenant) / "uploads"
            if not folder.is_dir():
                return 0
            removed = 0
            # A batch's blob not yet renamed into place, or a record being replaced: only
            # a crash of the server in that step leaves one.
            for leftover in [*folder.glob("*.batch"), *folder.glob("*.json.*.tmp")]:
                with contextlib.suppress(FileNotFoundError):
                    if leftover.stat().st_mtime < older_than:
                        leftover.unlink()
                        removed += 1
            return removed

        return await anyio.to_thread.run_sync(remove)

    async def list_uploads(self, tenant: str) -> list[UploadInfo]:
        def listing() -> list[UploadInfo]:
            folder = self._tenant_dir(tenant) / "uploads"
            if not folder.is_dir():
                return []
            found = []
            for meta in sorted(folder.glob("*.json")):
                if is_upload_id(meta.stem):
                    with contextlib.suppress(OSError):
                        info = self._get_upload(tenant, meta.stem)
                        if info is not None:
                            found.append(info)
            return found

        return await anyio.to_thread.run_sync(listing)

    # -- blobs -------------------------------------------------------------------------------

    async def stat(self, tenant: str, sha256: str) -> BlobInfo | None:
        path = self._blob_path(tenant, sha256)

        def stat() -> BlobInfo | None:
            try:
                st = path.stat()
            except FileNotFoundError:
                return None
            return BlobInfo(sha256, st.st_size, st.st_mtime)

        return await anyio.to_thread.run_sync(stat)

    async def read(self, tenant: str, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        async for piece in _read_file(self._blob_path(tenant, sha256), start, end):
            yield piece

    async def delete(self, tenant: str, sha256: str) -> bool:
        path = self._blob_path(tenant, sha256)

        def delete() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

        return await anyio.to_thread.run_sync(delete)

    async def list_blobs(self, tenant: str) -> list[BlobInfo]:
        def listing() -> list[BlobInfo]:
            folder = self._tenant_dir(tenant) / "blobs"
            if not folder.is_dir():
                return []
            found = []
            for path in sorted(folder.glob("??/*")):
                if is_sha256(path.name):
                    with contextlib.suppress(FileNotFoundError):
                        st = path.stat()
                        found.append(BlobInfo(path.name, st.st_size, st.st_mtime))
            return found

        return await anyio.to_thread.run_sync(listing)

    async def tenants(self) -> list[str]:
        def listing() -> list[str]:
            folder = self.root / "t"
            if not folder.is_dir():
                return []
            names = []
            for entry in sorted(folder.iterdir()):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    names.append((entry / "tenant").read_text(encoding="utf-8"))
            return names

        return await anyio.to_thread.run_sync(listing)


class _Pipe:
    """Receives a chunk's pieces and has them hashed and written in a worker thread, a
    block at a time, while the next block arrives (at most :data:`_AHEAD` blocks wait).

    ``failure``: the stream broke (the client went away, the chunk was refused);
    ``write_failure``: the writing failed (it stops the receiving); ``written``: the bytes
    written (blocks are counted once written whole). With ``whole`` (a chunk kept whole or
    not at all), a broken stream is not written further.
    """

    def __init__(self, handle: Any, observe: Callable[[bytes], None], *, whole: bool) -> None:
        self.handle = handle
        self.observe = observe
        self.whole = whole
        self.written = 0
        self.failure: BaseException | None = None
        self.write_failure: BaseException | None = None

    async def run(self, chunks: AsyncIterator[bytes]) -> None:
        send, receive = anyio.create_memory_object_stream[list[bytes]](_AHEAD)
        async with anyio.create_task_group() as group:
            group.start_soon(self._write_all, receive, group.cancel_scope)
            await self._receive_all(chunks, send)

    def _flush(self, pieces: list[bytes]) -> None:
        # One block, hashed and written in one call each: every call lets go of the GIL
        # and must take it back from the event loop, so a call per received piece (64 KiB)
        # made this thread wait for the loop dozens of times per block.
        block = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.observe(block)
        view = memoryview(block)
        for at in range(0, len(view), _WRITE):
            self.handle.write(view[at : at + _WRITE])

    async def _write_all(self, receive: Any, scope: anyio.CancelScope) -> None:
        with receive:
            async for pieces in receive:
                try:
                    await anyio.to_thread.run_sync(self._flush, pieces)
                except Exception as exc:
                    self.write_failure = exc
                    scope.cancel()
                    return
                self.written += sum(map(len, pieces))

    async def _receive_all(self, chunks: AsyncIterator[bytes], send: Any) -> None:
        pieces: list[bytes] = []
        size = 0
        with send:
            try:
                async for piece in chunks:
                    pieces.append(piece)
                    size += len(piece)
                    if size >= _BLOCK:
                        await send.send(pieces)
                        pieces, size = [], 0
            except Exception as exc:  # the client went away, or the chunk was refused
                self.failure = exc
                if self.whole:
                    return  # nothing of the chunk is kept
            if pieces:
                await send.send(pieces)


def _meta_of(info: UploadInfo) -> dict[str, Any]:
    return {
        "length": info.length,
        "created_at": info.created_at,
        "sha256": info.sha256,
        "metadata": info.metadata,
        "blob": info.blob,
    }


def _info_of(upload_id: str, data: dict[str, Any]) -> UploadInfo:
    try:
        return UploadInfo(
            upload_id,
            int(data["length"]),
            0,
            float(data["created_at"]),
            data.get("sha256"),
            dict(data.get("metadata") or {}),
            data.get("blob"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise OSError(f"upload record {upload_id} is damaged") from exc


def _write_json(path: Path, value: dict[str, Any]) -> None:
    temp = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    temp.write_text(json.dumps(value), encoding="utf-8")
    os.replace(temp, path)


def _open_at(path: Path, offset: int) -> Any:
    handle = path.open("r+b")
    handle.truncate(offset)
    handle.seek(offset)
    return handle


def _close_at(handle: Any, size: int, start: int) -> None:
    """Close a part file at ``size`` bytes; the kernel starts writing the chunk's bytes
    (``start`` to ``size``) to disk now, without waiting for it, so the fsync that makes
    the finished blob durable finds little left to write."""
    try:
        handle.flush()
        handle.truncate(size)
        if size > start and hasattr(os, "posix_fadvise") and os.environ.get("NX_FADVISE") != "0":
            with contextlib.suppress(OSError):
                os.posix_fadvise(handle.fileno(), start, size - start, os.POSIX_FADV_DONTNEED)
    finally:
        handle.close()


async def _read_file(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    handle = await anyio.to_thread.run_sync(path.open, "rb")
    try:
        await anyio.to_thread.run_sync(handle.seek, start)
        left = end - start
        while left > 0:
            piece = await anyio.to_thread.run_sync(handle.read, min(_READ, left))
            if not piece:
                raise OSError(f"{path.name} is shorter than expected")
            left -= len(piece)
            yield piece
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(handle.close)
