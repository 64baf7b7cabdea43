"""The file side of one database: what a sync run does with each transfer op.

:class:`FileTransfers` is what the sync engine's transfer step
(:mod:`nexus_store.sync.engine._transfers`) asks, op by op: lease the next transfer ops
(priority, then FIFO, like every op), say whether one may start on this device now
(:mod:`._policy`), perform it (:mod:`._tus_upload`, :mod:`._post`, :mod:`._download`),
and settle it under the lease's fencing token:

Small uploads go in batches where the server takes them (:mod:`._batches`): the op's blob
and the next small ones queued after it in one request; their ops, when the run gets to
them, find their blobs on the server already.

- **done**: the op is acked and, in the same transaction, the blob is marked as on the
  server, the record ops held back for it are released (see :mod:`._holds`), the upload
  is marked done and its resume point forgotten;
- **failed**: the op is nacked with the policy's backoff (or dead-lettered: a source that
  changed or vanished, a refusal, ``max_attempts``), its resume point kept, so the next
  attempt goes on from the last acknowledged offset.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable

import httpx

from .._blob_api import is_upload_id
from .._database import Database
from .._exceptions import (
    BlobNotFoundError,
    ErrorKind,
    FileTransferError,
    RemoteError,
    SourceChangedError,
)
from .._meta import MetaTable
from .._priority import SyncPriority
from ..queue import LeaseBatch, PrioritySyncQueue, QueuedOp, Settled
from ._batches import SmallUploads
from ._download import fetch_blob
from ._holds import release_holds
from ._local import LocalBlobs
from ._ops import TransferSpec, decode_spec
from ._policy import DeviceLike, FilePolicy, effective_constraints, plan_transfer_failure, unmet
from ._post import post_file
from ._remote import BlobRemote
from ._tables import FILES_COLLECTION, has_tables
from ._tus_upload import ResumePoint, send_blob
from ._uploads import POLICY_KEY

__all__ = ["FileTransfers"]


class FileTransfers:
    """The transfer ops of one database file, and how to carry them out.

    Args:
        database: the store file.
        queue: its queue.
        blobs: its local blobs (default: the folder beside the file).
    """

    collection = FILES_COLLECTION

    def __init__(
        self, database: Database, queue: PrioritySyncQueue, *, blobs: LocalBlobs | None = None
    ) -> None:
        self.database = database
        self.queue = queue
        self.blobs = blobs or LocalBlobs(database)
        self.small = SmallUploads(self.blobs)
        self._saved_ids: dict[str, str] = {}
        """The upload id last saved per transfer (its later saves need not be durable)."""

    def __repr__(self) -> str:
        return f"FileTransfers({self.database.path!r})"

    @classmethod
    def find(cls, database: Database, queue: PrioritySyncQueue) -> FileTransfers | None:
        """The file side of ``database`` if it ever held a blob (else ``None``)."""
        with database.reading() as conn:
            if not has_tables(conn):
                return None
        return cls(database, queue)

    def policy(self) -> FilePolicy:
        """The file's policy (the default one until a store sets one)."""
        with self.database.reading() as conn:
            try:
                text = MetaTable.get(conn, POLICY_KEY)
            except sqlite3.OperationalError:
                text = None
        return FilePolicy.from_json(text if isinstance(text, str) else None)

    # -- leasing -----------------------------------------------------------------------------

    def lease(
        self, max_ops: int, lease_for: float, priorities: Iterable[SyncPriority]
    ) -> LeaseBatch:
        """Lease the next transfer ops (most urgent first)."""
        return self.queue.lease(
            max_ops, lease_for, collections=[FILES_COLLECTION], priorities=list(priorities)
        )

    def decide(
        self, op: QueuedOp, device: DeviceLike | None, policy: FilePolicy
    ) -> tuple[TransferSpec | None, str | None]:
        """The op's transfer and why it may not start now (``None``: it may).

        An op whose payload is not a transfer comes back without a spec (the caller
        dead-letters it with the reason).
        """
        try:
            spec = decode_spec(op.payload)
        except ValueError as exc:
            return None, str(exc)
        wanted = effective_constraints(spec.constraints, op.priority, spec.size, policy)
        return spec, unmet(wanted, device)

    def renew(self, op_ids: list[str], lease_for: float, token: int) -> Settled:
        """Extend the leases of running transfers."""
        return self.queue.renew(op_ids, lease_for, token=token)

    def release(self, op_ids: list[str], token: int) -> Settled:
        """Give ops back untouched."""
        return self.queue.release(op_ids, token=token)

    # -- carrying out ------------------------------------------------------------------------

    async def perform(
        self,
        op: QueuedOp,
        spec: TransferSpec,
        *,
        remote: Callable[[], BlobRemote],
        client: Callable[[], httpx.AsyncClient],
        policy: FilePolicy,
        progress: Callable[[int], None],
    ) -> None:
        """Carry out one transfer.

        Raises:
            SourceChangedError: the queued file changed or vanished.
            RemoteError: the transfer failed (its resume point is kept).
        """
        if spec.kind == "get":
            if not self.blobs.changed(spec.sha256):
                return  # fetched meanwhile (opened by the app)

            def report(done: int, total: int) -> None:
                progress(done)

            await fetch_blob(remote(), self.blobs, spec.sha256, progress=report)
            return
        path = self.blobs.path_of(spec.sha256)
        if spec.kind == "post":
            assert spec.url is not None
            if self.blobs.changed(spec.sha256):
                raise SourceChangedError("the file changed or vanished since it was queued")
            await post_file(
                client(),
                spec.url,
                path,
                sha256=spec.sha256,
                size=spec.size,
                field_name=spec.field_name,
                filename=spec.name,
                content_type=spec.content_type,
                headers=spec.headers,
                progress=progress,
            )
            return
        if SmallUploads.fits(spec) and await self.small.send(remote(), op, spec, policy, progress):
            return
        metadata = {}
        if spec.name:
            metadata["filename"] = spec.name
        if spec.content_type:
            metadata["content_type"] = spec.content_type
        await send_blob(
            remote(),
            path,
            sha256=spec.sha256,
            size=spec.size,
            metadata=metadata,
            resume=self._resume_point(spec.key),
            save=lambda point: self._save_point(spec.key, point),
            chunk_size=policy.chunk_size,
            progress=progress,
            unchanged=lambda: not self.blobs.changed(spec.sha256),
        )

    def _resume_point(self, key: str) -> ResumePoint:
        with self.database.reading() as conn:
            row = conn.execute(
                "SELECT upload_id, acked FROM nx_transfers WHERE op_key = ?", (key,)
            ).fetchone()
        if row is None or not is_upload_id(row[0]):
            return ResumePoint()
        return ResumePoint(row[0], int(row[1]))

    def _save_point(self, key: str, point: ResumePoint) -> None:
        # Only the upload id must survive a power loss (on resume the server says its
        # offset): the first save of an upload id waits for the disk, the later ones
        # (one per chunk) do not. A SIGKILL loses none of them.
        durable = self._saved_ids.get(key) != point.upload_id
        with self.database.transaction(durable=durable) as conn:
            conn.execute(
                "INSERT INTO nx_transfers (op_key, upload_id, acked, updated_at) "
                "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (op_key) DO UPDATE SET upload_id = ?2, "
                "acked = ?3, updated_at = ?4",
                (key, point.upload_id, point.acked, time.time()),
            )
        if point.upload_id is not None:
            self._saved_ids[key] = point.upload_id

    def acked_bytes(self, key: str) -> int:
        """The bytes the server acknowledged of a transfer so far."""
        return self._resume_point(key).acked

    # -- settling ----------------------------------------------------------------------------

    def succeed(self, op: QueuedOp, spec: TransferSpec | None, token: int) -> Settled:
        """Ack a done transfer and record what it changed, in one transaction.

        The commit does not wait for the disk (as the queue's acks do not): a power loss
        can only undo it until the next durable commit (the run's next lease). Undone, the
        op is sent again and the server, which has the blob, answers at once; the records
        it released wait for it again. Nothing is released before its blob is on the server.
        """
        if spec is None:
            with self.database.transaction(durable=False):
                return self.queue.ack([op.op_id], token=token)
        return self.succeed_many([(op, spec)], token)[0]

    def succeed_many(
        self, done: list[tuple[QueuedOp, TransferSpec]], token: int
    ) -> tuple[Settled, int]:
        """Ack done uploads and record what they changed, all in one transaction (as
        :meth:`succeed` does for one; the same durability).

        Returns:
            The settle's result, and how many record ops waited for these blobs (released
            now, unless they wait for another blob too).
        """
        now = time.time()
        shas = sorted({spec.sha256 for _, spec in done if spec.kind == "up"})
        keys = [(spec.key,) for _, spec in done]
        with self.database.transaction(durable=False) as conn:
            held = 0
            if shas:
                held = conn.execute(
                    "SELECT count(*) FROM nx_blob_holds WHERE sha256 IN "
                    "(SELECT value FROM json_each(?))",
                    (json.dumps(shas),),
                ).fetchone()[0]
            settled = self.queue.ack([op.op_id for op, _ in done], token=token)
            conn.executemany(
                "UPDATE nx_blobs SET remote = 1 WHERE sha256 = ?",
                [(spec.sha256,) for _, spec in done if spec.kind in ("up", "get")],
            )
            if held:
                for sha in shas:
                    release_holds(conn, self.queue, sha)
            conn.executemany(
                "UPDATE nx_uploads SET state = 'done', done_at = ?2, error = NULL "
                "WHERE op_key = ?1 AND state = 'queued'",
                [(key, now) for (key,) in keys],
            )
            conn.executemany("DELETE FROM nx_transfers WHERE op_key = ?", keys)
        for (key,) in keys:
            self._saved_ids.pop(key, None)
        return settled, int(held)

    def fail(
        self, op: QueuedOp, token: int, error: BaseException, policy: FilePolicy
    ) -> tuple[bool, Settled]:
        """Nack a failed transfer (the policy's backoff, or a dead letter).

        Returns:
            Whether the op was dead-lettered, and the settle's result.
        """
        kind, reason, retry_after = _classify(error)
        plan = plan_transfer_failure(
            kind=kind,
            reason=reason,
            attempts=op.attempts,
            retry_after=retry_after,
            policy=policy,
        )
        dead = plan.kind in (ErrorKind.PERMANENT, ErrorKind.CONFLICT) or (
            plan.kind is not ErrorKind.AUTH and op.attempts + 1 >= self.queue.max_attempts
        )
        settled = self.queue.nack(
            [op.op_id], plan.reason, kind=plan.kind, retry_after=plan.retry_after, token=token
        )
        return dead, settled

    def maybe_evict(self, policy: FilePolicy) -> int:
        """Keep the local copies within the policy's cache limit."""
        if policy.cache_limit_bytes is None:
            return 0
        with contextlib.suppress(OSError):
            return self.blobs.evict(policy.cache_limit_bytes)
        return 0


def _classify(error: BaseException) -> tuple[ErrorKind, str, float | None]:
    """How the queue should see a transfer's failure."""
    text = f"{type(error).__name__}: {error}"[:2000]
    if isinstance(error, SourceChangedError):
        return ErrorKind.PERMANENT, text, None
    if isinstance(error, BlobNotFoundError):
        return ErrorKind.RETRYABLE, text, None
    if isinstance(error, RemoteError):
        return error.kind, text, error.retry_after
    if isinstance(error, FileNotFoundError):
        return ErrorKind.PERMANENT, f"the queued file is gone: {error}", None
    if isinstance(error, FileTransferError | ValueError):
        return ErrorKind.PERMANENT, text, None
    if isinstance(error, OSError):
        return ErrorKind.RETRYABLE, f"local file error: {text}", None
    return ErrorKind.RETRYABLE, text, None
