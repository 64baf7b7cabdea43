"""A sync worker: the background sync service as a daemon beside the app's process.

``nexus-store worker --db PATH --remote URL`` runs :class:`SyncWorker`: the app process
only saves (its commits go to the file), the worker drains the queue to the remote.

- **One drainer at a time.** A lease row in the file (table ``nx_worker_lease``: holder,
  expires_at, renewed every ``ttl / 3`` seconds) says who drains. A second worker waits
  and takes over once the lease expires (the first one died or stalled), or at once when
  the holder ran on this machine and its process is gone; it then gives back the ops
  the dead worker had leased (the server dedupes a batch it already applied by op id, so
  every op takes effect once), and WorkManager work found RUNNING runs again (WM-22). A
  worker that cannot renew in time (stalled, or its lease was taken) stops draining and
  waits again. The decision is :func:`~._worker_lease.decide_lease`, a pure function of
  the row and the time. A lease renewed at a wall time later than now (the clock stepped
  back since) is first clamped to end one ttl from now
  (:func:`~._worker_lease.clamp_lease`, written back), so a dead holder's lease never
  outlasts its ttl by the size of the step.
- **Prompt wake-up.** The kernel watches the database's ``-wal`` file (SQLite appends
  every commit there; inotify on Linux, costing nothing while idle, ``watchfiles`` polling
  every ``watch_step_ms`` elsewhere: :mod:`._wal_watch`), so a commit in another process
  wakes the worker at once; it then looks at the queue: an eligible ``CRITICAL`` op
  starts a run at once, ``HIGH`` ops after the debounce, the rest wait for the periodic
  run. Collections created later are noticed by SQLite's schema version. Only other
  processes' commits wake it: the worker's own (lease renewals, acks, scheduler records)
  do not, so an idle worker stays asleep. What the app committed is checkpointed on the
  worker's connection shortly after the wake, off the path of the run it asked for.
- **Clean stop.** Cancelling :meth:`SyncWorker.run` (the command does on SIGTERM/SIGINT)
  stops a run in progress (its leased ops go back untouched), then releases the lease.

The app process must not run a background sync service of its own on the same file (one
scheduler per file); saving, reading and ``sync_now`` from the app are fine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from .._clock import Clock, SystemClock
from .._database import Database
from .._meta import MetaTable
from .._migrations import Migrations, load_migrations
from .._remote import RemoteBackend
from ..queue import PrioritySyncQueue
from ._config import MIN_PERIODIC_INTERVAL, BackgroundSyncConfig, BackgroundSyncStatus
from ._quick_read import read_soon
from ._store_task import SYNC_TASK_ID
from ._task import TaskRun
from ._wal_watch import WalChangeSource
from ._worker_lease import LeaseAction, LeaseDecision, WorkerLease, release_stale_leases
from .device._constraints import SystemDevice
from .device._device import DeviceStateProvider
from .engine._progress import SyncEvent
from .engine._rawtable import RawCollection, discover_collections
from .workmanager._adapter import WorkManagerSyncService, work_ended
from .workmanager._records import WorkInfo, WorkQuery
from .workmanager._states import WorkState

__all__ = ["RunReport", "SyncWorker", "WalChangeSource", "worker_config"]

logger = logging.getLogger("nexus_store.sync.worker")


CHECKPOINT_DELAY = 0.05
"""Seconds between a wake and the checkpoint it asks for (the wakes of a burst share one)."""


class _SchemaWatch:
    """Passes wake-ups on, notices when the file's collections change, and checkpoints
    the others' commits (:meth:`checkpoints`, a task of its own)."""

    def __init__(self, inner: WalChangeSource, database: Database, known: list[str]) -> None:
        self._inner = inner
        self._database = database
        self._known = known
        self._version = _schema_version(database)
        self._dirty = anyio.Event()
        self.changed = anyio.Event()

    async def checkpoints(self) -> None:
        """Checkpoint, on the worker's connection, what the app committed, so that the
        app's saves do not (SQLite checkpoints in the committing call once the ``-wal``
        file is over 1,000 pages). Run :data:`CHECKPOINT_DELAY` after a wake, not in it:
        a CRITICAL save's run goes first, and a burst of saves is checkpointed once."""
        while True:
            await self._dirty.wait()
            await anyio.sleep(CHECKPOINT_DELAY)
            self._dirty = anyio.Event()
            await anyio.to_thread.run_sync(self._database.checkpoint)

    async def changes(self) -> AsyncIterator[None]:
        async for _ in self._inner.changes():
            self._dirty.set()
            version = await read_soon(self._database, lambda: _schema_version(self._database))
            if version != self._version:
                self._version = version
                found = await anyio.to_thread.run_sync(discover_collections, self._database)
                if found != self._known:
                    self.changed.set()
            yield None

    def close(self) -> None:
        self._inner.close()


