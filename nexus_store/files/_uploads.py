"""A database's files as an app (or a tool without the app's models) handles them.

:class:`LocalFiles` takes files in (content-addressed in the local blob store), records
attachments and uploads, and queues their transfer ops; it needs only the database file
and its queue, so the command line's watched folder uses it as a store does (a
:class:`~nexus_store.NexusStore` delegates its ``attach``, ``upload``, ``uploads`` and
``cancel_uploads`` here).
"""

from __future__ import annotations

import json
import mimetypes
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._database import Database
from .._exceptions import FileTransferError, ItemValidationError
from .._meta import MetaTable
from .._priority import SyncPriority
from ..queue import PrioritySyncQueue
from ._local import Ingested, LocalBlobs
from ._ops import TransferSpec, key_of
from ._policy import FilePolicy, TransferConstraints
from ._refs import Attachment, Upload, UploadState, check_name
from ._tables import FILES_COLLECTION, create_tables, has_tables

__all__ = ["POLICY_KEY", "LocalFiles"]

POLICY_KEY = "files:policy"
"""The ``nx_meta`` key of the file's :class:`FilePolicy` (JSON)."""
_MAX_HEADERS = 64

_LIST = (
    "SELECT u.upload_id, u.name, u.sha256, u.size, u.url, u.tag, u.state, u.error, "
    "u.created_at, u.done_at, q.op_id, q.state, q.priority, q.attempts, q.last_error, "
    "coalesce(t.acked, 0) FROM nx_uploads u LEFT JOIN nx_queue q ON q.seq = "
    "(SELECT max(seq) FROM nx_queue WHERE collection = 'nx_files' AND item_id = u.op_key) "
    "LEFT JOIN nx_transfers t ON t.op_key = u.op_key "
)


