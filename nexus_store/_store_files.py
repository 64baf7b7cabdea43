"""A store's files: attachments on items, plain uploads, opening blobs, and prefetch.

The part of :class:`~nexus_store.NexusStore` that takes files in (content-addressed,
deduplicated: :mod:`nexus_store.files`), queues their transfers in the store's own sync
queue (collection ``nx_files``; same priorities, backoff and dead letters as records),
and reads them back. A sync run carries the transfers out beside the records (see
:mod:`nexus_store.sync.engine._transfers`). The work is done by
:class:`~nexus_store.files._uploads.LocalFiles`, which needs no model (the command line's
watched folder uses it too).

Records and their blobs travel together: a save of an item whose data refers to blobs
still waiting for their upload holds the item's op back until they are on the server
(:mod:`nexus_store.files._holds`), in the save's own transaction. Pulled records whose
attachments are not local are fetched when opened, or at once by the ``prefetch`` policy.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from ._blob_api import blob_refs, is_sha256
from ._exceptions import BlobNotFoundError, ItemValidationError
from ._loop import shared_loop
from ._priority import SyncPriority
from ._quarantine import AppliedChanges
from ._remote import Change
from ._tablespec import PreparedItem
from .files._ops import TransferSpec
from .files._policy import FilePolicy, Prefetch, TransferConstraints
from .files._refs import Attachment, Upload
from .files._tables import FILES_COLLECTION, create_tables, has_tables

if TYPE_CHECKING:
    from .files._uploads import LocalFiles

from ._store_base import ID, T
from ._store_sync import _SyncSide

__all__: list[str] = []


class _Files(_SyncSide[T, ID]):
    """Attachments, uploads and blobs of a store (see the module docstring)."""

    _blob_fields: bool = False
    """Whether the model has fields that hold :class:`Attachment` references."""
    _prefetch: Prefetch = "none"
    _local_files: LocalFiles | None = None

    def _files(self) -> LocalFiles:
        """The file's files (their tables made on first use)."""
        if self._local_files is None:
            from .files._uploads import LocalFiles  # noqa: PLC0415

            self._local_files = LocalFiles(self._db, self._queue, notify=self._signal.notify)
        return self._local_files

    def _has_file_tables(self) -> bool:
        if self._local_files is not None:
            return True
        with self._db.reading() as conn:
            return has_tables(conn)

    def configure_files(
        self, policy: FilePolicy | None = None, *, prefetch: Prefetch | None = None
    ) -> None:
        """Set how this file's files move.

        Args:
            policy: constraints per priority and for large files, parallel transfers,
                chunk size, retry schedule, cache limit (kept in the file: a worker process
                follows it too).
            prefetch: which attachments of pulled records are fetched at once: ``"all"``,
                ``"none"`` (the default: when opened), or a function of the
                :class:`Attachment` (this store object only).

        Raises:
            ValueError: a ``prefetch`` that is none of these.
        """
        self._check_open()
        if prefetch is not None:
            if prefetch not in ("all", "none") and not callable(prefetch):
                raise ValueError('prefetch is "all", "none" or a function of an Attachment')
            self._prefetch = prefetch
        files = self._files()
        if policy is not None:
            files.set_policy(policy)

    def file_policy(self) -> FilePolicy:
        """The file's :class:`FilePolicy` (the default one until set)."""
        self._check_open()
        return self._files().policy()

    # -- attachments -------------------------------------------------------------------------

    def attach(
        self,
        item_id: ID,
        source: str | os.PathLike[str] | bytes | BinaryIO,
        *,
        name: str | None = None,
        content_type: str | None = None,
        priority: SyncPriority | int | str = SyncPriority.NORMAL,
        tag: str | None = None,
        constraints: TransferConstraints | None = None,
    ) -> Attachment:
        """Attach a file to an item: take it in and queue its upload.

        The bytes are kept in the local blob store under their SHA-256 (the same bytes
        attached twice are one blob); the upload goes to the sync server in queue order.
        Store the returned reference in a model field and save the item: the record is
        sent only after the blob is on the server.

        Args:
            item_id: the item (it need not exist yet).
            source: a path, bytes, or a binary stream (read to its end).
            name: the file's name (metadata only, never a path; default: the path's name).
            content_type: the media type (default: guessed from the name).
            priority: the upload's priority.
            tag: a label on the upload op.
            constraints: what the upload needs of the device (with the policy's own).

        Returns:
            The reference to store in the item.

        Raises:
            ItemValidationError: a bad id, name, content type or source.
            FileTransferError: the source cannot be read.
            SourceChangedError: a source file changed while it was taken in.
            StoreClosedError: the store is closed.
        """
        self._check_open()
        level = SyncPriority.coerce(priority)
        _, key = self._table.key_of(item_id)
        return self._files().attach(
            self.collection,
            key,
            source,
            name=name,
            content_type=content_type,
            priority=level,
            tag=tag,
            constraints=constraints,
        )

    def attachments(self, item_id: ID) -> list[Attachment]:
        """The item's attachments: those attached here and those its data refers to.

        Raises:
            ItemValidationError: a bad id.
        """
        self._check_open()
        _, key = self._table.key_of(item_id)
        found: dict[str, Attachment] = {}
        if self._has_file_tables():
            found = {a.sha256: a for a in self._files().attached(self.collection, key)}
        item = self.get(item_id) if self._blob_fields else None  # type: ignore[attr-defined]
        if item is not None:
            for ref in _refs_in(item.model_dump(mode="json")):
                found.setdefault(ref.sha256, ref)
        return list(found.values())

    def detach(self, ref: Attachment | str, item_id: ID | None = None) -> bool:
        """Forget an attachment (of one item, or of every item of this collection).

        The blob's upload is cancelled if nothing else needs it and it is not on the
        server yet; the local copy stays until the cache evicts it.

        Returns:
            Whether an attachment was forgotten.
        """
        self._check_open()
        sha = _sha_of(ref)
        key = None if item_id is None else self._table.key_of(item_id)[1]
        if not self._has_file_tables():
            return False
        return self._files().detach(self.collection, sha, key)

    def open_attachment(self, ref: Attachment | str) -> BinaryIO:
        """Open a blob for reading: the local copy, or fetched from the server (resumably,
        then kept in the local cache).

        The fetch runs on the process's background event loop (as :meth:`sync` does); from
        async code that syncs with :meth:`async_sync`, await :meth:`async_open_attachment`
        instead, so the backend's connections stay on one loop.

        Raises:
            ItemValidationError: ``ref`` is not a SHA-256 (hex) or an attachment.
            BlobNotFoundError: no local copy, and no backend or the server does not have it.
            RemoteError: fetching it failed (a later call goes on where it stopped).
        """
        sha, local = self._open_local(ref)
        if local is not None:
            return local
        from .sync.engine import _runner  # noqa: F401, PLC0415 - loaded off the loop

        shared_loop().call(functools.partial(self._fetch, sha))
        return _binary(self._files().blobs.open(sha))

    async def async_open_attachment(self, ref: Attachment | str) -> BinaryIO:
        """Async form of :meth:`open_attachment`: a missing blob is fetched on the running
        event loop (the one :meth:`async_sync` uses).

        Raises:
            ItemValidationError: ``ref`` is not a SHA-256 (hex) or an attachment.
            BlobNotFoundError: no local copy, and no backend or the server does not have it.
            RemoteError: fetching it failed (a later call goes on where it stopped).
        """
        sha, local = self._open_local(ref)
        if local is not None:
            return local
        await self._fetch(sha)
        return _binary(self._files().blobs.open(sha))

    def _open_local(self, ref: Attachment | str) -> tuple[str, BinaryIO | None]:
        """The blob's hash and its local copy opened (``None``: it must be fetched)."""
        self._check_open()
        sha = _sha_of(ref)
        try:
            return sha, _binary(self._files().blobs.open(sha))
        except BlobNotFoundError:
            if self.backend is None:
                raise BlobNotFoundError(
                    f"no local copy of blob {sha} and no backend to fetch it from"
                ) from None
        return sha, None

    async def _fetch(self, sha: str) -> None:
        from .files._download import fetch_blob  # noqa: PLC0415
        from .files._remote import blob_remote_for  # noqa: PLC0415

        assert self.backend is not None
        await fetch_blob(blob_remote_for(self.backend), self._files().blobs, sha)

    # -- plain uploads -----------------------------------------------------------------------

    def upload(
        self,
        path: str | os.PathLike[str],
        *,
        url: str | None = None,
        field_name: str = "file",
        headers: Mapping[str, str] | None = None,
        priority: SyncPriority | int | str = SyncPriority.NORMAL,
        tag: str | None = None,
        constraints: TransferConstraints | None = None,
        name: str | None = None,
        content_type: str | None = None,
    ) -> Upload:
        """Queue a file for upload: to the sync server (a blob), or to ``url`` as a
        multipart form POST.

        The file is taken in now (a hard link or a copy, see :class:`FilePolicy`), so the
        app may delete it at once. A file that changes (in place) before it is sent is
        detected by its hash and dead-lettered with the reason, never sent half-changed.

        Args:
            path: the file.
            url: an ``http(s)://`` endpoint to POST it to (default: the sync server).
            field_name: the form field that carries the file.
            headers: extra request headers for ``url`` (kept in the file with the op).
            priority: the upload's priority.
            tag: a label (:meth:`uploads` and :meth:`cancel_uploads` select by it).
            constraints: what the upload needs of the device (with the policy's own).
            name: the file name sent (default: the path's name; never used as a path).
            content_type: the media type (default: guessed from the name).

        Raises:
            ItemValidationError: a bad URL, header, field name, name or content type.
            FileTransferError: the file cannot be read.
            StoreClosedError: the store is closed.
        """
        self._check_open()
        return self._files().upload(
            path,
            url=url,
            field_name=field_name,
            headers=headers,
            priority=SyncPriority.coerce(priority),
            tag=tag,
            constraints=constraints,
            name=name,
            content_type=content_type,
        )

    def uploads(self, tag: str | None = None, *, done: bool = True) -> list[Upload]:
        """The uploads of this file (all tags, or one), oldest first.

        Args:
            tag: only uploads with this tag.
            done: include finished and cancelled ones.
        """
        self._check_open()
        if not self._has_file_tables():
            return []
        return self._files().uploads(tag, done=done)

    def cancel_uploads(
        self, tag: str | None = None, *, upload_ids: Iterable[str] | None = None
    ) -> int:
        """Cancel queued (or dead-lettered) uploads: all, those with ``tag``, or those named.

        Their ops leave the queue unless another upload or an attachment still needs the
        same blob; a transfer in flight is not interrupted, its result is dropped.

        Returns:
            How many uploads were cancelled.
        """
        self._check_open()
        if not self._has_file_tables():
            return 0
        return self._files().cancel(tag, upload_ids=upload_ids)

    # -- records and their blobs -------------------------------------------------------------

    def _hold_records(
        self, conn: sqlite3.Connection, prepared: Sequence[PreparedItem[T]], now: float
    ) -> None:
        """Hold the just-queued ops of items that refer to blobs still on their way up
        (in the save's transaction; see :mod:`nexus_store.files._holds`)."""
        from .files._holds import hold_for_blobs  # noqa: PLC0415

        if self._local_files is None and not has_tables(conn):
            return  # no blob was ever taken in here: nothing can be waiting
        for p in prepared:
            shas = blob_refs(p.item.model_dump(mode="json"))
            if shas:
                hold_for_blobs(conn, self._queue, self.collection, p.key, shas, now)

    def apply_pulled(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> AppliedChanges:
        """Apply pulled changes (see :meth:`apply_remote_changes`); with a ``prefetch``
        policy, queue downloads of the attachments they refer to, in the same transaction."""
        if not self._blob_fields or self._prefetch == "none":
            return super().apply_pulled(changes, overwrite_pending=overwrite_pending)
        with self._db.transaction() as conn:
            result = super().apply_pulled(changes, overwrite_pending=overwrite_pending)
            self._prefetch_for(conn, result.applied)
        return result

    def _prefetch_for(self, conn: sqlite3.Connection, applied: Sequence[Change]) -> None:
        wanted: dict[str, Attachment] = {}
        choose = self._prefetch
        for change in applied:
            if change.data is None:
                continue
            for ref in _refs_in(change.data):
                if choose == "all" or (callable(choose) and choose(ref)):
                    wanted[ref.sha256] = ref
        if not wanted:
            return
        create_tables(conn)
        for sha, ref in wanted.items():
            row = conn.execute("SELECT local FROM nx_blobs WHERE sha256 = ?", (sha,)).fetchone()
            if row is not None and row[0]:
                continue
            spec = TransferSpec("get", sha, ref.size, content_type=ref.content_type, name=ref.name)
            self._queue.enqueue(
                FILES_COLLECTION, spec.key, spec.encode(), priority=SyncPriority.LOW, coalesce=True
            )


def _refs_in(data: Any) -> list[Attachment]:
    """The attachment references in a record's data (as :class:`Attachment` objects)."""
    found: list[Attachment] = []
    shas = blob_refs(data)
    if not shas:
        return found
    stack = [data]
    seen: set[str] = set()
    for _ in range(100_000):
        if not stack:
            break
        value = stack.pop()
        if isinstance(value, dict):
            sha = value.get("sha256")
            if sha in shas and sha not in seen:
                try:
                    found.append(Attachment.model_validate(value))
                    seen.add(sha)
                except ValueError:
                    pass
            stack.extend(v for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend(v for v in value if isinstance(v, dict | list))
    return found


def _sha_of(ref: Attachment | str) -> str:
    sha = ref.sha256 if isinstance(ref, Attachment) else ref
    if not is_sha256(sha):
        raise ItemValidationError(f"not a blob reference: {sha!r:.80}")
    return sha


def _binary(handle: IO[bytes]) -> BinaryIO:
    return handle  # type: ignore[return-value]
