"""Our tus client (:func:`send_blob`) against a real server process: chunks read ahead of
their turn still go in order, with the resume point saved after each one; a file cut
short while it goes up is caught."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

from nexus_store._blob_api import chunk_checksum, fast_crc32c, new_checksum
from nexus_store._exceptions import SourceChangedError
from nexus_store.backends import HttpBackend
from nexus_store.files._remote import BlobRemote, blob_remote_for
from nexus_store.files._tus_upload import ResumePoint, send_blob
from nexus_store.testing import ServerProcess

from .conftest import limited_server

pytestmark = pytest.mark.anyio

CHUNK = 256 * 1024


async def _send(
    server: ServerProcess,
    path: Path,
    data: bytes,
    *,
    save: Callable[[ResumePoint], None],
    progress: Callable[[int], None],
) -> None:
    """Send the file at ``path`` (holding ``data``) with our client, in chunks of CHUNK."""
    async with HttpBackend(server.base_url, token="tok-a") as backend:
        await _send_to(blob_remote_for(backend), path, data, save=save, progress=progress)


async def _send_to(
    remote: BlobRemote,
    path: Path,
    data: bytes,
    *,
    save: Callable[[ResumePoint], None] = lambda point: None,
    progress: Callable[[int], None] = lambda done: None,
) -> None:
    await send_blob(
        remote,
        path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        metadata={},
        resume=ResumePoint(),
        save=save,
        chunk_size=CHUNK,
        progress=progress,
        unchanged=lambda: True,
    )


async def _size_on_server(server: ServerProcess, data: bytes) -> int | None:
    async with HttpBackend(server.base_url, token="tok-a") as backend:
        return await blob_remote_for(backend).size_of(hashlib.sha256(data).hexdigest())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with limited_server(
        tmp_path_factory.mktemp("tus-client"), {"tok-a": "tenant-a"}, max_blob="8MiB", quota="64MiB"
    ) as process:
        yield process


async def test_chunks_read_ahead_go_in_order_and_each_saves_its_offset(
    server: ServerProcess, tmp_path: Path
) -> None:
    data = os.urandom(5 * CHUNK + 1234)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    saved: list[int] = []
    done: list[int] = []
    await _send(
        server, path, data, save=lambda point: saved.append(point.acked), progress=done.append
    )
    assert await _size_on_server(server, data) == len(data)
    # Saved after the creation, then after every chunk but the last.
    assert saved == [0, *(CHUNK * n for n in range(1, 6))]
    assert done[-1] == len(data)
    assert done == sorted(done)


async def test_a_file_cut_short_during_the_upload_is_a_source_change(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The file is truncated after the first chunk's answer (its next chunk may already be
    read ahead): the upload stops with SourceChangedError, and the blob never shows."""
    data = os.urandom(4 * CHUNK)
    path = tmp_path / "cut.bin"
    path.write_bytes(data)

    def save(point: ResumePoint) -> None:
        if point.acked >= CHUNK:
            with path.open("r+b") as handle:
                handle.truncate(CHUNK + 100)

    with pytest.raises(SourceChangedError):
        await _send(server, path, data, save=save, progress=lambda _: None)
    assert await _size_on_server(server, data) is None


def test_only_the_first_save_of_an_upload_id_waits_for_the_disk(tmp_path: Path) -> None:
    """A resume point is saved after every chunk; only a new upload id must survive a
    power loss (the server says the offset), so only its first save is a durable commit."""
    from pydantic import BaseModel  # noqa: PLC0415

    from nexus_store import NexusStore  # noqa: PLC0415
    from nexus_store.files import FileTransfers  # noqa: PLC0415

    class Note(BaseModel):
        id: str

    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 1000)
    store: NexusStore[Note, str] = NexusStore(tmp_path / "app.db", model=Note)
    try:
        store.upload(source)  # the file tables exist from here on
        side = FileTransfers.find(store.database, store.queue)
        assert side is not None
        relaxed: list[str] = []
        store.database.conn.set_trace_callback(
            lambda sql: relaxed.append(sql) if "synchronous" in sql else None
        )
        side._save_point("k", ResumePoint("u1", 0))
        first = len(relaxed)
        for acked in (CHUNK, 2 * CHUNK):
            side._save_point("k", ResumePoint("u1", acked))
        later = len(relaxed) - first
        side._save_point("k", ResumePoint("u2", 0))  # a new upload (the old one was lost)
        again = len(relaxed) - first - later
        store.database.conn.set_trace_callback(None)
    finally:
        store.close()
    assert first == 0  # durable: synchronous stays FULL
    assert later == 4  # NORMAL, then back to FULL, twice
    assert again == 0