def _schema_version(database: Database) -> int:
    with database.reading() as conn:
        return int(conn.execute("PRAGMA schema_version").fetchone()[0])


def next_attempt(infos: list[WorkInfo], event: SyncEvent | None, now: float) -> float | None:
    """When the next sync run is due, as the unfinished sync work says right after a run
    ended: the earliest waiting work's time, or now if another run is already under way
    (the scheduler started it as this one ended); not before the end of a pause of the
    remote that the run's event reports (a run before then sends nothing)."""
    waiting = [info.next_schedule_time for info in infos if info.state is WorkState.ENQUEUED]
    if any(info.state is WorkState.RUNNING for info in infos):
        waiting.append(now)
    if not waiting:
        return None
    due = min(waiting)
    summary = event.summary if event is not None else None
    paused = summary.paused_until if summary is not None else None
    return max(due, paused.timestamp()) if paused is not None else due


@dataclasses.dataclass(frozen=True)
class RunReport:
    """One finished sync run, as the scheduler recorded it (what ``nexus-store jobs`` shows).

    Attributes:
        run: the scheduler's record of the run (its outcome, message and times).
        event: the run's event (counts and error), if the run got as far as sending one.
        next_attempt_at: when the next sync run is due (wall-clock seconds), if scheduled.
    """

    run: TaskRun
    event: SyncEvent | None
    next_attempt_at: float | None

    @property
    def outcome(self) -> str:
        """``success``, ``retry``, ``failure``, ... as the run history says."""
        return self.run.outcome

    @property
    def failed(self) -> bool:
        """Whether the run failed (exactly when the run history does not say success)."""
        return self.outcome != "success"


def worker_config(
    interval: timedelta = timedelta(minutes=5),
    *,
    high_priority_debounce: timedelta = timedelta(milliseconds=500),
    **options: object,
) -> BackgroundSyncConfig:
    """A config for a worker daemon: the periodic floor lowered to ``interval`` if it is
    under 15 minutes (the documented desktop/server policy), a short ``HIGH`` debounce."""
    floor = min(interval, MIN_PERIODIC_INTERVAL)
    return BackgroundSyncConfig.model_validate(
        {
            "min_interval": interval,
            "min_periodic_floor": floor,
            "high_priority_debounce": high_priority_debounce,
            **options,
        }
    )


