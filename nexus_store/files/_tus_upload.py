"""Sending one blob over tus: resume from the server's offset, chunk by chunk.

:func:`send_blob` is the client half of :mod:`nexus_store._blob_api`:

1. an upload id kept from an earlier attempt is asked for its offset (``HEAD``); an
   unknown one (the server lost it, or garbage-collected it) means a new upload;
2. a new upload is created (``POST``, with the blob's hash as metadata: if the server has
   the blob already, it says the upload is complete and nothing is sent);
3. chunks of ``chunk_size`` bytes (at most what the server accepts) go one by one
   (``PATCH``), each with its checksum; after each acknowledged chunk the new offset is
   saved, so a transfer cut at any point (network, this process killed, the server
   restarted) sends again at most the chunk that was in flight (a file of one chunk
   saves nothing: a cut one is sent again whole, which is that one chunk, and its
   abandoned upload is collected by the server);
4. the last chunk's answer comes after the server verified the whole blob's SHA-256.

A chunk is read into memory before it is sent (its checksum goes in the header); the next
chunk is read and summed in a worker thread while one is on the wire, so a transfer holds
at most two chunks in memory, whatever the file's size. The chunk checksum is the first
of CRC-32C, CRC-32 and SHA-1 that the server offers (see
:data:`~nexus_store._blob_api.CHUNK_CHECKSUMS`): it catches a chunk damaged on the way, at
a fraction of a cryptographic hash's cost on both sides; the bytes' identity is the whole
blob's SHA-256, which the server checks before the blob becomes visible.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from .._blob_api import chunk_checksum, new_checksum
from .._exceptions import RetryableError, SourceChangedError
from ._remote import (
    BlobMismatchError,
    BlobRemote,
    ChunkRejectedError,
    OffsetMismatchError,
    UploadGoneError,
)

__all__ = ["WITH_CREATION", "ResumePoint", "send_blob"]

_PIECE = 1024 * 1024
_ROUNDS = 10_000_000  # bounds the chunk loop: no file has this many chunks
_RETRIES = 3
WITH_CREATION = 64 * 1024
"""Files up to this size go in the request that creates their upload: one round trip
instead of two. Larger ones are not, so that a blob the server already has (deduplicated)
costs no upload of its bytes."""


@dataclass
class ResumePoint:
    """Where a blob's upload stands: the server's upload id and the offset it acknowledged."""

    upload_id: str | None = None
    acked: int = 0


async def send_blob(  # noqa: PLR0912 - one branch per tus answer
    remote: BlobRemote,
    path: Path,
    *,
    sha256: str,
    size: int,
    metadata: Mapping[str, str],
    resume: ResumePoint,
    save: Callable[[ResumePoint], None],
    chunk_size: int,
    progress: Callable[[int], None],
    unchanged: Callable[[], bool],
    checksum: str | None = "auto",
) -> None:
    """Upload the file at ``path`` (the blob ``sha256`` of ``size`` bytes) over tus.

    Args:
        remote: the server's blob endpoints.
        path: the local copy.
        sha256: the blob's hash (the server checks the bytes against it).
        size: the blob's length.
        metadata: ``Upload-Metadata`` (``sha256`` is added).
        resume: where an earlier attempt stopped (updated as chunks are acknowledged).
        save: called (in a worker thread) with the new resume point after each chunk.
        chunk_size: bytes per PATCH (capped by the server's limit).
        progress: called with the bytes the server holds (and those in flight).
        unchanged: whether the local copy is still what was queued (a cheap check).
        checksum: the chunk checksum algorithm (``None``: none; ``"auto"``: the first of
            :data:`~nexus_store._blob_api.CHUNK_CHECKSUMS` the server offers).

    Raises:
        SourceChangedError: the file changed (or vanished) since it was queued.
        RemoteError: the transfer failed (retryable or not); ``resume`` says where it got.
    """
    if not await anyio.to_thread.run_sync(unchanged):
        raise SourceChangedError(f"blob {sha256[:12]}: the file changed since it was queued")
    chunk = _chunk_for(chunk_size, await remote.max_chunk())
    if checksum == "auto":
        checksum = chunk_checksum(await remote.checksums())
    meta = {**metadata, "sha256": sha256}
    whole = _whole_file(path, size, sha256, checksum)
    offset = await _start(remote, resume, save, size, meta, chunk, whole, progress)
    progress(offset)
    restarts = rejected = 0
    async with _reading_ahead(path, checksum) as ahead:
        for _ in range(_ROUNDS):
            if offset >= size:
                return
            assert resume.upload_id is not None
            length = min(chunk, size - offset)
            data, digest = await ahead.take(offset, length)
            if len(data) != length:
                raise SourceChangedError(f"blob {sha256[:12]}: the file is shorter than queued")
            # The next chunk is read and summed while this one is on the wire.
            if offset + length < size:
                ahead.start(offset + length, min(chunk, size - offset - length))
            try:
                offset = await remote.patch(
                    resume.upload_id, offset, _pieces(data, offset, progress), length, digest
                )
            except OffsetMismatchError:
                offset = await remote.offset(resume.upload_id)
            except ChunkRejectedError:
                rejected += 1
                if rejected > _RETRIES:
                    raise
                continue
            except (UploadGoneError, BlobMismatchError) as exc:
                # The upload is gone, or its bytes did not hash to the blob: a new upload,
                # unless the file itself changed (then nothing would make it match).
                if isinstance(exc, BlobMismatchError) and not await anyio.to_thread.run_sync(
                    _same_hash, path, sha256
                ):
                    raise SourceChangedError(
                        f"blob {sha256[:12]}: the file changed since it was queued (hash mismatch)"
                    ) from None
                restarts += 1
                if restarts > _RETRIES:
                    raise
                resume.upload_id = None
                offset = await _start(remote, resume, save, size, meta, chunk, whole, progress)
                continue
            finally:
                del data
            rejected = 0
            resume.acked = offset
            if offset < size:  # the last chunk's success is recorded by the caller's settle
                await anyio.to_thread.run_sync(save, resume)
            progress(offset)
    raise RetryableError("the upload did not finish")  # pragma: no cover - bounded loop


async def _start(  # noqa: PLR0917 - the upload state, passed down
    remote: BlobRemote,
    resume: ResumePoint,
    save: Callable[[ResumePoint], None],
    size: int,
    metadata: Mapping[str, str],
    chunk: int,
    whole: Callable[[], Awaitable[tuple[bytes, tuple[str, bytes] | None]]],
    progress: Callable[[int], None],
) -> int:
    """The offset to go on from: the kept upload's, or a new upload's (its id saved
    only when there is something to resume: more than one chunk to send). A file of at
    most :data:`WITH_CREATION` bytes goes with the creation itself (tus
    creation-with-upload, where the server supports it)."""
    if resume.upload_id is not None:
        try:
            offset = await remote.offset(resume.upload_id)
        except UploadGoneError:
            resume.upload_id = None
        else:
            resume.acked = offset
            return offset
    first = await whole() if 0 < size <= min(chunk, WITH_CREATION) else None
    if first is not None:
        progress(0)  # the bytes go now (if the server has the blob, they were sent anyway)
    upload_id, offset = await remote.create(size, metadata, first)
    resume.upload_id, resume.acked = upload_id, offset
    if size - offset > chunk:
        await anyio.to_thread.run_sync(save, resume)
    return offset


def _chunk_for(wanted: int, limit: int | None) -> int:
    """The chunk size: the policy's, capped by what the server accepts."""
    return max(1, min(wanted, limit) if limit else wanted)


def _whole_file(
    path: Path, size: int, sha256: str, checksum: str | None
) -> Callable[[], Awaitable[tuple[bytes, tuple[str, bytes] | None]]]:
    """Reads the whole file and its checksum (for a file sent in one chunk)."""

    async def whole() -> tuple[bytes, tuple[str, bytes] | None]:
        data = await anyio.to_thread.run_sync(_read_chunk, path, 0, size)
        if len(data) != size:
            raise SourceChangedError(f"blob {sha256[:12]}: the file is shorter than queued")
        if checksum is None:
            return data, None
        return data, (checksum, await anyio.to_thread.run_sync(_checksum, checksum, data))

    return whole


def _read_chunk(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def _checksum(algorithm: str, data: bytes) -> bytes:
    summer = new_checksum(algorithm)
    summer.update(data)
    return summer.digest()


def _same_hash(path: Path, sha256: str) -> bool:
    sha = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while piece := handle.read(1024 * 1024):
                sha.update(piece)
    except OSError:
        return False
    return sha.hexdigest() == sha256


async def _pieces(
    data: bytes, offset: int, progress: Callable[[int], None]
) -> AsyncIterator[bytes]:
    # Views, not copies: the HTTP layer copies each piece once on its way out anyway.
    view = memoryview(data)
    for start in range(0, len(data), _PIECE):
        yield view[start : start + _PIECE]  # type: ignore[misc]
        progress(offset + min(len(data), start + _PIECE))


@contextlib.asynccontextmanager
async def _reading_ahead(path: Path, checksum: str | None) -> AsyncIterator[_ChunkReader]:
    """A :class:`_ChunkReader` for the ``async with`` block (reads still going at its end
    are cancelled); the block's own error comes out as itself."""
    try:
        async with anyio.create_task_group() as group:
            try:
                yield _ChunkReader(path, checksum, group)
            finally:
                group.cancel_scope.cancel()
    except BaseExceptionGroup as exc:
        # The readers never raise (take() raises what they met): the error is the block's.
        if len(exc.exceptions) == 1:
            raise exc.exceptions[0] from None
        raise


class _ChunkReader:
    """Reads a chunk and its checksum in a worker thread, ahead of its turn (at most one
    chunk ahead: a transfer holds at most two chunks in memory)."""

    def __init__(self, path: Path, checksum: str | None, group: anyio.abc.TaskGroup) -> None:
        self.path = path
        self.checksum = checksum
        self.group = group
        self._at: tuple[int, int] | None = None
        self._done = anyio.Event()
        self._result: tuple[bytes, tuple[str, bytes] | None] | None = None
        self._error: BaseException | None = None

    def start(self, offset: int, length: int) -> None:
        """Begin reading ``length`` bytes at ``offset``."""
        self._at, self._done = (offset, length), anyio.Event()
        self._result = self._error = None
        self.group.start_soon(self._read, offset, length, self._done)

    async def _read(self, offset: int, length: int, done: anyio.Event) -> None:
        try:
            result = await anyio.to_thread.run_sync(
                _read_and_sum, self.path, offset, length, self.checksum
            )
        except Exception as exc:  # met by take(), where the chunk is needed
            if done is self._done:
                self._error = exc
        else:
            if done is self._done:
                self._result = result
        finally:
            done.set()

    async def take(self, offset: int, length: int) -> tuple[bytes, tuple[str, bytes] | None]:
        """The chunk at ``offset`` (read now unless it was read ahead) and its checksum."""
        if self._at != (offset, length):
            self.start(offset, length)
        await self._done.wait()
        self._at = None
        result, error = self._result, self._error
        self._result = self._error = None
        if error is not None:
            raise error
        assert result is not None
        return result


def _read_and_sum(
    path: Path, offset: int, length: int, checksum: str | None
) -> tuple[bytes, tuple[str, bytes] | None]:
    data = _read_chunk(path, offset, length)
    if checksum is None:
        return data, None
    return data, (checksum, _checksum(checksum, data))
