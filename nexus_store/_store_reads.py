"""Reading a store: items by id, queries, counts, what is still queued, the change stream.

Reads run under the database's lock on the caller's thread; a row that breaks the schema
raises :class:`~nexus_store.CorruptDatabaseError` naming the table and row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._tablespec import ItemKey
from ._watch import ChangeStream
from .queue import OpState, QueuedOp

if TYPE_CHECKING:
    pass


from ._store_base import ID, T, _StoreBase

__all__: list[str] = []


class _Reads(_StoreBase[T, ID]):
    """The store's reads."""

    def get(self, item_id: ID) -> T | None:
        """The item with this id, or None if there is none (or it was deleted).

        Raises:
            ItemValidationError: the id does not fit the model's id field.
        """
        self._check_open()
        _, key = self._table.key_of(item_id)
        with self._db.reading() as conn:
            return self._table.get(conn, key)

    def get_many(self, item_ids: Iterable[ID]) -> dict[ID, T]:
        """The items with these ids that exist, keyed by id, in the order asked.

        Ids with no live item are left out, so ``len(result)`` tells how many were found.

        Raises:
            ItemValidationError: an id does not fit the model's id field.
        """
        self._check_open()
        wanted: dict[ItemKey, ID] = {}
        for item_id in item_ids:
            value, key = self._table.key_of(item_id)
            wanted.setdefault(key, value)
        with self._db.reading() as conn:
            found = self._table.get_rows(conn, list(wanted))
        return {value: found[key] for key, value in wanted.items() if key in found}

    def all(self) -> list[T]:
        """Every live item, ordered by id."""
        return self.query()

    def query(
        self,
        where: str | None = None,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        order_by: str | Sequence[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[T]:
        """Live items matching an SQL condition, as in sqlite-utils' ``rows_where``.

        Args:
            where: an SQL fragment over the model's columns, with ``?`` or ``:name``
                placeholders (e.g. ``"priority > ? and done = 0"``). Scalar fields are
                plain columns; lists, dicts and nested models are JSON text (use SQLite's
                ``json_extract``). Write it in code; pass values through ``params``.
            params: the values for the placeholders.
            order_by: field names, each optionally followed by ``asc`` or ``desc``
                (``"created desc, id"``); default: by id.
            limit: at most this many items.
            offset: skip this many items first.

        Raises:
            ValueError: ``order_by`` names something that is not a field, or a negative
                ``limit``/``offset``.
            DatabaseError: the ``where`` fragment is not valid SQL for this table.
        """
        self._check_open()
        with self._db.reading() as conn:
            return self._table.query(
                conn, where, params, order_by=order_by, limit=limit, offset=offset
            )

    def count(
        self, where: str | None = None, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> int:
        """How many live items match ``where`` (all of them by default); see :meth:`query`."""
        self._check_open()
        with self._db.reading() as conn:
            return self._table.count(conn, where, params)

    def pending(
        self,
        item_id: ID | None = None,
        *,
        states: Iterable[OpState] | None = None,
        limit: int | None = None,
    ) -> list[QueuedOp]:
        """This collection's queued ops (of one item if ``item_id`` is given), queue order.

        Args:
            item_id: only this item's ops.
            states: only ops in these states (the queue's default otherwise).
            limit: at most this many ops.
        """
        self._check_open()
        key = None if item_id is None else self._table.key_of(item_id)[1]
        return self._queue.pending(
            self.collection,
            key,
            states=None if states is None else list(states),
            limit=limit,
        )

    def is_pending(self, item_id: ID) -> bool:
        """Whether the item still has an op in the queue (not yet acknowledged)."""
        self._check_open()
        return self._queue.is_pending(self.collection, self._table.key_of(item_id)[1])

    def watch(self, *, since: int | None = None, poll_interval: float = 0.05) -> ChangeStream:
        """Follow this collection's committed changes.

        The stream is an iterator and an async iterator of
        :class:`~nexus_store.LocalChange`; it sees writes of this store at once and commits
        of other connections and processes within ``poll_interval`` seconds. It ends when
        closed (``close()``, ``with``/``async with``) or when the store is closed.

        The change log is written only while at least one stream is open on the file (in
        any process); saves with nobody watching skip it.

        Args:
            since: start after this change seq (``stream.last_seq`` of an earlier stream);
                by default only changes committed from now on. Changes committed while no
                stream was open anywhere were not logged and are not replayed.
            poll_interval: seconds between checks for commits by other connections.
        """
        self._check_open()
        stream = ChangeStream(self._db, self.collection, since=since, poll_interval=poll_interval)
        with self._streams_lock:
            self._streams.add(stream)
        return stream