class LocalFiles:
    """The files of one database file.

    Args:
        database: the store file.
        queue: its queue.
        notify: called after each commit that queued something (wakes a sync service).
    """

    def __init__(
        self,
        database: Database,
        queue: PrioritySyncQueue,
        *,
        notify: Callable[[], None] | None = None,
    ) -> None:
        self.database = database
        self.queue = queue
        self._notify = notify or (lambda: None)
        with database.transaction() as conn:
            MetaTable(database).ensure_schema(conn)
            create_tables(conn)
        self.blobs = LocalBlobs(database)
        self.blobs.sweep()

    @staticmethod
    def present(database: Database) -> bool:
        """Whether the file ever held a blob (its files' tables exist)."""
        with database.reading() as conn:
            return has_tables(conn)

    # -- policy ------------------------------------------------------------------------------

    def policy(self) -> FilePolicy:
        """The file's policy (the default one until set)."""
        with self.database.reading() as conn:
            text = MetaTable.get(conn, POLICY_KEY)
        return FilePolicy.from_json(text if isinstance(text, str) else None)

    def set_policy(self, policy: FilePolicy) -> None:
        """Record the file's policy."""
        with self.database.transaction() as conn:
            MetaTable.set(conn, POLICY_KEY, policy.to_json())

    # -- attachments -------------------------------------------------------------------------

    def attach(
        self,
        collection: str,
        key: str | int,
        source: Any,
        *,
        name: str | None,
        content_type: str | None,
        priority: SyncPriority,
        tag: str | None,
        constraints: TransferConstraints | None,
    ) -> Attachment:
        """Take a source in, record it as the item's attachment and queue its upload."""
        blob, name = self.take_in(source, name)
        content_type = content_type_of(content_type, name)
        spec = TransferSpec(
            "up",
            blob.sha256,
            blob.size,
            content_type=content_type,
            name=name,
            constraints=constraints or TransferConstraints(),
        )
        with self.database.transaction() as conn:
            self.blobs.record(conn, blob, content_type)
            conn.execute(
                "INSERT INTO nx_attachments (collection, item_id, sha256, name, content_type, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "name = excluded.name, content_type = excluded.content_type",
                (collection, key, blob.sha256, name, content_type, time.time()),
            )
            self.queue_transfer(conn, spec, priority, tag)
        self._notify()
        return Attachment(sha256=blob.sha256, size=blob.size, content_type=content_type, name=name)

    def attached(self, collection: str, key: str | int) -> list[Attachment]:
        """The attachments recorded for an item, oldest first."""
        with self.database.reading() as conn:
            rows = conn.execute(
                "SELECT a.sha256, coalesce(b.size, 0), a.content_type, a.name "
                "FROM nx_attachments a LEFT JOIN nx_blobs b ON b.sha256 = a.sha256 "
                "WHERE a.collection = ? AND a.item_id = ? ORDER BY a.created_at, a.sha256",
                (collection, key),
            ).fetchall()
        return [
            Attachment(sha256=sha, size=size, content_type=content_type, name=name)
            for sha, size, content_type, name in rows
        ]

    def detach(self, collection: str, sha256: str, key: str | int | None) -> bool:
        """Forget an attachment (of one item, or of every item of the collection)."""
        with self.database.transaction() as conn:
            if key is None:
                count = conn.execute(
                    "DELETE FROM nx_attachments WHERE collection = ? AND sha256 = ?",
                    (collection, sha256),
                ).rowcount
            else:
                count = conn.execute(
                    "DELETE FROM nx_attachments WHERE collection = ? AND item_id = ? "
                    "AND sha256 = ?",
                    (collection, key, sha256),
                ).rowcount
            if count:
                self.drop_unneeded(conn, key_of("up", sha256))
        return count > 0

    # -- plain uploads -----------------------------------------------------------------------

    def upload(
        self,
        path: Any,
        *,
        url: str | None = None,
        field_name: str = "file",
        headers: Mapping[str, str] | None = None,
        priority: SyncPriority = SyncPriority.NORMAL,
        tag: str | None = None,
        constraints: TransferConstraints | None = None,
        name: str | None = None,
        content_type: str | None = None,
    ) -> Upload:
        """Queue a file for upload (see :meth:`nexus_store.NexusStore.upload`)."""
        if isinstance(path, bytes | bytearray) or not isinstance(path, str | os.PathLike):
            raise ItemValidationError("upload() takes a path; attach() also takes bytes")
        extra = check_target(url, field_name, headers)
        if tag is not None and not isinstance(tag, str):
            raise ItemValidationError("a tag is a string")
        blob, name = self.take_in(path, name)
        content_type = content_type_of(content_type, name)
        upload_id = uuid.uuid4().hex
        spec = TransferSpec(
            "post" if url is not None else "up",
            blob.sha256,
            blob.size,
            content_type=content_type,
            name=name,
            url=url,
            field_name=field_name,
            headers=extra,
            upload_id=upload_id if url is not None else None,
            constraints=constraints or TransferConstraints(),
        )
        now = time.time()
        with self.database.transaction() as conn:
            self.blobs.record(conn, blob, content_type)
            queued = self.queue_transfer(conn, spec, priority, tag)
            conn.execute(
                "INSERT INTO nx_uploads (upload_id, op_key, sha256, size, name, url, tag, state, "
                "error, created_at, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (
                    upload_id,
                    spec.key,
                    blob.sha256,
                    blob.size,
                    name,
                    url,
                    tag,
                    "queued" if queued else "done",
                    now,
                    None if queued else now,
                ),
            )
        self._notify()
        return self.listing("WHERE u.upload_id = ?", (upload_id,))[0]

    def uploads(self, tag: str | None = None, *, done: bool = True) -> list[Upload]:
        """The uploads of this file (all tags, or one), oldest first."""
        where, params = [], []
        if tag is not None:
            where.append("u.tag = ?")
            params.append(tag)
        if not done:
            where.append("u.state = 'queued'")
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return self.listing(clause, tuple(params))

    def listing(self, clause: str, params: tuple[Any, ...]) -> list[Upload]:
        """Uploads as :class:`Upload` records (their state read with their ops')."""
        with self.database.reading() as conn:
            rows = conn.execute(
                _LIST + clause + " ORDER BY u.created_at, u.upload_id", params
            ).fetchall()
        return [_upload_of(row) for row in rows]

    def cancel(self, tag: str | None = None, *, upload_ids: Iterable[str] | None = None) -> int:
        """Cancel queued (or dead-lettered) uploads: all, those with ``tag``, or those named."""
        where, params = ["state = 'queued'"], []
        if tag is not None:
            where.append("tag = ?")
            params.append(tag)
        if upload_ids is not None:
            where.append("upload_id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([str(i) for i in upload_ids]))
        with self.database.transaction() as conn:
            rows = conn.execute(
                "UPDATE nx_uploads SET state = 'cancelled', done_at = ? WHERE "
                + " AND ".join(where)
                + " RETURNING op_key",
                (time.time(), *params),
            ).fetchall()
            for op_key in {row[0] for row in rows}:
                self.drop_unneeded(conn, op_key)
        return len(rows)

    # -- shared steps ------------------------------------------------------------------------

    def take_in(self, source: Any, name: str | None) -> tuple[Ingested, str | None]:
        """Take a source in (hashing it); its name (the given one, or the file's).

        Raises:
            ItemValidationError: not a path, bytes or a binary stream; a bad name.
            FileTransferError: the source cannot be read.
        """
        check_name(name)
        blobs = self.blobs
        try:
            if isinstance(source, bytes | bytearray | memoryview):
                return blobs.ingest_bytes(bytes(source)), name
            if isinstance(source, str | os.PathLike):
                path = Path(source)
                blob = blobs.ingest_path(path, link=self.policy().link)
                return blob, name if name is not None else _name_of(path.name)
            if callable(getattr(source, "read", None)):
                own = getattr(source, "name", None)
                default = _name_of(Path(own).name) if isinstance(own, str) else None
                return blobs.ingest_stream(source), name if name is not None else default
        except FileTransferError:
            raise
        except OSError as exc:
            raise FileTransferError(f"cannot read {source!r:.200}: {exc}") from exc
        except TypeError as exc:
            raise ItemValidationError(str(exc)) from exc
        raise ItemValidationError(
            f"a file source is a path, bytes or a binary stream, not {type(source).__name__}"
        )

    def queue_transfer(
        self, conn: sqlite3.Connection, spec: TransferSpec, priority: SyncPriority, tag: str | None
    ) -> bool:
        """Queue a transfer unless it has nothing to do (the server has the blob already).

        Returns:
            Whether an op is queued for it.
        """
        if spec.kind == "up":
            row = conn.execute(
                "SELECT remote FROM nx_blobs WHERE sha256 = ?", (spec.sha256,)
            ).fetchone()
            if row is not None and row[0]:
                return False
        self.queue.enqueue(
            FILES_COLLECTION, spec.key, spec.encode(), priority=priority, tag=tag, coalesce=True
        )
        return True

    def drop_unneeded(self, conn: sqlite3.Connection, op_key: str) -> None:
        """Discard a transfer op nothing needs any more (no queued upload, no attachment of
        a blob the server lacks)."""
        if conn.execute(
            "SELECT 1 FROM nx_uploads WHERE op_key = ? AND state = 'queued'", (op_key,)
        ).fetchone():
            return
        sha = op_key.partition(":")[2]
        if (
            op_key.startswith("up:")
            and conn.execute(
                "SELECT 1 FROM nx_attachments a JOIN nx_blobs b ON b.sha256 = a.sha256 "
                "WHERE a.sha256 = ? AND b.remote = 0",
                (sha,),
            ).fetchone()
        ):
            return
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT op_id FROM nx_queue WHERE collection = ? AND item_id = ?",
                (FILES_COLLECTION, op_key),
            )
        ]
        if ids:
            self.queue.discard(ids)
        conn.execute("DELETE FROM nx_transfers WHERE op_key = ?", (op_key,))


