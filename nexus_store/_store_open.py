"""Opening a store on a file: its table as it was, migrations of older rows, what closing frees.

Before the model's table is made or extended, the store reads the table as it was (its
columns, their recorded kinds, its rows' schema version); rows of an older version are
upgraded by the declared migrations in the opening transaction. :class:`_StoreParts` is
what closing releases (also when a program forgot to close the store).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import weakref
from typing import TYPE_CHECKING, NamedTuple

from ._database import Database, quote_identifier
from ._exceptions import CorruptDatabaseError, LifecycleError, SchemaError
from ._loop import STOP_TIMEOUT, close_on_bound_loop
from ._meta import MetaTable
from ._migrations import Migrations, run_steps
from ._remote import RemoteBackend
from ._watch import ChangeStream
from .queue import PrioritySyncQueue

if TYPE_CHECKING:
    pass


from ._store_base import ID, T
from ._store_sync import _SyncSide

logger = logging.getLogger("nexus_store")

__all__: list[str] = []


class _Layout(NamedTuple):
    """A collection table as it was before a store opened it."""

    columns: list[str]
    kinds: dict[str, str]
    """The column kinds recorded then (``columns:<collection>`` in nx_meta)."""
    version: int
    """The schema version of its rows."""


class _Opening(_SyncSide[T, ID]):
    """The steps of opening a store that read or upgrade what the file already holds."""

    def _layout_before(self, conn: sqlite3.Connection) -> _Layout | None:
        """The table's columns, their recorded kinds and its rows' version, before opening
        changes anything (None: no table yet, or no version recorded)."""
        name = self.collection
        recorded = MetaTable.get(conn, f"schema_version:{name}")
        if recorded is None:
            return None  # a new table, or a file from before versions were recorded
        if type(recorded) is not int or recorded < 1:
            raise CorruptDatabaseError(
                f"nx_meta row key='schema_version:{name}': {recorded!r:.40} is not a version"
            )
        if recorded > self.schema_version:
            raise SchemaError(
                f"{self._db.path}: the {name!r} rows are of schema v{recorded}, newer than this "
                f"model's v{self.schema_version}: open it with the newer model"
            )
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({quote_identifier(name)})")]
        kinds_json = MetaTable.get(conn, f"columns:{name}")
        try:
            kinds = json.loads(kinds_json) if isinstance(kinds_json, str) else {}
        except ValueError:
            kinds = {}
        return _Layout(columns, kinds if isinstance(kinds, dict) else {}, recorded)

    def _has_steps_for(self, layout: _Layout | None, migrations: Migrations | None) -> bool:
        """Whether opening will run migration steps on this collection's stored rows."""
        if layout is None or layout.version >= self.schema_version or not layout.columns:
            return False
        steps = migrations.steps if migrations is not None else {}
        return any(collection == self.collection for collection, _ in steps)

    def _migrate_rows(
        self, conn: sqlite3.Connection, layout: _Layout | None, migrations: Migrations | None
    ) -> None:
        """Upgrade the rows of an older version (in the open's transaction: all or none).

        Raises:
            MigrationError: a step is missing or fails for a row, or its result does not fit
                the model (the row is named; nothing changed).
        """
        if not self._has_steps_for(layout, migrations):
            return  # no steps at all: the change was additive (new fields with defaults)
        assert layout is not None
        assert migrations is not None
        steps = migrations.steps
        collection, old, new = self.collection, layout.version, self.schema_version
        kinds = {**self._table.spec.kinds, **layout.kinds}
        migrated = self._table.migrate_rows(
            conn,
            layout.columns,
            kinds,
            lambda data: run_steps(steps, collection, data, old, new),
        )
        logger.info("migrated %d %s rows from schema v%d to v%d", migrated, collection, old, new)

    def _open_migrated(self) -> None:
        """What opening does after the schema: pulled changes kept in the quarantine under
        another model are tried again."""
        self.retry_quarantined()


class _StoreParts:
    """What closing a store releases, apart from the store object (see ``_unclosed``)."""

    def __init__(
        self,
        db: Database,
        owns_db: bool,
        queue: PrioritySyncQueue,
        streams: weakref.WeakSet[ChangeStream],
        streams_lock: threading.Lock,
    ) -> None:
        self.db = db
        self.owns_db = owns_db
        self.queue = queue
        self.streams = streams
        self.streams_lock = streams_lock

    def close(self) -> None:
        with self.streams_lock:
            streams = list(self.streams)
            self.streams.clear()
        for stream in streams:
            stream.close()
        self.queue.close()
        if self.owns_db:
            self.db.close()
            if self.db.path in ("", ":memory:") or self.db.path.startswith("file::memory:"):
                from .files._local import forget_memory_blobs  # noqa: PLC0415

                forget_memory_blobs(self.db)


def _close_forgotten(parts: _StoreParts, backend: RemoteBackend | None) -> None:
    """Close a store its program forgot to close, waiting a bounded time for the backend."""
    try:
        parts.close()
    finally:
        if backend is not None:
            # A forgotten backend whose event loop has ended cannot be closed any more: its
            # sockets ended with that loop's process resources; the warning still tells.
            with contextlib.suppress(LifecycleError):
                close_on_bound_loop(
                    backend.aclose,
                    getattr(backend, "_binding", None),
                    what=repr(backend),
                    timeout=STOP_TIMEOUT,
                )
