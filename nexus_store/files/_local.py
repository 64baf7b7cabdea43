"""The local blob store: a folder beside the database file, blobs named by SHA-256.

``app.db`` keeps its blobs in ``app.db-blobs/`` (a store on ``":memory:"`` in a temporary
folder that goes with its database)::

    objects/<aa>/<sha256>   blobs (aa: the hash's first two digits)
    tmp/                    files being taken in or downloaded (``<sha256>.part``)

Taking a file in hashes it as it is copied (one pass), or hard-links it when asked and
possible (no copy at all: the app may delete its file, the link keeps the bytes). A link
shares the app's file: if the app later writes into that file, the blob changes under
it; the size, mtime and inode taken at enqueue are kept in ``nx_blobs`` and checked
before the blob is sent or opened, and the server checks the hash again, so a changed
file is never taken for the original. Nothing here ever builds a path from a name an app
or a server gave: only hashes (checked to be 64 hex digits) name files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .._blob_api import is_sha256
from .._database import Database, is_open_database_file
from .._exceptions import BlobNotFoundError, FileTransferError, SourceChangedError

__all__ = ["Ingested", "LocalBlobs", "blob_dir_for", "forget_memory_blobs"]

_PIECE = 1024 * 1024
_TMP_AGE = 3600.0

_MEMORY_DIRS: weakref.WeakKeyDictionary[Database, tempfile.TemporaryDirectory[str]] = (
    weakref.WeakKeyDictionary()
)
_MEMORY_LOCK = threading.Lock()


def blob_dir_for(database: Database) -> Path:
    """The folder of a database's blobs (``<file>-blobs``; a temporary one in memory)."""
    if database.path in ("", ":memory:") or database.path.startswith("file::memory:"):
        with _MEMORY_LOCK:
            folder = _MEMORY_DIRS.get(database)
            if folder is None:
                folder = _MEMORY_DIRS[database] = tempfile.TemporaryDirectory(
                    prefix="nexus-store-blobs-"
                )
        return Path(folder.name)
    return Path(database.path + "-blobs")


def forget_memory_blobs(database: Database) -> None:
    """Delete the temporary blob folder of an in-memory database (when it is closed)."""
    with _MEMORY_LOCK:
        folder = _MEMORY_DIRS.pop(database, None)
    if folder is not None:
        folder.cleanup()


@dataclass(frozen=True)
class Ingested:
    """A blob taken in: its hash and size, and for a hard link what its file looked like."""

    sha256: str
    size: int
    linked: bool = False
    mtime_ns: int | None = None
    inode: int | None = None


_STATE = "SELECT size, linked, mtime_ns, inode, local, sha256 FROM nx_blobs "
_UPSERT = (
    "INSERT INTO nx_blobs (sha256, size, content_type, local, remote, linked, mtime_ns, inode, "
    "last_used, created_at) VALUES (?1, ?2, ?3, 1, 0, ?4, ?5, ?6, ?7, ?7) "
    "ON CONFLICT (sha256) DO UPDATE SET local = 1, last_used = ?7, "
    "content_type = coalesce(nx_blobs.content_type, ?3), "
    "linked = CASE WHEN nx_blobs.local = 1 THEN nx_blobs.linked ELSE ?4 END, "
    "mtime_ns = CASE WHEN nx_blobs.local = 1 THEN nx_blobs.mtime_ns ELSE ?5 END, "
    "inode = CASE WHEN nx_blobs.local = 1 THEN nx_blobs.inode ELSE ?6 END"
)