def _upload_of(row: Any) -> Upload:
    (upload_id, name, sha, size, url, tag, state, error, created, done_at) = row[:10]
    op_id, op_state, priority, attempts, last_error, acked = row[10:]
    status = UploadState(state)
    if status is UploadState.QUEUED and op_state == "dead":
        status, error = UploadState.DEAD, last_error
    elif status is UploadState.QUEUED and op_id is None:
        status = UploadState.CANCELLED  # its op was discarded from the queue
    live = status in (UploadState.QUEUED, UploadState.DEAD)
    return Upload(
        upload_id=upload_id,
        name=name,
        sha256=sha,
        size=size,
        url=url,
        tag=tag,
        state=status,
        priority=SyncPriority(priority) if live and op_id is not None else None,
        attempts=(attempts or 0) if live else 0,
        sent=size if status is UploadState.DONE else min(acked, size),
        error=error or (last_error if status is UploadState.QUEUED else None),
        created_at=datetime.fromtimestamp(created, UTC),
        done_at=None if done_at is None else datetime.fromtimestamp(done_at, UTC),
        op_id=op_id if live else None,
    )


def _name_of(name: str) -> str | None:
    try:
        return check_name(name) if name else None
    except ItemValidationError:
        return None


def content_type_of(given: str | None, name: str | None) -> str | None:
    """The content type given, or one guessed from the name."""
    check_name(given, "content type")
    if given is not None:
        return given
    if name:
        guessed, _ = mimetypes.guess_type(name, strict=False)
        return guessed
    return None


def check_target(
    url: str | None, field_name: str, headers: Mapping[str, str] | None
) -> dict[str, str]:
    """The headers to send, after checking where and how a plain upload goes.

    Raises:
        ItemValidationError: a URL that is not http(s), a bad field name or header.
    """
    if not isinstance(field_name, str) or not 0 < len(field_name) <= 100:
        raise ItemValidationError("field_name is 1 to 100 characters")
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ItemValidationError(f"url must be an http(s) URL, not {url!r:.200}")
    out: dict[str, str] = {}
    for key, value in (headers or {}).items():
        if (
            not isinstance(key, str)
            or not isinstance(value, str)
            or any(ch in key + value for ch in "\r\n\x00")
            or not key.strip()
        ):
            raise ItemValidationError(f"bad header {key!r:.60}")
        out[key] = value
    if len(out) > _MAX_HEADERS:
        raise ItemValidationError(f"at most {_MAX_HEADERS} headers")
    if out and url is None:
        raise ItemValidationError("headers go with url= (the sync server has its own)")
    return out