async def test_bytes_that_do_not_hash_to_the_queued_blob_are_a_source_change(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The file was rewritten in place (same size, other bytes) after its hash was taken,
    and the cheap check did not see it: the server refuses the blob whose bytes do not hash
    to it, the client finds the file no longer hashes to it either, and stops with
    SourceChangedError instead of starting over; nothing shows on the server."""
    queued = os.urandom(3 * CHUNK)
    path = tmp_path / "rewritten.bin"
    path.write_bytes(os.urandom(len(queued)))
    async with HttpBackend(server.base_url, token="tok-a") as backend:
        with pytest.raises(SourceChangedError, match="hash mismatch"):
            await send_blob(
                blob_remote_for(backend),
                path,
                sha256=hashlib.sha256(queued).hexdigest(),
                size=len(queued),
                metadata={},
                resume=ResumePoint(),
                save=lambda _: None,
                chunk_size=CHUNK,
                progress=lambda _: None,
                unchanged=lambda: True,
            )
    assert await _size_on_server(server, queued) is None
    assert await _size_on_server(server, path.read_bytes()) is None


class _Recording(BlobRemote):
    """The server's blob endpoints, offering ``offered`` as its checksums; records the
    checksum each chunk went with."""

    def __init__(self, inner: BlobRemote, offered: tuple[str, ...]) -> None:
        self.inner = inner
        self.offered = offered
        self.sent: list[str | None] = []

    async def max_chunk(self) -> int | None:
        return await self.inner.max_chunk()

    async def checksums(self) -> tuple[str, ...]:
        return self.offered

    async def create(
        self,
        length: int,
        metadata: Mapping[str, str],
        first: tuple[bytes, tuple[str, bytes] | None] | None = None,
    ) -> tuple[str, int]:
        return await self.inner.create(length, metadata, first)

    async def offset(self, upload_id: str) -> int:
        return await self.inner.offset(upload_id)

    async def patch(
        self,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        length: int,
        checksum: tuple[str, bytes] | None,
    ) -> int:
        self.sent.append(None if checksum is None else checksum[0])
        return await self.inner.patch(upload_id, offset, body, length, checksum)

    async def terminate(self, upload_id: str) -> None:
        await self.inner.terminate(upload_id)

    async def size_of(self, sha256: str) -> int | None:
        return await self.inner.size_of(sha256)

    def read(self, sha256: str, start: int) -> Any:
        return self.inner.read(sha256, start)


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (None, "crc32c"),  # what our server offers
        (("sha1", "md5"), "sha1"),
        (("md5", "crc32", "sha1"), "crc32"),
        ((), None),
    ],
)
async def test_chunks_go_with_the_cheapest_checksum_the_server_offers(
    server: ServerProcess,
    tmp_path: Path,
    offered: tuple[str, ...] | None,
    expected: str | None,
) -> None:
    """CRC-32C where the server offers it, else CRC-32, else SHA-1, else none; the server
    checks each chunk with it and the blob arrives whole."""
    data = os.urandom(3 * CHUNK + 10)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    async with HttpBackend(server.base_url, token="tok-a") as backend:
        inner = blob_remote_for(backend)
        if offered is None:
            offered = await inner.checksums()
            assert "crc32c" in offered
        remote = _Recording(inner, offered)
        await _send_to(remote, path, data)
    assert remote.sent == [expected] * 4
    assert await _size_on_server(server, data) == len(data)


def test_the_client_takes_crc32c_only_where_it_is_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pure-Python CRC-32C would cost more than the zlib CRC-32 it replaces."""
    assert fast_crc32c()  # the wheel on the supported platforms
    assert chunk_checksum(["SHA1", " crc32c", "crc32"]) == "crc32c"
    monkeypatch.setattr(google_crc32c, "implementation", "python")
    assert chunk_checksum(["sha1", "crc32c", "crc32"]) == "crc32"
    assert chunk_checksum(["crc32c"]) is None


def test_crc32c_takes_every_kind_of_bytes() -> None:
    """Pieces come as bytes, views or bytearrays: the sum is the standard CRC-32C."""
    summer = new_checksum("crc32c")
    for piece in (b"123", memoryview(b"456"), bytearray(b"789")):
        summer.update(piece)  # type: ignore[arg-type]
    assert summer.digest() == bytes.fromhex("e3069283")