class LocalBlobs:
    """The blobs of one database file, on disk and in ``nx_blobs``.

    Args:
        database: the store's database.
        folder: where blobs live (default: :func:`blob_dir_for`).
    """

    def __init__(self, database: Database, folder: Path | None = None) -> None:
        self.database = database
        self.folder = folder or blob_dir_for(database)

    # -- paths -------------------------------------------------------------------------------

    def path_of(self, sha256: str) -> Path:
        """Where a blob's local copy lives (whether or not it exists)."""
        if not is_sha256(sha256):
            raise ValueError(f"not a blob name: {sha256[:80]!r}")
        return self.folder / "objects" / sha256[:2] / sha256

    def part_path(self, sha256: str) -> Path:
        """Where a download of the blob collects its bytes."""
        if not is_sha256(sha256):
            raise ValueError(f"not a blob name: {sha256[:80]!r}")
        return self.folder / "tmp" / f"{sha256}.part"

    def _tmp(self) -> Path:
        folder = self.folder / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"in-{uuid.uuid4().hex}"

    # -- taking files in ---------------------------------------------------------------------

    def ingest_path(self, source: Path, *, link: bool) -> Ingested:
        """Take in the file at ``source``: hard-link it (``link``, when the file system
        allows) or copy it, hashing it on the way.

        Raises:
            FileNotFoundError, IsADirectoryError, PermissionError: the source cannot be read.
            SourceChangedError: the file changed while it was being taken in.
            FileTransferError: the source is a database file this process has open.
        """
        if is_open_database_file(source):
            # Closing any descriptor of it would drop this process's SQLite locks.
            raise FileTransferError(
                f"{source.name} is a database file this process has open: reading it "
                "outside SQLite would drop SQLite's locks; send a copy made with "
                "sqlite3's backup() instead"
            )
        if source.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder is not a file", str(source))
        if link:
            linked = self._try_link(source)
            if linked is not None:
                return linked
        with source.open("rb") as handle:
            return self.ingest_stream(handle)

    def _try_link(self, source: Path) -> Ingested | None:
        tmp = self._tmp()
        try:
            os.link(source, tmp)
        except OSError:
            return None  # another file system, or links not allowed: copy instead
        try:
            before = tmp.stat()
            sha = hashlib.sha256()
            with tmp.open("rb") as handle:
                while piece := handle.read(_PIECE):
                    sha.update(piece)
            after = tmp.stat()
            if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
                raise SourceChangedError(f"{source.name}: the file changed while it was queued")
            digest = sha.hexdigest()
            self._place(tmp, digest, durable=False)
        finally:
            tmp.unlink(missing_ok=True)
        return Ingested(digest, after.st_size, True, after.st_mtime_ns, after.st_ino)

    def ingest_bytes(self, data: bytes) -> Ingested:
        """Take in ``data``."""
        digest = hashlib.sha256(data).hexdigest()
        if self.path_of(digest).exists():
            return Ingested(digest, len(data))
        tmp = self._tmp()
        try:
            with tmp.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self._place(tmp, digest, durable=True)
        finally:
            tmp.unlink(missing_ok=True)
        return Ingested(digest, len(data))

    def ingest_stream(self, stream: IO[bytes] | Any) -> Ingested:
        """Take in what a binary stream reads (until its end), hashing it as it is copied.

        Raises:
            TypeError: the stream does not read bytes.
        """
        tmp = self._tmp()
        sha = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as handle:
                while True:
                    piece = stream.read(_PIECE)
                    if not piece:
                        break
                    if not isinstance(piece, bytes | bytearray | memoryview):
                        raise TypeError("the source must be a binary stream (it read text)")
                    sha.update(piece)
                    handle.write(piece)
                    size += len(piece)
                handle.flush()
                os.fsync(handle.fileno())
            digest = sha.hexdigest()
            self._place(tmp, digest, durable=True)
        finally:
            tmp.unlink(missing_ok=True)
        return Ingested(digest, size)

    def _place(self, tmp: Path, sha256: str, *, durable: bool) -> None:
        """Move a taken-in file to its blob name (an existing blob of that name is kept)."""
        target = self.path_of(sha256)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        if durable:
            _fsync_dir(target.parent)

    def record(self, conn: sqlite3.Connection, blob: Ingested, content_type: str | None) -> None:
        """Record a taken-in blob in ``nx_blobs`` (in the caller's transaction)."""
        conn.execute(
            _UPSERT,
            (
                blob.sha256,
                blob.size,
                content_type,
                int(blob.linked),
                blob.mtime_ns,
                blob.inode,
                time.time(),
            ),
        )

    # -- reading -----------------------------------------------------------------------------

    def check(self, conn: sqlite3.Connection, sha256: str) -> Path | None:
        """The blob's local copy if it is there and unchanged (``None``: no usable copy).

        A hard-linked copy whose file changed since it was taken is no longer the blob:
        it is forgotten (``local = 0``; the caller decides whether that is an error).
        """
        row = conn.execute(_STATE + "WHERE sha256 = ?", (sha256,)).fetchone()
        return self.usable(sha256, row)

    def states(self, conn: sqlite3.Connection, shas: list[str]) -> dict[str, tuple[Any, ...]]:
        """What ``nx_blobs`` knows of these blobs' local copies (for :meth:`usable`, which
        needs no lock on the database)."""
        rows = conn.execute(
            _STATE + "WHERE sha256 IN (SELECT value FROM json_each(?))", (json.dumps(shas),)
        ).fetchall()
        return {row[5]: tuple(row) for row in rows}

    def usable(self, sha256: str, row: tuple[Any, ...] | None) -> Path | None:
        """The blob's local copy if it is there and unchanged, by its ``nx_blobs`` state
        (see :meth:`check`)."""
        path = self.path_of(sha256)
        if row is None or not row[4]:
            return None
        size, linked, mtime_ns, inode = row[:4]
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if st.st_size != size or (linked and (st.st_mtime_ns, st.st_ino) != (mtime_ns, inode)):
            return None
        return path

    def changed(self, sha256: str) -> bool:
        """Whether the blob's local copy is missing or no longer what was taken in."""
        with self.database.reading() as conn:
            return self.check(conn, sha256) is None

    def open(self, sha256: str) -> IO[bytes]:
        """Open the local copy for reading (and note the use, for the LRU).

        Raises:
            BlobNotFoundError: there is no usable local copy.
        """
        with self.database.reading() as conn:
            path = self.check(conn, sha256)
        if path is None:
            raise BlobNotFoundError(f"no local copy of blob {sha256}")
        handle = path.open("rb")
        with (
            contextlib.suppress(FileTransferError, OSError, sqlite3.Error),
            self.database.transaction(durable=False) as conn,
        ):
            conn.execute(
                "UPDATE nx_blobs SET last_used = ? WHERE sha256 = ?", (time.time(), sha256)
            )
        return handle

    def adopt_download(self, conn: sqlite3.Connection, sha256: str, size: int) -> None:
        """Record a verified download placed at :meth:`path_of` (in the caller's transaction)."""
        now = time.time()
        conn.execute(
            "INSERT INTO nx_blobs (sha256, size, content_type, local, remote, linked, mtime_ns, "
            "inode, last_used, created_at) VALUES (?1, ?2, NULL, 1, 1, 0, NULL, NULL, ?3, ?3) "
            "ON CONFLICT (sha256) DO UPDATE SET local = 1, remote = 1, linked = 0, "
            "mtime_ns = NULL, inode = NULL, last_used = ?3",
            (sha256, size, now),
        )

    # -- cache -------------------------------------------------------------------------------

    def usage(self) -> int:
        """Bytes of the local copies ``nx_blobs`` knows of."""
        with self.database.reading() as conn:
            return int(
                conn.execute(
                    "SELECT coalesce(sum(size), 0) FROM nx_blobs WHERE local = 1"
                ).fetchone()[0]
            )

    def evict(self, limit: int, *, keep: frozenset[str] = frozenset()) -> int:
        """Delete local copies of blobs the server has, least recently used first, until the
        local copies take at most ``limit`` bytes. Blobs the server does not have yet are
        never evicted. Returns the bytes freed."""
        freed = 0
        with self.database.reading() as conn:
            total = int(
                conn.execute(
                    "SELECT coalesce(sum(size), 0) FROM nx_blobs WHERE local = 1"
                ).fetchone()[0]
            )
            if total <= limit:
                return 0
            candidates = conn.execute(
                "SELECT sha256, size FROM nx_blobs WHERE local = 1 AND remote = 1 "
                "ORDER BY last_used LIMIT 10000"
            ).fetchall()
        for sha, size in candidates:
            if total - freed <= limit:
                break
            if sha in keep:
                continue
            with self.database.transaction() as conn:
                conn.execute(
                    "UPDATE nx_blobs SET local = 0 WHERE sha256 = ? AND remote = 1", (sha,)
                )
            self.path_of(sha).unlink(missing_ok=True)
            freed += size
        return freed

    def sweep(self) -> int:
        """Delete leftovers of interrupted intakes (``tmp/in-*`` older than an hour)."""
        folder = self.folder / "tmp"
        if not folder.is_dir():
            return 0
        cutoff = time.time() - _TMP_AGE
        removed = 0
        for entry in folder.glob("in-*"):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
        return removed

    def remove_all(self) -> None:
        """Delete the folder (tests, and stores on ``:memory:`` when they close)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def iter_file(path: Path, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes ``[start, end)`` of a file, in pieces of 1 MiB."""
    with path.open("rb") as handle:
        handle.seek(start)
        left = None if end is None else end - start
        while left is None or left > 0:
            piece = handle.read(_PIECE if left is None else min(_PIECE, left))
            if not piece:
                return
            if left is not None:
                left -= len(piece)
            yield piece
