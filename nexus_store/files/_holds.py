"""Records wait for their blobs: a record op that refers to a blob not yet on the server is
held back until the blob's upload is done.

When a store saves an item whose data refers to blobs (:func:`~nexus_store._blob_api.blob_refs`)
that are queued for upload and not yet on the server, its op is *held*, in the same
transaction as the save: put under a lease of a token of its own (see
:meth:`~nexus_store.PrioritySyncQueue.hold`), so no sync run takes it, with one row per
blob in ``nx_blob_holds``. When a blob's upload is acked, its rows go and each op with no
blob left to wait for is released (same transaction). Until then the op shows as leased;
other items are never held up (the queue's per-item order is per item), and later writes
of the same item queue behind the held op, so they wait too.

A hold whose upload op is gone without the blob reaching the server (the app cancelled or
discarded the upload) is released by the next transfer step: the record then goes as it is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from ..queue import PrioritySyncQueue
from ..queue._fencing import new_token
from ._ops import key_of
from ._tables import FILES_COLLECTION

__all__ = ["HOLD_SECONDS", "hold_for_blobs", "release_holds", "release_orphan_holds"]

HOLD_SECONDS = 100 * 365 * 86_400.0
"""How long a hold lasts unless released (in effect: until released)."""

_NEWEST_LIVE = (
    "SELECT op_id FROM nx_queue WHERE collection = ? AND item_id = ? AND chain IN (0, 1) "
    "ORDER BY seq DESC LIMIT 1"
)
_WAITING_BLOB = (
    "SELECT 1 FROM nx_blobs b WHERE b.sha256 = ?1 AND b.remote = 0 AND EXISTS "
    "(SELECT 1 FROM nx_queue q WHERE q.collection = ?2 AND q.item_id = ?3)"
)


def hold_for_blobs(  # noqa: PLR0917 - the save's values, in order
    conn: sqlite3.Connection,
    queue: PrioritySyncQueue,
    collection: str,
    item_id: str | int,
    shas: Iterable[str],
    now: float,
) -> int:
    """Hold the item's newest op while blobs it refers to wait for their upload.

    Runs in the caller's transaction (the save's). Returns how many blobs it waits for.
    """
    waiting = [
        sha
        for sha in sorted(set(shas))
        if conn.execute(_WAITING_BLOB, (sha, FILES_COLLECTION, key_of("up", sha))).fetchone()
    ]
    if not waiting:
        return 0
    row = conn.execute(_NEWEST_LIVE, (collection, item_id)).fetchone()
    if row is None:
        return 0
    op_id = row[0]
    token = new_token()
    if not queue.hold([op_id], now + HOLD_SECONDS, token=token):
        return 0
    conn.executemany(
        "INSERT OR IGNORE INTO nx_blob_holds (op_id, sha256, token) VALUES (?, ?, ?)",
        [(op_id, sha, token) for sha in waiting],
    )
    return len(waiting)


def release_holds(conn: sqlite3.Connection, queue: PrioritySyncQueue, sha256: str) -> int:
    """The blob is on the server: release the ops that waited only for it (in the caller's
    transaction). Returns how many ops were released."""
    rows = conn.execute(
        "DELETE FROM nx_blob_holds WHERE sha256 = ? RETURNING op_id, token", (sha256,)
    ).fetchall()
    released = 0
    for op_id, token in rows:
        if conn.execute("SELECT 1 FROM nx_blob_holds WHERE op_id = ?", (op_id,)).fetchone():
            continue  # still waiting for another blob
        released += queue.release([op_id], token=token)
    return released


def release_orphan_holds(conn: sqlite3.Connection, queue: PrioritySyncQueue) -> int:
    """Release holds that can never end: their op is gone, or their blob's upload op is
    gone without the blob reaching the server. Returns how many ops were released."""
    rows = conn.execute(
        "SELECT h.op_id, h.sha256, h.token FROM nx_blob_holds h WHERE NOT EXISTS "
        "(SELECT 1 FROM nx_queue q WHERE q.op_id = h.op_id) OR NOT EXISTS "
        "(SELECT 1 FROM nx_queue q WHERE q.collection = ?1 AND q.item_id = 'up:' || h.sha256)",
        (FILES_COLLECTION,),
    ).fetchall()
    released = 0
    for op_id, sha, token in rows:
        conn.execute("DELETE FROM nx_blob_holds WHERE op_id = ? AND sha256 = ?", (op_id, sha))
        if not conn.execute("SELECT 1 FROM nx_blob_holds WHERE op_id = ?", (op_id,)).fetchone():
            released += queue.release([op_id], token=token)
    return released