class SyncWorker:
    """Drains one database file while it holds the drain lease (see the module docstring).

    Args:
        path: the store's database file.
        backend: where ops go (the worker closes it when done).
        config: the service config (default :func:`worker_config`).
        holder: this worker's lease id (default: host, pid and a random part).
        lease_ttl: seconds the drain lease lasts without renewal (takeover delay).
        lease_for: seconds a pushed batch stays reserved (above the backend's timeout).
        watch_step_ms: the commit watcher's step (wake-up latency vs idle CPU).
        device: the device state (default: this machine, probing the backend's URL).
        clock: wall-clock time for the lease and the schedule.
        announce: called with a line of text at each step (waiting, draining, status...).
        on_run: called with a :class:`RunReport` after each sync run, once the scheduler
            recorded it.
        migrations: the app's :class:`~nexus_store.Migrations`, or their import path
            (``module:attr``, recorded in the file for the next worker). By default the
            path the file records (the app's store records it) is imported; a path that
            cannot be imported stops the worker before it sends anything
            (:class:`~nexus_store.MigrationError`). Queued payloads of an older schema
            version are upgraded with them before they are sent; an op with no path to the
            current version is dead-lettered with the reason.
    """

    def __init__(
        self,
        path: str | Path,
        backend: RemoteBackend,
        *,
        config: BackgroundSyncConfig | None = None,
        holder: str | None = None,
        lease_ttl: float = 30.0,
        lease_for: float = 60.0,
        watch_step_ms: int = 10,
        device: DeviceStateProvider | None = None,
        clock: Clock | None = None,
        announce: Callable[[str], None] | None = None,
        on_run: Callable[[RunReport], None] | None = None,
        migrations: Migrations | str | None = None,
    ) -> None:
        self.path = Path(path)
        self.migrations: Migrations | None = None
        self._migrations_path: str | None = None
        if isinstance(migrations, str):
            self.migrations = load_migrations(migrations)
            self._migrations_path = migrations
        elif migrations is not None:
            self.migrations = migrations
            self._migrations_path = migrations.import_path
        self.backend = backend
        self.config = config or worker_config()
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_ttl = float(lease_ttl)
        self.lease_for = float(lease_for)
        self.watch_step_ms = watch_step_ms
        self._device = device
        self._clock: Clock = clock or SystemClock()
        self._announce = announce or (lambda text: logger.info("%s", text))
        self._on_run = on_run
        self.service: WorkManagerSyncService | None = None
        """The service while this worker drains."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Wait for the lease, drain while holding it, wait again if it is lost; until
        cancelled. Signals readiness (``task_status``) once the database is open."""
        # The worker's own writes (acks, pulled pages, schedule) are all safe to redo: an
        # ack lost to a power cut resends an op the server dedupes. So they need not wait
        # for fsync; the app's saves keep their own durability on their own connection.
        database = await anyio.to_thread.run_sync(lambda: Database(self.path, durability="normal"))
        lease: WorkerLease | None = None
        try:
            await anyio.to_thread.run_sync(self._find_migrations, database)
            lease = await anyio.to_thread.run_sync(
                lambda: WorkerLease(database, self.holder, ttl=self.lease_ttl, clock=self._clock)
            )
            task_status.started()
            while True:
                decision = await self._wait_for_lease(lease)
                await self._drain(database, lease, decision)
        finally:
            with anyio.CancelScope(shield=True):
                if lease is not None:
                    await anyio.to_thread.run_sync(lease.release)
                await anyio.to_thread.run_sync(database.close)
                self._announce("stopped; the lease is released")

    def _find_migrations(self, database: Database) -> None:
        """Record the migrations' import path in the file, or import the recorded one.

        Raises:
            MigrationError: the recorded path cannot be imported.
        """
        with database.transaction() as conn:
            MetaTable(database).ensure_schema(conn)
            if self._migrations_path is not None:
                MetaTable.set(conn, "migrations", self._migrations_path)
                return
            recorded = MetaTable.get(conn, "migrations")
        if self.migrations is None and isinstance(recorded, str):
            self.migrations = load_migrations(recorded)
            self._announce(f"using the migrations the file records: {recorded}")

    async def _wait_for_lease(self, lease: WorkerLease) -> LeaseDecision:
        announced: str | None = None
        while True:
            decision = await anyio.to_thread.run_sync(lease.try_acquire)
            if decision.acquired:
                return decision
            row = decision.row
            assert row is not None
            if announced != row.holder:
                announced = row.holder
                self._announce(f"waiting for the drain lease held by {row.holder} (pid {row.pid})")
            retry_at = decision.retry_at or self._clock.now()
            # Look again when it expires, and at least every 5 s (it may be released early,
            # or its holder may die).
            delay = min(max(retry_at - self._clock.now(), 0.05), self.lease_ttl / 2, 5.0)
            await self._clock.sleep(delay)

    async def _drain(self, database: Database, lease: WorkerLease, decision: LeaseDecision) -> None:
        queue = PrioritySyncQueue(
            database, clock=self._clock, max_attempts=self.config.max_attempts
        )
        if self.migrations is not None:
            for (collection, from_version), step in self.migrations.steps.items():
                queue.register_migration(collection, from_version, step)
        if decision.action is LeaseAction.TAKE_OVER:
            released = await anyio.to_thread.run_sync(release_stale_leases, queue)
            previous = decision.row.holder if decision.row else "?"
            self._announce(
                f"took over the drain lease from {previous}; {released} ops it held went back"
            )
        lost = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_lease, lease, lost)
            tg.start_soon(self._serve, database, queue)
            await lost.wait()
            tg.cancel_scope.cancel()
        self._announce("lost the drain lease; stopped draining")

    async def _keep_lease(self, lease: WorkerLease, lost: anyio.Event) -> None:
        while True:
            await self._clock.sleep(self.lease_ttl / 3)
            if not await anyio.to_thread.run_sync(lease.renew):
                lost.set()
                return

    async def _serve(self, database: Database, queue: PrioritySyncQueue) -> None:
        while True:
            names = await self._collections(database)
            wal = WalChangeSource(self.path, step_ms=self.watch_step_ms, own=database)
            source = _SchemaWatch(wal, database, names)
            targets = [
                RawCollection(database, name, queue=queue, clock=self._clock) for name in names
            ]
            device = self._device or SystemDevice(
                getattr(self.backend, "base_url", None), storage_path=self.path.parent
            )
            service = WorkManagerSyncService(
                targets,
                self.backend,
                config=self.config,
                clock=self._clock,
                device=device,
                change_source=source,
                lease_for=self.lease_for,
            )
            service.statuses.add_callback(self._on_status)
            async with service, anyio.create_task_group() as tg:
                self.service = service
                tg.start_soon(source.checkpoints)
                if self._on_run is not None:
                    tg.start_soon(self._report_runs, service, self._on_run)
                await service.schedule_sync()
                self._announce(f"draining {self.path} ({', '.join(names)}) as {self.holder}")
                await source.changed.wait()
                self._announce("the file's collections changed; restarting the service")
                tg.cancel_scope.cancel()
            self.service = None

    async def _report_runs(
        self, service: WorkManagerSyncService, on_run: Callable[[RunReport], None]
    ) -> None:
        """Report each sync run once the scheduler has recorded how it ended.

        The run's event comes first (from the run itself); the record is written when the
        scheduler has settled the run, and then the work's watch sees the change.
        """
        events: list[SyncEvent] = []
        # Unfinished work only: a run ending still changes it (its work leaves it), and the
        # finished work kept for days is not listed again on every change of the scheduler.
        unfinished = frozenset({WorkState.ENQUEUED, WorkState.RUNNING, WorkState.BLOCKED})
        sync_work = WorkQuery(tags=frozenset({SYNC_TASK_ID}), states=unfinished)

        def key(run: TaskRun) -> tuple[str, float]:
            return run.source, run.started_at

        async def collect_events() -> None:
            async with service.events.subscribe() as stream:
                async for event in stream:
                    if event.task_id == SYNC_TASK_ID:
                        events.append(event)
                        del events[:-50]  # runs without a record yet: a few at most

        def event_of(run: TaskRun) -> SyncEvent | None:
            # A run's event is sent as it ends, just before the scheduler records the end.
            ended = run.ended_at if run.ended_at is not None else run.started_at
            best = min(events, key=lambda e: abs(e.timestamp.timestamp() - ended), default=None)
            if best is None or abs(best.timestamp.timestamp() - ended) > 5.0:
                return None
            events.remove(best)
            return best

        # Runs recorded before this worker started are history, not news.
        reported = {key(run) for run in await service.run_history(SYNC_TASK_ID, limit=50)}
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect_events)
            watch = service.manager.subscribe(sync_work)
            try:
                before: dict[str, WorkState] | None = None
                async for infos in watch:
                    states = {info.id: info.state for info in infos}
                    if before is not None and not work_ended(before, states):
                        before = states  # work asked for, or starting: no run ended
                        continue
                    before = states
                    history = await service.run_history(SYNC_TASK_ID, limit=20)
                    finished = [r for r in history if r.ended_at is not None]
                    fresh = [r for r in reversed(finished) if key(r) not in reported]
                    if not fresh:
                        continue
                    for run in fresh:  # oldest first
                        reported.add(key(run))
                        event = event_of(run)
                        due = next_attempt(infos, event, self._clock.now())
                        on_run(RunReport(run, event, due))
            finally:
                watch.close()
                tg.cancel_scope.cancel()

    async def _collections(self, database: Database) -> list[str]:
        """The file's collections; waits (watching the file) until there is one."""
        names = await anyio.to_thread.run_sync(discover_collections, database)
        if names:
            return names
        self._announce("no store collections in the file yet; waiting for one")
        while True:
            wal = WalChangeSource(self.path, step_ms=self.watch_step_ms)
            try:
                async for _ in wal.changes():
                    names = await anyio.to_thread.run_sync(discover_collections, database)
                    if names:
                        return names
            finally:
                wal.close()
            await self._clock.sleep(1.0)  # the watcher ended early: do not spin

    def _on_status(self, status: BackgroundSyncStatus) -> None:
        if self._on_run is None:
            self._announce(f"status {status.value}")
        else:  # each run is reported with its recorded outcome instead (see RunReport)
            logger.debug("status %s", status.value)
