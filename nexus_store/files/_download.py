"""Fetching one blob: resumable (HTTP range requests), verified before it is used.

Bytes collect in ``tmp/<sha256>.part`` beside the blobs; a fetch cut at any point goes on
from the part file's length (``Range: bytes=N-``). The whole blob's SHA-256 is checked
(the part file's earlier bytes are hashed first, then the new ones as they arrive) before
the blob is moved to its name: a damaged or wrong download is never served.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread

from .._exceptions import ProtocolError
from ._local import LocalBlobs
from ._remote import BlobRemote

__all__ = ["fetch_blob"]

_BLOCK = 1024 * 1024


async def fetch_blob(
    remote: BlobRemote,
    blobs: LocalBlobs,
    sha256: str,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download blob ``sha256`` into the local store; return its path.

    Raises:
        BlobNotFoundError: the server does not have it.
        ProtocolError: the bytes do not hash to ``sha256`` (the part file is dropped).
        RemoteError: the transfer failed; a later call goes on where it stopped.
    """
    part = blobs.part_path(sha256)
    await anyio.to_thread.run_sync(lambda: part.parent.mkdir(parents=True, exist_ok=True))
    sha, start = await anyio.to_thread.run_sync(_hash_prefix, part)
    async with remote.read(sha256, start) as (total, pieces):
        handle: Any = await anyio.to_thread.run_sync(part.open, "ab")
        done = start
        if progress is not None:
            progress(done, total)
        buffer = bytearray()

        def write(block: bytes) -> None:
            sha.update(block)
            handle.write(block)

        try:
            async for piece in pieces:
                buffer += piece
                if len(buffer) >= _BLOCK:
                    block, buffer = bytes(buffer), bytearray()
                    await anyio.to_thread.run_sync(write, block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        finally:
            with anyio.CancelScope(shield=True):
                if buffer:
                    block = bytes(buffer)
                    await anyio.to_thread.run_sync(write, block)
                    done += len(block)
                await anyio.to_thread.run_sync(_close, handle)
    if progress is not None:
        progress(done, total)
    if done != total or sha.hexdigest() != sha256:
        await anyio.to_thread.run_sync(lambda: part.unlink(missing_ok=True))
        raise ProtocolError(f"the download of blob {sha256[:12]} did not hash to its name")
    target = blobs.path_of(sha256)

    def place() -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        with blobs.database.transaction() as conn:
            blobs.adopt_download(conn, sha256, total)

    await anyio.to_thread.run_sync(place)
    return target


def _hash_prefix(part: Path) -> tuple[Any, int]:
    """The SHA-256 of what a part file holds so far, and its length."""
    sha = hashlib.sha256()
    size = 0
    try:
        with part.open("rb") as handle:
            while piece := handle.read(_BLOCK):
                sha.update(piece)
                size += len(piece)
    except FileNotFoundError:
        pass
    return sha, size


def _close(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
