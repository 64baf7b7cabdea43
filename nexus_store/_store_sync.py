"""A store's side of a sync run, and the run itself: acks, pulled changes, quarantine, cursor.

What the sync engine asks of a store (it is a
:class:`~nexus_store.sync.engine.SyncTarget`): record the server's version after an ack,
apply pulled changes without overwriting items that still have pending ops (keeping what
cannot be applied in the quarantine), move the pull cursor, hear the server's clock. And
:meth:`~_SyncSide.sync`: one run of the engine now (loaded on first use).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ._changelog import ChangeKind, ChangeOrigin
from ._exceptions import ItemValidationError, MigrationError, SyncError
from ._hlc import ClockReading
from ._loop import shared_loop
from ._meta import MetaTable
from ._migrations import run_steps
from ._quarantine import AppliedChanges, Quarantine, QuarantinedChange, shape_of
from ._remote import Change, RemoteBackend
from ._tablespec import ItemKey, PreparedItem, remote_change_action
from .queue import OpState

if TYPE_CHECKING:
    from .sync.device._device import DeviceStateProvider
    from .sync.engine._progress import SyncSummary


from ._store_base import ID, T, _StoreBase

__all__: list[str] = []

logger = logging.getLogger("nexus_store")


@dataclass(slots=True)
class _PageState:
    """The items of one pulled page as the rule for pulled changes sees them: which have an
    op still to be sent, and the server version stored for each (kept current while the
    page is applied, so an item twice in a page is judged against its first write)."""

    pending: set[ItemKey]
    stored: dict[ItemKey, int]

    def may_apply(self, change: Change, key: ItemKey) -> bool:
        """The rule for pulled changes: never over a pending op, never over a newer
        version."""
        pending = key in self.pending
        action = remote_change_action(change.version, self.stored.get(key), has_pending_op=pending)
        return action == "apply"


class _SyncSide(_StoreBase[T, ID]):
    """The store as the sync engine sees it, and one sync run on demand."""

    def apply_ack(self, item_id: ItemKey, version: int) -> bool:
        """Record that the server stored the item at ``version`` (after its op was acked).

        Args:
            item_id: the id as queued (``QueuedOp.item_id``); other id values are converted.
            version: the server version from the ack.

        Returns:
            True if the stored server version moved forward.
        """
        self._check_open()
        # Acks arrive by the thousand with ids already in stored form: skip re-validation.
        key = item_id if type(item_id) is str or type(item_id) is int else None
        if key is None:
            key = self._table.key_of(item_id)[1]
        with self._db.transaction() as conn:
            return self._table.set_server_version(conn, key, version)

    def apply_acks(self, acks: Iterable[tuple[ItemKey, int]]) -> int:
        """:meth:`apply_ack` for many items at once (one statement, one transaction).

        Args:
            acks: ``(item_id, version)`` pairs, ids as queued.

        Returns:
            How many stored server versions moved forward.
        """
        self._check_open()
        table = self._table
        rows = [
            (
                version,
                item_id
                if type(item_id) is str or type(item_id) is int
                else table.key_of(item_id)[1],
                version,
            )
            for item_id, version in acks
        ]
        if not rows:
            return 0
        with self._db.transaction() as conn:
            return table.set_server_versions(conn, rows)

    def stored_version(self, item_id: ItemKey) -> int | None:
        """The server version stored for an item (tombstones too); None if never stored."""
        self._check_open()
        _, key = self._table.key_of(item_id)
        with self._db.reading() as conn:
            return self._table.stored_version(conn, key)

    def apply_remote_changes(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> list[Change]:
        """Apply pulled changes of this collection to the local table, in one transaction.

        A change is skipped when the item still has a queued op (unless
        ``overwrite_pending``, for adopting the server's copy after a conflict), when the
        stored server version is already as new, or when it belongs to another collection.
        A change whose data does not fit the model is kept in the quarantine (see
        :meth:`quarantined`), in the same transaction, and tried again when the model or
        its migrations change.

        Returns:
            The changes that were applied, in order.
        """
        return self.apply_pulled(changes, overwrite_pending=overwrite_pending).applied

    def apply_pulled(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> AppliedChanges:
        """:meth:`apply_remote_changes`, also saying how many changes were quarantined."""
        self._check_open()
        applied, kept = self._apply_pulled(changes, overwrite_pending)
        return AppliedChanges(applied, len(kept))

    def _apply_pulled(
        self, changes: Iterable[Change], overwrite_pending: bool
    ) -> tuple[list[Change], list[Change]]:
        """Apply what fits, quarantine what does not: the applied and the kept changes."""
        candidates, failed = self._sort_pulled(changes)
        applied: list[Change] = []
        kept: list[Change] = []
        if not candidates and not failed:
            return applied, kept
        now = self.clock.now()
        with self._db.transaction() as conn:
            record = self._log.recorder(conn)
            state = self._page_state(conn, candidates, failed, overwrite_pending)
            for change, key, prepared in candidates:
                if not state.may_apply(change, key):
                    continue
                hlc = self._observed(change.hlc)
                if prepared is None:
                    self._table.tombstone_remote(conn, key, change.version, hlc, now)
                    kind = ChangeKind.DELETE
                else:
                    self._table.write_remote(conn, prepared, change.version, hlc, now)
                    kind = ChangeKind.UPSERT
                state.stored[key] = change.version
                record(self.collection, key, kind, origin=ChangeOrigin.REMOTE, hlc=hlc, at=now)
                applied.append(change)
            for change, maybe_key, reason in failed:
                if maybe_key is not None and not state.may_apply(change, maybe_key):
                    continue  # it would not have been applied anyway
                if Quarantine.keep(conn, change, reason, self._shape(), now):
                    kept.append(change)
                    logger.warning(
                        "quarantined remote change to %s/%r: %s",
                        self.collection,
                        change.item_id,
                        reason,
                    )
            if applied and Quarantine.any_in(conn, self.collection):
                Quarantine.settle(conn, self.collection, ((c.item_id, c.version) for c in applied))
        if applied:
            self._signal.notify()
        return applied, kept

    def _sort_pulled(
        self, changes: Iterable[Change]
    ) -> tuple[
        list[tuple[Change, ItemKey, PreparedItem[T] | None]],
        list[tuple[Change, ItemKey | None, str]],
    ]:
        """This collection's changes, validated (outside any transaction): those that fit,
        and those that do not with the reason."""
        candidates: list[tuple[Change, ItemKey, PreparedItem[T] | None]] = []
        failed: list[tuple[Change, ItemKey | None, str]] = []
        for change in changes:
            if change.collection != self.collection:
                continue
            key: ItemKey | None = None
            try:
                _, key = self._table.key_of(change.item_id)
                prepared = None if change.deleted else self._prepare_remote(change)
            except (ItemValidationError, ValidationError, MigrationError) as exc:
                failed.append((change, key, " ".join(str(exc).split())[:2000]))
                continue
            candidates.append((change, key, prepared))
        return candidates, failed

    def _page_state(
        self,
        conn: sqlite3.Connection,
        candidates: Sequence[tuple[Change, ItemKey, PreparedItem[T] | None]],
        failed: Sequence[tuple[Change, ItemKey | None, str]],
        overwrite_pending: bool,
    ) -> _PageState:
        """What the rule for pulled changes needs about a page's items, read in two queries
        (inside the page's transaction)."""
        keys = [key for _, key, _ in candidates]
        keys += [key for _, key, _ in failed if key is not None]
        keys = list(dict.fromkeys(keys))  # an item twice in a page: asked for once
        pending = set() if overwrite_pending else self._queue.pending_among(self.collection, keys)
        return _PageState(pending, self._table.stored_versions(conn, keys))

    def _prepare_remote(self, change: Change) -> PreparedItem[T]:
        """Validate a pulled item. Data that does not fit is tried through the migration
        steps, from the newest older version down (a change carries no version: an older
        client may have sent it), before the failure is final."""
        data = change.data or {}
        # Fields this model does not have are the mark of another (older) shape.
        foreign = self.schema_version > 1 and not self._table.stored_keys.issuperset(data)
        if foreign:
            upgraded = self._upgrade_pulled(data)
            if upgraded is not None:
                return self._table.prepare(upgraded, validated=True)
        try:
            item = self._table.from_stored(data)
        except ValidationError:
            upgraded = None if foreign else self._upgrade_pulled(data)
            if upgraded is None:
                raise
            item = upgraded
        return self._table.prepare(item, validated=True)

    def _upgrade_pulled(self, data: dict[str, Any]) -> T | None:
        """The item that ``data`` of some older version becomes, if steps make it fit with
        no field left over."""
        steps = self._queue.migration_step_map()
        collection = self.collection
        for version in range(self.schema_version - 1, 0, -1):
            if (collection, version) not in steps:
                break
            try:
                upgraded = run_steps(steps, collection, data, version, self.schema_version)
                if not set(upgraded) <= self.model.model_fields.keys():
                    continue
                return self._table.from_stored(upgraded)
            except (MigrationError, ValidationError):
                continue
        return None

    def _shape(self) -> str:
        """What decides whether a pulled change fits: the model, its version, its steps."""
        steps = sorted(v for c, v in self._queue.migration_steps() if c == self.collection)
        try:
            schema: Any = self.model.model_json_schema()
        except Exception:  # a model pydantic cannot describe: its fields' annotations
            schema = {name: repr(f.annotation) for name, f in self.model.model_fields.items()}
        return shape_of(self.model.__qualname__, schema, self.schema_version, steps)

    def quarantined(self) -> list[QuarantinedChange]:
        """Pulled changes of this collection that could not be applied, with the reasons."""
        self._check_open()
        with self._db.reading() as conn:
            return Quarantine.list(conn, self.collection)

    def retry_quarantined(self, *, force: bool = False) -> int:
        """Try the quarantined changes again (those that failed with another model, or all
        with ``force``). Those that fit now are applied by the usual rules (never over a
        pending op or a newer version; a change those rules skip is dropped); the others
        stay, with the new reason.

        Returns:
            How many were applied.
        """
        self._check_open()
        with self._db.reading() as conn:
            if not Quarantine.exists(conn) or not Quarantine.any_in(conn, self.collection):
                return 0
        shape = "" if force else self._shape()
        with self._db.transaction() as conn:
            due = Quarantine.due(conn, self.collection, shape)
            if not due:
                return 0
            applied, kept = self._apply_pulled([change for _, change in due], False)
            # Applied ones are gone already; failed ones were kept again (attempts counted);
            # the rest were skipped by the usual rules (a pending op, a newer version): gone.
            done = {(c.item_id, c.version) for c in (*applied, *kept)}
            Quarantine.forget(
                conn, [row_id for row_id, c in due if (c.item_id, c.version) not in done]
            )
        return len(applied)

    def discard_quarantined(self, ids: Iterable[int] | None = None) -> int:
        """Drop quarantined changes of this collection (all of them by default).

        Returns:
            How many were dropped.
        """
        self._check_open()
        with self._db.transaction() as conn:
            if not Quarantine.exists(conn):
                return 0
            chosen = [q.id for q in Quarantine.list(conn, self.collection)]
            if ids is not None:
                wanted = set(ids)
                chosen = [i for i in chosen if i in wanted]
            return Quarantine.forget(conn, chosen)

    def observe_server_clock(self, reading: ClockReading) -> float | None:
        """Let this store's clock observe a server's clock (sync runs call this).

        Later stamps sort after the server's time; while the store's clock is off by more
        than the server's bound, writes are stamped with the server's time instead (see
        :mod:`nexus_store._hlc`).

        Returns:
            The seconds the store's clock is ahead of the server's (negative: behind) when
            that is beyond the server's bound, else ``None``.
        """
        return self._hlc.observe_clock(reading)

    def _observed(self, hlc: str) -> str | None:
        """A pulled stamp after this store's clock has seen it (``None``: empty or malformed)."""
        if not hlc:
            return None
        try:
            self._hlc.observe(hlc)
        except ValueError:
            return None
        return hlc

    def pull_cursor(self) -> int:
        """The cursor after the last pulled change of this collection (0: none yet)."""
        self._check_open()
        with self._db.reading() as conn:
            return MetaTable.get_int(conn, f"pull_cursor:{self.collection}")

    def set_pull_cursor(self, cursor: int) -> None:
        """Store the pull cursor (inside the caller's transaction, if one is open)."""
        self._check_open()
        if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
            raise ValueError(f"a pull cursor is a non-negative integer, not {cursor!r}")
        with self._db.transaction() as conn:
            MetaTable.set(conn, f"pull_cursor:{self.collection}", cursor)

    async def async_sync(
        self,
        *,
        backend: RemoteBackend | None = None,
        device: DeviceStateProvider | None = None,
        budget: float | None = None,
    ) -> SyncSummary:
        """Run one sync run now: push queued ops by priority, then pull remote changes.

        Args:
            backend: where to sync (default: the store's ``backend``).
            device: the device state (``LOW`` waits on a metered network or low battery;
                nothing is sent while disconnected); default: assume a good network.
            budget: the most seconds the run may take; leased ops go back when it ends.

        Returns:
            What the run did (pushed, failed, dead-lettered, pulled, per priority).

        Raises:
            SyncError: no backend was given and the store has none.
            StoreClosedError: the store is closed.
        """
        from .sync.engine._runner import SyncRunner  # noqa: PLC0415 - the engine loads on first sync

        self._check_open()
        chosen = backend if backend is not None else self.backend
        if chosen is None:
            raise SyncError(f"the {self.collection!r} store has no backend: pass backend=")
        runner = SyncRunner(self, chosen, clock=self.clock, device=device, budget=budget)
        return await runner.run()

    def sync(
        self,
        *,
        backend: RemoteBackend | None = None,
        device: DeviceStateProvider | None = None,
        budget: float | None = None,
    ) -> SyncSummary:
        """Blocking form of :meth:`async_sync`, for synchronous apps.

        The run executes on the process's background event loop (a daemon thread shared
        by every store, started on first use), so a backend's connections stay bound to
        one loop whichever store or thread uses it. Ctrl-C while waiting cancels the run
        (its leased ops go back to the queue). From async code, await :meth:`async_sync`
        instead.

        Raises:
            LifecycleError: called from a callback on that loop's own thread.
        """
        self._check_open()
        # Loaded here, not on the loop: importing the engine would stall the loop's thread.
        from .sync.engine import _runner  # noqa: F401, PLC0415

        return shared_loop().call(
            functools.partial(self.async_sync, backend=backend, device=device, budget=budget)
        )

    def wait_synced(self, item_id: ID, timeout: float = 30.0) -> bool:
        """Wait until a write of ``item_id`` is no longer queued.

        Returns:
            True once the server acknowledged it (no op of the item is queued), False if
            its op failed permanently (dead-lettered).

        Raises:
            TimeoutError: the item still has live queued ops after ``timeout`` seconds.
        """
        self._check_open()
        _, key = self._table.key_of(item_id)
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            ops = self._queue.pending(self.collection, key, states=tuple(OpState))
            if not any(op.state is not OpState.DEAD for op in ops):
                return not ops
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{item_id!r} still has queued ops after {timeout} s")
            # Acks come from another thread or process; back off up to 50 ms between looks.
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)
