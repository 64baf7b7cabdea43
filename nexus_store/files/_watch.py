"""A watched folder: new and changed files are queued for upload as they appear.

:class:`FolderWatch` scans a folder (and its subfolders) when ``watchfiles`` reports a
change and every ``rescan`` seconds. A file is queued once it has been quiet for
``settle`` seconds (a file still being written is not sent half-written); what was
queued is remembered in the store file (table ``nx_watched``: path relative to the
folder, size, mtime, hash, upload id), so a restarted watcher queues again only files
that are new or changed since. With ``delete_after``, a file whose upload is done is
deleted, if it is still exactly what was sent. Hidden files (``.name``) and files ending
in ``.part``, ``.tmp``, ``.crdownload`` or ``~`` are ignored.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from .._exceptions import FileTransferError
from .._priority import SyncPriority
from ._policy import TransferConstraints
from ._refs import Upload, UploadState
from ._uploads import LocalFiles

__all__ = ["FolderWatch", "WatchReport"]

_IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload", "~", ".swp")
_SCHEMA = """CREATE TABLE IF NOT EXISTS nx_watched (
    folder TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (folder, path)
)"""
_MAX_FILES = 1_000_000


@dataclass(frozen=True)
class WatchReport:
    """What one scan did."""

    queued: list[Upload]
    deleted: list[str]
    waiting: int
    """Files seen but not quiet for ``settle`` seconds yet."""


class FolderWatch:
    """Uploads what appears in ``folder`` (see the module docstring).

    Args:
        files: the database's files (:class:`LocalFiles`).
        folder: the folder to watch.
        tag: the uploads' tag.
        priority: their priority.
        url: where to POST them (default: the sync server).
        delete_after: delete each file once its upload is done (and it is unchanged).
        settle: seconds a file must stay unchanged before it is queued.
        constraints: what the uploads need of the device.
        clock: wall time in seconds (injectable for tests).
    """

    def __init__(
        self,
        files: LocalFiles,
        folder: str | os.PathLike[str],
        *,
        tag: str | None = None,
        priority: SyncPriority = SyncPriority.NORMAL,
        url: str | None = None,
        delete_after: bool = False,
        settle: float = 1.0,
        constraints: TransferConstraints | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.files = files
        self.folder = Path(folder).resolve()
        self.tag = tag
        self.priority = priority
        self.url = url
        self.delete_after = delete_after
        self.settle = settle
        self.constraints = constraints
        self._clock = clock
        self._key = str(self.folder)
        with files.database.transaction() as conn:
            conn.execute(_SCHEMA)

    def scan(self) -> WatchReport:
        """Queue the new and changed files that are quiet; delete finished ones if asked."""
        known = self._known()
        queued: list[Upload] = []
        waiting = 0
        now = self._clock()
        seen = 0
        for path in self._files():
            seen += 1
            if seen > _MAX_FILES:
                break
            rel = path.relative_to(self.folder).as_posix()
            try:
                st = path.stat()
            except OSError:
                continue
            before = known.get(rel)
            if before is not None and before == (st.st_size, st.st_mtime_ns):
                continue
            if now - st.st_mtime < self.settle:
                waiting += 1
                continue
            # A file gone or changed since it was listed, or a database file this process
            # has open (the store's own, in the watched folder): not queued.
            with contextlib.suppress(OSError, FileTransferError):
                upload = self.files.upload(
                    path,
                    url=self.url,
                    priority=self.priority,
                    tag=self.tag,
                    constraints=self.constraints,
                    name=path.name,
                )
                self._remember(rel, st.st_size, st.st_mtime_ns, upload)
                queued.append(upload)
        deleted = self._delete_done() if self.delete_after else []
        return WatchReport(queued, deleted, waiting)

    def _files(self) -> list[Path]:
        out = []
        for root, dirs, names in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith(".") or name.endswith(_IGNORED_SUFFIXES):
                    continue
                path = Path(root) / name
                if path.is_file() and not path.is_symlink():
                    out.append(path)
        return out

    def _known(self) -> dict[str, tuple[int, int]]:
        with self.files.database.reading() as conn:
            rows = conn.execute(
                "SELECT path, size, mtime_ns FROM nx_watched WHERE folder = ?", (self._key,)
            ).fetchall()
        return {path: (size, mtime) for path, size, mtime in rows}

    def _remember(self, rel: str, size: int, mtime_ns: int, upload: Upload) -> None:
        with self.files.database.transaction() as conn:
            conn.execute(
                "INSERT INTO nx_watched (folder, path, size, mtime_ns, sha256, upload_id, deleted) "
                "VALUES (?, ?, ?, ?, ?, ?, 0) ON CONFLICT (folder, path) DO UPDATE SET "
                "size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, "
                "upload_id = excluded.upload_id, deleted = 0",
                (self._key, rel, size, mtime_ns, upload.sha256, upload.upload_id),
            )

    def _delete_done(self) -> list[str]:
        with self.files.database.reading() as conn:
            rows = conn.execute(
                "SELECT w.path, w.size, w.mtime_ns FROM nx_watched w JOIN nx_uploads u "
                "ON u.upload_id = w.upload_id WHERE w.folder = ? AND w.deleted = 0 "
                "AND u.state = 'done'",
                (self._key,),
            ).fetchall()
        deleted = []
        for rel, size, mtime_ns in rows:
            path = self.folder / rel
            try:
                st = path.stat()
                if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
                    path.unlink()
                    deleted.append(rel)
            except FileNotFoundError:
                deleted.append(rel)
            except OSError:
                continue
            with self.files.database.transaction() as conn:
                conn.execute(
                    "UPDATE nx_watched SET deleted = 1 WHERE folder = ? AND path = ?",
                    (self._key, rel),
                )
        return deleted

    def pending(self) -> list[Upload]:
        """This folder's uploads not done yet."""
        return [
            u
            for u in self.files.uploads(self.tag, done=False)
            if u.state in (UploadState.QUEUED, UploadState.DEAD)
        ]

    async def run(
        self,
        *,
        on_scan: Callable[[WatchReport], None] | None = None,
        rescan: float = 2.0,
        stop: anyio.Event | None = None,
    ) -> None:
        """Scan now, then on every change ``watchfiles`` reports and every ``rescan``
        seconds, until ``stop`` is set (or the task is cancelled)."""
        import watchfiles  # noqa: PLC0415 - loaded only for a watched folder

        stop = stop or anyio.Event()
        changed = anyio.Event()

        async def watch() -> None:
            nonlocal changed
            async for _ in watchfiles.awatch(
                self.folder, stop_event=stop, debounce=200, rust_timeout=500, recursive=True
            ):
                changed.set()

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            while not stop.is_set():
                report = await anyio.to_thread.run_sync(self.scan)
                if on_scan is not None:
                    on_scan(report)
                with anyio.move_on_after(rescan):
                    await changed.wait()
                changed = anyio.Event()
            group.cancel_scope.cancel()
